//! Who may do what. The unix socket is root-only by file mode and needs no token. On TCP
//! every API request carries a macaroon in `Authorization: Bearer bm1_…` (never a cookie: the
//! ingress sign-in cookie authenticates a sandbox's web URL and nothing else): the admin
//! token is the root macaroon; tokens made by `POST /v1/tokens` or attenuated offline carry
//! caveats on sandboxes, actions and expiry. A token that does not parse or verify gets 401;
//! one whose caveat does not hold gets 403 naming the caveat. `/healthz` is open on both.
//!
//! `read` (a sandbox's record, events, service definitions, policy; and copying it by a fork
//! or an image) is implied only by `exec` and `files`, which can read everything in it anyway.
//! `http` is a sandbox's web URL and nothing else; `tunnel` is the raw TCP relay.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use burrow_macaroon::{Caveat, Caveats, Macaroon};

use super::{ApiError, AppState, Transport};

/// Every action a token's `actions` caveat may name.
pub const ACTIONS: &[&str] = &[
    "read",
    "create",
    "delete",
    "config",
    "lifecycle",
    "exec",
    "files",
    "checkpoints",
    "services",
    "policy",
    "secrets",
    "images",
    "http",
    "tunnel",
];

/// Actions that imply `read` on the same sandbox: they can read everything in it anyway.
const READ_IMPLIED_BY: &[&str] = &["exec", "files"];

/// What a request does, for checking a token's caveats.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// The sandbox it is about, if exactly one.
    pub sandbox: Option<&'a str>,
    /// One of [`ACTIONS`], or `None` for what any valid token may do (version, minting a
    /// narrower token of one's own).
    pub action: Option<&'static str>,
    /// Other actions that also allow this request (e.g. `services` for reading service
    /// definitions); a refusal names `action`.
    pub also: &'static [&'static str],
}

impl<'a> Access<'a> {
    pub fn new(sandbox: Option<&'a str>, action: &'static str) -> Self {
        Self {
            sandbox,
            action: Some(action),
            also: &[],
        }
    }
}

/// The caveats a request's token carries (none for the unix socket and the admin token),
/// put into request extensions by [`require_token`] for handlers that mint tokens.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The verified macaroon, `None` for the unix socket.
    pub macaroon: Option<Macaroon>,
    /// For a listing: the sandboxes (names or ids) the token is limited to, if it is; the
    /// list shows only those instead of refusing the request.
    pub only_sandboxes: Option<Vec<String>>,
}

impl Caller {
    /// Whether a listing may show this sandbox.
    pub fn may_see(&self, name: &str, id: &str) -> bool {
        self.only_sandboxes
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|a| a == name || a == id))
    }
}

/// Classifies a request by method and path.
pub fn access_for<'a>(method: &Method, path: &'a str) -> Access<'a> {
    let is_get = method == Method::GET;
    let any_token = Access {
        sandbox: None,
        action: None,
        also: &[],
    };
    let segs: Vec<&'a str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["healthz"] | ["openapi.yaml"] | ["v1", "version"] | ["v1", "tokens"] => any_token,
        ["v1", "sandboxes"] if is_get => Access::new(None, "read"),
        // Creating checks `read` on a fork's source too (in the handler: the body names it).
        ["v1", "sandboxes"] => Access::new(None, "create"),
        ["v1", "sandboxes", name] => Access::new(
            Some(name),
            match *method {
                Method::GET => "read",
                Method::DELETE => "delete",
                _ => "config",
            },
        ),
        ["v1", "sandboxes", name, rest @ ..] => {
            let (action, also): (&'static str, &'static [&'static str]) = match rest[0] {
                "start" | "stop" | "restart" | "sleep" | "wake" => ("lifecycle", &[]),
                "exec" | "sessions" => ("exec", &[]),
                "files" => ("files", &[]),
                "events" => ("read", &[]),
                "checkpoints" => ("checkpoints", &[]),
                // Definitions carry env (passwords): `read`, or `services` which manages them.
                "services" if is_get && rest.len() <= 2 => ("read", &["services"]),
                "services" => ("services", &[]),
                "policy" if is_get => ("read", &["policy"]),
                "policy" => ("policy", &[]),
                "secrets" => ("secrets", &[]),
                "http" => ("http", &[]),
                "proxy" => ("tunnel", &[]),
                _ => ("config", &[]),
            };
            Access {
                sandbox: Some(name),
                action: Some(action),
                also,
            }
        }
        // Image names are what `create` picks from.
        ["v1", "images"] if is_get => Access {
            sandbox: None,
            action: Some("read"),
            also: &["create", "images"],
        },
        // Making an image from a sandbox checks `read` on it too (in the handler).
        ["v1", "images", ..] => Access::new(None, "images"),
        ["v1", "secrets", ..] => Access::new(None, "secrets"),
        _ => Access::new(None, "read"),
    }
}

/// Whether holding `held` allows a request needing `access`.
fn allows(held: &str, access: &Access<'_>) -> bool {
    let Some(wanted) = access.action else {
        return true;
    };
    held == wanted || access.also.contains(&held) || (wanted == "read" && READ_IMPLIED_BY.contains(&held))
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The bearer token of an API request: `Authorization: Bearer …` only. The `burrow_token`
/// cookie is not an API credential (see [`ingress_credential`]).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The credential of a request to a sandbox's own host (`{name}.{base_domain}`): the bearer
/// header, else the `burrow_token` cookie a sign-in link set on that host (an app's own
/// `Authorization: Basic …` does not hide the cookie).
pub fn ingress_credential(headers: &HeaderMap) -> Option<&str> {
    bearer(headers).or_else(|| {
        headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("burrow_token="))
    })
}

fn verified(state: &AppState, token: Option<&str>) -> Result<(Macaroon, Caveats), ApiError> {
    let token = token.ok_or_else(|| {
        unauthorized("missing bearer token: send 'Authorization: Bearer <token>' (the admin token is in DATA_DIR/admin.token)")
    })?;
    let mac = Macaroon::decode(token).map_err(|e| unauthorized(format!("invalid token: {e}")))?;
    let caveats = mac
        .verify(state.mgr.token_key())
        .map_err(|e| unauthorized(format!("invalid token: {e}")))?;
    Ok((mac, caveats))
}

/// Verifies `token` and checks its caveats against `access`: 401 for a missing, malformed or
/// forged token, 403 naming the caveat that fails.
pub fn authorize(state: &AppState, token: Option<&str>, access: Access<'_>) -> Result<Macaroon, ApiError> {
    let (mac, caveats) = verified(state, token)?;
    check_caveats(state, caveats, access)?;
    Ok(mac)
}

fn check_caveats(state: &AppState, caveats: Caveats, access: Access<'_>) -> Result<(), ApiError> {
    let Some(action) = access.action else {
        // Still refuse an expired token for everything.
        let expiry_only = Caveats(
            caveats
                .0
                .into_iter()
                .filter(|c| matches!(c, Caveat::ExpiresAt(_)))
                .collect(),
        );
        return check(&expiry_only, state, access, None);
    };
    // An actions caveat holds when it lists the action, an alternative, or one implying it;
    // one that does not stays, and its check names it.
    let caveats = Caveats(
        caveats
            .0
            .into_iter()
            .filter(|c| match c {
                Caveat::Actions(list) => !list.iter().any(|a| allows(a, &access)),
                _ => true,
            })
            .collect(),
    );
    check(&caveats, state, access, Some(action))
}

impl Caller {
    /// Checks a further access of the same request (e.g. `read` on a fork's source). The unix
    /// socket (no macaroon) may do anything.
    pub fn check(&self, state: &AppState, access: Access<'_>) -> Result<(), ApiError> {
        let Some(mac) = &self.macaroon else {
            return Ok(());
        };
        let caveats = mac
            .verify(state.mgr.token_key())
            .map_err(|e| unauthorized(format!("invalid token: {e}")))?;
        check_caveats(state, caveats, access)
    }
}

/// Authorizes a listing of sandboxes: a token limited to some sandboxes may list, and sees
/// only those (the other caveats still apply, `read` among them).
pub fn authorize_listing(state: &AppState, token: Option<&str>) -> Result<Caller, ApiError> {
    let (mac, caveats) = verified(state, token)?;
    let read = Access::new(None, "read");
    let mut only: Option<Vec<String>> = None;
    let mut rest = Vec::new();
    for c in caveats.0 {
        match c {
            // Every sandboxes caveat must hold: the visible set is their intersection.
            Caveat::Sandboxes(list) => {
                only = Some(match only {
                    None => list,
                    Some(prev) => prev.into_iter().filter(|s| list.contains(s)).collect(),
                });
            }
            Caveat::Actions(list) if list.iter().any(|a| allows(a, &read)) => {}
            other => rest.push(other),
        }
    }
    check(&Caveats(rest), state, read, Some("read"))?;
    Ok(Caller {
        macaroon: Some(mac),
        only_sandboxes: only,
    })
}

fn check(
    caveats: &Caveats,
    state: &AppState,
    access: Access<'_>,
    action: Option<&str>,
) -> Result<(), ApiError> {
    let id = access.sandbox.and_then(|n| state.mgr.sandbox_id(n));
    let req = burrow_macaroon::Request {
        now: time::OffsetDateTime::now_utc().unix_timestamp(),
        sandbox: access.sandbox.map(|n| (n, id.as_deref().unwrap_or(""))),
        action,
        ..Default::default()
    };
    // The id is borrowed from a local; check before it goes out of scope.
    caveats
        .check(&req)
        .map_err(|d| ApiError::new(StatusCode::FORBIDDEN, "forbidden", d.to_string()).with_caveat(d.caveat))
}

pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let transport = req
        .extensions()
        .get::<Transport>()
        .copied()
        .unwrap_or(Transport::Tcp);
    if transport == Transport::Unix || req.uri().path() == "/healthz" {
        req.extensions_mut().insert(Caller::default());
        return next.run(req).await;
    }
    if req.method() == axum::http::Method::GET && req.uri().path().trim_end_matches('/') == "/v1/sandboxes" {
        return match authorize_listing(&state, bearer(req.headers())) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                next.run(req).await
            }
            Err(e) => e.into_response(),
        };
    }
    if bearer(req.headers()).is_none() && ingress_credential(req.headers()).is_some() {
        return unauthorized(
            "the burrow_token cookie signs in to a sandbox's web URL only; API requests need \
             'Authorization: Bearer <token>'",
        )
        .into_response();
    }
    let access = access_for(req.method(), req.uri().path());
    match authorize(&state, bearer(req.headers()), access) {
        Ok(mac) => {
            req.extensions_mut().insert(Caller {
                macaroon: Some(mac),
                only_sandboxes: None,
            });
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_by_route() {
        let a = |m: Method, p: &'static str| {
            let x = access_for(&m, p);
            (x.sandbox, x.action)
        };
        assert_eq!(a(Method::GET, "/v1/sandboxes"), (None, Some("read")));
        assert_eq!(a(Method::POST, "/v1/sandboxes"), (None, Some("create")));
        assert_eq!(a(Method::GET, "/v1/sandboxes/dev"), (Some("dev"), Some("read")));
        assert_eq!(
            a(Method::DELETE, "/v1/sandboxes/dev"),
            (Some("dev"), Some("delete"))
        );
        assert_eq!(
            a(Method::POST, "/v1/sandboxes/dev/exec"),
            (Some("dev"), Some("exec"))
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/dev/sessions/s-1/attach"),
            (Some("dev"), Some("exec"))
        );
        assert_eq!(
            a(Method::PUT, "/v1/sandboxes/dev/files"),
            (Some("dev"), Some("files"))
        );
        assert_eq!(
            a(Method::POST, "/v1/sandboxes/dev/sleep"),
            (Some("dev"), Some("lifecycle"))
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/dev/services/web/logs"),
            (Some("dev"), Some("services"))
        );
        assert_eq!(
            a(Method::PUT, "/v1/sandboxes/dev/policy/network"),
            (Some("dev"), Some("policy"))
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/dev/http/x"),
            (Some("dev"), Some("http"))
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/dev/proxy/5432"),
            (Some("dev"), Some("tunnel"))
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/dev/services"),
            (Some("dev"), Some("read"))
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/dev/events"),
            (Some("dev"), Some("read"))
        );
        assert_eq!(a(Method::POST, "/v1/secrets"), (None, Some("secrets")));
        assert_eq!(a(Method::POST, "/v1/tokens"), (None, None));
        for (_, action) in [
            a(Method::GET, "/v1/sandboxes/d/proxy/1"),
            a(Method::GET, "/v1/sandboxes/d/events"),
        ] {
            assert!(ACTIONS.contains(&action.unwrap()));
        }
        for (_, action) in [
            a(Method::POST, "/v1/images/build"),
            a(Method::PUT, "/v1/sandboxes/d/secrets/s"),
        ] {
            assert!(ACTIONS.contains(&action.unwrap()));
        }
    }
}

#[cfg(test)]
mod implied {
    use super::*;

    #[test]
    fn what_allows_what() {
        let services_list = access_for(&Method::GET, "/v1/sandboxes/d/services");
        let events = access_for(&Method::GET, "/v1/sandboxes/d/events");
        let record = access_for(&Method::GET, "/v1/sandboxes/d");
        let tunnel = access_for(&Method::GET, "/v1/sandboxes/d/proxy/5432");
        // `http` is the web URL and nothing else.
        for x in [&services_list, &events, &record, &tunnel] {
            assert!(!allows("http", x), "{x:?}");
            assert!(!allows("create", x), "{x:?}");
        }
        assert!(allows(
            "http",
            &access_for(&Method::POST, "/v1/sandboxes/d/http/x")
        ));
        assert!(allows("tunnel", &tunnel));
        assert!(allows("services", &services_list));
        assert!(!allows("services", &events));
        for x in [&services_list, &events, &record] {
            assert!(
                allows("read", x) && allows("exec", x) && allows("files", x),
                "{x:?}"
            );
        }
        assert!(allows("create", &access_for(&Method::GET, "/v1/images")));
    }

    #[test]
    fn api_credentials_are_headers_only() {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            axum::http::HeaderValue::from_static("a=1; burrow_token=bm1_x"),
        );
        assert_eq!(bearer(&h), None);
        assert_eq!(ingress_credential(&h), Some("bm1_x"));
        h.insert(
            axum::http::header::AUTHORIZATION,
            axum::http::HeaderValue::from_static("Bearer bm1_y"),
        );
        assert_eq!(bearer(&h), Some("bm1_y"));
        assert_eq!(ingress_credential(&h), Some("bm1_y"));
    }
}
