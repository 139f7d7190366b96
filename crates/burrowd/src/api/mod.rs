//! Routes of the REST API (`shared/api.md`), one module per resource.

mod auth;
pub mod checkpoints;
pub mod error;
mod events;
mod exec;
mod extract;
mod files;
mod ingress;
mod network;
mod sandboxes;
mod services;
mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use burrow_core::Manager;

pub use error::ApiError;

/// Which listener a request came in on; decides whether a token is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct AppState {
    pub mgr: Arc<Manager>,
    pub admin_token: Arc<String>,
    /// Memory for one-shot exec output, shared by every request.
    pub exec_budget: Arc<ExecBudget>,
}

pub use auth::ACTIONS;
pub use exec::{DEFAULT_EXEC_BUFFER_BUDGET_MB, ExecBudget};

/// Largest JSON request body accepted.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// Every (method, path) the router serves. The OpenAPI document must list exactly these
/// (a test checks it), so add a route here and there together.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/openapi.yaml"),
    ("get", "/v1/version"),
    ("get", "/v1/images"),
    ("post", "/v1/images"),
    ("post", "/v1/images/build"),
    ("post", "/v1/images/import"),
    ("post", "/v1/images/pull"),
    ("delete", "/v1/images/{name}"),
    ("post", "/v1/images/prune"),
    ("get", "/v1/sandboxes"),
    ("post", "/v1/sandboxes"),
    ("get", "/v1/sandboxes/{name}"),
    ("patch", "/v1/sandboxes/{name}"),
    ("delete", "/v1/sandboxes/{name}"),
    ("post", "/v1/sandboxes/{name}/start"),
    ("post", "/v1/sandboxes/{name}/stop"),
    ("post", "/v1/sandboxes/{name}/restart"),
    ("post", "/v1/sandboxes/{name}/sleep"),
    ("post", "/v1/sandboxes/{name}/wake"),
    ("post", "/v1/sandboxes/{name}/exec"),
    ("get", "/v1/sandboxes/{name}/exec"),
    ("get", "/v1/sandboxes/{name}/sessions"),
    ("get", "/v1/sandboxes/{name}/sessions/{id}/attach"),
    ("post", "/v1/sandboxes/{name}/sessions/{id}/kill"),
    ("get", "/v1/sandboxes/{name}/files"),
    ("put", "/v1/sandboxes/{name}/files"),
    ("delete", "/v1/sandboxes/{name}/files"),
    ("get", "/v1/sandboxes/{name}/files/list"),
    ("post", "/v1/sandboxes/{name}/files/rename"),
    ("get", "/v1/sandboxes/{name}/files/archive"),
    ("put", "/v1/sandboxes/{name}/files/archive"),
    ("get", "/v1/sandboxes/{name}/events"),
    ("get", "/v1/sandboxes/{name}/checkpoints"),
    ("post", "/v1/sandboxes/{name}/checkpoints"),
    ("get", "/v1/sandboxes/{name}/checkpoints/{id}"),
    ("delete", "/v1/sandboxes/{name}/checkpoints/{id}"),
    ("post", "/v1/sandboxes/{name}/checkpoints/{id}/restore"),
    ("get", "/v1/sandboxes/{name}/services"),
    ("get", "/v1/sandboxes/{name}/services/{svc}"),
    ("put", "/v1/sandboxes/{name}/services/{svc}"),
    ("delete", "/v1/sandboxes/{name}/services/{svc}"),
    ("get", "/v1/sandboxes/{name}/services/{svc}/logs"),
    ("post", "/v1/sandboxes/{name}/services/{svc}/start"),
    ("post", "/v1/sandboxes/{name}/services/{svc}/stop"),
    ("get", "/v1/sandboxes/{name}/http/{path}"),
    ("post", "/v1/sandboxes/{name}/http/{path}"),
    ("put", "/v1/sandboxes/{name}/http/{path}"),
    ("patch", "/v1/sandboxes/{name}/http/{path}"),
    ("delete", "/v1/sandboxes/{name}/http/{path}"),
    ("get", "/v1/sandboxes/{name}/proxy/{port}"),
    ("get", "/v1/sandboxes/{name}/policy/network"),
    ("put", "/v1/sandboxes/{name}/policy/network"),
    ("put", "/v1/sandboxes/{name}/secrets/{secret}"),
    ("delete", "/v1/sandboxes/{name}/secrets/{secret}"),
    ("get", "/v1/secrets"),
    ("post", "/v1/secrets"),
    ("get", "/v1/secrets/{name}"),
    ("delete", "/v1/secrets/{name}"),
    ("post", "/v1/tokens"),
];

/// The API router for one transport.
pub fn router(state: AppState, transport: Transport) -> Router {
    use sandboxes::*;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.yaml", get(openapi))
        .route("/v1/version", get(version))
        .route("/v1/images", get(list_images).post(checkpoints::create_image))
        .route("/v1/sandboxes/{name}/events", get(events::events))
        .route("/v1/images/build", post(checkpoints::build_image))
        .route("/v1/images/import", post(checkpoints::import_image))
        .route("/v1/images/pull", post(checkpoints::pull_image))
        .route("/v1/images/prune", post(checkpoints::prune_images))
        .route(
            "/v1/images/{name}",
            axum::routing::delete(checkpoints::delete_image),
        )
        .route(
            "/v1/sandboxes/{name}/checkpoints",
            get(checkpoints::list).post(checkpoints::create),
        )
        .route(
            "/v1/sandboxes/{name}/checkpoints/{id}",
            get(checkpoints::get_one).delete(checkpoints::delete),
        )
        .route(
            "/v1/sandboxes/{name}/checkpoints/{id}/restore",
            post(checkpoints::restore),
        )
        .route("/v1/sandboxes/{name}/services", get(services::list))
        .route(
            "/v1/sandboxes/{name}/services/{svc}",
            get(services::get_one).put(services::put).delete(services::delete),
        )
        .route("/v1/sandboxes/{name}/services/{svc}/logs", get(services::logs))
        .route("/v1/sandboxes/{name}/services/{svc}/start", post(services::start))
        .route("/v1/sandboxes/{name}/services/{svc}/stop", post(services::stop))
        .route(
            "/v1/sandboxes/{name}/policy/network",
            get(network::get_policy).put(network::put_policy),
        )
        .route(
            "/v1/sandboxes/{name}/secrets/{secret}",
            axum::routing::put(network::attach_secret).delete(network::detach_secret),
        )
        .route(
            "/v1/secrets",
            get(network::list_secrets).post(network::create_secret),
        )
        .route(
            "/v1/secrets/{name}",
            get(network::get_secret).delete(network::delete_secret),
        )
        .route("/v1/tokens", post(network::create_token))
        .route("/v1/sandboxes", get(list).post(create))
        .route("/v1/sandboxes/{name}", get(get_one).patch(patch).delete(delete))
        .route("/v1/sandboxes/{name}/start", post(start))
        .route("/v1/sandboxes/{name}/stop", post(stop))
        .route("/v1/sandboxes/{name}/restart", post(restart))
        .route("/v1/sandboxes/{name}/sleep", post(sleep))
        .route("/v1/sandboxes/{name}/wake", post(wake))
        .route(
            "/v1/sandboxes/{name}/exec",
            post(exec::exec_once).get(exec::exec_ws),
        )
        .route("/v1/sandboxes/{name}/sessions", get(sessions::list))
        .route("/v1/sandboxes/{name}/sessions/{id}/attach", get(sessions::attach))
        .route("/v1/sandboxes/{name}/sessions/{id}/kill", post(sessions::kill))
        // Upload bodies stream to the sandbox's disk: no size limit here (the disk has one).
        .route(
            "/v1/sandboxes/{name}/files",
            get(files::read)
                .put(files::write)
                .delete(files::remove)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/sandboxes/{name}/files/list", get(files::list))
        .route("/v1/sandboxes/{name}/files/rename", post(files::rename))
        .route(
            "/v1/sandboxes/{name}/files/archive",
            get(files::read_archive)
                .put(files::write_archive)
                .layer(DefaultBodyLimit::disable()),
        )
        .merge(ingress::routes())
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        // Large JSON bodies are read within the buffer budget (`extract::ApiJson`).
        .layer(axum::Extension(state.exec_budget.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        // Before the token check: Host-routed and public sandbox URLs need none.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ingress::before_auth,
        ))
        .layer(axum::Extension(transport))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
