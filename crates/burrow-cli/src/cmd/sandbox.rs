//! Sandbox lifecycle: create, ls, info, rm, start/stop/restart/sleep/wake.

use std::fmt::Write as _;

use burrow_api::{CreateSandbox, ForkSource, Sandbox, SandboxList, SandboxName};
use burrow_client::{ClientError, Method, paths};
use serde_json::{Value, json};

use crate::app::App;
use crate::cli::{CreateArgs, LsArgs, RmArgs};
use crate::output::{self, print};

pub async fn create(app: &App, a: CreateArgs) -> anyhow::Result<u8> {
    let from = a.from.as_deref().map(parse_from).transpose()?;
    let req = CreateSandbox {
        name: a.name,
        image: a.image,
        engine: a.engine.map(Into::into),
        from,
        cpus: a.cpus,
        memory_mb: a.memory,
        disk_gb: a.disk,
        env: a.env.into_iter().collect(),
        labels: a.labels.into_iter().collect(),
        idle_timeout_s: a.idle_timeout,
        cold_after_s: a.cold_after,
        url_auth: a.url_auth.map(Into::into),
        restart: a.restart.map(Into::into),
        ..Default::default()
    };
    let v = app.call(Method::POST, paths::SANDBOXES, Some(&req)).await?;
    app.emit(v, |s: Sandbox| {
        print(&format!(
            "{}: {} ({}, {})\n",
            s.name,
            s.status,
            s.engine.as_str(),
            s.image
        ))
    })?;
    Ok(0)
}

/// `SB` or `SB:vN`.
fn parse_from(s: &str) -> anyhow::Result<ForkSource> {
    let (sb, cp) = match s.split_once(':') {
        Some((sb, cp)) => (sb, Some(cp)),
        None => (s, None),
    };
    let sandbox = SandboxName::parse(sb).map_err(|e| anyhow::anyhow!("--from {s}: {e}"))?;
    if let Some(cp) = cp {
        burrow_api::CheckpointId::parse(cp).map_err(|e| anyhow::anyhow!("--from {s}: {e}"))?;
    }
    Ok(ForkSource {
        sandbox,
        checkpoint: cp.map(str::to_owned),
        memory: false,
    })
}

pub async fn ls(app: &App, a: LsArgs) -> anyhow::Result<u8> {
    // Follow cursors so `ls` shows everything; in JSON mode the pages are merged into one list.
    let mut all: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = paths::list_sandboxes(a.prefix.as_deref(), &a.labels, None, cursor.as_deref());
        let mut page = app.get(&path).await?;
        let items = match page.get_mut("sandboxes").map(Value::take) {
            Some(Value::Array(items)) => items,
            _ => anyhow::bail!("unexpected response from burrowd: no 'sandboxes' list"),
        };
        let progressed = !items.is_empty();
        all.extend(items);
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(c) if progressed && Some(c) != cursor.as_deref() => cursor = Some(c.to_owned()),
            _ => break,
        }
    }
    let v = json!({ "sandboxes": all, "next_cursor": null });
    app.emit(v, |list: SandboxList| {
        let rows: Vec<Vec<String>> = list
            .sandboxes
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.status.to_string(),
                    s.engine.as_str().to_owned(),
                    s.image.clone(),
                    output::age(&s.created_at),
                ]
            })
            .collect();
        print(&output::table(
            &["NAME", "STATUS", "ENGINE", "IMAGE", "CREATED"],
            &rows,
        ))
    })?;
    Ok(0)
}

pub async fn info(app: &App, name: &str) -> anyhow::Result<u8> {
    let v = app.get(&paths::sandbox(name)).await?;
    // The pool its disk lives in (best effort: a narrowed token may not see it).
    let pool = match app.json {
        true => None,
        false => app
            .get(paths::VERSION)
            .await
            .ok()
            .and_then(|v| serde_json::from_value::<burrow_api::VersionInfo>(v).ok())
            .and_then(|v| v.pool_space),
    };
    app.emit(v, |s: Sandbox| {
        let mut text = render_info(&s);
        if let Some(sp) = &pool {
            let _ = writeln!(text, "{:<14}{}", "Pool:", super::version::pool_use(sp));
        }
        print(&text)
    })?;
    Ok(0)
}

fn render_info(s: &Sandbox) -> String {
    let mut o = String::new();
    let mut kv = |k: &str, v: &str| {
        let _ = writeln!(o, "{:<14}{v}", format!("{k}:"));
    };
    kv("Name", &s.name);
    kv("ID", &s.id);
    match &s.sleep {
        Some(mode) => kv("Status", &format!("{} ({mode})", s.status.as_str())),
        None => kv("Status", s.status.as_str()),
    }
    if let Some(r) = &s.failure_reason {
        kv("Failure", r);
    }
    if let Some(n) = &s.notice {
        kv("Notice", n);
    }
    if let Some(u) = &s.usage {
        kv(
            "In use",
            &format!(
                "{} memory, {} processes{}{}{}",
                output::size(u.memory_bytes),
                u.pids,
                match u.pids_limit {
                    Some(max) => format!(" (limit {max})"),
                    None => String::new(),
                },
                match u.disk_bytes {
                    Some(b) => format!(
                        ", {} of {} GiB disk (data its checkpoints hold counts too)",
                        output::size(b),
                        s.config.disk_gb
                    ),
                    None => String::new(),
                },
                if u.oom_kills > 0 {
                    format!(", {} OOM kills", u.oom_kills)
                } else {
                    String::new()
                }
            ),
        );
    }
    match &s.engine_detail {
        Some(d) => kv("Engine", &format!("{} ({d})", s.engine.as_str())),
        None => kv("Engine", s.engine.as_str()),
    }
    kv("Image", &s.image);
    if let Some(p) = &s.parent {
        let from = match &p.checkpoint {
            Some(cp) => format!("{}:{cp}", p.sandbox),
            None => p.sandbox.to_string(),
        };
        kv("Forked from", &from);
    }
    kv("URL", &s.url);
    kv(
        "Created",
        &format!("{} ({})", s.created_at, output::age(&s.created_at)),
    );
    kv("Updated", &s.updated_at);
    kv(
        "Last active",
        &format!("{} ({})", s.last_active_at, output::age(&s.last_active_at)),
    );
    let c = &s.config;
    kv("CPUs", &c.cpus.to_string());
    kv("Memory", &format!("{} MiB", c.memory_mb));
    kv("Disk", &format!("{} GiB", c.disk_gb));
    kv("PIDs", &c.pids.to_string());
    kv(
        "Idle timeout",
        &format!("{} s (cold after {} s asleep)", c.idle_timeout_s, c.cold_after_s),
    );
    kv(
        "URL auth",
        if c.url_auth == burrow_api::UrlAuth::Public {
            "public"
        } else {
            "private"
        },
    );
    kv("Restart", c.restart.as_str());
    let pairs = |m: &std::collections::BTreeMap<String, String>| {
        if m.is_empty() {
            "-".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    kv("Labels", &pairs(&s.labels));
    kv("Env", &pairs(&s.env));
    o
}

pub async fn rm(app: &App, a: RmArgs) -> anyhow::Result<u8> {
    let mut deleted = Vec::new();
    let mut failed = 0;
    for name in &a.names {
        match app.client.delete_sandbox(name).await {
            Ok(()) => {
                if !app.json {
                    print(&format!("{name}\n"))?;
                }
                deleted.push(name.clone());
            }
            Err(ClientError::Api { status: 404, .. }) if a.force => {}
            // Nothing else will work either.
            Err(e @ ClientError::Connect { .. }) => return Err(e.into()),
            Err(e) => {
                eprintln!("error: {name}: {e}");
                failed += 1;
            }
        }
    }
    if app.json {
        // DELETE answers 204 with no body; say what was deleted instead.
        output::print_json(&json!({ "deleted": deleted }))?;
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

pub async fn sleep(app: &App, name: &str, cold: bool) -> anyhow::Result<u8> {
    let mode = if cold { "cold" } else { "warm" };
    let path = format!("{}?mode={mode}", paths::sandbox_action(name, "sleep"));
    let v = app.call::<()>(Method::POST, &path, None).await?;
    app.emit(v, |s: Sandbox| {
        // The server says how it slept (a VM's "warm" sleep saves its memory to disk).
        let how = s.sleep.as_deref().unwrap_or(mode);
        print(&format!("{}: {} ({how})\n", s.name, s.status))
    })?;
    Ok(0)
}

pub async fn action(app: &App, name: &str, action: &str) -> anyhow::Result<u8> {
    let v = app
        .call::<()>(Method::POST, &paths::sandbox_action(name, action), None)
        .await?;
    app.emit(v, |s: Sandbox| print(&format!("{}: {}\n", s.name, s.status)))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::decode;

    #[test]
    fn fork_sources() {
        let f = parse_from("dev:v3").unwrap();
        assert_eq!(f.sandbox.as_str(), "dev");
        assert_eq!(f.checkpoint.as_deref(), Some("v3"));
        assert_eq!(parse_from("dev").unwrap().checkpoint, None);
        assert!(parse_from("dev:3").is_err());
        assert!(parse_from("Dev").is_err());
    }

    #[test]
    fn info_renders() {
        let s: Sandbox = decode(json!({
            "id": "sb-1", "name": "dev", "status": "running", "engine": "container", "image": "base",
            "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
            "last_active_at": "2025-01-01T00:00:00Z", "url": "http://dev.localhost:7440/",
            "config": {"cpus": 1.0, "memory_mb": 512, "disk_gb": 10, "pids": 1024, "idle_timeout_s": 60,
                       "url_auth": "private"},
            "env": {"A": "1"}, "labels": {}
        }))
        .unwrap();
        let out = render_info(&s);
        assert!(out.contains("Status:       running"), "{out}");
        assert!(out.contains("Env:          A=1"), "{out}");
    }
}
