//! Throughput under parallel clients: each client runs create → exec `true` → delete cycles
//! against one daemon, at several levels of parallelism. Every level is bounded twice (a
//! number of cycles per client and a wall-clock cap) so it stops by itself, and every sandbox
//! it made is deleted before it returns, on success, error or Ctrl-C.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, ExecRequest, SandboxName};
use burrow_client::Client;
use serde_json::json;

use super::{Figure, Stat, ms, stats};

/// The targets, stated for this many parallel clients.
const TARGET_CLIENTS: usize = 8;
/// Whole-daemon cycles per second at `TARGET_CLIENTS`.
const TARGET_CYCLES_S: f64 = 20.0;
/// p99 of create at `TARGET_CLIENTS`, ms.
const TARGET_CREATE_P99_MS: f64 = 200.0;
/// How long a level may overrun its cap (a cycle that started before it) before it is dropped.
const GRACE: Duration = Duration::from_secs(60);

/// How one level is bounded.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    pub(super) cycles_per_client: usize,
    /// No client starts a cycle after this much time into the level.
    pub(super) cap: Duration,
}

/// What one client saw.
#[derive(Default)]
struct ClientRun {
    create_ms: Vec<f64>,
    first_exec_ms: Vec<f64>,
    error: Option<anyhow::Error>,
}

/// One level's outcome, before it becomes figures.
struct Level {
    clients: usize,
    cycles: usize,
    elapsed: Duration,
    capped: bool,
    create_ms: Vec<f64>,
    first_exec_ms: Vec<f64>,
}

/// Names a level created and has not deleted yet: what cleanup must delete.
type Live = Arc<Mutex<HashSet<String>>>;

/// Runs every level in `levels` (numbers of parallel clients), adds three figures per level
/// and returns the per-level summary for the JSON.
pub(super) async fn concurrency_figures(
    client: &Client,
    prefix: &str,
    levels: &[usize],
    bounds: Bounds,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<serde_json::Value> {
    let mut summary = Vec::new();
    for &clients in levels.iter().filter(|&&n| n > 0) {
        let level = run_level(client, prefix, clients, bounds).await?;
        summary.push(json!({
            "clients": level.clients,
            "cycles": level.cycles,
            "elapsed_s": level.elapsed.as_secs_f64(),
            "capped": level.capped,
            "cycles_per_s": stats::per_second(level.cycles, level.elapsed),
        }));
        push_level(&level, figures);
    }
    Ok(json!(summary))
}

fn push_level(level: &Level, figures: &mut Vec<Figure>) {
    let n = level.clients;
    let who = if n == 1 {
        "1 client".to_owned()
    } else {
        format!("{n} clients")
    };
    let at_target = n == TARGET_CLIENTS;
    figures.push(Figure {
        key: format!("clients_{n}_cycles_s"),
        label: format!("{who}: create→exec→delete, whole daemon"),
        unit: "cycles/s",
        target: at_target.then_some((">=", TARGET_CYCLES_S)),
        stat: Stat::Median,
        samples: vec![stats::per_second(level.cycles, level.elapsed)],
    });
    figures.push(Figure {
        key: format!("clients_{n}_create_ms"),
        label: format!("{who}: create"),
        unit: "ms",
        target: at_target.then_some(("<=", TARGET_CREATE_P99_MS)),
        stat: Stat::P99,
        samples: level.create_ms.clone(),
    });
    figures.push(Figure {
        key: format!("clients_{n}_first_exec_ms"),
        label: format!("{who}: create → first exec result"),
        unit: "ms",
        target: None,
        stat: Stat::P99,
        samples: level.first_exec_ms.clone(),
    });
}

async fn run_level(client: &Client, prefix: &str, clients: usize, bounds: Bounds) -> anyhow::Result<Level> {
    let live: Live = Arc::default();
    let start = Instant::now();
    let deadline = start + bounds.cap;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..clients {
        let (c, live) = (client.clone(), live.clone());
        let prefix = format!("{prefix}-k{clients}-{i}");
        tasks.spawn(
            async move { client_cycles(&c, &prefix, bounds.cycles_per_client, deadline, &live).await },
        );
    }
    let mut runs = Vec::new();
    let joined = tokio::select! {
        _ = async {
            while let Some(r) = tasks.join_next().await {
                runs.push(r.unwrap_or_else(|e| ClientRun { error: Some(e.into()), ..Default::default() }));
            }
        } => Ok(()),
        _ = tokio::time::sleep_until((deadline + GRACE).into()) => {
            Err(anyhow::anyhow!("{clients} clients: cycles still running {GRACE:?} past the cap"))
        }
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let elapsed = start.elapsed();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    cleanup(client, &live).await;
    joined?;
    if let Some(e) = runs.iter_mut().find_map(|r| r.error.take()) {
        return Err(e.context(format!("{clients} parallel clients")));
    }
    let mut level = Level {
        clients,
        cycles: 0,
        elapsed,
        capped: Instant::now() >= deadline,
        create_ms: Vec::new(),
        first_exec_ms: Vec::new(),
    };
    for r in runs {
        level.cycles += r.first_exec_ms.len();
        level.create_ms.extend(r.create_ms);
        level.first_exec_ms.extend(r.first_exec_ms);
    }
    Ok(level)
}

/// One client's cycles; stops at the first error (kept in the result) or at the deadline.
async fn client_cycles(c: &Client, prefix: &str, cycles: usize, deadline: Instant, live: &Live) -> ClientRun {
    let mut run = ClientRun::default();
    let t_req = ExecRequest {
        cmd: vec!["true".into()],
        // `true` prints nothing; the default reserves 32 MiB of the daemon's one-shot output
        // budget per exec, which 32 parallel clients would exhaust.
        max_output_bytes: Some(4096),
        ..Default::default()
    };
    for j in 0..cycles {
        if Instant::now() >= deadline {
            break;
        }
        let name = format!("{prefix}-{j}");
        let result: anyhow::Result<()> = async {
            let req = CreateSandbox {
                name: SandboxName::parse(&name)?,
                ..Default::default()
            };
            live.lock().expect("not poisoned").insert(name.clone());
            let t = Instant::now();
            c.create_sandbox(&req).await?;
            let created = ms(t.elapsed());
            let r = c.exec(&name, &t_req).await?;
            let first_exec = ms(t.elapsed());
            anyhow::ensure!(r.exit_code == 0, "exec true failed in {name}");
            c.delete_sandbox(&name).await?;
            live.lock().expect("not poisoned").remove(&name);
            run.create_ms.push(created);
            run.first_exec_ms.push(first_exec);
            Ok(())
        }
        .await;
        if let Err(e) = result {
            run.error = Some(e);
            break;
        }
    }
    run
}

/// Deletes what a level left behind (a failed or interrupted cycle). A name whose create never
/// reached the daemon answers 404, which is fine.
async fn cleanup(client: &Client, live: &Live) {
    let names: Vec<String> = live.lock().expect("not poisoned").drain().collect();
    for name in names {
        if let Err(e) = client.delete_sandbox(&name).await
            && e.status() != Some(404)
        {
            eprintln!("bench: could not delete {name}: {e}");
        }
    }
}
