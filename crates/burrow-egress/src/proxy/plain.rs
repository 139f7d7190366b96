//! Plain HTTP forwarding: absolute-form requests to the explicit proxy and redirected tcp/80.
//! The policy applies; secrets never travel over plain HTTP, so a request carrying a
//! placeholder (one that parses and verifies; see `has_placeholder`) is refused.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};

use burrow_api::NetworkMode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};

use super::redact::RedactBody;
use super::upstream::PoolKey;
use super::{
    Body, Conn, RESPONSE_TIMEOUT, chain, has_placeholder, host_without_port, strip_hop_by_hop, text,
};

/// Forwards one plain HTTP request: to the named host through the policy (`dst` is `None`,
/// the explicit proxy) or to the original destination of a redirected connection.
pub(super) async fn forward(
    conn: &Conn,
    req: Request<Incoming>,
    dst: Option<SocketAddrV4>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let via = if dst.is_some() { "transparent" } else { "proxy" };
    let authority = match dst {
        None => parts.uri.authority().map(|a| a.to_string()),
        Some(_) => parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string())),
    };
    let host = match (&authority, dst) {
        (Some(a), _) => host_without_port(a).trim_end_matches('.').to_ascii_lowercase(),
        // HTTP/1.0 without Host: only the address is known.
        (None, Some(dst)) if conn.view.mode != NetworkMode::Policy => dst.ip().to_string(),
        (None, _) => return text(StatusCode::BAD_REQUEST, "the request has no Host header"),
    };

    let uri = parts.uri.to_string();
    let fields = std::iter::once(uri.as_bytes()).chain(parts.headers.values().map(HeaderValue::as_bytes));
    if has_placeholder(&*conn.shared.dir, &conn.view, fields) {
        let reason = "secret placeholders are only replaced over HTTPS";
        conn.shared.event(
            &conn.view,
            "secret.denied",
            serde_json::json!({ "host": host, "reason": reason }),
        );
        return text(StatusCode::FORBIDDEN, reason);
    }

    let (addr, port) = match dst {
        None => {
            let port = parts.uri.port_u16().unwrap_or(80);
            match conn.resolve(&host, port, via).await {
                Ok(addrs) => (addrs[0], port),
                Err(refusal) => return refusal.response(),
            }
        }
        Some(dst) => {
            if let Err(refusal) = check_transparent(conn, &host, dst).await {
                return refusal.response();
            }
            (SocketAddr::V4(dst), dst.port())
        }
    };

    strip_hop_by_hop(&mut parts.headers);
    // A sandbox holding secrets could fetch one over plain HTTP that an HTTPS request stored.
    let redactor = conn.redactor(None);
    if !redactor.is_empty() {
        parts
            .headers
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    }
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("http://{host}:{port}{path_and_query}").parse::<Uri>() {
        Ok(uri) => uri,
        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("bad request target: {e}")),
    };
    parts.version = Version::HTTP_11;
    let req = Request::from_parts(parts, body.map_err(Into::into).boxed());
    let key = PoolKey {
        sandbox: conn.view.id.clone(),
        host: host.clone(),
        addr,
        tls: false,
    };
    let client = match conn.shared.pools.client(key) {
        Ok(client) => client,
        Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("cannot reach {host}: {e}")),
    };
    let resp = match tokio::time::timeout(RESPONSE_TIMEOUT, client.request(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return text(StatusCode::BAD_GATEWAY, &format!("{host}: {}", chain(&e))),
        Err(_) => {
            return text(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("{host} did not answer in time"),
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

/// A redirected request may go on to its original destination: the name passes the policy
/// and, in policy mode, the destination is an address of that name.
async fn check_transparent(conn: &Conn, host: &str, dst: SocketAddrV4) -> Result<(), super::Refusal> {
    let view = &conn.view;
    if let Ok(ip) = host.parse::<IpAddr>() {
        if view.mode == NetworkMode::Policy {
            return Err(conn.deny(host, "transparent", "policy mode allows names, not IP addresses"));
        }
        if ip != IpAddr::V4(*dst.ip()) {
            return Err(conn.deny(host, "transparent", "destination does not match Host"));
        }
        return Ok(());
    }
    if !crate::policy::allows(view.mode, &view.rules, host) {
        let reason = format!("the network policy of sandbox '{}' does not allow it", view.name);
        return Err(conn.deny(host, "transparent", &reason));
    }
    if view.mode == NetworkMode::Policy && !conn.shared.destination_matches(conn.src, *dst.ip(), host).await {
        return Err(conn.deny(host, "transparent", "destination does not match Host"));
    }
    Ok(())
}
