//! The route table: every route of the API, once, with its method, path, handler and the
//! access rule a caller must satisfy. The router (`super::router`) is built from it, and the
//! token middleware (`auth::require_token`) looks up the rule of the row the router matched
//! (by its path pattern, never by re-parsing the request's path). A request no row declares
//! reaches no handler: it is answered 404/405 (`auth::require_token`), whoever sends it.
//!
//! Add a route here, with its rule, and to the OpenAPI document (a test compares them).
//! Requests routed by their `Host` header (`{name}.{base_domain}`, the sandbox's own web URL)
//! are not routes: `ingress::before_auth` takes them before routing and checks `http` on that
//! sandbox itself.

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, any, on};

use super::auth::Rule;
use super::{
    AppState, checkpoints, events, exec, files, ingress, mcp, network, sandboxes, services, sessions,
};

/// The HTTP method a row answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Also answers `HEAD` (with the same handler, so with the same rule).
    Get,
    Post,
    Put,
    Patch,
    Delete,
    /// Every method: the reverse proxy to a sandbox's app passes each one on.
    Any,
}

impl Verb {
    /// Lowercase, as the OpenAPI document spells it (`any` for [`Verb::Any`]).
    pub const fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Put => "put",
            Verb::Patch => "patch",
            Verb::Delete => "delete",
            Verb::Any => "any",
        }
    }

    /// Whether a request with `method` reaches this row's handler.
    pub fn matches(self, method: &Method) -> bool {
        match self {
            Verb::Get => method == Method::GET || method == Method::HEAD,
            Verb::Post => method == Method::POST,
            Verb::Put => method == Method::PUT,
            Verb::Patch => method == Method::PATCH,
            Verb::Delete => method == Method::DELETE,
            Verb::Any => true,
        }
    }

    fn filter(self) -> Option<MethodFilter> {
        match self {
            Verb::Get => Some(MethodFilter::GET),
            Verb::Post => Some(MethodFilter::POST),
            Verb::Put => Some(MethodFilter::PUT),
            Verb::Patch => Some(MethodFilter::PATCH),
            Verb::Delete => Some(MethodFilter::DELETE),
            Verb::Any => None,
        }
    }
}

/// Makes a row's handler into a method router for its verb.
type Handler = fn(Verb) -> MethodRouter<AppState>;

/// One route: what the router serves and what the caller must hold.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub verb: Verb,
    /// The axum path pattern (`{name}` is the sandbox a [`Rule::Sandbox`] is about).
    pub path: &'static str,
    pub rule: Rule,
    handler: Handler,
}

impl Route {
    /// The handler, as a method router answering this row's verb only.
    pub(super) fn method_router(&self) -> MethodRouter<AppState> {
        (self.handler)(self.verb)
    }
}

/// A row: `VERB "path", rule, handler[, unlimited_body]`.
macro_rules! route {
    ($verb:ident $path:literal, $rule:expr, $handler:path) => {
        Route {
            verb: Verb::$verb,
            path: $path,
            rule: $rule,
            handler: |verb| match verb.filter() {
                Some(filter) => on(filter, $handler),
                None => any($handler),
            },
        }
    };
    // Upload bodies stream to the sandbox's disk: no size limit here (the disk has one).
    ($verb:ident $path:literal, $rule:expr, $handler:path, unlimited_body) => {
        Route {
            verb: Verb::$verb,
            path: $path,
            rule: $rule,
            handler: |verb| match verb.filter() {
                Some(filter) => on(filter, $handler).layer(DefaultBodyLimit::disable()),
                None => any($handler).layer(DefaultBodyLimit::disable()),
            },
        }
    };
}

const ANY_TOKEN: Rule = Rule::AnyToken;
const fn global(action: &'static str) -> Rule {
    Rule::Global { action, also: &[] }
}
const fn sandbox(action: &'static str) -> Rule {
    Rule::Sandbox { action, also: &[] }
}

/// Every route of the API.
pub static ROUTES: &[Route] = &[
    route!(Get "/healthz", Rule::Open, sandboxes::healthz),
    route!(Get "/openapi.yaml", ANY_TOKEN, sandboxes::openapi),
    route!(Get "/v1/version", ANY_TOKEN, sandboxes::version),
    // Minting a narrower token of one's own: it can only add caveats.
    route!(Post "/v1/tokens", ANY_TOKEN, network::create_token),
    // MCP over Streamable HTTP. Each tool call is a REST request with the caller's token, so
    // the rule of that request's row decides it (`mcp`).
    route!(Post "/mcp", ANY_TOKEN, mcp::serve),
    // Image names are what `create` picks from.
    route!(Get "/v1/images", Rule::Global { action: "read", also: &["create", "images"] }, sandboxes::list_images),
    // Making an image from a sandbox checks `read` on it too (in the handler: the body names it).
    route!(Post "/v1/images", global("images"), checkpoints::create_image),
    route!(Post "/v1/images/build", global("images"), checkpoints::build_image),
    route!(Post "/v1/images/import", global("images"), checkpoints::import_image),
    route!(Post "/v1/images/pull", global("images"), checkpoints::pull_image),
    route!(Post "/v1/images/prune", global("images"), checkpoints::prune_images),
    route!(Delete "/v1/images/{name}", global("images"), checkpoints::delete_image),
    route!(Get "/v1/sandboxes", Rule::Listing, sandboxes::list),
    // Creating checks `read` on a fork's source too (in the handler: the body names it).
    route!(Post "/v1/sandboxes", global("create"), sandboxes::create),
    route!(Get "/v1/sandboxes/{name}", sandbox("read"), sandboxes::get_one),
    route!(Patch "/v1/sandboxes/{name}", sandbox("config"), sandboxes::patch),
    route!(Delete "/v1/sandboxes/{name}", sandbox("delete"), sandboxes::delete),
    route!(Post "/v1/sandboxes/{name}/start", sandbox("lifecycle"), sandboxes::start),
    route!(Post "/v1/sandboxes/{name}/stop", sandbox("lifecycle"), sandboxes::stop),
    route!(Post "/v1/sandboxes/{name}/restart", sandbox("lifecycle"), sandboxes::restart),
    route!(Post "/v1/sandboxes/{name}/sleep", sandbox("lifecycle"), sandboxes::sleep),
    route!(Post "/v1/sandboxes/{name}/wake", sandbox("lifecycle"), sandboxes::wake),
    route!(Post "/v1/sandboxes/{name}/exec", sandbox("exec"), exec::exec_once),
    route!(Get "/v1/sandboxes/{name}/exec", sandbox("exec"), exec::exec_ws),
    route!(Get "/v1/sandboxes/{name}/sessions", sandbox("exec"), sessions::list),
    route!(Get "/v1/sandboxes/{name}/sessions/{id}/attach", sandbox("exec"), sessions::attach),
    route!(Post "/v1/sandboxes/{name}/sessions/{id}/kill", sandbox("exec"), sessions::kill),
    route!(Get "/v1/sandboxes/{name}/files", sandbox("files"), files::read, unlimited_body),
    route!(Put "/v1/sandboxes/{name}/files", sandbox("files"), files::write, unlimited_body),
    route!(Delete "/v1/sandboxes/{name}/files", sandbox("files"), files::remove, unlimited_body),
    route!(Get "/v1/sandboxes/{name}/files/list", sandbox("files"), files::list),
    route!(Post "/v1/sandboxes/{name}/files/rename", sandbox("files"), files::rename),
    route!(Get "/v1/sandboxes/{name}/files/archive", sandbox("files"), files::read_archive, unlimited_body),
    route!(Put "/v1/sandboxes/{name}/files/archive", sandbox("files"), files::write_archive, unlimited_body),
    route!(Get "/v1/sandboxes/{name}/events", sandbox("read"), events::events),
    route!(Get "/v1/sandboxes/{name}/checkpoints", sandbox("checkpoints"), checkpoints::list),
    route!(Post "/v1/sandboxes/{name}/checkpoints", sandbox("checkpoints"), checkpoints::create),
    route!(Get "/v1/sandboxes/{name}/checkpoints/{id}", sandbox("checkpoints"), checkpoints::get_one),
    route!(Delete "/v1/sandboxes/{name}/checkpoints/{id}", sandbox("checkpoints"), checkpoints::delete),
    route!(Post "/v1/sandboxes/{name}/checkpoints/{id}/restore", sandbox("checkpoints"), checkpoints::restore),
    // Definitions carry env (passwords): `read`, or `services` which manages them.
    route!(Get "/v1/sandboxes/{name}/services", SERVICE_DEFINITIONS, services::list),
    route!(Get "/v1/sandboxes/{name}/services/{svc}", SERVICE_DEFINITIONS, services::get_one),
    route!(Put "/v1/sandboxes/{name}/services/{svc}", sandbox("services"), services::put),
    route!(Delete "/v1/sandboxes/{name}/services/{svc}", sandbox("services"), services::delete),
    route!(Get "/v1/sandboxes/{name}/services/{svc}/logs", sandbox("services"), services::logs),
    route!(Post "/v1/sandboxes/{name}/services/{svc}/start", sandbox("services"), services::start),
    route!(Post "/v1/sandboxes/{name}/services/{svc}/stop", sandbox("services"), services::stop),
    route!(Get "/v1/sandboxes/{name}/policy/network", Rule::Sandbox { action: "read", also: &["policy"] }, network::get_policy),
    route!(Put "/v1/sandboxes/{name}/policy/network", sandbox("policy"), network::put_policy),
    route!(Put "/v1/sandboxes/{name}/secrets/{secret}", sandbox("secrets"), network::attach_secret),
    route!(Delete "/v1/sandboxes/{name}/secrets/{secret}", sandbox("secrets"), network::detach_secret),
    route!(Get "/v1/secrets", global("secrets"), network::list_secrets),
    route!(Post "/v1/secrets", global("secrets"), network::create_secret),
    route!(Get "/v1/secrets/{name}", global("secrets"), network::get_secret),
    route!(Delete "/v1/secrets/{name}", global("secrets"), network::delete_secret),
    // The sandbox's web app by path. A `public` sandbox's URL needs no token: those requests
    // are served by `ingress::before_auth` before they reach the router.
    route!(Any "/v1/sandboxes/{name}/http", sandbox("http"), ingress::by_path),
    route!(Any "/v1/sandboxes/{name}/http/", sandbox("http"), ingress::by_path),
    route!(Any "/v1/sandboxes/{name}/http/{*path}", sandbox("http"), ingress::by_path),
    route!(Get "/v1/sandboxes/{name}/proxy/{port}", sandbox("tunnel"), ingress::relay_ws),
];

const SERVICE_DEFINITIONS: Rule = Rule::Sandbox {
    action: "read",
    also: &["services"],
};

/// The rule of the row for `method` on the route the router matched (its path pattern);
/// `None` when no row declares it.
pub fn rule_for(method: &Method, pattern: &str) -> Option<Rule> {
    ROUTES
        .iter()
        .find(|r| r.path == pattern && r.verb.matches(method))
        .map(|r| r.rule)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::api::ACTIONS;

    /// Routes the OpenAPI document leaves out, and why.
    const UNDOCUMENTED: &[(&str, &str)] = &[
        // The app's root; the document's `{path}` parameter says `/http` and `/http/` reach `/`.
        ("any", "/v1/sandboxes/{name}/http"),
        ("any", "/v1/sandboxes/{name}/http/"),
    ];

    /// The methods the OpenAPI document lists for a reverse-proxied [`Verb::Any`] route (it
    /// passes on every method; these are the ones worth documenting).
    const DOCUMENTED_ANY: &[&str] = &["get", "post", "put", "patch", "delete"];

    #[test]
    fn every_rule_names_known_actions_and_a_sandbox_when_scoped() {
        for r in ROUTES {
            let what = format!("{} {}", r.verb.as_str(), r.path);
            match r.rule {
                Rule::Global { action, also } | Rule::Sandbox { action, also } => {
                    assert!(ACTIONS.contains(&action), "{what}: unknown action {action}");
                    for a in also {
                        assert!(ACTIONS.contains(a), "{what}: unknown action {a}");
                        assert_ne!(*a, action, "{what}");
                    }
                }
                Rule::Open | Rule::AnyToken | Rule::Listing => {}
            }
            // A sandbox's rule applies to the sandbox in its path, and only to it; a route
            // under a sandbox has that sandbox's rule (an `AnyToken` there would skip the
            // sandboxes caveat).
            let scoped = r.path.starts_with("/v1/sandboxes/{name}");
            assert_eq!(matches!(r.rule, Rule::Sandbox { .. }), scoped, "{what}");
            assert_eq!(
                rule_for(&Method::OPTIONS, r.path).is_some(),
                r.verb == Verb::Any,
                "{what}"
            );
        }
        // Only the health check is open; only the version, the spec, minting and MCP (whose
        // tool calls are checked one by one) take any token.
        let open: Vec<_> = ROUTES
            .iter()
            .filter(|r| r.rule == Rule::Open)
            .map(|r| r.path)
            .collect();
        assert_eq!(open, ["/healthz"]);
        let any: Vec<_> = ROUTES
            .iter()
            .filter(|r| r.rule == Rule::AnyToken)
            .map(|r| r.path)
            .collect();
        assert_eq!(any, ["/openapi.yaml", "/v1/version", "/v1/tokens", "/mcp"]);
    }

    #[test]
    fn each_method_and_path_has_one_row() {
        let mut seen = BTreeSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.verb.as_str(), r.path)),
                "{} {} twice",
                r.verb.as_str(),
                r.path
            );
        }
        // The router merges the rows of one path; overlapping methods would panic here.
        let _ = crate::api::table_router();
    }

    #[test]
    fn the_openapi_document_lists_every_route_and_no_other() {
        let doc: serde_yaml::Value = serde_yaml::from_str(burrow_api::OPENAPI_YAML).unwrap();
        let mut documented = BTreeSet::new();
        // Every operation has an operationId (SDK generators and fuzzers name things by it),
        // each a different one.
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_mapping().unwrap() {
            for (method, op) in item.as_mapping().unwrap() {
                let m = method.as_str().unwrap();
                if ["get", "post", "put", "patch", "delete", "head", "options"].contains(&m) {
                    let path = path.as_str().unwrap();
                    let id = op["operationId"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{m} {path} has no operationId"));
                    assert!(
                        id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                            && id.chars().all(|c| c.is_ascii_alphanumeric()),
                        "{m} {path}: operationId {id:?} is not camelCase"
                    );
                    assert!(ids.insert(id.to_owned()), "operationId {id} twice");
                    documented.insert((m.to_owned(), path.to_owned()));
                }
            }
        }
        let mut served = BTreeSet::new();
        for r in ROUTES {
            if UNDOCUMENTED.contains(&(r.verb.as_str(), r.path)) {
                continue;
            }
            let path = r.path.replace("{*", "{");
            let verbs = match r.verb {
                Verb::Any => DOCUMENTED_ANY.to_vec(),
                v => vec![v.as_str()],
            };
            for v in verbs {
                served.insert((v.to_owned(), path.clone()));
            }
        }
        let missing: Vec<_> = served.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&served).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "routes not in openapi.yaml: {missing:?}; in openapi.yaml but not routes: {extra:?}"
        );
        for (m, p) in UNDOCUMENTED {
            assert!(
                ROUTES.iter().any(|r| r.verb.as_str() == *m && r.path == *p),
                "the exception {m} {p} is not a route"
            );
        }
    }
}
