//! Routes of the REST API (`shared/api.md`), one module per resource.

mod auth;
pub mod checkpoints;
pub mod error;
mod events;
mod exec;
mod extract;
mod files;
mod ingress;
pub mod mcp;
mod network;
pub mod routes;
mod sandboxes;
mod services;
mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
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
    /// `POST /mcp`: the MCP server over Streamable HTTP.
    pub mcp: Arc<mcp::McpEndpoint>,
    /// Idle connections to apps in sandboxes, reused by ingress.
    pub apps: Arc<AppConnections>,
}

pub use auth::{ACTIONS, Rule};
pub use exec::{DEFAULT_EXEC_BUFFER_BUDGET_MB, ExecBudget};
pub use ingress::AppConnections;
pub use routes::{ROUTES, Route, Verb};

/// Largest JSON request body accepted.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// The routes of [`ROUTES`], before middleware and state.
fn table_router() -> Router<AppState> {
    ROUTES.iter().fold(Router::new(), |router, row| {
        router.route(row.path, row.method_router())
    })
}

/// The API router for one transport.
pub fn router(state: AppState, transport: Transport) -> Router {
    table_router()
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        // Routed before these layers run: the token middleware sees the matched route.
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
