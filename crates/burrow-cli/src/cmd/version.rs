//! `burrow version`: this client's version and the daemon's.

use burrow_api::VersionInfo;
use burrow_client::paths;
use serde_json::json;

use crate::app::{App, decode};
use crate::output::{self, print};

pub async fn run(app: &App) -> anyhow::Result<u8> {
    let client = burrow_api::VERSION;
    if !app.json {
        // The client half is useful even when the daemon is down, so print it first.
        print(&format!("Client: {client}\n"))?;
    }
    let server = app.get(paths::VERSION).await?;
    if app.json {
        output::print_json(&json!({ "client": { "version": client }, "server": server }))?;
        return Ok(0);
    }
    let v: VersionInfo = decode(server)?;
    let engines: Vec<String> = v
        .engines
        .iter()
        .map(|e| {
            let state = if e.available { "available" } else { "unavailable" };
            match &e.detail {
                Some(d) => format!("{} ({state}: {d})", e.kind.as_str()),
                None => format!("{} ({state})", e.kind.as_str()),
            }
        })
        .collect();
    print(&format!(
        "Server: {}\n  API:            {}\n  Agent protocol: {}\n  Engines:        {}\n  Default engine: {}\n  Pool:           {}\n  /proc view:     {}\n",
        v.version,
        v.api,
        v.agent_protocol,
        engines.join(", "),
        v.default_engine.as_str(),
        v.pool,
        if v.lxcfs {
            "own limits (lxcfs)"
        } else {
            "host's (no lxcfs)"
        }
    ))?;
    Ok(0)
}
