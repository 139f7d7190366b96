//! Routes of the REST API (`shared/api.md`), one module per resource.

mod auth;
pub mod error;
mod exec;
mod extract;
mod sandboxes;

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
}

/// Largest JSON request body accepted.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// Every (method, path) the router serves. The OpenAPI document must list exactly these
/// (a test checks it), so add a route here and there together.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/openapi.yaml"),
    ("get", "/v1/version"),
    ("get", "/v1/images"),
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
];

/// The API router for one transport.
pub fn router(state: AppState, transport: Transport) -> Router {
    use sandboxes::*;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.yaml", get(openapi))
        .route("/v1/version", get(version))
        .route("/v1/images", get(list_images))
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
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(axum::Extension(transport))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
