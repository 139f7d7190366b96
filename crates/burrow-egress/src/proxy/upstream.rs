//! Connections to upstream servers: TCP with a deadline, TLS verified against the upstream
//! roots, and pooled HTTP/1.1 clients so requests reuse a warm connection.
//!
//! A pooled client belongs to one sandbox, one host and one destination: connections that
//! carried one sandbox's credentials are never handed to another.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::Uri;
use hyper::rt::ReadBufCursor;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Body, CONNECT_TIMEOUT};
use crate::Reach;
use crate::reach::check_addr;

/// Clients kept at once; the least recently used makes room.
const MAX_CLIENTS: usize = 1024;
/// An idle pooled connection is closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per client.
const POOL_MAX_IDLE: usize = 8;

/// TLS to upstreams: verified against `roots`, HTTP/1.1 only.
pub(super) fn client_config(roots: Arc<RootCertStore>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects to the first of `addrs` that answers in time. Every upstream connection of the
/// proxy is made here, and `reach` is checked here last, whatever the caller checked before.
pub(super) async fn connect_tcp(reach: &Reach, addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    for addr in addrs {
        if let Err(e) = check_addr(reach, addr) {
            last = e;
            continue;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = io::Error::new(e.kind(), format!("{addr}: {e}")),
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, format!("{addr}: connect timed out")),
        }
    }
    Err(last)
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct PoolKey {
    pub sandbox: String,
    pub host: String,
    pub addr: SocketAddr,
    pub tls: bool,
}

pub(super) type HttpClient = Client<Connector, Body>;

pub(super) struct Pools {
    tls: Arc<ClientConfig>,
    reach: Arc<Reach>,
    clients: Mutex<HashMap<PoolKey, (HttpClient, Instant)>>,
}

impl Pools {
    pub(super) fn new(tls: Arc<ClientConfig>, reach: Arc<Reach>) -> Pools {
        Pools {
            tls,
            reach,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The client for `key`, connecting to `key.addr` (over TLS verified for `key.host`
    /// when `key.tls`).
    pub(super) fn client(&self, key: PoolKey) -> io::Result<HttpClient> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((client, used)) = clients.get_mut(&key) {
            *used = Instant::now();
            return Ok(client.clone());
        }
        let tls = if key.tls {
            let name = ServerName::try_from(key.host.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {e}", key.host)))?;
            Some((name, self.tls.clone()))
        } else {
            None
        };
        let connector = Connector {
            addr: key.addr,
            tls,
            reach: self.reach.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .build(connector);
        if clients.len() >= MAX_CLIENTS {
            let oldest = clients
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                clients.remove(&oldest);
            }
        }
        clients.insert(key, (client.clone(), Instant::now()));
        Ok(client)
    }
}

/// Connects every pooled connection of one client: always to the same address.
#[derive(Clone)]
pub(super) struct Connector {
    addr: SocketAddr,
    reach: Arc<Reach>,
    tls: Option<(ServerName<'static>, Arc<ClientConfig>)>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<UpstreamIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = connect_tcp(&this.reach, &[this.addr]).await?;
            let stream = match this.tls {
                None => Stream::Plain(tcp),
                Some((name, config)) => {
                    let shown = name.to_str().into_owned();
                    let tls =
                        tokio::time::timeout(CONNECT_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
                            .await
                            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
                            .map_err(|e| io::Error::new(e.kind(), format!("TLS to {shown}: {e}")))?;
                    Stream::Tls(Box::new(tls))
                }
            };
            Ok(UpstreamIo(TokioIo::new(stream)))
        })
    }
}

pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// An upstream connection as hyper's pooled client wants it.
pub(super) struct UpstreamIo(TokioIo<Stream>);

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
