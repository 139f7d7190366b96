//! `burrow images`.

use burrow_api::ImageList;
use burrow_client::paths;

use crate::app::App;
use crate::cli::{ImagesArgs, ImagesCommand};
use crate::output::{self, print};

pub async fn run(app: &App, a: ImagesArgs) -> anyhow::Result<u8> {
    if let Some(name) = &a.wait {
        wait(app, name).await?;
    }
    match a.command.unwrap_or(ImagesCommand::Ls) {
        ImagesCommand::Ls => ls(app).await,
        ImagesCommand::Create { name, from } => super::checkpoints::create_image(app, &name, &from).await,
        ImagesCommand::Rm { name } => super::checkpoints::delete_image(app, &name).await,
        ImagesCommand::Prune => {
            let v = app
                .call(
                    burrow_client::Method::POST,
                    "/v1/images/prune",
                    None::<&serde_json::Value>,
                )
                .await?;
            app.emit(v, |r: burrow_api::PruneResult| {
                print(&format!(
                    "removed {} cached build layer{} ({})\n",
                    r.layers,
                    if r.layers == 1 { "" } else { "s" },
                    output::size(r.bytes)
                ))
            })?;
            Ok(0)
        }
        ImagesCommand::Build { name, file, context } => build(app, &name, file, &context).await,
        ImagesCommand::Import { archive, name } => import(app, &archive, name).await,
        ImagesCommand::Pull { reference, name } => {
            let body = serde_json::json!({ "reference": reference, "name": name });
            let v = app
                .call(burrow_client::Method::POST, "/v1/images/pull", Some(&body))
                .await?;
            app.emit(v, |i: burrow_api::Image| {
                print(&format!("image {} pulled: {}\n", i.name, i.source))
            })?;
            Ok(0)
        }
    }
}

async fn ls(app: &App) -> anyhow::Result<u8> {
    let v = app.get(paths::IMAGES).await?;
    app.emit(v, |list: ImageList| {
        let rows: Vec<Vec<String>> = list
            .images
            .iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    i.status.clone(),
                    output::size(i.size_bytes),
                    output::age(&i.created_at),
                ]
            })
            .collect();
        print(&output::table(&["NAME", "STATUS", "SIZE", "CREATED"], &rows))
    })?;
    Ok(0)
}

/// Polls until `name` is ready. The daemon builds `base` in the background on first start.
async fn wait(app: &App, name: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1800);
    let mut last = String::new();
    loop {
        let list: ImageList = crate::app::decode(app.get(paths::IMAGES).await?)?;
        match list.images.iter().find(|i| i.name == name) {
            None => anyhow::bail!("image '{name}' does not exist"),
            Some(i) if i.status == "ready" => return Ok(()),
            Some(i) if i.status == "failed" => {
                anyhow::bail!(
                    "image '{name}' failed to build: {}",
                    i.message.clone().unwrap_or_default()
                )
            }
            Some(i) => {
                let msg = i.message.clone().unwrap_or_else(|| i.status.clone());
                if msg != last && !app.json {
                    eprintln!("{name}: {msg}");
                    last = msg;
                }
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "image '{name}' is still not ready after 30 minutes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Where the CLI puts the Burrowfile inside the context tar it sends.
const BURROWFILE_IN_CONTEXT: &str = ".burrow-build/Burrowfile";

async fn build(
    app: &App,
    name: &str,
    file: Option<std::path::PathBuf>,
    context: &std::path::Path,
) -> anyhow::Result<u8> {
    use anyhow::Context;
    let file = file.unwrap_or_else(|| context.join("Burrowfile"));
    let text = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    anyhow::ensure!(
        context.is_dir(),
        "build context {} is not a directory",
        context.display()
    );
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", context)
        .with_context(|| format!("packing {}", context.display()))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, BURROWFILE_IN_CONTEXT, text.as_slice())?;
    let body = tar.into_inner()?;
    let path = format!(
        "/v1/images/build?name={}&file={}",
        burrow_client::paths::encode(name),
        burrow_client::paths::encode(BURROWFILE_IN_CONTEXT)
    );
    post_tar(app, &path, body, "built").await
}

/// POSTs a tar body and prints the image the daemon answers with.
async fn post_tar(app: &App, path: &str, body: Vec<u8>, verb: &str) -> anyhow::Result<u8> {
    let resp = app
        .client
        .request_bytes(
            burrow_client::Method::POST,
            path,
            Some("application/x-tar"),
            body.into(),
        )
        .await?;
    let v: serde_json::Value = serde_json::from_slice(resp.body())?;
    app.emit(v, |i: burrow_api::Image| {
        print(&format!("image {} {verb}: {}\n", i.name, i.source))
    })?;
    Ok(0)
}

async fn import(app: &App, archive: &std::path::Path, name: Option<String>) -> anyhow::Result<u8> {
    use anyhow::Context;
    let name = match name {
        Some(n) => n,
        None => {
            let stem = archive.file_name().and_then(|s| s.to_str()).unwrap_or("image");
            let stem = stem.split('.').next().unwrap_or(stem).to_ascii_lowercase();
            stem.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        }
    };
    let body = std::fs::read(archive).with_context(|| format!("reading {}", archive.display()))?;
    let path = format!("/v1/images/import?name={}", burrow_client::paths::encode(&name));
    post_tar(app, &path, body, "imported").await
}
