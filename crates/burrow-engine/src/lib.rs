//! Isolation engines. An engine knows how to start a sandbox's agent (PID 1) isolated, stop
//! it, report whether it runs, and give the host a byte stream to the agent. Nothing else:
//! exec, files and services go through the agent, once, for every engine.
//!
//! Engines are synchronous (they drive runc/QEMU processes); callers run them on blocking
//! threads.

use std::path::PathBuf;
use std::time::Duration;

pub use burrow_api::EngineKind;

pub mod container;
#[cfg(feature = "fake")]
pub mod fake;
pub mod vm;
pub mod vm_guest;

pub use container::{ContainerConfig, ContainerEngine};

/// Everything an engine needs to start one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Stable id (`sb-…`), used for runtime names; never the user-facing name.
    pub id: String,
    /// Hostname inside the sandbox (the sandbox name).
    pub hostname: String,
    /// The sandbox's root tree (containers) on the pool.
    pub rootfs: PathBuf,
    /// Per-sandbox runtime directory on the host, outside the sandbox's filesystem: the
    /// engine keeps its bundle, the agent socket and the agent's (capped) log here.
    pub run_dir: PathBuf,
    pub resources: Resources,
    /// Host directories shared read-only with the sandbox, as (path inside, host path):
    /// its checkpoints and the directory holding its in-sandbox API socket.
    pub shared_dirs: Vec<(String, PathBuf)>,
    /// A network namespace made by the host to join; `None` = a new one with loopback only.
    pub netns: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources {
    /// CPU bandwidth in cores (0.5 = half a core).
    pub cpus: f64,
    pub memory_mb: u64,
    pub pids: u64,
}

/// Resource use of a running sandbox, from its cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub memory_bytes: u64,
    pub pids: u64,
    /// Processes the kernel's OOM killer killed in this sandbox since it started.
    pub oom_kills: u64,
    /// The process limit the kernel enforces (it can be lower than the configured one, see
    /// the container engine's open-file budget); `None` = unlimited or unknown.
    pub pids_limit: Option<u64>,
}

/// What the runtime says about a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeStatus {
    /// Its init (the agent) runs; `pid` is the host pid.
    Running { pid: u32 },
    /// Frozen (cgroup freezer).
    Paused { pid: u32 },
    /// Known to the runtime but not running (exited).
    Stopped,
    /// Unknown to the runtime.
    Missing,
}

/// Whether a sandbox's init (the agent) still runs, as [`Engine::liveness`] tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// It runs (possibly frozen).
    Alive,
    /// It is gone. `how` says how it ended where the engine knows ("killed by signal 9
    /// (SIGKILL)", "exited with status 1").
    Dead { how: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("engine {0} is not available on this host: {1}")]
    Unavailable(&'static str, String),
    #[error("{cmd} failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid sandbox spec: {0}")]
    Spec(String),
    #[error("engine {engine} does not support {op}")]
    Unsupported { engine: &'static str, op: &'static str },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What an engine can do beyond starting and stopping, so callers ask before they try
/// instead of learning it from an `Unsupported` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `freeze`/`thaw`: every process stopped in place, memory kept (warm sleep).
    pub freeze: bool,
    /// Guest memory saved to a file and resumed from it (sleep and checkpoints that keep
    /// processes).
    pub memory_snapshot: bool,
    /// Host directories shared into the sandbox (`SandboxSpec::shared_dirs`).
    pub shared_dirs: bool,
    /// The engine cannot signal the sandbox's processes itself: a graceful stop asks the
    /// agent to shut down first, then `stop` waits for the sandbox to end.
    pub agent_shutdown: bool,
    /// The agent channel carries one connection at a time and cannot tell a new one from
    /// the rest of an old one (virtio-serial): a handshake that stalls is given up, and
    /// retried after a pause in which the agent sees the hangup.
    pub one_connection: bool,
    /// The sandbox has its own kernel and page cache: a consistent disk snapshot asks the
    /// agent to write it out first.
    pub own_kernel: bool,
}

/// How a sandbox's disk lives in its pool volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// The volume is the root tree itself (containers).
    Tree,
    /// The volume holds a filesystem image file, [`DISK_IMAGE`] (VMs).
    Image,
}

/// The disk image's file name inside a sandbox volume of [`DiskKind::Image`].
/// How the host reaches a sandbox's agent: each `dial` opens one byte stream to it (the
/// host speaks the agent protocol over it). An engine may serve the channel however it
/// likes; a vsock-style transport (a unix socket plus a `CONNECT port` preamble) would be
/// one more variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentDialer {
    /// A unix socket on the host: the container agent's own listener, or the QEMU chardev
    /// that carries a VM's virtio-serial port.
    Unix(PathBuf),
}

/// A byte stream to an agent.
pub trait AgentIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsFd + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + std::os::fd::AsFd + Send + Unpin> AgentIo for T {}

impl AgentDialer {
    /// Opens one byte stream to the agent.
    pub async fn dial(&self) -> std::io::Result<Box<dyn AgentIo>> {
        match self {
            Self::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        }
    }

    /// The host file the channel needs (for diagnostics: "it was deleted").
    pub fn endpoint(&self) -> &std::path::Path {
        match self {
            Self::Unix(path) => path,
        }
    }
}

pub const DISK_IMAGE: &str = "disk.img";

/// The engine-specific part of a sandbox's life.
pub trait Engine: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> EngineKind;
    /// One line for `/v1/version` and `burrow info` (runtime, accelerator, versions).
    fn describe(&self) -> String;
    fn capabilities(&self) -> Capabilities;
    fn disk_kind(&self) -> DiskKind {
        DiskKind::Tree
    }
    /// Makes what sandboxes of this engine are created from out of an image's root tree:
    /// nothing for engines whose disk is the tree; for [`DiskKind::Image`] engines, writes
    /// the disk image into the existing directory `out` (done once per image and cached
    /// by the caller).
    fn prepare_image(&self, tree: &std::path::Path, out: &std::path::Path) -> Result<()> {
        let _ = (tree, out);
        Ok(())
    }
    /// Starts the sandbox's agent as its init. When this returns Ok, the agent's channel
    /// (`agent_dialer`) accepts connections (the engine creates its host end before the
    /// sandbox starts: a listening socket handed to a container's agent, QEMU's chardev).
    fn start(&self, spec: &SandboxSpec) -> Result<()>;
    /// Stops every process of the sandbox and releases runtime resources (not its disk).
    /// `grace` is how long processes get after SIGTERM. Idempotent: stopping a stopped or
    /// unknown sandbox is Ok.
    fn stop(&self, id: &str, grace: Duration) -> Result<()>;
    fn status(&self, id: &str) -> Result<RuntimeStatus>;
    /// Ids of every sandbox the runtime knows (running or not), for reconciliation.
    fn list(&self) -> Result<Vec<String>>;
    /// Takes charge again of a sandbox that runs already (after a daemon restart): the
    /// engine's host-side helpers, such as the drain of the agent's output, re-attach to it.
    /// Idempotent; a sandbox that does not run is left alone.
    fn adopt(&self, id: &str) -> Result<()> {
        let _ = id;
        Ok(())
    }
    /// Freezes every process of the sandbox (memory kept); for warm sleep and checkpoints.
    fn freeze(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(EngineError::Unsupported {
            engine: self.kind().as_str(),
            op: "freeze",
        })
    }
    /// Current resource use; `None` when the sandbox does not run.
    fn stats(&self, id: &str) -> Option<Stats> {
        let _ = id;
        None
    }
    /// Undoes `freeze`.
    fn thaw(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(EngineError::Unsupported {
            engine: self.kind().as_str(),
            op: "thaw",
        })
    }
    /// Whether the init of sandbox `id` still runs. Meant to be asked often (every second
    /// for every running sandbox): an engine answers from a handle it keeps when it can.
    /// A frozen sandbox is alive.
    fn liveness(&self, id: &str) -> Result<Liveness> {
        Ok(match self.status(id)? {
            RuntimeStatus::Running { .. } | RuntimeStatus::Paused { .. } => Liveness::Alive,
            RuntimeStatus::Stopped | RuntimeStatus::Missing => Liveness::Dead { how: None },
        })
    }
    /// Saves the sandbox's memory and device state into its volume and ends its runtime
    /// (memory sleep): no process left on the host, nothing lost in the guest. The next
    /// `start` resumes it. Only for engines with `capabilities().memory_snapshot`.
    /// `hang_up` drops the host's agent channel; the engine calls it when it is ready to see
    /// the guest notice (a one-connection channel must not be saved mid-conversation).
    fn suspend(&self, id: &str, hang_up: &(dyn Fn() + Send + Sync)) -> Result<()> {
        let _ = (id, hang_up);
        Err(EngineError::Unsupported {
            engine: self.kind().as_str(),
            op: "suspend",
        })
    }
    /// Whether the sandbox volume at `volume` holds a saved state that `start` resumes.
    fn suspended(&self, volume: &std::path::Path) -> bool {
        let _ = volume;
        false
    }
    /// Drops a saved state, so the next `start` boots afresh (after `stop`).
    fn discard_suspended(&self, volume: &std::path::Path) -> Result<()> {
        let _ = volume;
        Ok(())
    }
    /// Grows the disk of the sandbox whose volume is `volume` to `bytes` (never shrinks
    /// it). `Ok(true)`: the sandbox runs and its device grew at once, so its agent must
    /// grow the filesystem (`GrowFs`); `Ok(false)`: nothing more to do now (a tree disk,
    /// whose limit is the pool's quota, or an image disk that grows at the next boot).
    fn grow_disk(&self, id: &str, volume: &std::path::Path, bytes: u64) -> Result<bool> {
        let _ = (id, volume, bytes);
        Ok(false)
    }
    /// Gives a running sandbox a new hostname and new cpu and memory limits in place, without
    /// restarting anything: how a pre-started sandbox becomes the one a create asked for.
    /// `Ok(false)`: this engine cannot (the caller starts a fresh sandbox instead). The pids
    /// limit is not changed (the agent's file limit was derived from it at start).
    fn reassign(
        &self,
        id: &str,
        run_dir: &std::path::Path,
        hostname: &str,
        resources: &Resources,
    ) -> Result<bool> {
        let _ = (id, run_dir, hostname, resources);
        Ok(false)
    }
    /// Puts the tree at `new_root` under the running sandbox `id` as its root filesystem,
    /// in place: the mounts the engine made (`/proc`, `/dev`, the agent's, ...) move over,
    /// the old root is detached. The caller has had the agent end every other process
    /// first (`Quiesce`) and has it re-execute itself after (`Reexec`). `rebinds` (path
    /// inside, host path): binds made read-only in place of the ones at those paths, which
    /// do not move over. `Unsupported` where the engine cannot (the caller restarts the
    /// sandbox on the new root instead).
    fn replace_root(
        &self,
        id: &str,
        new_root: &std::path::Path,
        rebinds: &[(String, std::path::PathBuf)],
    ) -> Result<()> {
        let _ = (id, new_root, rebinds);
        Err(EngineError::Unsupported {
            engine: self.kind().as_str(),
            op: "replace_root",
        })
    }
    /// Starts reading, in the background, the files nearly every first command in a root
    /// tree made moments ago (a fork's or a restore's snapshot) reads: its loader, C library
    /// and shells. A fresh snapshot's files share their data with the source but not its
    /// page cache, so the first command would otherwise wait for each page of them, one
    /// fault at a time. Best effort; blocking (call it off the async workers).
    fn prefetch_root(&self, root: &std::path::Path) {
        let _ = root;
    }
    /// How long the agent may take to answer after `start` (a VM boots a kernel first).
    fn ready_timeout(&self) -> Duration {
        Duration::from_secs(15)
    }
    /// How the host opens a byte stream to the agent of the sandbox whose run dir is
    /// `run_dir`.
    fn agent_dialer(&self, run_dir: &std::path::Path) -> AgentDialer {
        AgentDialer::Unix(run_dir.join("agent.sock"))
    }
    /// The last `max` bytes the sandbox wrote to its output log (the agent's; a VM's
    /// console): what it said before it failed to answer. The guest's words, shown to its
    /// owner, never parsed.
    fn output_tail(&self, run_dir: &std::path::Path, max: usize) -> String {
        container::runc::tail(&run_dir.join(container::agent_log::LOG_FILE), max)
    }
}
