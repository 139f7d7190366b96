//! The `container` engine: the sandbox's agent runs as PID 1 of a runc container with its own
//! pid, mount, ipc, uts, network, user and cgroup namespaces, root mapped to an unprivileged
//! host uid range, a seccomp allowlist and cgroup limits (v1 or v2 hosts).
//!
//! The agent channel: the engine creates the agent's listening unix socket on the host
//! (`run_dir/agent.sock`, outside the sandbox's filesystem) and hands the listening fd to the
//! agent through runc (`--preserve-fds`); the host connects by path, now or after a restart.
//! Containers are started detached and never are children of the daemon: they outlive it
//! and are adopted on the next start (`list`, `status`).
//!
//! The agent's stdout and stderr: a FIFO in the run dir that the engine drains into a capped
//! `agent.log` (`agent_log`), re-attached by `adopt` after a restart; nothing the sandbox
//! does can grow a host file past that cap.
//!
//! This module must never run anything inside a sandbox: that is the agent's job.

pub mod agent_log;
pub mod lxcfs;
pub mod oci;
mod root;
pub mod runc;
pub mod seccomp;
mod sys;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::{Engine, EngineError, EngineKind, Liveness, Resources, Result, RuntimeStatus, SandboxSpec};
use runc::{RunArgs, Runc};

/// How long the sandbox's init gets to die after SIGKILL before `runc delete --force` is
/// left to finish the job.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How long a stop or a failed start waits for the agent log drain to copy the last output.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The child cgroup (of the sandbox's, in the v1 memory hierarchy) every process the agent
/// starts runs in; see [`oci::payload_memory_limit`].
pub const PAYLOAD_CGROUP: &str = "payload";

#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// The runc binary; a bare name is looked up on PATH.
    pub runc_bin: PathBuf,
    /// runc's state directory (`--root`). One per daemon, so several daemons can coexist.
    pub runc_root: PathBuf,
    /// The static `burrow-agent` binary on the host, bind-mounted into every sandbox.
    pub agent_bin: PathBuf,
    /// First host uid (and gid) of the range sandbox ids map to; uid 0 inside is `uid_base`.
    pub uid_base: u32,
    pub uid_count: u32,
    /// cgroup (relative to every hierarchy's root) under which sandboxes get theirs.
    pub cgroup_parent: String,
    /// Replaces the agent's command line as the sandbox's init. Tests only: without the
    /// agent nothing answers on the agent socket.
    pub init_args: Option<Vec<String>>,
    /// The host's lxcfs: sandboxes see their own limits and uptime in `/proc` and
    /// `/sys/devices/system/cpu` while it is mounted (see [`lxcfs`]). `None`: the kernel's
    /// files, which describe the host.
    pub lxcfs: Option<std::sync::Arc<lxcfs::Lxcfs>>,
}

impl ContainerConfig {
    /// Defaults for everything but where runc keeps state and where the agent is.
    pub fn new(runc_root: impl Into<PathBuf>, agent_bin: impl Into<PathBuf>) -> Self {
        Self {
            runc_bin: PathBuf::from("runc"),
            runc_root: runc_root.into(),
            agent_bin: agent_bin.into(),
            uid_base: 2_000_000,
            uid_count: 65536,
            cgroup_parent: "burrow".to_owned(),
            init_args: None,
            lxcfs: None,
        }
    }
}

/// Which cgroup hierarchy the host uses (runc picks the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Legacy or hybrid: one hierarchy per controller under `/sys/fs/cgroup/<controller>`.
    V1,
    /// Unified hierarchy mounted at `/sys/fs/cgroup`.
    V2,
}

#[derive(Debug)]
pub struct ContainerEngine {
    cfg: ContainerConfig,
    runc: Runc,
    cgroups: CgroupVersion,
    limit_swap: bool,
    /// The largest RLIMIT_NOFILE the host lets us hand out.
    nofile: u64,
    /// A sandbox's open-file budget (`fs.file-max / FILE_BUDGET_DIVISOR`); see
    /// [`oci::file_limits`].
    file_budget: u64,
    /// Whether sandboxes get a payload cgroup (cgroup v1 with a memory hierarchy).
    payload: bool,
    /// The agent log drain of every sandbox this engine started or adopted, by id. Dropping
    /// the engine stops them (the sandboxes' output then waits in, or is dropped by, the FIFO).
    drains: Mutex<HashMap<String, agent_log::Drain>>,
    /// The init (the agent) of every sandbox whose liveness was asked or that this engine
    /// started, by id: `liveness` polls it instead of running `runc state`.
    inits: Mutex<HashMap<String, Init>>,
}

/// A sandbox's init process, as the engine keeps it.
#[derive(Debug)]
struct Init {
    /// A pidfd of the init: never a recycled pid.
    pidfd: OwnedFd,
    /// The sandbox's run dir (runc's bundle is `run_dir/bundle`).
    run_dir: PathBuf,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> EngineError + 'a {
    move |source| EngineError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn unavailable(why: String) -> EngineError {
    EngineError::Unavailable("container", why)
}

/// `name` as given if it contains a slash, else the first executable of that name on PATH.
pub(crate) fn find_executable(name: &Path) -> Option<PathBuf> {
    let is_exec =
        |p: &Path| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if name.components().count() > 1 || name.is_absolute() {
        return is_exec(name).then(|| name.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_exec(p))
}

/// Writes `data` to `path` through a temporary file and a rename, so readers never see a
/// partial file.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true).mode(mode);
    let mut f = opts.open(&tmp).map_err(io_err("create", &tmp))?;
    io::Write::write_all(&mut f, data).map_err(io_err("write", &tmp))?;
    // The sandbox's root reads /etc/hosts and /etc/hostname through their bind mounts.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", path))
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

impl ContainerEngine {
    /// Checks that runc and the agent binary are usable and prepares runc's state directory.
    pub fn new(cfg: ContainerConfig) -> Result<Self> {
        let runc_bin = find_executable(&cfg.runc_bin)
            .ok_or_else(|| unavailable(format!("runc not found ({})", cfg.runc_bin.display())))?;
        if !fs::metadata(&cfg.agent_bin).is_ok_and(|m| m.is_file()) {
            return Err(unavailable(format!(
                "agent binary {} not found",
                cfg.agent_bin.display()
            )));
        }
        // A bind-mount source must be absolute.
        let agent_bin = fs::canonicalize(&cfg.agent_bin).map_err(io_err("resolve", &cfg.agent_bin))?;
        let parent_ok = !cfg.cgroup_parent.trim_matches('/').is_empty()
            && cfg.cgroup_parent.split('/').all(|c| c != "..")
            && cfg
                .cgroup_parent
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !parent_ok {
            return Err(EngineError::Spec(format!(
                "cgroup_parent {:?}",
                cfg.cgroup_parent
            )));
        }
        if cfg.uid_count == 0 || cfg.uid_base.checked_add(cfg.uid_count).is_none() {
            return Err(EngineError::Spec(format!(
                "uid range {}+{}",
                cfg.uid_base, cfg.uid_count
            )));
        }

        let runc = Runc::new(runc_bin, cfg.runc_root.clone());
        let version = runc
            .version()
            .map_err(|e| unavailable(format!("runc does not run: {e}")))?;
        fs::create_dir_all(&cfg.runc_root).map_err(io_err("create", &cfg.runc_root))?;
        fs::set_permissions(&cfg.runc_root, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", &cfg.runc_root))?;

        let cgroups = if sys::is_cgroup2_unified(Path::new(CGROUP_ROOT)) {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        };
        // v2: runc skips a swap limit of "no swap" where swap accounting is off. v1: the
        // memsw files only exist with swap accounting, and runc fails without them.
        let limit_swap = match cgroups {
            CgroupVersion::V2 => true,
            CgroupVersion::V1 => Path::new(CGROUP_ROOT)
                .join("memory/memory.memsw.limit_in_bytes")
                .exists(),
        };
        let nofile = oci::NOFILE.min(sys::max_nofile());
        let file_budget = sys::file_max().map_or(u64::MAX, |max| max / oci::FILE_BUDGET_DIVISOR);
        // cgroup v2 forbids processes in a cgroup whose children get controllers ("no internal
        // processes"), so there the agent and its children would need two sibling cgroups and
        // runc places the agent in the sandbox's own: v2 hosts keep one cgroup per sandbox
        // (and only the oom_score_adj shield, where the daemon may lower it).
        let payload = cgroups == CgroupVersion::V1 && Path::new(CGROUP_ROOT).join("memory").is_dir();
        tracing::debug!(%version, ?cgroups, limit_swap, nofile, file_budget, payload, "container engine ready");
        Ok(Self {
            cfg: ContainerConfig { agent_bin, ..cfg },
            runc,
            cgroups,
            limit_swap,
            nofile,
            file_budget,
            payload,
            drains: Mutex::new(HashMap::new()),
            inits: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &ContainerConfig {
        &self.cfg
    }

    pub fn cgroup_version(&self) -> CgroupVersion {
        self.cgroups
    }

    /// Where sandbox `id`'s cgroup lives on the host: one directory on v2; on v1 one per
    /// mounted hierarchy (runc creates it in all of them, and in the unified one of a hybrid
    /// host).
    /// Freezes or thaws the sandbox's cgroup directly (cgroup v1 `freezer.state`, v2
    /// `cgroup.freeze`) and waits until the kernel reports it done. Writing the file costs
    /// microseconds where `runc pause`/`resume` cost a runc process start each (~10 ms),
    /// which matters for checkpoints; runc reads the same freezer state, so `runc state`
    /// still says `paused`.
    fn set_frozen(&self, id: &str, frozen: bool) -> Result<()> {
        let rel = oci::cgroup_path(&self.cfg.cgroup_parent, id);
        let rel = rel.strip_prefix("/").unwrap_or(&rel);
        let (file, value, done_file, done): (PathBuf, &str, PathBuf, &str) = match self.cgroups {
            CgroupVersion::V1 => {
                let dir = Path::new(CGROUP_ROOT).join("freezer").join(rel);
                let v = if frozen { "FROZEN" } else { "THAWED" };
                (dir.join("freezer.state"), v, dir.join("freezer.state"), v)
            }
            CgroupVersion::V2 => {
                let dir = Path::new(CGROUP_ROOT).join(rel);
                let (v, d) = if frozen {
                    ("1", "frozen 1")
                } else {
                    ("0", "frozen 0")
                };
                (dir.join("cgroup.freeze"), v, dir.join("cgroup.events"), d)
            }
        };
        fs::write(&file, value).map_err(io_err("write", &file))?;
        // The kernel freezes tasks asynchronously; wait (bounded) for it to say so.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = fs::read_to_string(&done_file).map_err(io_err("read", &done_file))?;
            if now.lines().any(|l| l.trim() == done) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(EngineError::Command {
                    cmd: format!("{} {id}", if frozen { "freeze" } else { "thaw" }),
                    detail: format!("{} still says {:?} after 10 s", done_file.display(), now.trim()),
                });
            }
            if frozen && self.cgroups == CgroupVersion::V1 {
                // v1 can stop at FREEZING when a task is busy; asking again moves it on.
                let _ = fs::write(&file, value);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        let rel = oci::cgroup_path(&self.cfg.cgroup_parent, id);
        let rel = rel.strip_prefix("/").unwrap_or(&rel);
        match self.cgroups {
            CgroupVersion::V2 => vec![Path::new(CGROUP_ROOT).join(rel)],
            CgroupVersion::V1 => {
                let Ok(entries) = fs::read_dir(CGROUP_ROOT) else {
                    return Vec::new();
                };
                let mut dirs: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok())
                    // `cpu,cpuacct`-style co-mounts appear once as a directory, then as symlinks.
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path().join(rel))
                    .collect();
                dirs.sort();
                dirs
            }
        }
    }

    /// The OCI configuration `start` would write for `spec`.
    pub fn oci_config(&self, spec: &SandboxSpec) -> Result<oci_spec::runtime::Spec> {
        oci::build(
            spec,
            &oci::ConfigInputs {
                agent_bin: &self.cfg.agent_bin,
                init_args: self
                    .cfg
                    .init_args
                    .clone()
                    .unwrap_or_else(|| oci::agent_args(self.payload.then_some(oci::PAYLOAD_CGROUP_FD))),
                uid_base: self.cfg.uid_base,
                uid_count: self.cfg.uid_count,
                cgroup_parent: &self.cfg.cgroup_parent,
                nofile: self.nofile,
                file_budget: self.file_budget,
                limit_swap: self.limit_swap,
                hostname_file: spec.run_dir.join("hostname"),
                hosts_file: spec.run_dir.join("hosts"),
                shared_dirs: spec.shared_dirs.clone(),
                // Checked on every start: a dead lxcfs is started again, or left out.
                lxcfs: self.cfg.lxcfs.as_ref().and_then(|l| l.ensure()),
            },
        )
    }

    /// Writes the bundle and the files the sandbox bind-mounts into `spec.run_dir`.
    fn prepare_run_dir(&self, spec: &SandboxSpec) -> Result<PathBuf> {
        if !spec.rootfs.is_dir() {
            return Err(EngineError::Spec(format!(
                "rootfs {} is not a directory",
                spec.rootfs.display()
            )));
        }
        let config = self.oci_config(spec)?;
        let run_dir = &spec.run_dir;
        let bundle = run_dir.join("bundle");
        fs::create_dir_all(&bundle).map_err(io_err("create", &bundle))?;
        // runc's init opens bind-mount sources from inside the user namespace, as the
        // sandbox's root: it must be able to traverse the run dir, not list it. Host users
        // may not even traverse it (the in-sandbox API socket is below): root:<root's gid> 0710.
        std::os::unix::fs::chown(run_dir, Some(0), Some(self.cfg.uid_base))
            .map_err(io_err("chown", run_dir))?;
        for (dir, mode) in [(run_dir, 0o710), (&bundle, 0o711)] {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", dir))?;
        }
        write_atomic(
            &run_dir.join("hostname"),
            format!("{}\n", spec.hostname).as_bytes(),
            0o644,
        )?;
        write_atomic(
            &run_dir.join("hosts"),
            oci::hosts_file(&spec.hostname).as_bytes(),
            0o644,
        )?;
        let json = serde_json::to_vec_pretty(&config).map_err(|e| EngineError::Spec(e.to_string()))?;
        write_atomic(&bundle.join("config.json"), &json, 0o600)?;
        Ok(bundle)
    }

    fn launch(&self, spec: &SandboxSpec, bundle: &Path) -> Result<()> {
        let run_dir = &spec.run_dir;
        let sock = agent_socket(run_dir);
        let pid_file = run_dir.join("init.pid");
        let runc_log = run_dir.join("runc.log");
        for stale in [&sock, &pid_file, &runc_log] {
            remove_if_exists(stale)?;
        }
        let extra_fds = if self.payload {
            vec![self.prepare_payload(spec)?]
        } else {
            Vec::new()
        };
        let listen_fd = sys::listen_unix(&sock).map_err(io_err("listen", &sock))?;
        let fifo = run_dir.join(agent_log::FIFO_FILE);
        let (output, drain) = agent_log::create(run_dir).map_err(io_err("create", &fifo))?;
        let run = self.runc.run_detached(RunArgs {
            id: &spec.id,
            bundle,
            pid_file: &pid_file,
            log_file: &runc_log,
            listen_fd,
            extra_fds,
            output,
            nofile: oci::file_limits(spec.resources.pids, self.file_budget, self.nofile).nofile,
        });
        match run {
            Ok(()) => {
                self.set_drain(&spec.id, Some(drain));
            }
            Err(EngineError::Command { cmd, detail }) => {
                // runc and the init are gone: the drain reaches the end of their output.
                drain.finish(DRAIN_WAIT);
                let output = runc::tail(&run_dir.join(agent_log::LOG_FILE), 4096);
                return Err(EngineError::Command {
                    cmd,
                    detail: format!("{detail}; output: {output}"),
                });
            }
            Err(e) => return Err(e),
        }
        // Shield the agent from the OOM killer: a memory hog in the sandbox must never take
        // down its init. Only the host can lower the score (runc cannot from inside the user
        // namespace), and only with CAP_SYS_RESOURCE; the agent resets the processes it starts
        // to 0. On v1 hosts the payload cgroup protects the agent without it.
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            // Watched from now on (see `liveness`); an init already gone is found by `runc state`.
            if let Ok(Some(fd)) = sys::pidfd_open(pid) {
                self.set_init(
                    &spec.id,
                    Some(Init {
                        pidfd: fd,
                        run_dir: spec.run_dir.clone(),
                    }),
                );
            }
            let path = PathBuf::from(format!("/proc/{pid}/oom_score_adj"));
            if let Err(e) = fs::write(&path, "-1000") {
                if self.payload {
                    tracing::debug!(id = spec.id, error = %e, "agent's oom_score_adj stays 0 (payload cgroup)");
                } else {
                    tracing::warn!(id = spec.id, error = %e, "could not shield the agent from the OOM killer");
                }
            }
        }
        Ok(())
    }

    /// Sets the cpu and memory limits of a running sandbox's cgroups to `r`, as `start`
    /// would have (the payload cgroup's memory limit too).
    fn set_limits(&self, id: &str, r: &Resources) -> Result<()> {
        let memory = r.memory_mb.saturating_mul(1024 * 1024);
        let quota = (r.cpus * oci::CPU_PERIOD_US as f64).round() as u64;
        let write = |path: PathBuf, value: &str| fs::write(&path, value).map_err(io_err("write", &path));
        // memory <= memory+swap at every step: a lower limit goes to memory first, a higher
        // one to memory+swap first.
        let set_v1_memory = |dir: &Path, bytes: u64| -> Result<()> {
            let value = bytes.to_string();
            if self.limit_swap {
                if fs::write(dir.join("memory.limit_in_bytes"), &value).is_err() {
                    write(dir.join("memory.memsw.limit_in_bytes"), &value)?;
                }
                write(dir.join("memory.limit_in_bytes"), &value)?;
                write(dir.join("memory.memsw.limit_in_bytes"), &value)
            } else {
                write(dir.join("memory.limit_in_bytes"), &value)
            }
        };
        match self.cgroups {
            CgroupVersion::V2 => {
                let [dir] = &self.cgroup_dirs(id)[..] else {
                    return Err(unavailable(format!("no cgroup for {id}")));
                };
                write(dir.join("cpu.max"), &format!("{quota} {}", oci::CPU_PERIOD_US))?;
                write(dir.join("memory.max"), &memory.to_string())?;
            }
            CgroupVersion::V1 => {
                for dir in self.cgroup_dirs(id) {
                    let hierarchy = dir
                        .strip_prefix(CGROUP_ROOT)
                        .ok()
                        .and_then(|p| p.components().next())
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let controllers: Vec<&str> = hierarchy.split(',').collect();
                    if controllers.contains(&"cpu") {
                        write(dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                    if controllers.contains(&"memory") {
                        // Growing: the parent first; shrinking: the payload first.
                        let payload = self.payload.then(|| dir.join(PAYLOAD_CGROUP));
                        let payload_bytes = oci::payload_memory_limit(memory);
                        let current = fs::read_to_string(dir.join("memory.limit_in_bytes"))
                            .ok()
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .unwrap_or(0);
                        if memory >= current {
                            set_v1_memory(&dir, memory)?;
                            if let Some(p) = &payload {
                                set_v1_memory(p, payload_bytes)?;
                            }
                        } else {
                            if let Some(p) = &payload {
                                set_v1_memory(p, payload_bytes)?;
                            }
                            set_v1_memory(&dir, memory)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The sandbox's payload cgroup in the v1 memory hierarchy.
    fn payload_dir(&self, id: &str) -> PathBuf {
        let rel = oci::cgroup_path(&self.cfg.cgroup_parent, id);
        let rel = rel.strip_prefix("/").unwrap_or(&rel);
        Path::new(CGROUP_ROOT)
            .join("memory")
            .join(rel)
            .join(PAYLOAD_CGROUP)
    }

    /// Creates (or updates) the sandbox's payload cgroup with its memory limit (see
    /// [`oci::payload_memory_limit`]) and returns its `cgroup.procs`, opened for writing, for
    /// the agent (`--cgroup-fd`): the agent moves every process it starts there before the
    /// process drops privileges or runs anything. The kernel checks a cgroup v1 move against
    /// the credentials the file was opened with (the host's root here), so the fd works from
    /// inside the user namespace and only ever moves processes the agent can see into this
    /// one cgroup. runc creates the parent's other hierarchies and sets its limits; `runc
    /// delete` removes the payload cgroup with the sandbox's.
    fn prepare_payload(&self, spec: &SandboxSpec) -> Result<OwnedFd> {
        let dir = self.payload_dir(&spec.id);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let limit = oci::payload_memory_limit(spec.resources.memory_mb.saturating_mul(1024 * 1024));
        let value = limit.to_string();
        let write = |file: &str| {
            let path = dir.join(file);
            fs::write(&path, &value).map_err(io_err("write", &path))
        };
        if self.limit_swap {
            // memory <= memory+swap at every step: a lower limit goes to memory first, a
            // higher one (a restart with more memory) to memory+swap first.
            if fs::write(dir.join("memory.limit_in_bytes"), &value).is_err() {
                write("memory.memsw.limit_in_bytes")?;
            }
            write("memory.limit_in_bytes")?;
            write("memory.memsw.limit_in_bytes")?;
        } else {
            write("memory.limit_in_bytes")?;
        }
        let procs = dir.join("cgroup.procs");
        // std opens with O_CLOEXEC; runc's child gets it through `pass_fds`.
        let file = OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(io_err("open", &procs))?;
        Ok(OwnedFd::from(file))
    }

    /// Removes what `prepare_payload` made, where `runc delete` has not (a `runc run` that
    /// failed before creating the container). Best effort: a cgroup with processes stays.
    fn remove_payload(&self, id: &str) {
        if !self.payload {
            return;
        }
        let dir = self.payload_dir(id);
        for d in [Some(dir.as_path()), dir.parent()].into_iter().flatten() {
            match fs::remove_dir(d) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(id, dir = %d.display(), error = %e, "cgroup left behind");
                }
                _ => {}
            }
        }
    }

    /// Replaces the agent log drain kept for `id` (the old one stops).
    fn set_drain(&self, id: &str, drain: Option<agent_log::Drain>) -> Option<agent_log::Drain> {
        let mut drains = self.drains.lock().unwrap_or_else(|p| p.into_inner());
        match drain {
            Some(d) => drains.insert(id.to_owned(), d),
            None => drains.remove(id),
        }
    }

    /// Replaces the pidfd kept for the init of `id`.
    fn set_init(&self, id: &str, init: Option<Init>) -> Option<Init> {
        let mut inits = self.inits.lock().unwrap_or_else(|p| p.into_inner());
        match init {
            Some(init) => inits.insert(id.to_owned(), init),
            None => inits.remove(id),
        }
    }

    /// A copy of the pidfd of `id`'s init, when it is kept.
    fn init_pidfd(&self, id: &str) -> Result<Option<OwnedFd>> {
        let inits = self.inits.lock().unwrap_or_else(|p| p.into_inner());
        inits
            .get(id)
            .map(|i| i.pidfd.try_clone().map_err(io_err("dup", Path::new("pidfd"))))
            .transpose()
    }

    /// A stop without grace of a sandbox whose init is kept: KILL through the pidfd (its PID
    /// namespace dies with it), then one `runc delete`. Two runc starts fewer than asking
    /// runc for the state and to kill.
    fn kill_and_delete(&self, id: &str, init: Init) -> Result<()> {
        // A frozen task acts on KILL only once thawed; a cgroup already gone has none.
        if let Err(e) = self.set_frozen(id, false) {
            tracing::debug!(id, error = %e, "thaw before kill");
        }
        sys::pidfd_kill(&init.pidfd).map_err(io_err("pidfd_send_signal", Path::new("pidfd")))?;
        if !sys::wait_pidfd(&init.pidfd, KILL_WAIT).map_err(io_err("poll", Path::new("pidfd")))? {
            tracing::warn!(id, "init still alive after SIGKILL; deleting anyway");
        }
        self.runc.delete_force(id)?;
        self.remove_payload(id);
        if let Some(drain) = self.set_drain(id, None) {
            drain.finish(DRAIN_WAIT);
        }
        remove_if_exists(&agent_socket(&init.run_dir))?;
        tracing::debug!(id, "container stopped");
        Ok(())
    }

    fn has_drain(&self, id: &str) -> bool {
        let drains = self.drains.lock().unwrap_or_else(|p| p.into_inner());
        drains.contains_key(id)
    }

    /// Container state of `id`, as runc reports it.
    fn state(&self, id: &str) -> Result<Option<runc::State>> {
        self.runc.state(id)
    }

    /// Signals the init of a running container and waits for it to exit: TERM and `grace`,
    /// then KILL.
    fn terminate(&self, st: &runc::State, grace: Duration) -> Result<()> {
        // Opened before any signal, so the pid cannot be recycled under us.
        let Some(pidfd) = sys::pidfd_open(st.pid).map_err(io_err("pidfd_open", Path::new("/proc")))? else {
            return Ok(());
        };
        if st.status == "paused" {
            // A frozen init cannot act on TERM. If thawing fails, KILL and delete still work.
            if let Err(e) = self.runc.resume(&st.id) {
                tracing::warn!(id = st.id, error = %e, "resume before stop failed");
            }
        }
        let wait = |d| sys::wait_pidfd(&pidfd, d).map_err(io_err("poll", Path::new("pidfd")));
        if !grace.is_zero() && self.runc.kill(&st.id, "TERM")? && wait(grace)? {
            return Ok(());
        }
        if self.runc.kill(&st.id, "KILL")? && !wait(KILL_WAIT)? {
            tracing::warn!(
                id = st.id,
                pid = st.pid,
                "init still alive after SIGKILL; deleting anyway"
            );
        }
        Ok(())
    }
}

impl Engine for ContainerEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Container
    }

    fn describe(&self) -> String {
        "runc".to_owned()
    }

    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities {
            freeze: true,
            memory_snapshot: false,
            shared_dirs: true,
            agent_shutdown: false,
            one_connection: false,
            own_kernel: false,
        }
    }

    fn start(&self, spec: &SandboxSpec) -> Result<()> {
        oci::validate(spec)?;
        // runc keeps a state dir per container; without one there is nothing to check, and
        // skipping `runc state` saves a runc process start on every create (~5 ms).
        let known = self.cfg.runc_root.join(&spec.id).exists();
        if let Some(st) = if known { self.state(&spec.id)? } else { None } {
            if matches!(st.status.as_str(), "running" | "paused") {
                return Err(EngineError::Command {
                    cmd: format!("start {}", spec.id),
                    detail: format!("already {} (pid {})", st.status, st.pid),
                });
            }
            // A leftover of an earlier run (exited, or a `runc run` that died half-way).
            self.runc.delete_force(&spec.id)?;
        }
        let bundle = self.prepare_run_dir(spec)?;
        if let Err(e) = self.launch(spec, &bundle) {
            // Leave nothing half-created behind; the error that matters is the launch's.
            if let Err(clean) = self.runc.delete_force(&spec.id) {
                tracing::warn!(id = spec.id, error = %clean, "cleanup after failed start");
            }
            let _ = remove_if_exists(&agent_socket(&spec.run_dir));
            self.remove_payload(&spec.id);
            return Err(e);
        }
        tracing::debug!(id = spec.id, "container started");
        Ok(())
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let init = self.set_init(id, None);
        if let Some(init) = init
            && grace.is_zero()
        {
            return self.kill_and_delete(id, init);
        }
        let Some(st) = self.state(id)? else {
            self.set_drain(id, None);
            return Ok(());
        };
        if matches!(st.status.as_str(), "running" | "paused") {
            self.terminate(&st, grace)?;
        }
        self.runc.delete_force(id)?;
        self.remove_payload(id);
        // Every writer is gone: let the drain copy the last output before it stops.
        if let Some(drain) = self.set_drain(id, None) {
            drain.finish(DRAIN_WAIT);
        }
        // The bundle is `run_dir/bundle`.
        if let Some(run_dir) = st.bundle.parent() {
            remove_if_exists(&agent_socket(run_dir))?;
        }
        tracing::debug!(id, "container stopped");
        Ok(())
    }

    fn status(&self, id: &str) -> Result<RuntimeStatus> {
        Ok(match self.state(id)? {
            None => RuntimeStatus::Missing,
            Some(st) => match st.status.as_str() {
                "running" => RuntimeStatus::Running { pid: st.pid },
                "paused" => RuntimeStatus::Paused { pid: st.pid },
                // `created`/`creating`: runc never got to start the agent.
                _ => RuntimeStatus::Stopped,
            },
        })
    }

    fn list(&self) -> Result<Vec<String>> {
        self.runc.list()
    }

    fn liveness(&self, id: &str) -> Result<Liveness> {
        let pidfd = match self.init_pidfd(id)? {
            Some(fd) => fd,
            // Not watched yet (adopted after a daemon restart): ask runc once, then keep a
            // pidfd. runc checks the pid's start time, so the pid is the init's.
            None => match self.state(id)? {
                Some(st) if matches!(st.status.as_str(), "running" | "paused") => {
                    match sys::pidfd_open(st.pid).map_err(io_err("pidfd_open", Path::new("/proc")))? {
                        Some(fd) => {
                            let copy = fd.try_clone().map_err(io_err("dup", Path::new("pidfd")))?;
                            let run_dir = st.bundle.parent().unwrap_or(&st.bundle).to_owned();
                            self.set_init(id, Some(Init { pidfd: fd, run_dir }));
                            copy
                        }
                        None => return Ok(Liveness::Dead { how: None }),
                    }
                }
                _ => return Ok(Liveness::Dead { how: None }),
            },
        };
        if !sys::wait_pidfd(&pidfd, Duration::ZERO).map_err(io_err("poll", Path::new("pidfd")))? {
            return Ok(Liveness::Alive);
        }
        // Its exit status: from the zombie, or from the kernel once its reaper (the host's
        // init) has reaped it.
        let status = sys::zombie_exit_status(&pidfd).or_else(|| sys::pidfd_exit_status(&pidfd));
        Ok(Liveness::Dead {
            how: status.map(sys::describe_wait_status),
        })
    }

    fn reassign(&self, id: &str, run_dir: &Path, hostname: &str, resources: &Resources) -> Result<bool> {
        oci::validate_hostname(hostname)?;
        self.set_limits(id, resources)?;
        // `/etc/hostname` and `/etc/hosts` are bind mounts of these files: rewritten in place
        // (same inode), the sandbox sees the new text at once.
        for (file, text) in [
            ("hostname", format!("{hostname}\n")),
            ("hosts", oci::hosts_file(hostname)),
        ] {
            let path = run_dir.join(file);
            fs::write(&path, text).map_err(io_err("write", &path))?;
        }
        let Some(pidfd) = self.init_pidfd(id)? else {
            return Ok(false);
        };
        sys::set_hostname_of(pidfd, hostname).map_err(io_err("sethostname", Path::new("/proc")))?;
        Ok(true)
    }

    fn replace_root(&self, id: &str, new_root: &Path, rebinds: &[(String, PathBuf)]) -> Result<()> {
        let pidfd = self.init_pidfd(id)?.ok_or_else(|| {
            EngineError::Spec(format!("sandbox {id} has no known init to put a root under"))
        })?;
        root::replace_root(pidfd, new_root, self.cfg.uid_base, rebinds)
            .map_err(io_err("replace the root with", new_root))
    }

    fn prefetch_root(&self, root: &Path) {
        root::prefetch(root);
    }

    fn adopt(&self, id: &str) -> Result<()> {
        if self.has_drain(id) {
            return Ok(());
        }
        let Some(st) = self.state(id)? else { return Ok(()) };
        if !matches!(st.status.as_str(), "running" | "paused") {
            return Ok(());
        }
        let Some(run_dir) = st.bundle.parent() else {
            return Ok(());
        };
        match agent_log::attach(run_dir).map_err(io_err("drain", run_dir))? {
            Some(drain) => {
                self.set_drain(id, Some(drain));
            }
            // No FIFO (started by an older engine: it writes to agent.log itself), or
            // another drain holds it.
            None => tracing::warn!(id, "agent output not drained by this engine"),
        }
        Ok(())
    }

    fn freeze(&self, id: &str) -> Result<()> {
        self.set_frozen(id, true)
    }

    fn stats(&self, id: &str) -> Option<crate::Stats> {
        let rel = oci::cgroup_path(&self.cfg.cgroup_parent, id);
        let rel = rel.strip_prefix("/").unwrap_or(&rel);
        let read = |p: PathBuf| fs::read_to_string(p).ok();
        let num = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
        let field = |s: Option<String>, key: &str| {
            s.and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<u64>().ok()))
            })
        };
        let root = Path::new(CGROUP_ROOT);
        match self.cgroups {
            CgroupVersion::V1 => {
                let mem = root.join("memory").join(rel);
                // v1 counts OOM kills per cgroup, not for its descendants: the payload's
                // are the user processes'.
                let oom_kills = |dir: PathBuf| field(read(dir.join("memory.oom_control")), "oom_kill ");
                Some(crate::Stats {
                    memory_bytes: num(read(mem.join("memory.usage_in_bytes")))?,
                    pids: num(read(root.join("pids").join(rel).join("pids.current"))).unwrap_or(0),
                    oom_kills: oom_kills(mem.clone()).unwrap_or(0)
                        + oom_kills(mem.join(PAYLOAD_CGROUP)).unwrap_or(0),
                    pids_limit: num(read(root.join("pids").join(rel).join("pids.max"))),
                })
            }
            CgroupVersion::V2 => {
                let dir = root.join(rel);
                Some(crate::Stats {
                    memory_bytes: num(read(dir.join("memory.current")))?,
                    pids: num(read(dir.join("pids.current"))).unwrap_or(0),
                    oom_kills: field(read(dir.join("memory.events")), "oom_kill ").unwrap_or(0),
                    pids_limit: num(read(dir.join("pids.max"))),
                })
            }
        }
    }

    fn thaw(&self, id: &str) -> Result<()> {
        self.set_frozen(id, false)
    }
}

/// The agent's listening socket in the run dir (bound before runc starts the container).
fn agent_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("agent.sock")
}
