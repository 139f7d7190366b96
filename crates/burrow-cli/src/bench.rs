//! `burrow bench`: the project's performance benchmark (design.md, "Performance targets").
//!
//! Placeholder: the measurements are still to be written.

use clap::Args;

use crate::app::App;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn run(_app: &App, _args: BenchArgs) -> anyhow::Result<u8> {
    anyhow::bail!("burrow bench is not implemented yet")
}
