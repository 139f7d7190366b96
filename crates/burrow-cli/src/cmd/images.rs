//! `burrow images`.

use burrow_api::ImageList;
use burrow_client::paths;

use crate::app::App;
use crate::cli::{ImagesArgs, ImagesCommand};
use crate::output::{self, print};

pub async fn run(app: &App, a: ImagesArgs) -> anyhow::Result<u8> {
    match a.command.unwrap_or(ImagesCommand::Ls) {
        ImagesCommand::Ls => ls(app).await,
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
