//! The transparent listeners: tcp/443 and tcp/80 that nftables redirected, with the original
//! destination from `SO_ORIGINAL_DST` (or the injected lookup in tests).
//!
//! The name (SNI or `Host`) is what the policy judges; the destination must be an address of
//! that name (handed out by burrowd's DNS, or resolved now) so a sandbox cannot dress a
//! connection to an arbitrary address up as an allowed name.

use std::convert::Infallible;
use std::net::{SocketAddr, SocketAddrV4};

use burrow_api::NetworkMode;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::hello::{self, HelloError, Prefixed};
use super::intercept::{self, Upstream};
use super::upstream::connect_tcp;
use super::{Conn, HELLO_TIMEOUT, IDLE_TIMEOUT, Tracked, plain, relay};

/// The destination of a redirected connection, if it may be connected to at all.
fn original_destination(conn: &Conn, stream: &TcpStream) -> Option<SocketAddrV4> {
    let dst = match (conn.shared.original_dst)(stream) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::warn!(src = %conn.src, "proxy: no original destination: {e}");
            return None;
        }
    };
    // A connection made straight to the listener would loop back into it.
    if stream
        .local_addr()
        .is_ok_and(|local| local == SocketAddr::V4(dst))
    {
        return None;
    }
    if let Err(why) = conn.shared.reachable(*dst.ip()) {
        conn.deny(&dst.ip().to_string(), "transparent", why.reason());
        return None;
    }
    Some(dst)
}

pub(super) async fn tls(conn: Conn, mut stream: TcpStream) {
    let view = conn.view.clone();
    if view.mode == NetworkMode::None {
        return;
    }
    let Some(dst) = original_destination(&conn, &stream) else {
        return;
    };
    let open = view.mode == NetworkMode::Open;
    let hello =
        match tokio::time::timeout(HELLO_TIMEOUT, hello::read_client_hello(&mut stream, Vec::new())).await {
            Ok(Ok(hello)) => hello,
            Ok(Err(HelloError::NotTls(bytes))) if open => return relay_to(conn, stream, dst, bytes).await,
            Ok(Err(e)) => {
                tracing::debug!(src = %conn.src, "proxy: {e}");
                return;
            }
            Err(_) => return,
        };
    let Some(sni) = hello.sni else {
        if open {
            return relay_to(conn, stream, dst, hello.bytes).await;
        }
        conn.deny(&dst.ip().to_string(), "transparent", "TLS without a server name");
        return;
    };
    if !crate::policy::allows(view.mode, &view.rules, &sni) {
        let reason = format!("the network policy of sandbox '{}' does not allow it", view.name);
        conn.deny(&sni, "transparent", &reason);
        return;
    }
    let intercept = conn.shared.intercepts(&view, &sni);
    // In open mode any public address is reachable anyway; the check matters where the
    // policy decides, and where a secret would be injected.
    if (!open || intercept) && !conn.shared.destination_matches(conn.src, *dst.ip(), &sni).await {
        conn.deny(&sni, "transparent", "destination does not match SNI");
        return;
    }
    if intercept {
        let up = Upstream {
            host: sni,
            port: dst.port(),
            addr: SocketAddr::V4(dst),
        };
        intercept::serve(conn, Prefixed::new(hello.bytes, stream), up).await;
    } else {
        relay_to(conn, stream, dst, hello.bytes).await;
    }
}

async fn relay_to(conn: Conn, client: TcpStream, dst: SocketAddrV4, first: Vec<u8>) {
    let Ok(mut upstream) = connect_tcp(&conn.shared.reach, &[SocketAddr::V4(dst)]).await else {
        return;
    };
    if upstream.write_all(&first).await.is_ok() {
        relay(client, upstream, conn.activity.clone()).await;
    }
}

pub(super) async fn http(conn: Conn, stream: TcpStream) {
    if conn.view.mode == NetworkMode::None {
        return;
    }
    let Some(dst) = original_destination(&conn, &stream) else {
        return;
    };
    let activity = conn.activity.clone();
    let io = TokioIo::new(Tracked::new(stream, activity.clone()));
    let service = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(plain::forward(&conn, req, Some(dst)).await) }
    });
    let served = super::http1_server().serve_connection(io, service);
    tokio::select! {
        _ = served => {}
        () = activity.idle(IDLE_TIMEOUT) => {}
    }
}
