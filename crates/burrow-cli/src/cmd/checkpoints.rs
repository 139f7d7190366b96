//! `burrow checkpoint`, `checkpoints`, `restore`, `fork`, and `images create` (templates).

use burrow_api::{
    Checkpoint, CheckpointList, CreateCheckpoint, CreateImage, CreateSandbox, Image, RestoreResult, Sandbox,
    SandboxName,
};
use burrow_client::{Method, paths};

use crate::app::App;
use crate::output::{self, print};

fn checkpoints_path(name: &str) -> String {
    format!("{}/checkpoints", paths::sandbox(name))
}

pub async fn create(app: &App, name: &str, comment: Option<String>, memory: bool) -> anyhow::Result<u8> {
    let body = CreateCheckpoint {
        comment,
        memory: memory.then_some(true),
    };
    let v = app
        .call(Method::POST, &checkpoints_path(name), Some(&body))
        .await?;
    app.emit(v, |c: Checkpoint| {
        let what = if c.memory {
            " (disk, memory and devices)"
        } else {
            ""
        };
        print(&format!("{name}: checkpoint {} created{what}\n", c.id))
    })?;
    Ok(0)
}

pub async fn list(app: &App, name: &str) -> anyhow::Result<u8> {
    let v = app.get(&checkpoints_path(name)).await?;
    app.emit(v, |l: CheckpointList| {
        let rows: Vec<Vec<String>> = l
            .checkpoints
            .iter()
            .map(|c| {
                vec![
                    c.id.clone(),
                    output::age(&c.created_at),
                    output::size(c.size_bytes),
                    c.source.clone(),
                    c.comment.clone(),
                ]
            })
            .collect();
        print(&output::table(
            &["ID", "CREATED", "SIZE", "SOURCE", "COMMENT"],
            &rows,
        ))
    })?;
    Ok(0)
}

pub async fn restore(app: &App, name: &str, id: &str) -> anyhow::Result<u8> {
    let path = format!("{}/{}/restore", checkpoints_path(name), paths::encode(id));
    let v = app.call::<()>(Method::POST, &path, None).await?;
    app.emit(v, |r: RestoreResult| {
        print(&format!(
            "{name}: restored {}; the replaced state is kept as {}\n",
            r.restored, r.backup
        ))
    })?;
    Ok(0)
}

pub async fn delete(app: &App, name: &str, id: &str) -> anyhow::Result<u8> {
    let path = format!("{}/{}", checkpoints_path(name), paths::encode(id));
    app.call::<()>(Method::DELETE, &path, None).await?;
    if app.json {
        output::print_json(&serde_json::json!({"deleted": id}))?;
    }
    Ok(0)
}

/// `SRC[:vN]` → (sandbox, checkpoint).
pub fn parse_source(s: &str) -> anyhow::Result<burrow_api::ForkSource> {
    let (sb, cp) = match s.split_once(':') {
        Some((sb, cp)) => (sb, Some(cp)),
        None => (s, None),
    };
    let sandbox = SandboxName::parse(sb).map_err(|e| anyhow::anyhow!("{s}: {e}"))?;
    if let Some(cp) = cp {
        burrow_api::CheckpointId::parse(cp).map_err(|e| anyhow::anyhow!("{s}: {e}"))?;
    }
    Ok(burrow_api::ForkSource {
        sandbox,
        checkpoint: cp.map(str::to_owned),
        memory: false,
    })
}

pub async fn fork(app: &App, src: &str, new: SandboxName, memory: bool) -> anyhow::Result<u8> {
    let req = CreateSandbox {
        name: new,
        from: Some(burrow_api::ForkSource {
            memory,
            ..parse_source(src)?
        }),
        ..Default::default()
    };
    let v = app.call(Method::POST, paths::SANDBOXES, Some(&req)).await?;
    app.emit(v, |s: Sandbox| {
        print(&format!("{}: {} (forked from {src})\n", s.name, s.status))
    })?;
    Ok(0)
}

pub async fn create_image(app: &App, name: &str, from: &str) -> anyhow::Result<u8> {
    let req = CreateImage {
        name: name.to_owned(),
        from: parse_source(from)?,
    };
    let v = app.call(Method::POST, paths::IMAGES, Some(&req)).await?;
    app.emit(v, |i: Image| {
        print(&format!("image {} created from {}\n", i.name, i.source))
    })?;
    Ok(0)
}

pub async fn delete_image(app: &App, name: &str) -> anyhow::Result<u8> {
    app.call::<()>(
        Method::DELETE,
        &format!("{}/{}", paths::IMAGES, paths::encode(name)),
        None,
    )
    .await?;
    if app.json {
        output::print_json(&serde_json::json!({"deleted": name}))?;
    }
    Ok(0)
}
