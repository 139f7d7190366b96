//! Test support for the container engine: a busybox root tree owned by the sandbox's uid
//! range, an engine per test with its own runc root and cgroup parent, and a guard that
//! stops the sandbox and removes everything even when the test fails.

#![allow(dead_code)]

pub mod agent;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use burrow_engine::{ContainerConfig, ContainerEngine, Engine, Resources, RuntimeStatus, SandboxSpec};

pub const UID_BASE: u32 = 2_000_000;
pub const BUSYBOX: &str = "/bin/busybox";

/// Whether this host can run the real tests (root, runc, busybox-static). When not, the test
/// prints why and passes, unless BURROW_TEST_STRICT is set (CI hosts set up for them).
pub fn host_ready() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        "not root"
    } else if !Path::new(BUSYBOX).exists() {
        "no /bin/busybox (apt-get install busybox-static)"
    } else {
        return true;
    };
    skip(why)
}

fn skip(why: &str) -> bool {
    burrow_testkit::prerequisite(false, why)
}

/// An engine running the real agent, when the host and the agent build are ready.
pub fn agent_engine() -> Option<TestEngine> {
    if !host_ready() {
        return None;
    }
    match agent_bin() {
        Some(bin) => Some(TestEngine::with_agent(&bin)),
        None => {
            skip("agent not built (cargo build -p burrow-agent --target x86_64-unknown-linux-musl)");
            None
        }
    }
}

/// lchown every entry under `root` (and `root`) to `uid`:`uid`.
pub fn chown_tree(root: &Path, uid: u32) {
    let id = Some(uid);
    std::os::unix::fs::lchown(root, id, id).unwrap();
    if root.is_symlink() || !root.is_dir() {
        return;
    }
    for entry in std::fs::read_dir(root).unwrap() {
        chown_tree(&entry.unwrap().path(), uid);
    }
}

/// A minimal root tree: static busybox with its applet links, /etc/passwd and /etc/group,
/// the usual empty directories, owned by the sandbox's root (host `uid_base`).
pub fn busybox_rootfs(root: &Path, uid_base: u32) {
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev", "tmp", "var/tmp",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .unwrap();
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        let link = root.join(applet);
        if applet != "bin/busybox" && !link.exists() {
            symlink("/bin/busybox", link).unwrap();
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n").unwrap();
    for tmp in ["tmp", "var/tmp"] {
        std::fs::set_permissions(root.join(tmp), std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    chown_tree(root, uid_base);
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique sandbox id for this test process.
pub fn unique_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One engine with private runc root and cgroup parent, in a temporary directory.
pub struct TestEngine {
    pub engine: Arc<ContainerEngine>,
    pub dir: tempfile::TempDir,
}

/// The static agent, if built (`cargo build -p burrow-agent --target x86_64-unknown-linux-musl`).
pub fn agent_bin() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let p = target.join("x86_64-unknown-linux-musl/debug/burrow-agent");
    p.exists().then_some(p)
}

impl TestEngine {
    /// An engine whose sandboxes run `init` (an argv inside the busybox root) instead of the agent.
    pub fn with_init(init: &[&str]) -> Self {
        Self::build(
            Path::new(BUSYBOX),
            Some(init.iter().map(|s| (*s).to_owned()).collect()),
        )
    }

    pub fn with_agent(agent: &Path) -> Self {
        Self::build(agent, None)
    }

    fn build(agent_bin: &Path, init_args: Option<Vec<String>>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("burrow-eng-")
            .tempdir_in("/tmp")
            .unwrap();
        // The sandbox's root (an unprivileged host uid) must traverse to its root tree.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let mut cfg = ContainerConfig::new(dir.path().join("runc"), agent_bin);
        cfg.uid_base = UID_BASE;
        cfg.cgroup_parent = unique_id("burrow-test");
        cfg.init_args = init_args;
        let engine = Arc::new(ContainerEngine::new(cfg).unwrap());
        Self { engine, dir }
    }

    /// A spec for a new sandbox with a fresh busybox root tree.
    pub fn spec(&self, name: &str, resources: Resources) -> SandboxSpec {
        let id = unique_id("sb");
        let base = self.dir.path().join(&id);
        let rootfs = base.join("root");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o711)).unwrap();
        busybox_rootfs(&rootfs, UID_BASE);
        SandboxSpec {
            id,
            hostname: name.to_owned(),
            rootfs,
            run_dir: base.join("run"),
            resources,
            shared_dirs: Vec::new(),
            netns: None,
        }
    }

    /// Starts `spec`; the returned guard stops it on drop.
    pub fn start(&self, spec: SandboxSpec) -> Running {
        let guard = Running {
            engine: self.engine.clone(),
            spec,
        };
        self.engine.start(&guard.spec).unwrap();
        guard
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        // runc removes each sandbox's cgroup; the per-engine parent is ours to remove.
        for dir in self.engine.cgroup_dirs("x") {
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

pub const SMALL: Resources = Resources {
    cpus: 1.0,
    memory_mb: 256,
    pids: 128,
};

/// A started sandbox; stopped (KILL) when dropped, whatever the test's outcome.
pub struct Running {
    pub engine: Arc<ContainerEngine>,
    pub spec: SandboxSpec,
}

impl Running {
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    pub fn pid(&self) -> u32 {
        match self.engine.status(self.id()).unwrap() {
            RuntimeStatus::Running { pid } => pid,
            other => panic!("{} is {other:?}; agent log: {}", self.id(), self.log()),
        }
    }

    /// Connects to the sandbox's agent (handshake included).
    pub fn agent(&self) -> agent::Agent {
        agent::Agent::connect(self.engine.agent_dialer(&self.spec.run_dir).endpoint())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.spec.run_dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = self.engine.stop(&self.spec.id, Duration::ZERO) {
            eprintln!("cleanup of {}: {e}", self.spec.id);
        }
    }
}

/// Polls `cond` until it holds or `timeout` passes; for effects with no event to wait on.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `Uid:` line of /proc/<pid>/status: real, effective, saved, fs.
pub fn host_uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect()
}
