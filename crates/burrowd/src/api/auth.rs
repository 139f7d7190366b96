//! Who may do what. The unix socket is root-only by file mode and needs no token. On TCP
//! every request carries a macaroon (`Authorization: Bearer bm1_…`): the admin token is the
//! root macaroon; tokens made by `POST /v1/tokens` or attenuated offline carry caveats on
//! sandboxes, actions and expiry. A token that does not parse or verify gets 401; one whose
//! caveat does not hold gets 403 naming the caveat. `/healthz` is open on both.

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
];

/// What a request does, for checking a token's caveats.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// The sandbox it is about, if exactly one.
    pub sandbox: Option<&'a str>,
    /// One of [`ACTIONS`], or `None` for what any valid token may do (version, minting a
    /// narrower token of one's own).
    pub action: Option<&'static str>,
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
    let read = |sandbox| Access {
        sandbox,
        action: Some("read"),
    };
    let is_get = method == Method::GET;
    let segs: Vec<&'a str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["healthz"] | ["openapi.yaml"] | ["v1", "version"] | ["v1", "tokens"] => Access {
            sandbox: None,
            action: None,
        },
        ["v1", "sandboxes"] if is_get => read(None),
        ["v1", "sandboxes"] => Access {
            sandbox: None,
            action: Some("create"),
        },
        ["v1", "sandboxes", name] => Access {
            sandbox: Some(name),
            action: Some(match *method {
                Method::GET => "read",
                Method::DELETE => "delete",
                _ => "config",
            }),
        },
        ["v1", "sandboxes", name, rest @ ..] => {
            let action = match rest[0] {
                "start" | "stop" | "restart" | "sleep" | "wake" => "lifecycle",
                "exec" | "sessions" => "exec",
                "files" => "files",
                "events" => "read",
                "checkpoints" => "checkpoints",
                "services" if is_get && rest.len() <= 2 => "read",
                "services" => "services",
                "policy" if is_get => "read",
                "policy" => "policy",
                "secrets" => "secrets",
                "http" | "proxy" => "http",
                _ => "config",
            };
            Access {
                sandbox: Some(name),
                action: Some(action),
            }
        }
        ["v1", "images", ..] if is_get => read(None),
        ["v1", "images", ..] => Access {
            sandbox: None,
            action: Some("images"),
        },
        ["v1", "secrets", ..] => Access {
            sandbox: None,
            action: Some("secrets"),
        },
        _ => read(None),
    }
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The bearer token of a request: `Authorization: Bearer …`, else the `burrow_token` cookie
/// (what a browser sends to a private sandbox URL).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("Bearer ").map(str::trim);
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("burrow_token="))
}

/// Verifies `token` and checks its caveats against `access`: 401 for a missing, malformed or
/// forged token, 403 naming the caveat that fails.
pub fn authorize(state: &AppState, token: Option<&str>, access: Access<'_>) -> Result<Macaroon, ApiError> {
    let token = token.ok_or_else(|| {
        unauthorized("missing bearer token: send 'Authorization: Bearer <token>' (the admin token is in DATA_DIR/admin.token)")
    })?;
    let mac = Macaroon::decode(token).map_err(|e| unauthorized(format!("invalid token: {e}")))?;
    let caveats = mac
        .verify(state.mgr.token_key())
        .map_err(|e| unauthorized(format!("invalid token: {e}")))?;
    let Some(action) = access.action else {
        // Still refuse an expired token for everything.
        let expiry_only = Caveats(
            caveats
                .0
                .into_iter()
                .filter(|c| matches!(c, Caveat::ExpiresAt(_)))
                .collect(),
        );
        check(&expiry_only, state, access, None)?;
        return Ok(mac);
    };
    // Reading a sandbox one may act on needs no separate `read` action.
    let caveats = if action == "read" {
        Caveats(
            caveats
                .0
                .into_iter()
                .filter(|c| !matches!(c, Caveat::Actions(_)))
                .collect(),
        )
    } else {
        caveats
    };
    check(&caveats, state, access, Some(action))?;
    Ok(mac)
}

/// Authorizes a listing of sandboxes: a token limited to some sandboxes may list, and sees
/// only those (the other caveats still apply).
pub fn authorize_listing(state: &AppState, token: Option<&str>) -> Result<Caller, ApiError> {
    let token =
        token.ok_or_else(|| unauthorized("missing bearer token: send 'Authorization: Bearer <token>'"))?;
    let mac = Macaroon::decode(token).map_err(|e| unauthorized(format!("invalid token: {e}")))?;
    let caveats = mac
        .verify(state.mgr.token_key())
        .map_err(|e| unauthorized(format!("invalid token: {e}")))?;
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
            Caveat::Actions(_) => {}
            other => rest.push(other),
        }
    }
    check(
        &Caveats(rest),
        state,
        Access {
            sandbox: None,
            action: Some("read"),
        },
        Some("read"),
    )?;
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
        assert_eq!(a(Method::POST, "/v1/secrets"), (None, Some("secrets")));
        assert_eq!(a(Method::POST, "/v1/tokens"), (None, None));
        for (_, action) in [
            a(Method::POST, "/v1/images/build"),
            a(Method::PUT, "/v1/sandboxes/d/secrets/s"),
        ] {
            assert!(ACTIONS.contains(&action.unwrap()));
        }
    }
}
