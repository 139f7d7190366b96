//! Burrow's MCP server (Model Context Protocol): tools that let an agent create sandboxes,
//! run commands in them, read and write their files, checkpoint, restore and fork them.
//!
//! The tools live once, in [`tools`], and talk to burrowd through [`burrow_client::Client`],
//! exactly as the CLI does. Two transports serve them:
//! - [`serve_stdio`]: `burrow mcp`, for Claude Code, Cursor and other local clients; one
//!   client from the CLI's connection settings.
//! - [`http_service`]: Streamable HTTP, mounted by burrowd at `POST /mcp`; each tool call
//!   uses a client that carries the caller's own bearer token, so the REST API's token check
//!   (scoped tokens included) decides every call, with the same rules and messages.
//!
//! This crate never decides access itself and never reaches the manager: an API refusal is
//! a tool error (`isError: true`) with the API's message, never a protocol error.

#![forbid(unsafe_code)]

mod tools;

use std::sync::Arc;

use burrow_client::Client;
use rmcp::ServiceExt;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

pub use rmcp::model::Extensions;
pub use tools::{BurrowTools, DEFAULT_MAX_OUTPUT_BYTES};

/// The Streamable HTTP service of [`http_service`].
pub type HttpService = StreamableHttpService<BurrowTools, NeverSessionManager>;

/// Where a tool call gets its client of burrowd from.
pub trait ClientSource: Send + Sync + 'static {
    /// The client for one call. `extensions` are the MCP request's: over Streamable HTTP
    /// they hold the HTTP request's `http::request::Parts` (headers, axum extensions).
    /// `Err` is the message of the tool error the call answers.
    fn client(&self, extensions: &Extensions) -> Result<Client, String>;
}

/// One fixed client for every call (stdio: the CLI's settings).
impl ClientSource for Client {
    fn client(&self, _: &Extensions) -> Result<Client, String> {
        Ok(self.clone())
    }
}

/// Serves the tools on stdin/stdout until the client closes them.
pub async fn serve_stdio(client: Client) -> Result<(), std::io::Error> {
    let server = BurrowTools::new(Arc::new(client));
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(std::io::Error::other)?;
    running.waiting().await.map_err(std::io::Error::other)?;
    Ok(())
}

/// The Streamable HTTP service (a tower service) burrowd mounts at `/mcp`.
///
/// Stateless: no MCP session lives in the daemon (a background command's state is its exec
/// session, which burrowd keeps anyway), each POST is answered on its own, as plain JSON when
/// the tool sends no progress. No `Host` allow-list: that defence is for servers without
/// credentials; here every request needs a bearer token, which a page on a rebound name lacks.
pub fn http_service(source: Arc<dyn ClientSource>) -> HttpService {
    // Built once: the tool table and its JSON schemas are cloned, not rebuilt, per request.
    let server = BurrowTools::new(source);
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .disable_allowed_hosts();
    StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    )
}
