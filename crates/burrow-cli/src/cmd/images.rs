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
