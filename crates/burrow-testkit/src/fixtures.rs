//! The steps end-to-end tests repeat against a real daemon: create a sandbox, run a shell
//! line in it, wait (polling, bounded) until a sandbox or anything else reaches a state, and
//! ask whether the vm engine runs. Each panics with what it was doing when the daemon says no,
//! so a test body reads as the scenario it checks.
//!
//! Waits poll: they return as soon as the condition holds and fail with the last state seen
//! once their deadline passes. Nothing here sleeps to let something happen.

use std::future::Future;
use std::time::{Duration, Instant};

use burrow_client::Client;
use burrow_client::api::{
    CreateSandbox, EngineKind, ExecRequest, ExecResult, Sandbox, SandboxName, SandboxStatus,
};

/// Upper bound of the waits below. Generous: a busy CI host running test lanes side by side
/// is slow, and a wait ends as soon as its condition holds.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// A create request for `name` with every other field defaulted.
pub fn create_req(name: &str) -> CreateSandbox {
    CreateSandbox {
        name: SandboxName::parse(name).unwrap_or_else(|e| panic!("sandbox name {name:?}: {e}")),
        ..Default::default()
    }
}

/// A create request for `name` as a fork of `src` (its checkpoint `checkpoint`, else its
/// live state), disk only, every other field defaulted.
pub fn fork_req(name: &str, src: &str, checkpoint: Option<&str>) -> CreateSandbox {
    CreateSandbox {
        from: Some(burrow_client::api::ForkSource {
            sandbox: SandboxName::parse(src).unwrap_or_else(|e| panic!("sandbox name {src:?}: {e}")),
            checkpoint: checkpoint.map(str::to_owned),
            memory: false,
        }),
        ..create_req(name)
    }
}

/// Creates sandbox `name` with the daemon's defaults.
pub async fn create(c: &Client, name: &str) -> Sandbox {
    create_with(c, &create_req(name)).await
}

/// Creates a sandbox as `req` says.
pub async fn create_with(c: &Client, req: &CreateSandbox) -> Sandbox {
    c.create_sandbox(req)
        .await
        .unwrap_or_else(|e| panic!("create {}: {e}", req.name))
}

/// Creates a sandbox named `prefix-<random>` with the daemon's defaults; returns its name.
pub async fn create_unique(c: &Client, prefix: &str) -> String {
    let name = crate::unique_name(prefix);
    create(c, &name).await;
    name
}

/// An exec request running `script` under `sh -c`.
pub fn sh_req(script: &str) -> ExecRequest {
    ExecRequest {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// Runs `req` in `name`; the exit code is the caller's to judge (an API error panics).
pub async fn exec(c: &Client, name: &str, req: &ExecRequest) -> ExecResult {
    c.exec(name, req)
        .await
        .unwrap_or_else(|e| panic!("exec {:?} in {name}: {e}", req.cmd))
}

/// Runs `script` under `sh -c` in `name`; the exit code is the caller's to judge.
pub async fn sh(c: &Client, name: &str, script: &str) -> ExecResult {
    exec(c, name, &sh_req(script)).await
}

/// Runs `script` under `sh -c` in `name`: (exit code, stdout, stderr), for a test that looks
/// at all three.
pub async fn sh_parts(c: &Client, name: &str, script: &str) -> (i32, String, String) {
    let r = sh(c, name, script).await;
    (r.exit_code, r.stdout, r.stderr)
}

/// Runs `script` under `sh -c` in `name`, asserts it exits 0, and returns its stdout.
pub async fn sh_ok(c: &Client, name: &str, script: &str) -> String {
    exec_ok(c, name, &sh_req(script)).await
}

/// Runs `req` in `name`, asserts it exits 0, and returns its stdout.
pub async fn exec_ok(c: &Client, name: &str, req: &ExecRequest) -> String {
    let r = exec(c, name, req).await;
    assert_eq!(r.exit_code, 0, "{:?} in {name}: {r:?}", req.cmd);
    r.stdout
}

/// Polls `probe` every 50 ms until it returns `Ok`, for at most `patience`; then fails with
/// `what` and the last `Err` it returned (the state seen instead).
pub async fn poll<T, F, Fut>(what: &str, patience: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + patience;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out after {patience:?} waiting for {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls sandbox `name` (bounded by [`PATIENCE`]) until `ok` holds; returns it then.
pub async fn wait_for(c: &Client, name: &str, what: &str, ok: impl Fn(&Sandbox) -> bool) -> Sandbox {
    let ok = &ok;
    poll(&format!("{name} to become {what}"), PATIENCE, || async move {
        let sb = c
            .get_sandbox(name)
            .await
            .unwrap_or_else(|e| panic!("get {name}: {e}"));
        if ok(&sb) { Ok(sb) } else { Err(format!("{sb:?}")) }
    })
    .await
}

/// Polls sandbox `name` until its status is `want`.
pub async fn wait_status(c: &Client, name: &str, want: SandboxStatus) -> Sandbox {
    wait_for(c, name, &want.to_string(), |sb| sb.status == want).await
}

/// Whether the daemon runs VMs (QEMU and the guest kit installed). When it does not, the
/// caller returns early, or, under `BURROW_TEST_STRICT=1`, this fails the test with the
/// engine's own reason ([`crate::prerequisite`]).
pub async fn vm_available(c: &Client) -> bool {
    let v = c.version().await.unwrap_or_else(|e| panic!("version: {e}"));
    let vm = v
        .engines
        .iter()
        .find(|e| e.kind == EngineKind::Vm)
        .expect("the daemon lists the vm engine");
    crate::prerequisite(
        vm.available,
        &format!(
            "the vm engine is unavailable: {}",
            vm.detail.as_deref().unwrap_or("no detail")
        ),
    )
}

/// The limit on what the btrfs volume at `path` may reference (its qgroup's
/// `max_rfer`), as `btrfs qgroup show` reports it; `None` when it has none or btrfs says
/// nothing (no quotas, not a volume).
pub fn volume_limit(path: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("btrfs")
        .args(["qgroup", "show", "-f", "-r", "--raw"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("0/"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}
