//! Resource bounds of a sandbox, checked from inside real sandboxes (docs/threat-model.md):
//! an out-of-memory sandbox loses user processes, never its agent (PID 1); a sandbox's open
//! files are a bounded share of the host's file table.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, ExecRequest, ExecResult, SandboxName};
use burrow_testkit::burrow_client::{Client, Method};
use burrow_testkit::{shared, unique_name};
use serde_json::json;

const MIB: u64 = 1024 * 1024;
/// What the engine keeps back for the agent in a 512 MiB (and a 256 MiB) sandbox: an eighth
/// of the limit, at least 8 MiB, at most 32 MiB.
const RESERVE: u64 = 32 * MIB;
/// Upper bound of every wait-for-condition below (loops exit as soon as it holds).
const PATIENCE: Duration = Duration::from_secs(60);

async fn make(c: &Client, f: impl FnOnce(&mut CreateSandbox)) -> burrow_api::Sandbox {
    let mut req = CreateSandbox {
        name: SandboxName::parse(&unique_name("res")).unwrap(),
        ..Default::default()
    };
    f(&mut req);
    c.create_sandbox(&req).await.expect("create")
}

async fn exec(c: &Client, name: &str, script: &str, user: Option<&str>) -> ExecResult {
    let req = ExecRequest {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        user: user.map(str::to_owned),
        timeout_s: Some(120.0),
        ..Default::default()
    };
    c.exec(name, &req)
        .await
        .unwrap_or_else(|e| panic!("exec {script}: {e}"))
}

async fn sh(c: &Client, name: &str, script: &str) -> ExecResult {
    exec(c, name, script, None).await
}

/// Host pid of the sandbox's init (the agent), as runc reports it.
fn agent_host_pid(data_dir: &Path, id: &str) -> Option<u32> {
    let out = std::process::Command::new("runc")
        .args(["--root", data_dir.join("runc").to_str().unwrap(), "state", id])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    (v["status"] == "running").then(|| v["pid"].as_u64().unwrap() as u32)
}

/// The `memory` line of a `/proc/<pid>/cgroup` (v1: `N:memory:/path`), as the path.
fn memory_cgroup(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "memory").then_some(path)
    })
}

/// The host's memory cgroup directory of the sandbox, from its agent's `/proc/<pid>/cgroup`.
/// `None` where the host has no v1 memory hierarchy (these tests need one).
fn sandbox_memory_dir(agent_pid: u32) -> Option<PathBuf> {
    let cg = std::fs::read_to_string(format!("/proc/{agent_pid}/cgroup")).ok()?;
    let rel = memory_cgroup(&cg)?;
    Some(Path::new("/sys/fs/cgroup/memory").join(rel.trim_start_matches('/')))
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

fn pids_in(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// The v1 memory cgroup of the sandbox, or a skip (a failure under BURROW_TEST_STRICT).
fn v1_memory_dir_or_skip(agent_pid: u32) -> Option<PathBuf> {
    let dir = sandbox_memory_dir(agent_pid).filter(|d| d.join("memory.limit_in_bytes").exists());
    burrow_testkit::prerequisite(
        dir.is_some(),
        "no cgroup v1 memory hierarchy: the payload cgroup exists only there",
    );
    dir
}

async fn oom_kills(c: &Client, name: &str) -> u64 {
    c.get_sandbox(name)
        .await
        .unwrap()
        .usage
        .expect("usage of a running sandbox")
        .oom_kills
}

/// Memory charged to the sandbox's cgroup but not to its payload: the agent's own (v1
/// usage is hierarchical). It must stay within the agent's reserve.
fn assert_agent_within_reserve(mem: &Path, reserve: u64, what: &str) {
    let total = read_u64(&mem.join("memory.usage_in_bytes"));
    let payload = read_u64(&mem.join("payload/memory.usage_in_bytes"));
    let own = total.saturating_sub(payload);
    eprintln!("{what}: sandbox {total} B, payload {payload} B, agent's own {own} B");
    assert!(
        own < reserve,
        "{what}: the agent's own charge {own} B is past its reserve"
    );
}

/// The agent is alive, still the same process, still PID 1, and serves an exec.
async fn assert_agent_survived(
    c: &Client,
    data_dir: &Path,
    sb: &burrow_api::Sandbox,
    agent: u32,
    what: &str,
) {
    assert_eq!(
        agent_host_pid(data_dir, &sb.id),
        Some(agent),
        "{what}: the sandbox's init is gone or was replaced"
    );
    let r = sh(c, &sb.name, "tr '\\0' ' ' < /proc/1/cmdline; echo; echo alive").await;
    assert!(
        r.stdout.starts_with("/.burrow/agent ") && r.stdout.ends_with("alive\n"),
        "{what}: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn user_processes_run_in_the_payload_cgroup_and_the_agent_does_not() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |r| r.memory_mb = Some(512)).await;
    let agent = agent_host_pid(&d.data_dir, &sb.id).expect("running");
    let Some(mem) = v1_memory_dir_or_skip(agent) else {
        return;
    };
    let payload = mem.join("payload");

    // Inside (a cgroup namespace rooted at the sandbox's cgroup): an exec, as root and as an
    // unprivileged user, and what it starts in the background are in /payload; the agent
    // (PID 1) is at the sandbox's root: the same probe tells them apart.
    let probe = "grep :memory: /proc/self/cgroup; sleep 30 & grep :memory: /proc/$!/cgroup; \
                 grep :memory: /proc/1/cgroup; id -u; kill $!";
    for user in [None, Some("nobody")] {
        let r = exec(&c, &sb.name, probe, user).await;
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines.len(), 4, "{user:?}: {r:?}");
        assert_eq!(
            memory_cgroup(lines[0]),
            Some("/payload"),
            "exec as {user:?}: {r:?}"
        );
        assert_eq!(
            memory_cgroup(lines[1]),
            Some("/payload"),
            "its child, {user:?}: {r:?}"
        );
        assert_eq!(memory_cgroup(lines[2]), Some("/"), "the agent: {r:?}");
        assert_eq!(lines[3], if user.is_some() { "65534" } else { "0" });
    }

    // Root inside can neither push the agent into the payload (the agent's fd cannot be
    // reopened through /proc/1/fd) nor leave the payload (the cgroup filesystem is
    // read-only); both writes fail and nothing moved.
    let r = sh(
        &c,
        &sb.name,
        "echo 1 > /proc/1/fd/4; echo \"agent: $?\"; \
         echo $$ > /sys/fs/cgroup/memory/cgroup.procs; echo \"out: $?\"; \
         grep :memory: /proc/1/cgroup /proc/self/cgroup",
    )
    .await;
    // dash: status 2 for a redirection that fails.
    assert!(
        r.stdout.contains("agent: 2\n") && r.stdout.contains("out: 2\n"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("Permission denied") && r.stderr.contains("Read-only file system"),
        "{r:?}"
    );
    let cgs: Vec<&str> = r
        .stdout
        .lines()
        .skip(2)
        .filter_map(|l| l.rsplit(':').next())
        .collect();
    assert_eq!(cgs, ["/", "/payload"], "{r:?}");

    // A service is started by the agent the same way.
    let svc = format!("/v1/sandboxes/{}/services/sleeper", sb.name);
    c.request_json::<serde_json::Value, _>(Method::PUT, &svc, Some(&json!({"cmd": ["sleep", "1000"]})))
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    let svc_pid = loop {
        let v: serde_json::Value = c.get_json(&svc).await.unwrap();
        if v["status"] == "running" {
            break v["pid"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "service never ran: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r = sh(&c, &sb.name, &format!("grep :memory: /proc/{svc_pid}/cgroup")).await;
    assert_eq!(memory_cgroup(&r.stdout), Some("/payload"), "service: {r:?}");

    // On the host: the payload's limit keeps the agent's reserve back from the sandbox's.
    assert_eq!(read_u64(&mem.join("memory.limit_in_bytes")), 512 * MIB);
    assert_eq!(
        read_u64(&payload.join("memory.limit_in_bytes")),
        512 * MIB - RESERVE
    );
    if mem.join("memory.memsw.limit_in_bytes").exists() {
        assert_eq!(
            read_u64(&payload.join("memory.memsw.limit_in_bytes")),
            512 * MIB - RESERVE
        );
    }
    assert!(
        pids_in(&mem).contains(&agent),
        "the agent is in the sandbox's cgroup"
    );
    assert!(
        !pids_in(&payload).contains(&agent),
        "the agent is not in the payload"
    );
    assert!(!pids_in(&payload).is_empty(), "the service is in the payload");

    // Deleting the sandbox removes both cgroups.
    c.delete_sandbox(&sb.name).await.unwrap();
    assert!(!payload.exists(), "{} left behind", payload.display());
    assert!(!mem.exists(), "{} left behind", mem.display());
}

/// The issue's scenario: a fork bomb of Python processes, each holding 32 MiB, 1.25 GiB in
/// all, in a 512 MiB sandbox (bounded: 40 processes, released after at most 60 s).
#[tokio::test(flavor = "multi_thread")]
async fn python_memory_fork_bomb_kills_user_processes_not_the_agent() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |r| r.memory_mb = Some(512)).await;
    let agent = agent_host_pid(&d.data_dir, &sb.id).expect("running");
    let Some(mem) = v1_memory_dir_or_skip(agent) else {
        return;
    };
    let before = oom_kills(&c, &sb.name).await;
    // Each child allocates (and touches) 32 MiB, says so on a pipe, and holds it until the
    // parent closes the release pipe. The parent waits until every child is ready or dead.
    let bomb = r#"
import os, select, time
N = 40
ready_r, ready_w = os.pipe()
release_r, release_w = os.pipe()
kids = []
for i in range(N):
    pid = os.fork()
    if pid == 0:
        os.close(ready_r); os.close(release_w)
        hog = b"x" * (32 << 20)
        os.write(ready_w, b"r")
        os.read(release_r, 1)
        os._exit(0)
    kids.append(pid)
os.close(ready_w); os.close(release_r)
ready = 0
status = {}
deadline = time.monotonic() + 60
while ready + len(status) < N and time.monotonic() < deadline:
    r, _, _ = select.select([ready_r], [], [], 0.1)
    if r:
        ready += len(os.read(ready_r, 64))
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        status[pid] = st
os.close(release_w)
for pid in kids:
    if pid not in status:
        status[pid] = os.waitpid(pid, 0)[1]
killed = sum(1 for st in status.values() if os.WIFSIGNALED(st) and os.WTERMSIG(st) == 9)
print("ready", ready, "killed", killed)
"#;
    let r = sh(&c, &sb.name, &format!("python3 -c '{bomb}'")).await;
    assert_agent_survived(&c, &d.data_dir, &sb, agent, "after the fork bomb").await;
    assert_agent_within_reserve(&mem, RESERVE, "after the fork bomb");
    // Positive control: the OOM killer really ran, and what it killed were the bomb's processes.
    let after = oom_kills(&c, &sb.name).await;
    assert!(after > before, "no OOM kill ({before} -> {after}): {r:?}");
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"ready"), "{r:?}");
    let killed: u64 = words[3].parse().unwrap();
    assert!(killed >= 1, "no child was SIGKILLed: {r:?}");
    // At most ~14 children holding 32 MiB fit in the payload's 480 MiB.
    assert!(killed >= 20, "only {killed} of 40 killed: {r:?}");
    c.delete_sandbox(&sb.name).await.unwrap();
}

/// Memory the OOM killer does not see in any process's RSS (a memfd here; pipes, sockets and
/// other kernel memory alike) makes the agent the biggest process of its sandbox: without a
/// reserve of its own, the agent is the one killed, and with it the whole sandbox.
#[tokio::test(flavor = "multi_thread")]
async fn oom_from_memory_outside_rss_kills_the_writer_not_the_agent() {
    let d = shared();
    let c = d.client();
    // The daemon's smallest sandbox (32 MiB: an 8 MiB reserve) and a 512 MiB one (32 MiB).
    for (memory_mb, reserve) in [(32, 8 * MIB), (512, RESERVE)] {
        let sb = make(&c, |r| r.memory_mb = Some(memory_mb)).await;
        let agent = agent_host_pid(&d.data_dir, &sb.id).expect("running");
        let Some(mem) = v1_memory_dir_or_skip(agent) else {
            return;
        };
        let what = format!("after the memfd hog in {memory_mb} MiB");
        let before = oom_kills(&c, &sb.name).await;
        // `head` (about 1 MiB RSS) copies 1 GiB of zeros into a memfd it holds alone: the
        // tmpfs pages are charged to its cgroup but are in nobody's RSS.
        let hog = r#"exec python3 -c '
import os
fd = os.memfd_create("hog", 0)
os.dup2(fd, 1)
os.execvp("head", ["head", "-c", str(1 << 30), "/dev/zero"])
'"#;
        let r = c
            .exec(
                &sb.name,
                &ExecRequest {
                    cmd: vec!["sh".into(), "-c".into(), hog.into()],
                    timeout_s: Some(120.0),
                    ..Default::default()
                },
            )
            .await;
        assert_agent_survived(&c, &d.data_dir, &sb, agent, &what).await;
        assert_agent_within_reserve(&mem, reserve, &what);
        let r = r.expect("the exec's result");
        assert_eq!(
            r.signal.as_deref(),
            Some("KILL"),
            "{what}: the writer was OOM-killed: {r:?}"
        );
        let after = oom_kills(&c, &sb.name).await;
        assert!(after > before, "{what}: no OOM kill ({before} -> {after}): {r:?}");
        c.delete_sandbox(&sb.name).await.unwrap();
    }
}

/// The engine's bound, restated: a sandbox may hold `fs.file-max / 8` open files
/// (`pids × nofile` at most); NOFILE is that over the pids limit, at least 1024 (then the
/// pids limit is lowered to fit), at most what the host allows (the daemon's hard limit
/// without CAP_SYS_RESOURCE, as here; `fs.nr_open`; 2^20).
fn expected_file_limits(pids: u64) -> (u64, u64) {
    let file_max: u64 = std::fs::read_to_string("/proc/sys/fs/file-max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let host_max = hard.min(nr_open).min(1 << 20);
    let budget = file_max / 8;
    let nofile = (budget / pids).clamp(1024.min(host_max), host_max);
    (nofile, pids.min((budget / nofile).max(16)))
}

#[tokio::test(flavor = "multi_thread")]
async fn open_files_are_a_bounded_share_of_the_hosts() {
    let d = shared();
    let c = d.client();
    let file_max: u64 = std::fs::read_to_string("/proc/sys/fs/file-max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The daemon's defaults (4096 pids) and a small sandbox.
    for pids in [None, Some(64)] {
        let sb = make(&c, |r| {
            r.pids = pids;
            r.memory_mb = Some(512);
        })
        .await;
        let (nofile, pids_limit) = expected_file_limits(sb.config.pids);
        let r = sh(
            &c,
            &sb.name,
            "ulimit -n; ulimit -Hn; cat /sys/fs/cgroup/pids/pids.max",
        )
        .await;
        let got: Vec<u64> = r.stdout.lines().map(|l| l.trim().parse().unwrap()).collect();
        assert_eq!(
            got,
            [nofile, nofile, pids_limit],
            "pids {:?}: {r:?}",
            sb.config.pids
        );
        assert!(
            got[0] * got[2] <= file_max / 8,
            "{} processes × {} files exceeds an eighth of fs.file-max ({file_max})",
            got[2],
            got[0]
        );

        // The user sees the limit in force, not only the configured one.
        let info = c.get_sandbox(&sb.name).await.unwrap();
        assert_eq!(
            info.usage.and_then(|u| u.pids_limit),
            Some(pids_limit),
            "info shows the pids limit in force: {:?}",
            info.usage
        );

        // From inside: a process opening files stops at the bound with EMFILE; the same loop
        // with a cap 32 below the bound gets all of them (the control).
        let open_loop = |cap: u64| {
            format!(
                "python3 -c '
import os
fds = []
try:
    while len(fds) < {cap}:
        fds.append(os.open(\"/dev/null\", os.O_RDONLY))
    print(\"opened\", len(fds), \"max\", max(fds))
except OSError as e:
    print(\"stopped\", len(fds), \"max\", max(fds), e.errno)
'"
            )
        };
        let r = sh(&c, &sb.name, &open_loop(nofile + 100)).await;
        let w: Vec<&str> = r.stdout.split_whitespace().collect();
        assert_eq!(w.first(), Some(&"stopped"), "{r:?}");
        assert_eq!(w[4], "24", "EMFILE: {r:?}");
        assert_eq!(w[3].parse::<u64>().unwrap(), nofile - 1, "the highest fd: {r:?}");
        let r = sh(&c, &sb.name, &open_loop(nofile - 32)).await;
        let w: Vec<&str> = r.stdout.split_whitespace().collect();
        assert_eq!(w[..2], ["opened".to_string(), (nofile - 32).to_string()], "{r:?}");
        // The host is fine.
        assert!(std::fs::File::open("/proc/sys/fs/file-nr").is_ok());
        assert!(c.health().await.is_ok());
        c.delete_sandbox(&sb.name).await.unwrap();
    }
}

/// The payload cgroup exists whenever the agent runs: it outlives a daemon crash with the
/// sandbox (adopted on the next start), and every later start of the sandbox makes it again.
#[tokio::test(flavor = "multi_thread")]
async fn every_agent_start_has_its_payload_cgroup() {
    let d = burrow_testkit::Daemon::start();
    let c = d.client();
    let sb = make(&c, |r| r.memory_mb = Some(256)).await;
    let agent = agent_host_pid(&d.data_dir, &sb.id).expect("running");
    let Some(mem) = v1_memory_dir_or_skip(agent) else {
        return;
    };
    let probe = "grep :memory: /proc/self/cgroup; grep :memory: /proc/1/cgroup";
    let check = |what: &'static str| {
        let c = c.clone();
        let name = sb.name.clone();
        let mem = mem.clone();
        async move {
            let r = sh(&c, &name, probe).await;
            let lines: Vec<&str> = r.stdout.lines().collect();
            assert_eq!(
                lines.iter().map(|l| memory_cgroup(l)).collect::<Vec<_>>(),
                [Some("/payload"), Some("/")],
                "{what}: {r:?}"
            );
            assert_eq!(
                read_u64(&mem.join("payload/memory.limit_in_bytes")),
                256 * MIB - RESERVE,
                "{what}"
            );
        }
    };
    check("first start").await;

    d.kill9();
    d.restart();
    assert_eq!(
        agent_host_pid(&d.data_dir, &sb.id),
        Some(agent),
        "adopted, not restarted"
    );
    check("after a daemon crash").await;

    for action in ["stop", "start", "restart"] {
        c.sandbox_action(&sb.name, action).await.unwrap();
    }
    let again = agent_host_pid(&d.data_dir, &sb.id).expect("running again");
    assert_ne!(again, agent, "a new agent");
    check("after stop, start and restart").await;
    c.delete_sandbox(&sb.name).await.unwrap();
    assert!(!mem.exists(), "{} left behind", mem.display());
}
