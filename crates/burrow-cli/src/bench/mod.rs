//! `burrow bench`: the project's performance benchmark (design.md, "Performance targets").
//!
//! Measures through the public API, as a user would see it: time to interactive (create →
//! first exec result), exec round trip of `true` (one-shot JSON and WebSocket), exec stdout
//! throughput, ingress latency (through burrowd, through a raw tunnel, and inside the sandbox),
//! throughput under parallel clients (`concurrency`), the floor of the same machine (a bare
//! `runc run` of a trivial container) and, when asked, peers measured in the same run with
//! the ratios Burrow / peer (`peers`: LXC). Writes every sample and the medians to a JSON
//! file and prints a table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use burrow_api::{CreateSandbox, EngineKind, ExecRequest, SandboxName};
use burrow_client::{ExecEvent, ExecStreamOptions};
use clap::Args;
use serde_json::json;

use crate::app::App;

mod concurrency;
mod peers;
mod stats;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Samples per latency figure (throughput uses a fifth of it, at least 3).
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results/bench.json")]
    pub out: PathBuf,
    /// Bytes of stdout per throughput sample.
    #[arg(long, default_value_t = 1 << 30)]
    pub stream_bytes: u64,
    /// Skip the bare-runc floor (it needs root, runc and busybox-static on this host).
    #[arg(long)]
    pub no_floor: bool,
    /// Data written in the sandbox before the checkpoint/restore/fork figures, in MB
    /// (comma-separated); empty to skip them.
    #[arg(long, default_value = "10,500,2000", value_delimiter = ',')]
    pub disk_mb: Vec<u64>,
    /// Idle running burrows created at once for the density figure.
    #[arg(long, default_value_t = 50)]
    pub density: usize,
    /// The engine to measure: container (every figure) or vm (the vm engine's figures,
    /// next to a bare QEMU boot of the same kernel as the floor).
    #[arg(long, default_value = "container", value_parser = ["container", "vm"])]
    pub engine: String,
    /// Parallel clients for the throughput figures, one level each (comma-separated); each
    /// client runs create → exec `true` → delete cycles. `0` to skip them.
    #[arg(long, default_value = "1,8,32", value_delimiter = ',')]
    pub clients: Vec<usize>,
    /// Cycles each parallel client runs per level (a level also stops at --clients-cap-s).
    #[arg(long, default_value_t = 10)]
    pub client_cycles: usize,
    /// Wall-clock cap per parallel-clients level, in seconds: no cycle starts after it.
    #[arg(long, default_value_t = 60)]
    pub clients_cap_s: u64,
    /// Peers to measure in the same run, next to Burrow, with the ratios Burrow / peer
    /// (comma-separated; none unless asked). `lxc`: Debian's lxc, privileged (root), on a
    /// btrfs pool the benchmark makes on a loop file in the temp dir and removes after; its
    /// rootfs is Burrow's base image tarball from --image-cache (nothing is downloaded).
    #[arg(long, value_delimiter = ',', value_parser = ["lxc"])]
    pub peers: Vec<String>,
    /// Where burrowd caches its base image tarball (the LXC peer's rootfs).
    #[arg(long, default_value = "/var/cache/burrow/images")]
    pub image_cache: PathBuf,
}

/// Which statistic of a figure its target is about.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stat {
    Median,
    P99,
}

struct Figure {
    key: String,
    label: String,
    unit: &'static str,
    target: Option<(&'static str, f64)>,
    /// What `target` is compared with.
    stat: Stat,
    samples: Vec<f64>,
}

impl Figure {
    fn median(&self) -> f64 {
        stats::median(&self.samples)
    }
    fn pct(&self, p: f64) -> f64 {
        stats::percentile(&self.samples, p)
    }
    fn judged(&self) -> f64 {
        match self.stat {
            Stat::Median => self.median(),
            Stat::P99 => self.pct(0.99),
        }
    }
    fn target_text(&self) -> Option<String> {
        let (op, t) = self.target?;
        Some(match self.stat {
            Stat::Median => format!("{op} {t}"),
            Stat::P99 => format!("p99 {op} {t}"),
        })
    }
    fn verdict(&self) -> &'static str {
        verdict(self.target, self.judged())
    }
}

/// "meets" or "misses" a target (`<=`/`>=` a bound), "" without one.
fn verdict(target: Option<(&'static str, f64)>, value: f64) -> &'static str {
    match target {
        Some(("<=", t)) if value <= t => "meets",
        Some((">=", t)) if value >= t => "meets",
        Some(_) => "misses",
        None => "",
    }
}

/// Waits (at most 30 s) until the daemon has a pre-started container of `base` ready.
async fn wait_for_prestarted(c: &burrow_client::Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = c.version().await?.prestart.is_some_and(|p| {
            p.pools
                .iter()
                .any(|x| x.engine == EngineKind::Container && x.image == "base" && x.ready > 0)
        });
        if ready {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "no pre-started sandbox within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`wait_for_prestarted`] when the daemon keeps pre-started sandboxes; at once when not.
async fn wait_for_prestarted_if_pooled(c: &burrow_client::Client) -> anyhow::Result<()> {
    if c.version().await?.prestart.is_some() {
        wait_for_prestarted(c).await?;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(app: &App, args: BenchArgs) -> anyhow::Result<u8> {
    let c = &app.client;
    let runs = args.runs.max(3);
    let prefix = format!("bench-{:x}", std::process::id());
    let mut figures = Vec::new();

    // Time to interactive: create → first exec result.
    if args.engine == "vm" {
        vm_figures(app, &prefix, runs.min(10), &mut figures).await?;
        if !args.no_floor {
            match qemu_floor(runs.min(10)) {
                Ok(samples) => figures.push(Figure {
                    key: "qemu_boot_floor_ms".into(),
                    label: "floor: bare QEMU boot of the guest kernel".into(),
                    unit: "ms",
                    target: None,
                    stat: Stat::Median,
                    samples,
                }),
                Err(e) => eprintln!("skipping the QEMU floor: {e:#}"),
            }
        }
        return report(app, &args, runs, figures, Extras::default()).await;
    }

    // Time to interactive, twice: taking a pre-started sandbox (when the daemon keeps them:
    // each sample waits until one of `base` is ready), and booting one (a create the pool
    // cannot serve: a pids limit of its own).
    let pooled = c.version().await?.prestart.is_some_and(|p| {
        p.pools
            .iter()
            .any(|x| x.engine == EngineKind::Container && x.target > 0)
    });
    let mut tti = Vec::new();
    let mut tti_boot = Vec::new();
    for i in 0..runs {
        for boot in [false, true] {
            if boot && !pooled {
                continue;
            }
            if !boot && pooled {
                wait_for_prestarted(c).await?;
            }
            let name = format!("{prefix}-t{i}{}", if boot { "b" } else { "" });
            let req = CreateSandbox {
                name: SandboxName::parse(&name)?,
                pids: boot.then_some(4095),
                ..Default::default()
            };
            let t = Instant::now();
            c.create_sandbox(&req).await?;
            let r = c
                .exec(
                    &name,
                    &ExecRequest {
                        cmd: vec!["true".into()],
                        ..Default::default()
                    },
                )
                .await?;
            if boot { &mut tti_boot } else { &mut tti }.push(ms(t.elapsed()));
            anyhow::ensure!(r.exit_code == 0, "exec true failed in {name}");
            c.delete_sandbox(&name).await?;
        }
    }
    figures.push(Figure {
        key: "tti_ms".into(),
        label: if pooled {
            "create → first exec result (pre-started)".into()
        } else {
            "create → first exec result (no pre-started sandboxes)".into()
        },
        unit: "ms",
        target: Some(("<=", 25.0)),
        stat: Stat::Median,
        samples: tti,
    });
    if pooled {
        figures.push(Figure {
            key: "tti_boot_ms".into(),
            label: "create → first exec result (booted: own pids limit)".into(),
            unit: "ms",
            target: Some(("<=", 50.0)),
            stat: Stat::Median,
            samples: tti_boot,
        });
    }

    // Exec round trips in one running burrow.
    let name = format!("{prefix}-x");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&name)?,
        ..Default::default()
    })
    .await?;
    let result = exec_figures(app, &name, runs, args.stream_bytes, &mut figures).await;
    let _ = c.delete_sandbox(&name).await;
    result?;

    for &mb in &args.disk_mb {
        checkpoint_figures(app, &prefix, mb, runs.min(10), &mut figures).await?;
    }
    always_there_figures(app, &prefix, runs.min(10), args.density, &mut figures).await?;
    ingress_figures(app, &prefix, INGRESS_REQUESTS, &mut figures).await?;
    policy_figures(app, &prefix, runs, &mut figures).await?;
    let mut extras = Extras::default();
    if args.clients.iter().any(|&n| n > 0) {
        let bounds = concurrency::Bounds {
            cycles_per_client: args.client_cycles.max(1),
            cap: Duration::from_secs(args.clients_cap_s),
        };
        extras.concurrency =
            Some(concurrency::concurrency_figures(c, &prefix, &args.clients, bounds, &mut figures).await?);
    }

    if !args.no_floor {
        match runc_floor(runs) {
            Ok(samples) => figures.push(Figure {
                key: "runc_run_floor_ms".into(),
                label: "floor: bare `runc run` of a trivial container".into(),
                unit: "ms",
                target: None,
                stat: Stat::Median,
                samples,
            }),
            Err(e) => eprintln!("skipping the runc floor: {e:#}"),
        }
    }

    if args.peers.iter().any(|p| p == "lxc") {
        let mb = args.disk_mb.first().copied();
        let opts = peers::LxcOptions {
            runs: runs.min(10),
            mb: mb.unwrap_or(10),
            rootfs_tar: peers::base_tarball(&args.image_cache)?,
        };
        figures.extend(lxc_on_a_thread(opts).await?);
        extras.ratios = peers::ratios(&figures, mb);
    }

    report(app, &args, runs, figures, extras).await
}

/// What the JSON and the table carry besides the figures.
#[derive(Default)]
struct Extras {
    /// Per-level summary of the parallel-clients figures.
    concurrency: Option<serde_json::Value>,
    /// Burrow / peer ratios of medians.
    ratios: Vec<peers::Ratio>,
}

/// Runs the LXC measurements on a blocking thread; Ctrl-C asks them to stop at the next step
/// and waits for the loop pool to be torn down before returning.
async fn lxc_on_a_thread(opts: peers::LxcOptions) -> anyhow::Result<Vec<Figure>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let cancel = Arc::new(AtomicBool::new(false));
    let mut job = tokio::task::spawn_blocking({
        let cancel = cancel.clone();
        move || peers::lxc_figures(&opts, &cancel)
    });
    let figures = tokio::select! {
        r = &mut job => r?,
        _ = tokio::signal::ctrl_c() => {
            cancel.store(true, Ordering::Relaxed);
            eprintln!("interrupted: tearing down the LXC pool");
            let _ = job.await;
            anyhow::bail!("interrupted");
        }
    };
    figures.context("measuring LXC")
}

/// Writes the figures as JSON to `args.out` and prints them as a table (or the JSON).
async fn report(
    app: &App,
    args: &BenchArgs,
    runs: usize,
    figures: Vec<Figure>,
    extras: Extras,
) -> anyhow::Result<u8> {
    let c = &app.client;
    let version = c.version().await?;
    let mut results = json!({
        "date": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
        "host": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        },
        "burrow": version,
        "engine": args.engine,
        "runs": runs,
        "figures": figures.iter().map(figure_json).collect::<Vec<_>>(),
    });
    if let Some(levels) = extras.concurrency {
        results["concurrency"] = levels;
    }
    if !extras.ratios.is_empty() {
        results["ratios"] = extras.ratios.iter().map(ratio_json).collect();
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&results)?)?;
    if app.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", table(&figures, &extras.ratios));
        eprintln!("results written to {}", args.out.display());
    }
    Ok(0)
}

fn figure_json(f: &Figure) -> serde_json::Value {
    json!({
        "key": f.key, "label": f.label, "unit": f.unit,
        "median": f.median(), "p10": f.pct(0.1), "p90": f.pct(0.9), "p99": f.pct(0.99),
        "target": f.target_text(),
        "verdict": f.verdict(), "samples": f.samples,
    })
}

fn ratio_json(r: &peers::Ratio) -> serde_json::Value {
    json!({
        "label": r.label,
        "burrow": r.burrow_key, "burrow_median": r.burrow_median,
        "peer": r.peer_key, "peer_median": r.peer_median,
        "ratio": r.value(),
        "target": r.target.map(|(op, t)| format!("{op} {t}")),
        "verdict": r.verdict(),
    })
}

/// The human table: every figure, then the Burrow / peer ratios if any.
fn table(figures: &[Figure], ratios: &[peers::Ratio]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<60} {:>10} {:>10} {:>10} {:>10}  {:<14} verdict",
        "figure", "median", "p10", "p90", "p99", "target"
    );
    for f in figures {
        let _ = writeln!(
            out,
            "{:<60} {:>10.2} {:>10.2} {:>10.2} {:>10.2}  {:<14} {}",
            format!("{} ({})", f.label, f.unit),
            f.median(),
            f.pct(0.1),
            f.pct(0.9),
            f.pct(0.99),
            f.target_text().unwrap_or_default(),
            f.verdict()
        );
    }
    if !ratios.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<66} {:>10} {:>10} {:>7}  {:<14} verdict",
            "Burrow / peer (medians, same run)", "burrow ms", "peer ms", "ratio", "target"
        );
        for r in ratios {
            let _ = writeln!(
                out,
                "{:<66} {:>10.2} {:>10.2} {:>6.2}×  {:<14} {}",
                r.label,
                r.burrow_median,
                r.peer_median,
                r.value(),
                r.target.map(|(op, t)| format!("{op} {t}")).unwrap_or_default(),
                r.verdict()
            );
        }
    }
    out
}

/// The vm engine: create → first exec, exec round trip, memory sleep, wake from memory →
/// first exec, and what QEMU holds beyond the guest's RAM (its anonymous memory; guest RAM is
/// the shared memory file).
async fn vm_figures(app: &App, prefix: &str, runs: usize, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let c = &app.client;
    let t_req = ExecRequest {
        cmd: vec!["true".into()],
        ..Default::default()
    };
    let (mut tti, mut exec, mut sleep, mut wake, mut overhead) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut fork, mut asleep) = (vec![], vec![]);
    for i in 0..runs {
        let name = format!("{prefix}-vm{i}");
        let req = CreateSandbox {
            name: SandboxName::parse(&name)?,
            engine: Some(burrow_api::EngineKind::Vm),
            memory_mb: Some(512),
            ..Default::default()
        };
        let t = Instant::now();
        let sb = c.create_sandbox(&req).await?;
        let r = c.exec(&name, &t_req).await?;
        tti.push(ms(t.elapsed()));
        anyhow::ensure!(r.exit_code == 0, "exec true failed in {name}");
        for _ in 0..5 {
            let t = Instant::now();
            c.exec(&name, &t_req).await?;
            exec.push(ms(t.elapsed()));
        }
        if let Some(kib) = qemu_anon_kib(&sb.id) {
            overhead.push(kib as f64 / 1024.0);
        }
        let path = format!("/v1/sandboxes/{name}/sleep");
        let t = Instant::now();
        c.request_json::<serde_json::Value, ()>(burrow_client::Method::POST, &path, None)
            .await?;
        sleep.push(ms(t.elapsed()));
        // Asleep, no QEMU is left: what it holds is what a process that is gone holds.
        asleep.push(qemu_anon_kib(&sb.id).map_or(0.0, |kib| kib as f64 / 1024.0));
        let t = Instant::now();
        c.exec(&name, &t_req).await?;
        wake.push(ms(t.elapsed()));
        let copy = format!("{name}-f");
        let t = Instant::now();
        c.create_sandbox(&CreateSandbox {
            name: SandboxName::parse(&copy)?,
            from: Some(burrow_api::ForkSource {
                sandbox: SandboxName::parse(&name)?,
                checkpoint: None,
                memory: true,
            }),
            ..Default::default()
        })
        .await?;
        c.exec(&copy, &t_req).await?;
        fork.push(ms(t.elapsed()));
        c.delete_sandbox(&copy).await?;
        c.delete_sandbox(&name).await?;
    }
    let push = |figures: &mut Vec<Figure>, key: &str, label: &str, unit, target, samples| {
        figures.push(Figure {
            key: key.into(),
            label: label.into(),
            unit,
            target,
            stat: Stat::Median,
            samples,
        })
    };
    push(
        figures,
        "vm_tti_ms",
        "vm: create → first exec result",
        "ms",
        Some(("<=", 1500.0)),
        tti,
    );
    push(
        figures,
        "vm_exec_ms",
        "vm: exec round trip of `true`",
        "ms",
        None,
        exec,
    );
    push(
        figures,
        "vm_sleep_ms",
        "vm: memory sleep (saved, QEMU gone)",
        "ms",
        Some(("<=", 100.0)),
        sleep,
    );
    push(
        figures,
        "vm_wake_ms",
        "vm: wake from memory → first exec",
        "ms",
        Some(("<=", 300.0)),
        wake,
    );
    push(
        figures,
        "vm_fork_memory_ms",
        "vm: fork with memory (live) → first exec",
        "ms",
        Some(("<=", 400.0)),
        fork,
    );
    push(
        figures,
        "vm_asleep_mib",
        "vm: QEMU memory while asleep",
        "MiB",
        Some(("<=", 0.0)),
        asleep,
    );
    push(
        figures,
        "vm_overhead_mib",
        "vm: QEMU memory beyond guest RAM (idle)",
        "MiB",
        Some(("<=", 30.0)),
        overhead,
    );
    Ok(())
}

/// `RssAnon` of the QEMU that runs sandbox `id` (found by its `-name burrow-<id>`).
fn qemu_anon_kib(id: &str) -> Option<u64> {
    let needle = format!("burrow-{id}");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.split(|b| *b == 0).any(|a| a == needle.as_bytes()) {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok();
        }
    }
    None
}

/// A bare QEMU microvm boot of the guest kernel until it panics for want of a root
/// filesystem (what the vm engine's boot cannot beat), with the same clock pinning.
fn qemu_floor(runs: usize) -> anyhow::Result<Vec<f64>> {
    let dir = Path::new("/usr/local/lib/burrow/guest");
    let kernel = [dir.join("vmlinux"), dir.join("vmlinuz")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("no guest kernel in {}", dir.display()))?;
    let khz = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|mhz| (mhz * 1000.0) as u64);
    let mut append = "console=ttyS0 panic=-1 loglevel=1 tsc=reliable no_timer_check".to_owned();
    if let Some(k) = khz {
        append.push_str(&format!(" tsc_early_khz={k}"));
    }
    let mut samples = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let st = std::process::Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,accel=tcg",
                "-cpu",
                "max",
                "-m",
                "512M",
                "-nodefaults",
                "-no-user-config",
            ])
            .args(["-nographic", "-no-reboot", "-serial", "null"])
            .arg("-kernel")
            .arg(&kernel)
            .args(["-append", &append])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(st.success(), "qemu: {st}");
        samples.push(ms(t.elapsed()));
    }
    Ok(samples)
}

async fn exec_figures(
    app: &App,
    name: &str,
    runs: usize,
    stream_bytes: u64,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    let c = &app.client;
    let t_req = ExecRequest {
        cmd: vec!["true".into()],
        ..Default::default()
    };
    for _ in 0..5 {
        c.exec(name, &t_req).await?; // warm-up
    }
    let n = runs * 10;
    let mut once = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.exec(name, &t_req).await?;
        once.push(ms(t.elapsed()));
    }
    figures.push(Figure {
        key: "exec_true_ms".into(),
        label: "exec `true` round trip (POST …/exec)".into(),
        unit: "ms",
        target: Some(("<=", 3.0)),
        stat: Stat::Median,
        samples: once,
    });
    let mut ws = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = c
            .exec_stream(name, ExecStreamOptions::new(["true"]))
            .await?
            .collect()
            .await?;
        ws.push(ms(t.elapsed()));
        anyhow::ensure!(out.exit_code == 0, "true failed");
    }
    figures.push(Figure {
        key: "exec_true_ws_ms".into(),
        label: "exec `true` round trip (WebSocket)".into(),
        unit: "ms",
        target: Some(("<=", 3.0)),
        stat: Stat::Median,
        samples: ws,
    });
    let mut tput = Vec::new();
    for _ in 0..(runs / 5).max(3) {
        let cmd = ["head", "-c", &stream_bytes.to_string(), "/dev/zero"].map(str::to_owned);
        let mut s = c.exec_stream(name, ExecStreamOptions::new(cmd)).await?;
        let t = Instant::now();
        let mut got = 0u64;
        loop {
            match s.next_event().await? {
                Some(ExecEvent::Stdout(b)) => got += b.len() as u64,
                Some(ExecEvent::Exit { .. }) | None => break,
                Some(_) => {}
            }
        }
        anyhow::ensure!(got == stream_bytes, "received {got} of {stream_bytes} bytes");
        tput.push(got as f64 / 1e6 / t.elapsed().as_secs_f64());
    }
    figures.push(Figure {
        key: "exec_stdout_mb_s".into(),
        label: "exec stdout throughput (WebSocket)".into(),
        unit: "MB/s",
        target: Some((">=", 500.0)),
        stat: Stat::Median,
        samples: tput,
    });
    Ok(())
}

/// A bare `runc run` of a busybox `true` container: what the machine costs before Burrow
/// adds anything (no user namespace, no agent, no snapshot).
fn runc_floor(runs: usize) -> anyhow::Result<Vec<f64>> {
    use anyhow::Context;
    let busybox = Path::new("/bin/busybox");
    anyhow::ensure!(
        busybox.exists(),
        "/bin/busybox not found (apt-get install busybox-static)"
    );
    let dir = tempdir()?;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    let st = std::process::Command::new("runc")
        .arg("spec")
        .current_dir(&dir)
        .status()
        .context("runc spec")?;
    anyhow::ensure!(st.success(), "runc spec failed");
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path)?)?;
    cfg["process"]["args"] = json!(["/bin/busybox", "true"]);
    cfg["process"]["terminal"] = json!(false);
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
    let root = dir.join("state");
    let mut samples = Vec::new();
    for i in 0..runs {
        let id = format!("burrow-bench-floor-{}-{i}", std::process::id());
        let t = Instant::now();
        let st = std::process::Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["run", "--bundle"])
            .arg(&dir)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .status()
            .context("runc run")?;
        samples.push(ms(t.elapsed()));
        anyhow::ensure!(st.success(), "runc run failed");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(samples)
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("burrow-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Checkpoint, restore and fork→first exec with `mb` MB written in the sandbox: the
/// figures must stay flat as `mb` grows (btrfs snapshots are O(1)).
async fn checkpoint_figures(
    app: &App,
    prefix: &str,
    mb: u64,
    runs: usize,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    use burrow_client::Method;
    let c = &app.client;
    let name = format!("{prefix}-c{mb}");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&name)?,
        ..Default::default()
    })
    .await?;
    let fill = format!("head -c {}M /dev/urandom > /root/blob && sync", mb);
    let r = c
        .exec(
            &name,
            &ExecRequest {
                cmd: vec!["sh".into(), "-c".into(), fill],
                ..Default::default()
            },
        )
        .await?;
    anyhow::ensure!(r.exit_code == 0, "writing {mb} MB failed: {}", r.stderr);
    let cps = format!("{}/checkpoints", burrow_client::paths::sandbox(&name));
    let (mut cp, mut rs, mut fk) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = String::new();
    for _ in 0..runs {
        let t = Instant::now();
        let v: serde_json::Value = c.request_json::<_, ()>(Method::POST, &cps, None).await?;
        cp.push(ms(t.elapsed()));
        last = v["id"].as_str().unwrap_or_default().to_owned();
    }
    for i in 0..runs.min(5) {
        let t = Instant::now();
        c.request_json::<serde_json::Value, ()>(Method::POST, &format!("{cps}/{last}/restore"), None)
            .await?;
        let r = c
            .exec(
                &name,
                &ExecRequest {
                    cmd: vec!["true".into()],
                    ..Default::default()
                },
            )
            .await?;
        rs.push(ms(t.elapsed()));
        anyhow::ensure!(r.exit_code == 0, "exec after restore {i} failed");
    }
    // Forks, like creates, twice when the daemon keeps pre-started sandboxes: taking one
    // (each sample waits until one is ready) and booting one (a pids limit of its own).
    let pooled = c.version().await?.prestart.is_some_and(|p| {
        p.pools
            .iter()
            .any(|x| x.engine == EngineKind::Container && x.target > 0)
    });
    let mut fk_boot = Vec::new();
    for i in 0..runs.min(5) {
        for boot in [false, true] {
            if boot && !pooled {
                continue;
            }
            if !boot && pooled {
                wait_for_prestarted(c).await?;
            }
            let fork = format!("{name}-f{i}{}", if boot { "b" } else { "" });
            let t = Instant::now();
            let from = burrow_api::ForkSource {
                sandbox: SandboxName::parse(&name)?,
                checkpoint: Some(last.clone()),
                memory: false,
            };
            c.create_sandbox(&CreateSandbox {
                name: SandboxName::parse(&fork)?,
                from: Some(from),
                pids: boot.then_some(4095),
                ..Default::default()
            })
            .await?;
            let r = c
                .exec(
                    &fork,
                    &ExecRequest {
                        cmd: vec!["true".into()],
                        ..Default::default()
                    },
                )
                .await?;
            anyhow::ensure!(r.exit_code == 0, "exec true failed in {fork}");
            if boot { &mut fk_boot } else { &mut fk }.push(ms(t.elapsed()));
            c.delete_sandbox(&fork).await?;
        }
    }
    let _ = c.delete_sandbox(&name).await;
    figures.push(Figure {
        key: format!("checkpoint_{mb}mb_ms"),
        label: format!("checkpoint, {mb} MB written"),
        unit: "ms",
        target: Some(("<=", 20.0)),
        stat: Stat::Median,
        samples: cp,
    });
    figures.push(Figure {
        key: format!("restore_{mb}mb_ms"),
        label: format!("restore → first exec, {mb} MB written"),
        unit: "ms",
        target: Some(("<=", 50.0)),
        stat: Stat::Median,
        samples: rs,
    });
    figures.push(Figure {
        key: format!("fork_{mb}mb_ms"),
        label: if pooled {
            format!("fork → first exec, {mb} MB written (pre-started)")
        } else {
            format!("fork → first exec, {mb} MB written")
        },
        unit: "ms",
        target: Some(("<=", 25.0)),
        stat: Stat::Median,
        samples: fk,
    });
    if pooled {
        figures.push(Figure {
            key: format!("fork_{mb}mb_boot_ms"),
            label: format!("fork → first exec, {mb} MB written (booted: own pids limit)"),
            unit: "ms",
            target: Some(("<=", 50.0)),
            stat: Stat::Median,
            samples: fk_boot,
        });
    }
    Ok(())
}

/// Wake from warm and cold sleep to a first exec result, memory per idle running burrow,
/// and file upload/download throughput.
async fn always_there_figures(
    app: &App,
    prefix: &str,
    runs: usize,
    density: usize,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    use burrow_client::Method;
    let c = &app.client;
    let name = format!("{prefix}-w");
    let create = |n: String| CreateSandbox {
        name: SandboxName::parse(&n).expect("valid"),
        idle_timeout_s: Some(0),
        ..Default::default()
    };
    c.create_sandbox(&create(name.clone())).await?;
    let t_req = ExecRequest {
        cmd: vec!["true".into()],
        ..Default::default()
    };
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    let sleep = format!("{}/sleep", burrow_client::paths::sandbox(&name));
    for _ in 0..runs {
        c.request_json::<serde_json::Value, ()>(Method::POST, &format!("{sleep}?mode=warm"), None)
            .await?;
        let t = Instant::now();
        c.exec(&name, &t_req).await?;
        warm.push(ms(t.elapsed()));
        // A daemon that keeps pre-started sandboxes wakes a cold one in one's runtime:
        // measured with one ready, as a cold sandbox woken on a host at rest finds it.
        wait_for_prestarted_if_pooled(c).await?;
        c.request_json::<serde_json::Value, ()>(Method::POST, &format!("{sleep}?mode=cold"), None)
            .await?;
        let t = Instant::now();
        c.exec(&name, &t_req).await?;
        cold.push(ms(t.elapsed()));
    }
    figures.push(Figure {
        key: "wake_warm_ms".into(),
        label: "wake from warm → first exec".into(),
        unit: "ms",
        target: Some(("<=", 10.0)),
        stat: Stat::Median,
        samples: warm,
    });
    figures.push(Figure {
        key: "wake_cold_ms".into(),
        label: "wake from cold → first exec".into(),
        unit: "ms",
        target: Some(("<=", 25.0)),
        stat: Stat::Median,
        samples: cold,
    });

    // Start of a stopped burrow: like a cold wake, served by a pre-started container when
    // the daemon keeps a pool.
    let mut start = Vec::new();
    for _ in 0..runs {
        wait_for_prestarted_if_pooled(c).await?;
        c.sandbox_action(&name, "stop").await?;
        let t = Instant::now();
        c.sandbox_action(&name, "start").await?;
        c.exec(&name, &t_req).await?;
        start.push(ms(t.elapsed()));
    }
    figures.push(Figure {
        key: "start_stopped_ms".into(),
        label: "start of a stopped burrow → first exec".into(),
        unit: "ms",
        target: None,
        stat: Stat::Median,
        samples: start,
    });

    // Files: upload and download 256 MiB through the API.
    let size: usize = 256 << 20;
    let data = vec![0x5au8; size];
    let path = format!("{}/files?path=/root/blob", burrow_client::paths::sandbox(&name));
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        c.request_bytes(
            Method::PUT,
            &path,
            Some("application/octet-stream"),
            data.clone().into(),
        )
        .await?;
        up.push(size as f64 / 1e6 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let got = c
            .request_bytes(Method::GET, &path, None, Default::default())
            .await?;
        down.push(size as f64 / 1e6 / t.elapsed().as_secs_f64());
        anyhow::ensure!(
            got.body().len() == size,
            "downloaded {} of {size} bytes",
            got.body().len()
        );
    }
    figures.push(Figure {
        key: "file_upload_mb_s".into(),
        label: "file upload, 256 MiB".into(),
        unit: "MB/s",
        target: Some((">=", 300.0)),
        stat: Stat::Median,
        samples: up,
    });
    figures.push(Figure {
        key: "file_download_mb_s".into(),
        label: "file download, 256 MiB".into(),
        unit: "MB/s",
        target: None,
        stat: Stat::Median,
        samples: down,
    });
    let _ = c.delete_sandbox(&name).await;

    // Density: memory charged to each idle running burrow (its cgroup: agent + kernel).
    if density > 0 {
        let mut names = Vec::new();
        for i in 0..density {
            let n = format!("{prefix}-d{i}");
            c.create_sandbox(&create(n.clone())).await?;
            names.push(n);
        }
        let mut mem = Vec::new();
        for n in &names {
            let sb = c.get_sandbox(n).await?;
            if let Some(u) = sb.usage {
                mem.push(u.memory_bytes as f64 / (1 << 20) as f64);
            }
        }
        for n in &names {
            let _ = c.delete_sandbox(n).await;
        }
        figures.push(Figure {
            key: "idle_burrow_memory_mib".into(),
            label: format!("memory per idle running burrow ({density} at once)"),
            unit: "MiB",
            target: Some(("<=", 5.0)),
            stat: Stat::Median,
            samples: mem,
        });
    }
    Ok(())
}

/// Requests per ingress latency figure (each on one kept-alive connection).
const INGRESS_REQUESTS: usize = 200;

/// A minimal keep-alive HTTP/1.1 app for the ingress figures: answers `ok` to every GET, in
/// one write, without Nagle (so the figures measure the path, not TCP's delayed ACKs).
const INGRESS_APP: &str = "from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    wbufsize = 65536
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200)
        self.send_header('Content-Length', '2')
        self.end_headers()
        self.wfile.write(b'ok')
ThreadingHTTPServer(('127.0.0.1', 8080), H).serve_forever()
";

/// The same GET from inside the sandbox, timed there: the app's own floor.
const INGRESS_DIRECT: &str = "import http.client, sys, time
c = http.client.HTTPConnection('127.0.0.1', 8080)
ts = []
for i in range(int(sys.argv[1])):
    t = time.perf_counter()
    c.request('GET', '/')
    c.getresponse().read()
    ts.append((time.perf_counter() - t) * 1000)
print(' '.join('%.4f' % x for x in ts))
";

/// Policy change to effect: `PUT …/policy/network` on a running burrow returns once the
/// nftables transaction that applies it is committed, so its latency is the time to effect.
async fn policy_figures(
    app: &App,
    prefix: &str,
    runs: usize,
    figures: &mut Vec<Figure>,
) -> anyhow::Result<()> {
    use burrow_client::Method;
    let c = &app.client;
    let name = format!("{prefix}-p");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&name)?,
        ..Default::default()
    })
    .await?;
    let path = format!("/v1/sandboxes/{name}/policy/network");
    let mut samples = Vec::new();
    let mut result: anyhow::Result<()> = Ok(());
    for i in 0..runs.max(10) {
        let body = if i % 2 == 0 {
            json!({"mode": "policy", "rules": [{"domain": "*.example.com", "action": "allow"}]})
        } else {
            json!({"mode": "open"})
        };
        let t = Instant::now();
        if let Err(e) = c
            .request_json::<serde_json::Value, _>(Method::PUT, &path, Some(&body))
            .await
        {
            result = Err(e.into());
            break;
        }
        samples.push(ms(t.elapsed()));
    }
    let _ = c.delete_sandbox(&name).await;
    result?;
    figures.push(Figure {
        key: "policy_change_ms".into(),
        label: "network policy change → in effect".into(),
        unit: "ms",
        target: None,
        stat: Stat::Median,
        samples,
    });
    Ok(())
}

/// Latency of a small GET to a sandbox's web app: through ingress (`…/http/`, reverse proxy
/// on a kept-alive API connection), through a raw tunnel (`…/proxy/8080` WebSocket, one
/// kept-alive HTTP connection inside it), and directly inside the sandbox.
async fn ingress_figures(app: &App, prefix: &str, n: usize, figures: &mut Vec<Figure>) -> anyhow::Result<()> {
    let c = &app.client;
    let name = format!("{prefix}-i");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&name)?,
        ..Default::default()
    })
    .await?;
    let result = ingress_samples(app, &name, n).await;
    let _ = c.delete_sandbox(&name).await;
    let (proxied, tunnel, direct) = result?;
    figures.push(Figure {
        key: "ingress_http_get_ms".into(),
        label: "ingress GET round trip (…/http/, reverse proxy)".into(),
        unit: "ms",
        target: None,
        stat: Stat::Median,
        samples: proxied,
    });
    figures.push(Figure {
        key: "ingress_tunnel_get_ms".into(),
        label: "GET round trip through a raw tunnel (…/proxy/)".into(),
        unit: "ms",
        target: None,
        stat: Stat::Median,
        samples: tunnel,
    });
    figures.push(Figure {
        key: "ingress_direct_get_ms".into(),
        label: "floor: the same GET inside the sandbox".into(),
        unit: "ms",
        target: None,
        stat: Stat::Median,
        samples: direct,
    });
    Ok(())
}

async fn ingress_samples(app: &App, name: &str, n: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    use burrow_client::Method;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let c = &app.client;
    let svc = json!({"cmd": ["python3", "-c", INGRESS_APP], "http_port": 8080});
    let svc_path = format!("{}/services/web", burrow_client::paths::sandbox(name));
    c.request_json::<serde_json::Value, _>(Method::PUT, &svc_path, Some(&svc))
        .await?;
    let http = format!("{}/http/", burrow_client::paths::sandbox(name));
    // The first request waits for the app to listen (its port is declared).
    for _ in 0..5 {
        let r = c
            .request_bytes(Method::GET, &http, None, Default::default())
            .await?;
        anyhow::ensure!(r.body().as_ref() == b"ok", "unexpected answer from the bench app");
    }
    let mut proxied = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        c.request_bytes(Method::GET, &http, None, Default::default())
            .await?;
        proxied.push(ms(t.elapsed()));
    }

    let relay = c.proxy_port(name, 8080).await?;
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let relaying = tokio::spawn(relay.relay(theirs));
    let mut conn = tokio::io::BufReader::new(ours);
    let mut tunnel = Vec::with_capacity(n);
    for i in 0..n + 5 {
        let t = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            conn.get_mut()
                .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                .await?;
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                anyhow::ensure!(conn.read_line(&mut line).await? > 0, "the tunnel closed");
                if line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    len = v.trim().parse()?;
                }
            }
            let mut body = vec![0u8; len];
            conn.read_exact(&mut body).await?;
            Ok(body)
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer through the tunnel within 10 s"))??;
        anyhow::ensure!(answer == b"ok", "unexpected answer through the tunnel");
        if i >= 5 {
            tunnel.push(ms(t.elapsed()));
        }
    }
    drop(conn);
    let _ = relaying.await;

    let r = c
        .exec(
            name,
            &ExecRequest {
                cmd: vec![
                    "python3".into(),
                    "-c".into(),
                    INGRESS_DIRECT.into(),
                    n.to_string(),
                ],
                ..Default::default()
            },
        )
        .await?;
    anyhow::ensure!(r.exit_code == 0, "timing inside the sandbox failed: {}", r.stderr);
    let direct = r
        .stdout
        .split_whitespace()
        .map(str::parse::<f64>)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((proxied, tunnel, direct))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(key: &str, target: Option<(&'static str, f64)>, stat: Stat, samples: Vec<f64>) -> Figure {
        Figure {
            key: key.into(),
            label: key.into(),
            unit: "ms",
            target,
            stat,
            samples,
        }
    }

    #[test]
    fn a_p99_target_is_judged_on_the_p99() {
        // Median 10 ms, p99 500 ms: meets a median target of 200, misses a p99 target of 200.
        let mut s = vec![10.0; 99];
        s.push(500.0);
        s.push(500.0);
        let on_median = fig("m", Some(("<=", 200.0)), Stat::Median, s.clone());
        let on_p99 = fig("p", Some(("<=", 200.0)), Stat::P99, s);
        assert_eq!(on_median.verdict(), "meets");
        assert_eq!(on_p99.verdict(), "misses");
        assert_eq!(on_median.target_text().as_deref(), Some("<= 200"));
        assert_eq!(on_p99.target_text().as_deref(), Some("p99 <= 200"));
        let throughput = fig("t", Some((">=", 20.0)), Stat::Median, vec![25.0]);
        assert_eq!(throughput.verdict(), "meets");
        assert_eq!(fig("n", None, Stat::Median, vec![1.0]).verdict(), "");
    }

    #[test]
    fn json_and_table_carry_p99_and_ratios() {
        let figures = vec![
            fig("tti_ms", Some(("<=", 50.0)), Stat::Median, vec![30.0, 40.0, 50.0]),
            fig("lxc_clone_start_attach_ms", None, Stat::Median, vec![160.0]),
        ];
        let j = figure_json(&figures[0]);
        assert_eq!(j["median"], 40.0);
        assert_eq!(j["p99"], 50.0);
        assert_eq!(j["verdict"], "meets");
        let ratios = peers::ratios(&figures, None);
        let r = ratio_json(&ratios[0]);
        assert_eq!(r["ratio"], 0.25);
        assert_eq!(r["peer_median"], 160.0);
        assert_eq!(r["verdict"], "meets");
        let t = table(&figures, &ratios);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("figure") && lines[0].contains("p99"), "{t}");
        assert!(
            lines[1].starts_with("tti_ms (ms)") && lines[1].ends_with("<= 50          meets"),
            "{t}"
        );
        let ratio_line = lines
            .iter()
            .find(|l| l.starts_with("create → first exec / LXC"))
            .expect(&t);
        assert!(
            ratio_line.contains("0.25×") && ratio_line.ends_with("meets"),
            "{t}"
        );
        // Without peers there is no ratio section.
        assert!(!table(&figures, &[]).contains("Burrow / peer"));
    }

    #[test]
    fn bench_flags_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            b: BenchArgs,
        }
        let t = T::try_parse_from(["bench"]).unwrap();
        assert_eq!(t.b.clients, [1, 8, 32]);
        assert!(t.b.peers.is_empty(), "peers are opt-in");
        let t = T::try_parse_from([
            "bench",
            "--clients",
            "2,4",
            "--peers",
            "lxc",
            "--client-cycles",
            "3",
        ])
        .unwrap();
        assert_eq!(
            (t.b.clients, t.b.peers, t.b.client_cycles),
            (vec![2, 4], vec!["lxc".to_owned()], 3)
        );
        assert!(T::try_parse_from(["bench", "--peers", "docker"]).is_err());
        let t = T::try_parse_from(["bench", "--clients", "0"]).unwrap();
        assert_eq!(t.b.clients, [0], "a level of 0 clients is skipped");
    }
}
