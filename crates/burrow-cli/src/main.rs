//! `burrow`: the command-line client of burrowd. A thin layer over `burrow-client`: parse the
//! command line, call the API, render tables or the server's JSON. It never talks to anything but
//! the daemon.

mod app;
mod bench;
mod cli;
mod cmd;
mod output;
mod term;

use std::process::ExitCode;

use clap::Parser;

use crate::app::App;
use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // Usage errors exit 2 inside `parse`.
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    // A thread may still be blocked reading stdin; do not wait for it.
    rt.shutdown_background();
    term::restore();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", output::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; `Ok` carries the process exit status.
async fn run(cli: Cli) -> anyhow::Result<u8> {
    let app = App::from_env(cli.json)?;
    match cli.command {
        Command::Create(a) => cmd::sandbox::create(&app, a).await,
        Command::Ls(a) => cmd::sandbox::ls(&app, a).await,
        Command::Info(a) => cmd::sandbox::info(&app, &a.name).await,
        Command::Rm(a) => cmd::sandbox::rm(&app, a).await,
        Command::Start(a) => cmd::sandbox::action(&app, &a.name, "start").await,
        Command::Stop(a) => cmd::sandbox::action(&app, &a.name, "stop").await,
        Command::Restart(a) => cmd::sandbox::action(&app, &a.name, "restart").await,
        Command::Sleep(a) => cmd::sandbox::sleep(&app, &a.name, a.cold).await,
        Command::Wake(a) => cmd::sandbox::action(&app, &a.name, "wake").await,
        Command::Exec(a) => cmd::exec::exec(&app, a).await,
        Command::Console(a) => cmd::exec::console(&app, &a.name).await,
        Command::Sessions(a) => cmd::sessions::list(&app, &a.name).await,
        Command::Attach(a) => cmd::sessions::attach(&app, &a.name, &a.id).await,
        Command::KillSession(a) => cmd::sessions::kill(&app, &a.name, &a.id, a.signal).await,
        Command::Cp(a) => cmd::cp::run(&app, a).await,
        Command::Checkpoint(a) => cmd::checkpoints::create(&app, &a.name, a.message, a.memory).await,
        Command::Checkpoints(a) => cmd::checkpoints::list(&app, &a.name).await,
        Command::Restore(a) => cmd::checkpoints::restore(&app, &a.name, &a.checkpoint).await,
        Command::RmCheckpoint(a) => cmd::checkpoints::delete(&app, &a.name, &a.checkpoint).await,
        Command::Fork(a) => cmd::checkpoints::fork(&app, &a.source, a.name, a.memory).await,
        Command::Images(a) => cmd::images::run(&app, a).await,
        Command::Service(a) => cmd::services::run(&app, a.command).await,
        Command::Policy(a) => cmd::network::policy(&app, a.command).await,
        Command::Secret(a) => cmd::network::secret(&app, a.command).await,
        Command::Token(a) => cmd::network::token(&app, a.command).await,
        Command::Url(a) => cmd::ingress::url(&app, &a.name).await,
        Command::Proxy(a) => cmd::ingress::proxy(&app, a).await,
        Command::Version => cmd::version::run(&app).await,
        Command::Bench(a) => bench::run(&app, a).await,
        Command::Mcp => cmd::mcp::run(&app).await,
    }
}
