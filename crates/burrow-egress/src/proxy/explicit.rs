//! The explicit proxy (`HTTP_PROXY`/`HTTPS_PROXY`): `CONNECT host:port` tunnels and
//! absolute-form `http://` requests.
//!
//! A tunnel is checked against the policy before the `200`; then, if the client speaks TLS,
//! its server name must be the `CONNECT` host. Hosts a secret may be sent to are intercepted,
//! every other tunnel is relayed end to end.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use burrow_api::NetworkMode;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::hello::{self, HANDSHAKE, Prefixed};
use super::intercept::{self, Upstream};
use super::upstream::connect_tcp;
use super::{Body, Conn, HELLO_TIMEOUT, IDLE_TIMEOUT, Tracked, empty, plain, relay, same_host, text};

pub(super) async fn serve(conn: Conn, stream: TcpStream) {
    let activity = conn.activity.clone();
    let io = TokioIo::new(Tracked::new(stream, activity.clone()));
    let service = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(request(conn, req).await) }
    });
    let served = super::http1_server()
        .serve_connection(io, service)
        .with_upgrades();
    tokio::select! {
        _ = served => {}
        () = activity.idle(IDLE_TIMEOUT) => {}
    }
}

async fn request(conn: Conn, req: Request<Incoming>) -> Response<Body> {
    if conn.view.mode == NetworkMode::None {
        let message = format!("sandbox '{}' has network mode none", conn.view.name);
        return text(StatusCode::FORBIDDEN, &message);
    }
    if req.method() == Method::CONNECT {
        return connect(conn, req).await;
    }
    if req.uri().scheme_str() == Some("http") && req.uri().authority().is_some() {
        return plain::forward(&conn, req, None).await;
    }
    text(
        StatusCode::BAD_REQUEST,
        "this is a proxy: send CONNECT host:port or an absolute http:// URL",
    )
}

async fn connect(conn: Conn, mut req: Request<Incoming>) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let port = authority.port_u16().unwrap_or(443);
    let addrs = match conn.resolve(&host, port, "proxy").await {
        Ok(addrs) => addrs,
        Err(refusal) => return refusal.response(),
    };
    let intercept = conn.shared.intercepts(&conn.view, &host);
    // A relayed tunnel connects first, so an unreachable host is a 502, not a dead tunnel.
    let upstream = if intercept {
        None
    } else {
        match connect_tcp(&conn.shared.reach, &addrs).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    &format!("cannot connect to {host}:{port}: {e}"),
                );
            }
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shared = conn.shared.clone();
    shared.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let tunnel = Tunnel {
                    conn,
                    host,
                    port,
                    addrs,
                };
                tunnel.run(TokioIo::new(upgraded), upstream).await;
            }
            Err(e) => tracing::debug!("proxy: CONNECT upgrade failed: {e}"),
        }
    });
    Response::new(empty())
}

struct Tunnel {
    conn: Conn,
    host: String,
    port: u16,
    addrs: Vec<SocketAddr>,
}

impl Tunnel {
    async fn run(self, mut client: TokioIo<Upgraded>, upstream: Option<TcpStream>) {
        let activity = self.conn.activity.clone();
        let mut first = vec![0u8; 4096];
        let n = match upstream {
            Some(upstream) => {
                // Whichever side speaks first: a server that greets (SSH, SMTP) gets a plain
                // relay, as there is no ClientHello to look at.
                tokio::select! {
                    read = client.read(&mut first) => match read {
                        Ok(n) if n > 0 => {
                            first.truncate(n);
                            return self.relay_or_check(client, upstream, first).await;
                        }
                        _ => return,
                    },
                    ready = upstream.readable() => {
                        if ready.is_ok() {
                            relay(client, upstream, activity).await;
                        }
                        return;
                    }
                    () = activity.idle(IDLE_TIMEOUT) => return,
                }
            }
            None => match tokio::time::timeout(HELLO_TIMEOUT, client.read(&mut first)).await {
                Ok(Ok(n)) if n > 0 => n,
                Ok(_) => return,
                // The client waits for the server to speak: nothing to intercept.
                Err(_) => return self.connect_and_relay(client, Vec::new()).await,
            },
        };
        first.truncate(n);
        if first[0] != HANDSHAKE {
            return self.connect_and_relay(client, first).await;
        }
        let Some(hello) = self.read_hello(&mut client, first).await else {
            return;
        };
        let up = Upstream {
            host: self.host.clone(),
            port: self.port,
            addr: self.addrs[0],
        };
        intercept::serve(self.conn, Prefixed::new(hello, client), up).await;
    }

    /// The client spoke first, to a tunnel that is not intercepted.
    async fn relay_or_check(self, mut client: TokioIo<Upgraded>, mut upstream: TcpStream, first: Vec<u8>) {
        let bytes = if first[0] == HANDSHAKE {
            match self.read_hello(&mut client, first).await {
                Some(bytes) => bytes,
                None => return,
            }
        } else {
            first
        };
        if upstream.write_all(&bytes).await.is_ok() {
            relay(client, upstream, self.conn.activity.clone()).await;
        }
    }

    async fn connect_and_relay(self, client: TokioIo<Upgraded>, first: Vec<u8>) {
        let Ok(mut upstream) = connect_tcp(&self.conn.shared.reach, &self.addrs).await else {
            return;
        };
        if upstream.write_all(&first).await.is_ok() {
            relay(client, upstream, self.conn.activity.clone()).await;
        }
    }

    /// Reads the whole ClientHello; `None` (close) unless its server name is the CONNECT host
    /// (or absent, when the CONNECT host is an address).
    async fn read_hello(&self, client: &mut TokioIo<Upgraded>, first: Vec<u8>) -> Option<Vec<u8>> {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, hello::read_client_hello(client, first)).await {
            Ok(Ok(hello)) => hello,
            Ok(Err(e)) => {
                tracing::debug!(host = %self.host, "proxy: {e}");
                return None;
            }
            Err(_) => return None,
        };
        let matches = match &hello.sni {
            Some(sni) => same_host(sni, &self.host),
            None => self.host.parse::<IpAddr>().is_ok(),
        };
        if !matches {
            let reason = format!(
                "the TLS server name ({}) is not the CONNECT host",
                hello.sni.as_deref().unwrap_or("none")
            );
            self.conn.deny(&self.host, "proxy", &reason);
            return None;
        }
        Some(hello.bytes)
    }
}
