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
        match &v.pool_space {
            Some(sp) => format!("{} ({})", v.pool, pool_use(sp)),
            None => v.pool.clone(),
        },
        if v.lxcfs {
            "own limits (lxcfs)"
        } else {
            "host's (no lxcfs)"
        }
    ))?;
    if let Some(p) = &v.prestart {
        print(&format!("  Pre-started:    {}\n", prestart_line(p)))?;
    }
    Ok(0)
}

/// `container/base 6 of 6 ready, vm/base 0 of 1 ready`, or `none yet`.
fn prestart_line(p: &burrow_api::PrestartInfo) -> String {
    if p.pools.is_empty() {
        return "none yet".to_owned();
    }
    p.pools
        .iter()
        .map(|x| {
            format!(
                "{}/{} {} of {} ready",
                x.engine.as_str(),
                x.image,
                x.ready,
                x.target
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `3.1 GiB of 64.0 GiB used (5%), 60.9 GiB free, 3.2 GiB reserve`, and what a full pool means.
pub(crate) fn pool_use(sp: &burrow_api::PoolSpaceInfo) -> String {
    let pct = if sp.size_bytes == 0 {
        0.0
    } else {
        sp.used_bytes as f64 * 100.0 / sp.size_bytes as f64
    };
    let mut s = format!(
        "{} of {} used ({pct:.0}%), {} free, {} reserve",
        output::size(sp.used_bytes),
        output::size(sp.size_bytes),
        output::size(sp.free_bytes),
        output::size(sp.reserve_bytes)
    );
    if sp.free_bytes < sp.reserve_bytes {
        s.push_str("; FULL: create, fork and image builds are refused");
    }
    s
}
