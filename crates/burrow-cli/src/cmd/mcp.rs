//! `burrow mcp`: the MCP server (`burrow-mcp`) on stdin/stdout. stdout carries the protocol
//! only; nothing else may print there.

use anyhow::Context as _;

use crate::app::App;

pub async fn run(app: &App) -> anyhow::Result<u8> {
    burrow_mcp::serve_stdio(app.client.clone())
        .await
        .context("serving MCP on stdio")?;
    Ok(0)
}
