//! TLS interception for hosts a sandbox's secrets may be sent to: terminate the sandbox's
//! TLS with a leaf from its own CA, check and replace placeholders request by request, and
//! forward over TLS verified against the real roots.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use super::redact::RedactBody;
use super::upstream::PoolKey;
use super::{
    Body, Conn, HELLO_TIMEOUT, IDLE_TIMEOUT, RESPONSE_TIMEOUT, Tracked, chain, has_placeholder,
    host_without_port, inject, same_host, strip_hop_by_hop, text, unix_now,
};

/// The server an intercepted connection is for.
pub(super) struct Upstream {
    /// The name the client asked for (SNI), or the IP literal it connected to.
    pub host: String,
    pub port: u16,
    pub addr: SocketAddr,
}

/// Terminates TLS on `io` (whose ClientHello asked for `up.host`) and serves its requests.
pub(super) async fn serve<S>(conn: Conn, io: S, up: Upstream)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = match conn.view.ca.server_config_for(&up.host) {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!(host = %up.host, "proxy: cannot issue a leaf: {e}");
            return;
        }
    };
    let tls = match tokio::time::timeout(HELLO_TIMEOUT, TlsAcceptor::from(config).accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(host = %up.host, "proxy: client TLS handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let activity = conn.activity.clone();
    let io = TokioIo::new(Tracked::new(tls, activity.clone()));
    let ctx = Arc::new((conn, up));
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(&ctx.0, &ctx.1, req).await) }
    });
    let served = super::http1_server().serve_connection(io, service);
    tokio::select! {
        _ = served => {}
        () = activity.idle(IDLE_TIMEOUT) => {}
    }
}

async fn handle(conn: &Conn, up: &Upstream, req: Request<Incoming>) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let named = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    let Some(named) = named else {
        return text(StatusCode::BAD_REQUEST, "the request has no Host header");
    };
    let uri_host = parts.uri.host();
    if !same_host(host_without_port(&named), &up.host) || uri_host.is_some_and(|h| !same_host(h, &up.host)) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            &format!("this connection is for {}, not {named}", up.host),
        );
    }
    let shared = &conn.shared;
    let view = &conn.view;
    let path = parts.uri.path().to_owned();
    let method = parts.method.as_str().to_owned();
    if has_placeholder(&*shared.dir, view, [parts.uri.to_string().as_bytes()]) {
        let reason = "secret placeholders are only replaced in headers, not in the URL";
        shared.event(
            view,
            "secret.denied",
            serde_json::json!({ "host": up.host, "reason": reason }),
        );
        return text(StatusCode::FORBIDDEN, reason);
    }
    let target = inject::Target {
        view,
        host: &up.host,
        method: &method,
        path: &path,
        now: unix_now(),
    };
    let injected = match inject::apply(&*shared.dir, &target, &mut parts.headers) {
        Ok(injected) => injected,
        Err(refused) => {
            shared.event(
                view,
                "secret.denied",
                serde_json::json!({ "secret": refused.secret, "host": up.host, "reason": refused.reason }),
            );
            return text(
                StatusCode::FORBIDDEN,
                &format!("secret placeholder refused: {}", refused.reason),
            );
        }
    };
    for i in &injected {
        shared.event(
            view,
            "secret.used",
            serde_json::json!({ "secret": i.secret, "host": up.host, "method": method, "path": path }),
        );
    }

    strip_hop_by_hop(&mut parts.headers);
    let redactor = conn.redactor(injected.iter().map(|i| i.value.clone()));
    if !redactor.is_empty() {
        // Redaction needs to see the response as sent: no compression.
        parts
            .headers
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("https://{}:{}{path_and_query}", up.host, up.port).parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("bad request target: {e}")),
    };
    parts.version = Version::HTTP_11;
    let req = Request::from_parts(parts, body.map_err(Into::into).boxed());
    let key = PoolKey {
        sandbox: view.id.clone(),
        host: up.host.clone(),
        addr: up.addr,
        tls: true,
    };
    let client = match shared.pools.client(key) {
        Ok(client) => client,
        Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("cannot reach {}: {e}", up.host)),
    };
    let resp = match tokio::time::timeout(RESPONSE_TIMEOUT, client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return text(StatusCode::BAD_GATEWAY, &format!("{}: {}", up.host, chain(&e))),
        Err(_) => {
            return text(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("{} did not answer in time", up.host),
            );
        }
    };
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if redactor.is_empty() {
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    }
    redactor.headers(&mut parts.headers);
    Response::from_parts(parts, RedactBody::new(body, redactor).map_err(Into::into).boxed())
}
