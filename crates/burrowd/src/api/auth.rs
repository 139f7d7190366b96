//! Who may do what. The unix socket is root-only by file mode and needs no token. On TCP
//! every API request carries a macaroon in `Authorization: Bearer bm1_…` (never a cookie: the
//! ingress sign-in cookie authenticates a sandbox's web URL and nothing else): the admin
//! token is the root macaroon; tokens made by `POST /v1/tokens` or attenuated offline carry
//! caveats on sandboxes, actions and expiry. A token that does not parse or verify gets 401;
//! one whose caveat does not hold gets 403 naming the caveat. `/healthz` is open on both.
//!
//! What each route needs is its row's [`Rule`] in the route table (`super::routes`); the
//! middleware looks it up by the route the router matched. A request no row declares is
//! refused (404/405) on both listeners: nothing is allowed by default.
//!
//! `read` (a sandbox's record, events, service definitions, policy; and copying it by a fork
//! or an image) is implied only by `exec` and `files`, which can read everything in it anyway.
//! `http` is a sandbox's web URL and nothing else; `tunnel` is the raw TCP relay.

use axum::RequestExt;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
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

/// What the caller of a route must hold: the access rule of one row of the route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Nothing, on either listener (the health check).
    Open,
    /// Any valid, unexpired token (the version, the spec, minting a narrower token).
    AnyToken,
    /// `action`, or one of `also`, not about one sandbox.
    Global {
        action: &'static str,
        also: &'static [&'static str],
    },
    /// `action`, or one of `also`, on the sandbox the route's `{name}` segment names.
    Sandbox {
        action: &'static str,
        also: &'static [&'static str],
    },
    /// Listing sandboxes: `read`; a token limited to some sandboxes may list and sees only those.
    Listing,
}

impl Rule {
    /// The action a refusal names: `None` when any valid token will do.
    pub fn action(&self) -> Option<&'static str> {
        match self {
            Rule::Open | Rule::AnyToken => None,
            Rule::Listing => Some("read"),
            Rule::Global { action, .. } | Rule::Sandbox { action, .. } => Some(action),
        }
    }

    /// Whether a token whose actions caveat lists `held` may call the route: its action, an
    /// alternative, or one implying it.
    pub fn allowed_by(&self, held: &str) -> bool {
        let also = match self {
            Rule::Global { also, .. } | Rule::Sandbox { also, .. } => also,
            _ => &[][..],
        };
        allows(
            held,
            &Access {
                sandbox: None,
                action: self.action(),
                also,
            },
        )
    }
}

/// What checking a token needs from the daemon (a trait so that the decision can be tested
/// without a `Manager`).
pub trait TokenKeys {
    /// The root key macaroons are verified with.
    fn token_key(&self) -> &[u8];
    /// The id of the sandbox named `name`, if it exists (a sandboxes caveat may name either).
    fn sandbox_id(&self, name: &str) -> Option<String>;
}

impl TokenKeys for burrow_core::Manager {
    fn token_key(&self) -> &[u8] {
        burrow_core::Manager::token_key(self)
    }
    fn sandbox_id(&self, name: &str) -> Option<String> {
        burrow_core::Manager::sandbox_id(self, name)
    }
}

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

fn verified(keys: &dyn TokenKeys, token: Option<&str>) -> Result<(Macaroon, Caveats), ApiError> {
    let token = token.ok_or_else(|| {
        unauthorized("missing bearer token: send 'Authorization: Bearer <token>' (the admin token is in DATA_DIR/admin.token)")
    })?;
    let mac = Macaroon::decode(token).map_err(|e| unauthorized(format!("invalid token: {e}")))?;
    let caveats = mac
        .verify(keys.token_key())
        .map_err(|e| unauthorized(format!("invalid token: {e}")))?;
    Ok((mac, caveats))
}

/// Verifies `token` and checks its caveats against `access`: 401 for a missing, malformed or
/// forged token, 403 naming the caveat that fails.
pub fn authorize(state: &AppState, token: Option<&str>, access: Access<'_>) -> Result<Macaroon, ApiError> {
    authorize_with(&*state.mgr, token, access)
}

fn authorize_with(
    keys: &dyn TokenKeys,
    token: Option<&str>,
    access: Access<'_>,
) -> Result<Macaroon, ApiError> {
    let (mac, caveats) = verified(keys, token)?;
    check_caveats(keys, caveats, access)?;
    Ok(mac)
}

fn check_caveats(keys: &dyn TokenKeys, caveats: Caveats, access: Access<'_>) -> Result<(), ApiError> {
    let Some(action) = access.action else {
        // Still refuse an expired token for everything.
        let expiry_only = Caveats(
            caveats
                .0
                .into_iter()
                .filter(|c| matches!(c, Caveat::ExpiresAt(_)))
                .collect(),
        );
        return check(&expiry_only, keys, access, None);
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
    check(&caveats, keys, access, Some(action))
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
        check_caveats(&*state.mgr, caveats, access)
    }
}

/// Authorizes a listing of sandboxes: a token limited to some sandboxes may list, and sees
/// only those (the other caveats still apply, `read` among them).
fn authorize_listing(keys: &dyn TokenKeys, token: Option<&str>) -> Result<Caller, ApiError> {
    let (mac, caveats) = verified(keys, token)?;
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
    check(&Caveats(rest), keys, read, Some("read"))?;
    Ok(Caller {
        macaroon: Some(mac),
        only_sandboxes: only,
    })
}

fn check(
    caveats: &Caveats,
    keys: &dyn TokenKeys,
    access: Access<'_>,
    action: Option<&str>,
) -> Result<(), ApiError> {
    let id = access.sandbox.and_then(|n| keys.sandbox_id(n));
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

/// The token middleware: authorises a request by the rule of the row the router matched.
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let transport = req
        .extensions()
        .get::<Transport>()
        .copied()
        .unwrap_or(Transport::Tcp);
    let pattern = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let rule = route_rule(req.method(), pattern, req.uri().path());
    let sandbox = match rule {
        Ok(Rule::Sandbox { .. }) => match req.extract_parts::<RawPathParams>().await {
            Ok(params) => params
                .iter()
                .find(|(k, _)| *k == "name")
                .map(|(_, v)| v.to_owned()),
            Err(e) => return refused(&req, e.into_response()),
        },
        _ => None,
    };
    match decide(&*state.mgr, transport, req.headers(), rule, sandbox.as_deref()) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => refused(&req, e.into_response()),
    }
}

/// A refusal answered before the request's body was read. The unread body is still on the
/// connection, so hyper closes it after the answer (when the body had not all arrived yet);
/// the answer says so (`Connection: close`), or a client would send its next request down a
/// connection being closed and lose it.
fn refused(req: &Request, mut response: Response) -> Response {
    let headers = req.headers();
    let has_body = headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    if has_body {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// The rule of the row for `method` on the route the router matched (`pattern`, `None` when
/// it matched none); otherwise the 404 or 405 that answers the request.
fn route_rule(method: &Method, pattern: Option<&str>, path: &str) -> Result<Rule, ApiError> {
    match pattern {
        Some(pattern) => {
            super::routes::rule_for(method, pattern).ok_or_else(|| ApiError::method_not_allowed(method, path))
        }
        None => Err(ApiError::no_route(path)),
    }
}

/// Decides a request from its route's rule (`Err` when no row declares its method and path:
/// the 404 or 405 to answer), the sandbox its `{name}` names (decoded, as its handler sees
/// it) and its credentials: the caller it acts as, or the refusal.
///
/// An undeclared request is refused whoever sends it. On TCP a valid token is checked first,
/// so that without one every path answers alike (401).
fn decide(
    keys: &dyn TokenKeys,
    transport: Transport,
    headers: &HeaderMap,
    rule: Result<Rule, ApiError>,
    sandbox: Option<&str>,
) -> Result<Caller, ApiError> {
    if transport == Transport::Unix {
        return rule.map(|_| Caller::default());
    }
    if matches!(rule, Ok(Rule::Open)) {
        return Ok(Caller::default());
    }
    let token = bearer(headers);
    if token.is_none() && ingress_credential(headers).is_some() {
        return Err(unauthorized(
            "the burrow_token cookie signs in to a sandbox's web URL only; API requests need \
             'Authorization: Bearer <token>'",
        ));
    }
    let rule = match rule {
        Ok(rule) => rule,
        Err(undeclared) => {
            verified(keys, token)?;
            return Err(undeclared);
        }
    };
    let access = match rule {
        Rule::Open => return Ok(Caller::default()),
        Rule::Listing => return authorize_listing(keys, token),
        Rule::AnyToken => Access {
            sandbox: None,
            action: None,
            also: &[],
        },
        Rule::Global { action, also } => Access {
            sandbox: None,
            action: Some(action),
            also,
        },
        Rule::Sandbox { action, also } => Access {
            sandbox: Some(sandbox.ok_or_else(|| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the route's rule is about a sandbox but its path names none",
                )
            })?),
            action: Some(action),
            also,
        },
    };
    let mac = authorize_with(keys, token, access)?;
    Ok(Caller {
        macaroon: Some(mac),
        only_sandboxes: None,
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::api::routes::rule_for;

    const KEY: &[u8] = b"a test root key of thirty-two by";

    struct Keys;

    impl TokenKeys for Keys {
        fn token_key(&self) -> &[u8] {
            KEY
        }
        fn sandbox_id(&self, name: &str) -> Option<String> {
            (name == "dev").then(|| "sb-dev".to_owned())
        }
    }

    fn token(caveats: &[Caveat]) -> HeaderMap {
        let mac = Macaroon::mint(KEY, "t", caveats);
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", mac.encode())).unwrap(),
        );
        h
    }

    fn actions(list: &[&str]) -> Caveat {
        Caveat::Actions(list.iter().map(|a| a.to_string()).collect())
    }

    /// What the middleware decides for `method` on the route `pattern` (`None`: no route
    /// matched) with `headers`; `Ok(true)` when the caller acts with a token's caveats.
    fn decide_for(
        transport: Transport,
        method: Method,
        pattern: Option<&str>,
        sandbox: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<bool, (u16, &'static str)> {
        let rule = route_rule(&method, pattern, "/the/request/path");
        decide(&Keys, transport, headers, rule, sandbox)
            .map(|c| c.macaroon.is_some())
            .map_err(|e| (e.status.as_u16(), e.code))
    }

    /// The rule of some routes, written out independently of the table.
    #[test]
    fn actions_by_route() {
        let a = |m: Method, p: &str| match rule_for(&m, p).unwrap_or_else(|| panic!("{m} {p}")) {
            Rule::Global { action, also } => (false, Some(action), also),
            Rule::Sandbox { action, also } => (true, Some(action), also),
            Rule::Listing => (false, Some("read"), &[][..]),
            Rule::Open | Rule::AnyToken => (false, None, &[][..]),
        };
        let none: &[&str] = &[];
        assert_eq!(a(Method::GET, "/v1/sandboxes"), (false, Some("read"), none));
        assert_eq!(rule_for(&Method::GET, "/v1/sandboxes"), Some(Rule::Listing));
        assert_eq!(a(Method::POST, "/v1/sandboxes"), (false, Some("create"), none));
        assert_eq!(a(Method::GET, "/v1/sandboxes/{name}"), (true, Some("read"), none));
        assert_eq!(
            a(Method::PATCH, "/v1/sandboxes/{name}"),
            (true, Some("config"), none)
        );
        assert_eq!(
            a(Method::DELETE, "/v1/sandboxes/{name}"),
            (true, Some("delete"), none)
        );
        assert_eq!(
            a(Method::POST, "/v1/sandboxes/{name}/exec"),
            (true, Some("exec"), none)
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/{name}/exec"),
            (true, Some("exec"), none)
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/{name}/sessions/{id}/attach"),
            (true, Some("exec"), none)
        );
        assert_eq!(
            a(Method::PUT, "/v1/sandboxes/{name}/files"),
            (true, Some("files"), none)
        );
        assert_eq!(
            a(Method::POST, "/v1/sandboxes/{name}/sleep"),
            (true, Some("lifecycle"), none)
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/{name}/services/{svc}/logs"),
            (true, Some("services"), none)
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/{name}/services"),
            (true, Some("read"), &["services"][..])
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/{name}/services/{svc}"),
            (true, Some("read"), &["services"][..])
        );
        assert_eq!(
            a(Method::PUT, "/v1/sandboxes/{name}/policy/network"),
            (true, Some("policy"), none)
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/{name}/policy/network"),
            (true, Some("read"), &["policy"][..])
        );
        for m in [Method::GET, Method::POST, Method::OPTIONS, Method::HEAD] {
            for p in [
                "/v1/sandboxes/{name}/http",
                "/v1/sandboxes/{name}/http/",
                "/v1/sandboxes/{name}/http/{*path}",
            ] {
                assert_eq!(a(m.clone(), p), (true, Some("http"), none), "{m} {p}");
            }
        }
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/{name}/proxy/{port}"),
            (true, Some("tunnel"), none)
        );
        assert_eq!(
            a(Method::GET, "/v1/sandboxes/{name}/events"),
            (true, Some("read"), none)
        );
        assert_eq!(
            a(Method::GET, "/v1/images"),
            (false, Some("read"), &["create", "images"][..])
        );
        assert_eq!(a(Method::POST, "/v1/images/build"), (false, Some("images"), none));
        assert_eq!(
            a(Method::PUT, "/v1/sandboxes/{name}/secrets/{secret}"),
            (true, Some("secrets"), none)
        );
        assert_eq!(a(Method::POST, "/v1/secrets"), (false, Some("secrets"), none));
        assert_eq!(rule_for(&Method::POST, "/v1/tokens"), Some(Rule::AnyToken));
        assert_eq!(rule_for(&Method::GET, "/v1/version"), Some(Rule::AnyToken));
        assert_eq!(rule_for(&Method::GET, "/healthz"), Some(Rule::Open));
        // HEAD runs the GET handler, so it has the GET rule.
        assert_eq!(
            rule_for(&Method::HEAD, "/v1/sandboxes/{name}"),
            rule_for(&Method::GET, "/v1/sandboxes/{name}")
        );
    }

    #[test]
    fn a_declared_route_is_granted_by_its_action_and_not_without_it() {
        let exec = Some("/v1/sandboxes/{name}/exec");
        let ok = token(&[actions(&["exec"]), Caveat::Sandboxes(vec!["dev".into()])]);
        assert_eq!(
            decide_for(Transport::Tcp, Method::POST, exec, Some("dev"), &ok),
            Ok(true)
        );
        let wrong_action = token(&[actions(&["files", "read", "http"])]);
        assert_eq!(
            decide_for(Transport::Tcp, Method::POST, exec, Some("dev"), &wrong_action),
            Err((403, "forbidden"))
        );
        // The sandbox is the one the route's `{name}` names.
        assert_eq!(
            decide_for(Transport::Tcp, Method::POST, exec, Some("other"), &ok),
            Err((403, "forbidden"))
        );
        assert_eq!(
            decide_for(Transport::Tcp, Method::POST, exec, Some("dev"), &HeaderMap::new()),
            Err((401, "unauthorized"))
        );
        assert_eq!(
            decide_for(
                Transport::Unix,
                Method::POST,
                exec,
                Some("dev"),
                &HeaderMap::new()
            ),
            Ok(false)
        );
        // Open and any-token routes.
        let health = Some("/healthz");
        assert_eq!(
            decide_for(Transport::Tcp, Method::GET, health, None, &HeaderMap::new()),
            Ok(false)
        );
        let version = Some("/v1/version");
        assert_eq!(
            decide_for(Transport::Tcp, Method::GET, version, None, &HeaderMap::new()),
            Err((401, "unauthorized"))
        );
        assert_eq!(
            decide_for(Transport::Tcp, Method::GET, version, None, &wrong_action),
            Ok(true)
        );
    }

    #[test]
    fn a_request_no_row_declares_is_refused_whoever_sends_it() {
        let admin = token(&[]);
        for transport in [Transport::Tcp, Transport::Unix] {
            // No route at all: 404, to the admin token and on the unix socket too.
            assert_eq!(
                decide_for(transport, Method::GET, None, None, &admin),
                Err((404, "route_not_found"))
            );
            // A route, but no row for the method: 405.
            assert_eq!(
                decide_for(transport, Method::PUT, Some("/v1/sandboxes"), None, &admin),
                Err((405, "method_not_allowed"))
            );
            // A route the router matched but the table does not declare (a router built
            // from anything but the table): refused, not granted by some default.
            assert_eq!(
                decide_for(
                    transport,
                    Method::GET,
                    Some("/v1/sandboxes/{name}/undeclared"),
                    Some("dev"),
                    &admin
                ),
                Err((405, "method_not_allowed"))
            );
            // Control: a declared route with the same caller passes.
            assert_eq!(
                decide_for(
                    transport,
                    Method::GET,
                    Some("/v1/sandboxes/{name}"),
                    Some("dev"),
                    &admin
                ),
                Ok(transport == Transport::Tcp)
            );
        }
        // Without a valid token every path answers alike: 401.
        assert_eq!(
            decide_for(Transport::Tcp, Method::GET, None, None, &HeaderMap::new()),
            Err((401, "unauthorized"))
        );
        // A sandbox rule with no sandbox to check is refused too.
        assert_eq!(
            decide_for(
                Transport::Tcp,
                Method::GET,
                Some("/v1/sandboxes/{name}"),
                None,
                &admin
            ),
            Err((500, "internal"))
        );
    }

    #[test]
    fn the_sign_in_cookie_is_not_an_api_credential() {
        let mac = Macaroon::mint(KEY, "t", &[]);
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            HeaderValue::from_str(&format!("burrow_token={}", mac.encode())).unwrap(),
        );
        assert_eq!(
            decide_for(Transport::Tcp, Method::GET, Some("/v1/version"), None, &h),
            Err((401, "unauthorized"))
        );
        // Control: the same token as a bearer header.
        assert_eq!(
            decide_for(
                Transport::Tcp,
                Method::GET,
                Some("/v1/version"),
                None,
                &token(&[])
            ),
            Ok(true)
        );
    }

    /// The access a route's rule asks of a request for sandbox `d`.
    fn access(method: Method, pattern: &str) -> Access<'static> {
        match rule_for(&method, pattern).unwrap() {
            Rule::Sandbox { action, also } => Access {
                sandbox: Some("d"),
                action: Some(action),
                also,
            },
            Rule::Global { action, also } => Access {
                sandbox: None,
                action: Some(action),
                also,
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_allows_what() {
        let services_list = access(Method::GET, "/v1/sandboxes/{name}/services");
        let events = access(Method::GET, "/v1/sandboxes/{name}/events");
        let record = access(Method::GET, "/v1/sandboxes/{name}");
        let tunnel = access(Method::GET, "/v1/sandboxes/{name}/proxy/{port}");
        // `http` is the web URL and nothing else.
        for x in [&services_list, &events, &record, &tunnel] {
            assert!(!allows("http", x), "{x:?}");
            assert!(!allows("create", x), "{x:?}");
        }
        assert!(allows(
            "http",
            &access(Method::POST, "/v1/sandboxes/{name}/http/{*path}")
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
        assert!(allows("create", &access(Method::GET, "/v1/images")));
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
