//! Ingress: a sandbox's web app by URL, and raw TCP relays over WebSocket, both through
//! tunnels of the agent channel (`Manager::connect`; no network route into the sandbox).
//!
//! - `http://{name}.{base_domain}:{port}/…` (Host header, TCP listener only) and
//!   `/v1/sandboxes/{name}/http/…` are reverse-proxied (HTTP/1.1, bodies streamed both ways,
//!   upgrades such as WebSocket spliced) to the sandbox's HTTP port (`Manager::http_port`).
//! - `GET /v1/sandboxes/{name}/proxy/{port}` is a WebSocket whose binary messages are the
//!   bytes of one TCP connection to that port; an empty binary message is EOF (half-close).
//!
//! Auth follows the sandbox's `url_auth`: `public` URLs need no token; `private` ones need a
//! token allowing `http` on the sandbox. On the sandbox's own host that is the bearer header
//! or the `burrow_token` cookie, which a `?burrow_token=…` link sets once (host-only, so no
//! other sandbox and not the API sees it; HttpOnly). On the API's origin (`…/http/…`) it is
//! the bearer header only, a link redirects to the sandbox's host, and the app's answers carry
//! `Content-Security-Policy: sandbox` so a page served there runs in an opaque origin.
//! Burrow's own credentials never reach the sandbox: the cookie, the query parameter and a
//! Burrow bearer token are removed from what is forwarded, and an app's `Set-Cookie` for
//! `burrow_token` is removed from what it answers.
//! This module decides nothing about sandboxes: the core wakes, tunnels and refuses.

use std::net::SocketAddr;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use burrow_api::UrlAuth;
use burrow_core::{CoreError, Tunnel};
use burrow_egress::proxy::strip_hop_by_hop;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::auth::{self, Access};
use super::{ApiError, AppState, Transport};

/// Largest binary message sent on a relay WebSocket.
const RELAY_CHUNK: usize = 64 * 1024;
/// The query parameter (and cookie) that carries a token for a private sandbox URL.
const TOKEN_PARAM: &str = "burrow_token";
/// What app answers served on the API's origin (`…/http/…`) run under: an opaque origin
/// (no `allow-same-origin`), so their scripts can neither read the API origin's storage nor
/// call the API as same-origin.
const PATH_CSP: &str = "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads";

/// Runs before the token middleware, on every request. On TCP it routes requests whose Host
/// is `{name}.{base_domain}` to that sandbox, turns `?burrow_token=…` into a cookie, and lets
/// public sandboxes' `/http` paths through without a token. Everything else passes on.
pub async fn before_auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let transport = req
        .extensions()
        .get::<Transport>()
        .copied()
        .unwrap_or(Transport::Tcp);
    if transport != Transport::Tcp {
        return next.run(req).await;
    }
    if let Some(name) = host_sandbox(&req, &state.mgr.config().base_domain) {
        return by_host(&state, &name, req).await;
    }
    let Some((name, target)) = ingress_path(req.uri()) else {
        return next.run(req).await;
    };
    // A sign-in link for a valid name only: the name becomes a host name in the redirect.
    if token_param(req.uri().query()).is_some() && burrow_api::SandboxName::parse(&name).is_ok() {
        return to_host(&state, &name, &req, &target);
    }
    match state.mgr.url_auth(&name) {
        Ok(UrlAuth::Public) => proxy(&state, &name, req, target, Origin::Api).await,
        // Private, or unknown (the normal path answers with the API's error).
        _ => next.run(req).await,
    }
}

/// `ANY /v1/sandboxes/{name}/http[/{path}]`, after the token middleware.
pub(super) async fn by_path(State(state): State<AppState>, req: Request) -> Response {
    match ingress_path(req.uri()) {
        Some((name, target)) => proxy(&state, &name, req, target, Origin::Api).await,
        None => {
            ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "not an ingress path").into_response()
        }
    }
}

/// A request for `{name}.{base_domain}`: the sandbox's app, whole path.
async fn by_host(state: &AppState, name: &str, req: Request) -> Response {
    let html = wants_html(req.headers());
    let url_auth = match state.mgr.url_auth(name) {
        Ok(a) => a,
        Err(e) => return core_page(html, name, e),
    };
    if token_param(req.uri().query()).is_some() {
        return token_redirect(state, name, &req);
    }
    if url_auth == UrlAuth::Private {
        let access = Access::new(Some(name), "http");
        if let Err(e) = auth::authorize(state, auth::ingress_credential(req.headers()), access) {
            let hint = format!(
                "{}\n\nThis sandbox's URL is private. Open it once with ?{TOKEN_PARAM}=TOKEN appended \
                 (a cookie keeps you signed in), or send 'Authorization: Bearer TOKEN'. A token needs \
                 the 'http' action on sandbox '{name}'; or make the URL public with \
                 PATCH /v1/sandboxes/{name} {{\"url_auth\": \"public\"}}.",
                e.message
            );
            return page(e.status, "Sign-in needed", &hint, html);
        }
    }
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    proxy(state, name, req, target, Origin::SandboxHost).await
}

/// Where an app's answer is served: the sandbox's own host, or the API's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    SandboxHost,
    Api,
}

/// `…/http/…?burrow_token=…` on the API's origin: the sign-in cookie is never set there.
/// Redirect to the same place on the sandbox's own host (where the link then sets it).
fn to_host(state: &AppState, name: &str, req: &Request, target: &str) -> Response {
    let html = wants_html(req.headers());
    let cfg = state.mgr.config();
    let pair = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find(|p| is_token_pair(p))
        .unwrap_or_default();
    let sep = if target.contains('?') { '&' } else { '?' };
    let host_url = format!("http://{name}.{}:{}{target}", cfg.base_domain, cfg.public_port);
    let status = if matches!(*req.method(), Method::GET | Method::HEAD) {
        StatusCode::SEE_OTHER
    } else {
        StatusCode::TEMPORARY_REDIRECT
    };
    let mut resp = page(
        status,
        "Sign in on the sandbox's own host",
        &format!("A sign-in link works on the sandbox's own host: continue at {host_url}"),
        html,
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{host_url}{sep}{pair}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The sandbox a Host header names: `{name}.{base_domain}`, any port, any case.
fn host_sandbox(req: &Request, base_domain: &str) -> Option<String> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let label = host.strip_suffix(&format!(".{}", base_domain.to_ascii_lowercase()))?;
    burrow_api::SandboxName::parse(label).ok()?;
    Some(label.to_owned())
}

/// `/v1/sandboxes/{name}/http[/rest]` → (name, `/rest?query`), the query without our token.
fn ingress_path(uri: &axum::http::Uri) -> Option<(String, String)> {
    let rest = uri.path().strip_prefix("/v1/sandboxes/")?;
    let (name, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("http")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let path = if rest.is_empty() { "/" } else { rest };
    Some((name.to_owned(), with_query(path, uri.query())))
}

fn with_query(path: &str, query: Option<&str>) -> String {
    match query.map(strip_token_param) {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

fn is_token_pair(pair: &str) -> bool {
    pair.split('=').next() == Some(TOKEN_PARAM)
}

/// The query without `burrow_token` pairs, otherwise byte for byte.
fn strip_token_param(query: &str) -> String {
    query
        .split('&')
        .filter(|p| !is_token_pair(p))
        .collect::<Vec<_>>()
        .join("&")
}

/// The decoded `burrow_token` of a query.
fn token_param(query: Option<&str>) -> Option<String> {
    query?.split('&').filter(|p| is_token_pair(p)).find_map(|p| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(p)
            .ok()?
            .pop()
            .map(|(_, v)| v)
    })
}

/// `?burrow_token=…`: verify it, then redirect to the same URL without it and keep the
/// token in an HttpOnly cookie, so it leaves the address bar and browser history.
fn token_redirect(state: &AppState, name: &str, req: &Request) -> Response {
    let html = wants_html(req.headers());
    let token = token_param(req.uri().query()).unwrap_or_default();
    let access = Access::new(Some(name), "http");
    if let Err(e) = auth::authorize(state, Some(&token), access) {
        return page(e.status, "Sign-in failed", &e.message, html);
    }
    // Host-only (no Domain): sent back to this sandbox's host alone, never to the API's
    // origin or another sandbox. Cookie values are restricted (RFC 6265 cookie-octet); Burrow tokens always qualify.
    let cookie_safe = token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'));
    if !cookie_safe {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad token",
            "the token contains characters a cookie cannot hold",
            html,
        );
    }
    let location = with_query(req.uri().path(), req.uri().query());
    // 303 turns the retry into a GET, right for links; other methods keep theirs (307).
    let status = if matches!(*req.method(), Method::GET | Method::HEAD) {
        StatusCode::SEE_OTHER
    } else {
        StatusCode::TEMPORARY_REDIRECT
    };
    let mut resp = page(status, "Signed in", &format!("Continue at {location}"), html);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{TOKEN_PARAM}={token}; HttpOnly; SameSite=Lax; Path=/")) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Forwards `req` to the sandbox's HTTP port as `target` (origin form) and streams the
/// answer back; an upgrade (WebSocket) is spliced once both sides switched protocols.
/// How long an app connection waits, idle, for the next request through ingress. Short: an
/// idle connection keeps its tunnel, and the tunnel keeps the sandbox awake.
const APP_IDLE: std::time::Duration = std::time::Duration::from_secs(2);
/// Most idle connections kept per app.
const APP_IDLE_MAX: usize = 4;

/// Idle HTTP/1.1 connections to apps in sandboxes, each over its tunnel, by sandbox id and
/// port: a request through ingress takes one when it can instead of opening a tunnel and a
/// connection of its own (the app's keep-alive, as any reverse proxy pools it). A connection
/// comes back once its response was read to the end; one idle for [`APP_IDLE`] is closed.
/// Upgrades never use or leave one.
#[derive(Default)]
pub struct AppConnections {
    idle: std::sync::Mutex<std::collections::HashMap<(String, u16), Vec<IdleApp>>>,
}

impl std::fmt::Debug for AppConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConnections")
            .field("apps", &self.lock().len())
            .finish_non_exhaustive()
    }
}

struct IdleApp {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    since: std::time::Instant,
}

impl AppConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, u16), Vec<IdleApp>>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently idle connection to `key` that can take a request now.
    fn take(&self, key: &(String, u16)) -> Option<hyper::client::conn::http1::SendRequest<Body>> {
        let mut idle = self.lock();
        let list = idle.get_mut(key)?;
        let found = std::iter::from_fn(|| list.pop())
            .find(|i| i.since.elapsed() < APP_IDLE && i.sender.is_ready() && !i.sender.is_closed());
        if list.is_empty() {
            idle.remove(key);
        }
        found.map(|i| i.sender)
    }

    /// Keeps `sender` for the next request to `key` once it is ready again (its response
    /// read to the end), and closes it after [`APP_IDLE`] unused.
    fn give_back(
        self: &std::sync::Arc<Self>,
        key: (String, u16),
        mut sender: hyper::client::conn::http1::SendRequest<Body>,
    ) {
        let me = std::sync::Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return;
            }
            {
                let mut idle = me.lock();
                let list = idle.entry(key.clone()).or_default();
                if list.len() >= APP_IDLE_MAX {
                    return;
                }
                list.push(IdleApp {
                    sender,
                    since: std::time::Instant::now(),
                });
            }
            tokio::time::sleep(APP_IDLE).await;
            let mut idle = me.lock();
            if let Some(list) = idle.get_mut(&key) {
                list.retain(|i| i.since.elapsed() < APP_IDLE);
                if list.is_empty() {
                    idle.remove(&key);
                }
            }
        });
    }
}

/// A new connection to the app at `port` of sandbox `name` over a tunnel (which wakes the
/// sandbox and keeps it awake while open).
async fn open_app(
    state: &AppState,
    name: &str,
    port: u16,
    html: bool,
) -> Result<hyper::client::conn::http1::SendRequest<Body>, Response<Body>> {
    let tunnel = state
        .mgr
        .connect(name, port)
        .await
        .map_err(|e| core_page(html, name, e))?;
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tunnel))
        .await
        .map_err(|e| bad_gateway(html, name, port, &e))?;
    // The connection (and with it the tunnel) lives until its sender is dropped and it is
    // idle, or as long as an upgraded connection stays open.
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

async fn proxy(state: &AppState, name: &str, mut req: Request, target: String, origin: Origin) -> Response {
    let html = wants_html(req.headers());
    let port = match state.mgr.http_port(name).await {
        Ok(p) => p,
        Err(e) => return core_page(html, name, e),
    };
    let upgrade = upgrade_of(req.headers());
    // A running sandbox's idle connection, if any (one asleep is woken by a new tunnel).
    let key = match state.mgr.running_id(name) {
        Ok(Some(id)) if upgrade.is_none() => Some((id, port)),
        _ => None,
    };
    let pooled = key.as_ref().and_then(|k| state.apps.take(k));
    let reused = pooled.is_some();
    let mut sender = match pooled {
        Some(s) => s,
        None => match open_app(state, name, port, html).await {
            Ok(s) => s,
            Err(page) => return page,
        },
    };
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = req.into_parts();
    let mut out = hyper::Request::builder()
        .method(parts.method)
        .uri(target.as_str())
        .body(body)
        .expect("method and a path that parsed before make a request");
    let headers = out.headers_mut();
    *headers = parts.headers;
    let original_host = headers.get(header::HOST).cloned();
    forwardable(headers, &state.admin_token);
    if let Some(up) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, up);
    }
    if original_host.is_none()
        && let Ok(v) = HeaderValue::from_str(&format!("localhost:{port}"))
    {
        headers.insert(header::HOST, v);
    }
    set_forwarded(headers, peer, original_host);

    let mut resp = match sender.try_send_request(out).await {
        Ok(r) => r,
        // An idle connection the app closed meanwhile, the request not sent: once more on
        // a new one.
        Err(mut e) if reused && e.message().is_some() => {
            let Some(out) = e.take_message() else {
                return bad_gateway(html, name, port, e.error());
            };
            sender = match open_app(state, name, port, html).await {
                Ok(s) => s,
                Err(page) => return page,
            };
            match sender.send_request(out).await {
                Ok(r) => r,
                Err(e) => return bad_gateway(html, name, port, &e),
            }
        }
        Err(e) => return bad_gateway(html, name, port, e.error()),
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return bad_gateway(html, name, port, &"the app switched protocols unasked");
        };
        let app_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(client), Ok(app)) = (client_upgrade.await, app_upgrade.await) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(app)).await;
        });
        let (mut parts, _) = resp.into_parts();
        answer_headers(&mut parts.headers, origin);
        return Response::from_parts(parts, Body::empty());
    }
    if let Some(key) = key {
        state.apps.give_back(key, sender);
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    answer_headers(&mut parts.headers, origin);
    Response::from_parts(parts, Body::new(body))
}

/// What of an app's answer headers reach the client: never a `Set-Cookie` for Burrow's own
/// cookie (an app must not sign a visitor in or out, or plant a token); on the API's origin
/// the answer is sandboxed into an opaque origin.
fn answer_headers(headers: &mut HeaderMap, origin: Origin) {
    let kept: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !sets_burrow_cookie(v.as_bytes()))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
    if origin == Origin::Api {
        headers.append(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PATH_CSP),
        );
    }
}

/// Whether a `Set-Cookie` value names Burrow's cookie (`burrow_token`, any case, any
/// `__Host-`/`__Secure-` prefix, spaces around the name ignored as browsers do).
fn sets_burrow_cookie(v: &[u8]) -> bool {
    let v = String::from_utf8_lossy(v);
    let name = v
        .split(['=', ';'])
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let name = name
        .strip_prefix("__host-")
        .or_else(|| name.strip_prefix("__secure-"))
        .unwrap_or(&name);
    name == TOKEN_PARAM
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` + `Upgrade: …`).
fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// What of a client's request headers may reach the sandbox: no hop-by-hop headers, and
/// none of Burrow's credentials (its bearer token, its cookie).
fn forwardable(headers: &mut HeaderMap, admin_token: &str) {
    strip_hop_by_hop(headers);
    let burrow_bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .is_some_and(|t| t.starts_with(burrow_macaroon::PREFIX) || t == admin_token);
    if burrow_bearer {
        headers.remove(header::AUTHORIZATION);
    }
    let cookies: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split('=').next() != Some(TOKEN_PARAM))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !cookies.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cookies.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

fn set_forwarded(headers: &mut HeaderMap, peer: Option<std::net::IpAddr>, host: Option<HeaderValue>) {
    if let Some(ip) = peer {
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert("x-forwarded-for", v);
        }
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    match host {
        Some(h) => headers.insert("x-forwarded-host", h),
        None => headers.remove("x-forwarded-host"),
    };
}

// ----- WebSocket relay ---------------------------------------------------------------

/// `GET /v1/sandboxes/{name}/proxy/{port}`: a WebSocket carrying one TCP connection.
pub(super) async fn relay_ws(
    State(state): State<AppState>,
    Path((name, port)): Path<(String, String)>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let port = port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("port '{port}' must be a number between 1 and 65535"),
        )
    })?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("GET …/proxy/{port} needs a WebSocket upgrade ({e})"),
        )
    })?;
    // Connect before upgrading, so a missing sandbox or a closed port is a plain status.
    let tunnel = state.mgr.connect(&name, port).await.map_err(|e| match e {
        CoreError::NotListening { .. } => {
            ApiError::new(StatusCode::BAD_GATEWAY, "not_listening", e.to_string())
        }
        other => ApiError::from(other),
    })?;
    Ok(ws.on_upgrade(move |socket| relay(socket, tunnel)))
}

/// Binary messages ↔ bytes of the tunnel. An empty binary message is EOF of its sender's
/// direction; a close (or the tunnel failing) ends both.
async fn relay(socket: WebSocket, tunnel: Tunnel) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut t_rd, mut t_wr) = tokio::io::split(tunnel);
    let client_to_sandbox = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let data: Bytes = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::from(t.as_str().to_owned()),
                Message::Close(_) => break,
                _ => continue,
            };
            let res = if data.is_empty() {
                t_wr.shutdown().await
            } else {
                t_wr.write_all(&data).await
            };
            if res.is_err() {
                break;
            }
        }
    };
    let sandbox_to_client = async {
        let mut buf = vec![0u8; RELAY_CHUNK];
        let end = loop {
            match t_rd.read(&mut buf).await {
                Ok(0) => {
                    if ws_tx.send(Message::Binary(Bytes::new())).await.is_err() {
                        return;
                    }
                    // The client may still send; it closes when done.
                    std::future::pending::<()>().await;
                }
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => break e.to_string(),
            }
        };
        let reason: String = end.chars().take(120).collect();
        let _ = ws_tx
            .send(Message::Close(Some(CloseFrame {
                code: close_code::ERROR,
                reason: reason.into(),
            })))
            .await;
    };
    tokio::select! {
        () = client_to_sandbox => {}
        () = sandbox_to_client => {}
    }
}

// ----- error pages -------------------------------------------------------------------

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// A page a browser shows well and a terminal reads well.
fn page(status: StatusCode, title: &str, text: &str, html: bool) -> Response {
    let (ct, body) = if html {
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        (
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
                 <body><h1>{t}</h1><pre>{b}</pre><p><small>burrowd</small></p></body></html>\n",
                t = esc(title),
                b = esc(text)
            ),
        )
    } else {
        ("text/plain; charset=utf-8", format!("{title}\n\n{text}\n"))
    };
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An ingress failure of the core as a page: 404 unknown sandbox, 502 nothing listening,
/// 503 a sandbox that cannot serve (failed, stopped, agent trouble).
fn core_page(html: bool, name: &str, e: CoreError) -> Response {
    match &e {
        CoreError::NotFound { .. } => page(
            StatusCode::NOT_FOUND,
            "No such sandbox",
            &format!("There is no sandbox named '{name}' on this burrowd."),
            html,
        ),
        CoreError::NotListening { port, .. } => page(
            StatusCode::BAD_GATEWAY,
            "Nothing is listening",
            &format!(
                "Nothing listens on port {port} in sandbox '{name}' (tried port {port}: connection refused).\n\n\
                 Ingress sends HTTP to the http_port of the sandbox's first service that declares one, \
                 else to port {default}. Run your web app as a service on that port, e.g.:\n\n  \
                 burrow service add {name} web --http-port {default} -- python3 -m http.server {default}\n\n\
                 or check the service that should listen there: burrow service ls {name}",
                default = burrow_core::connect::DEFAULT_HTTP_PORT,
            ),
            html,
        ),
        CoreError::Unavailable(_) | CoreError::Agent { .. } | CoreError::IllegalTransition { .. } => page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sandbox unavailable",
            &burrow_core::error::chain(&e),
            html,
        ),
        _ => {
            let api = ApiError::from(e);
            page(api.status, "Ingress error", &api.message, html)
        }
    }
}

fn bad_gateway(html: bool, name: &str, port: u16, e: &dyn std::fmt::Display) -> Response {
    page(
        StatusCode::BAD_GATEWAY,
        "Bad gateway",
        &format!("The app on port {port} in sandbox '{name}' did not answer with valid HTTP/1.1: {e}"),
        html,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str, uri: &str) -> Request {
        Request::builder()
            .uri(uri)
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn host_routing() {
        let h = |host| host_sandbox(&req(host, "/"), "localhost");
        assert_eq!(h("dev.localhost:7440").as_deref(), Some("dev"));
        assert_eq!(h("DEV.LocalHost").as_deref(), Some("dev"));
        assert_eq!(h("dev.localhost.").as_deref(), Some("dev"));
        assert_eq!(h("localhost:7440"), None);
        assert_eq!(h("a.b.localhost"), None);
        assert_eq!(h("127.0.0.1:7440"), None);
        assert_eq!(h("bad_name.localhost"), None);
        assert_eq!(
            host_sandbox(&req("x.burrow.example", "/"), "burrow.example").as_deref(),
            Some("x")
        );
    }

    #[test]
    fn paths_and_tokens() {
        let p = |u: &str| ingress_path(&u.parse().unwrap());
        assert_eq!(p("/v1/sandboxes/dev/http"), Some(("dev".into(), "/".into())));
        assert_eq!(p("/v1/sandboxes/dev/http/"), Some(("dev".into(), "/".into())));
        assert_eq!(
            p("/v1/sandboxes/dev/http/a/b%20c?x=1&burrow_token=t&y"),
            Some(("dev".into(), "/a/b%20c?x=1&y".into()))
        );
        assert_eq!(p("/v1/sandboxes/dev/httpx"), None);
        assert_eq!(p("/v1/sandboxes/dev/exec"), None);
        assert_eq!(
            token_param(Some("a=1&burrow_token=bm1_x%2Dy")).as_deref(),
            Some("bm1_x-y")
        );
        assert_eq!(token_param(Some("burrow_tokens=1")), None);
        assert_eq!(strip_token_param("burrow_token=x"), "");
    }

    #[test]
    fn apps_cannot_set_burrows_cookie() {
        let mut h = HeaderMap::new();
        for c in [
            "burrow_token=bm1_evil; Path=/",
            "  Burrow_Token =x; Domain=localhost",
            "__Host-burrow_token=x",
            "session=abc; HttpOnly",
            "burrow_tokens=fine",
        ] {
            h.append(header::SET_COOKIE, HeaderValue::from_str(c).unwrap());
        }
        answer_headers(&mut h, Origin::SandboxHost);
        let left: Vec<_> = h
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["session=abc; HttpOnly", "burrow_tokens=fine"]);
        assert!(h.get(header::CONTENT_SECURITY_POLICY).is_none());
        answer_headers(&mut h, Origin::Api);
        let csp = h.get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
        assert!(
            csp.starts_with("sandbox ") && !csp.contains("allow-same-origin"),
            "{csp}"
        );
    }

    #[test]
    fn credentials_and_hop_headers_stay_home() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer bm1_abc"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; burrow_token=bm1_abc; b=2"),
        );
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        forwardable(&mut h, "admin");
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
        for gone in ["connection", "x-private", "transfer-encoding"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(h.get("x-app").unwrap(), "kept");
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpwdw=="),
        );
        forwardable(&mut h, "admin");
        assert!(
            h.get(header::AUTHORIZATION).is_some(),
            "the app's own credentials pass"
        );
    }
}
