//! The vm engine: every sandbox is a QEMU `microvm` whose init is the same burrow-agent as
//! in containers, reached over a virtio-serial port bound to a host unix socket.
//!
//! - **Guest**: Debian's cloud kernel and an initramfs holding the static agent and the few
//!   modules it loads ([`crate::vm_guest`]); the agent mounts the sandbox disk and switches
//!   root into it.
//! - **Disk**: `disk.img` (ext4, [`disk::make_ext4`]) in the sandbox's pool volume, so
//!   create, checkpoint, restore and fork stay O(1) pool snapshots; virtio-blk with discard.
//! - **Memory**: guest RAM is a file in the same volume (`memory.img`, shared with QEMU), so
//!   a memory snapshot only writes device state (a few KiB, `x-ignore-shared`): `suspend`
//!   saves it and ends QEMU (zero RAM while asleep), the next `start` resumes from it.
//! - **Agent channel**: virtio-serial rather than vsock: vhost-vsock needs a host module
//!   this kind of host does not have loaded, a chardev socket is plain QEMU, survives
//!   daemon restarts (QEMU keeps listening), and is saved and restored with the VM.
//! - **Network**: a tap in the sandbox's network namespace ([`netns`]); QEMU runs in it.
//! - **Jail**: QEMU runs as the VM's own uid, under its seccomp filter, in its own cgroup
//!   ([`cgroup`]: guest RAM plus a bounded overhead, its threads, its cpus) and its own
//!   mount namespace, whose root holds only its files ([`jail`]).
//!
//! Files of one VM in its run dir: `vm/qmp.sock`, `vm/agent.sock` (in a directory only
//! QEMU's uid may write), `agent.log` (the guest's
//! console and QEMU's messages, capped like a container agent's log), `vm.json` (what a
//! restarted daemon needs to find the VM again) and `jail/` (empty on the host: QEMU's root
//! is built on it in QEMU's own mount namespace).

pub mod cgroup;
pub mod disk;
pub mod jail;
pub mod netns;
pub mod probe;
pub mod qmp;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::container::agent_log;
use crate::vm_guest::GuestKernel;
use crate::{
    Capabilities, DiskKind, Engine, EngineError, EngineKind, Liveness, Result, RuntimeStatus, SandboxSpec,
    Stats,
};

/// Guest RAM, in the sandbox's volume.
pub const MEMORY_FILE: &str = "memory.img";
/// Saved device state of a suspended VM, in the sandbox's volume.
pub const STATE_FILE: &str = "state.bin";
/// What the saved state was made with; written last, so its presence means a whole state.
pub const MANIFEST_FILE: &str = "state.json";
/// Version of [`Manifest`]'s layout.
const MANIFEST_VERSION: u32 = 1;
/// How long QEMU gets to bring up its control socket.
const QMP_WAIT: Duration = Duration::from_secs(20);
/// Bound of saving or loading device state (a few KiB to a few MiB).
const STATE_WAIT: Duration = Duration::from_secs(60);
/// The fd number QEMU finds its tap at (opened for it before it drops privileges).
const TAP_FD: i32 = 200;
/// The directory of a VM's run dir that QEMU may write (its sockets), owned by its uid.
const QEMU_DIR: &str = "vm";
/// The empty directory of a VM's run dir on which QEMU's root is built, in its own mount
/// namespace ([`jail`]).
const JAIL_DIR: &str = "jail";
/// How long a suspend gives the guest to see the host hang up its agent channel. A guest
/// that saw the end of the stream just waits for the next host (no event says so); one that
/// was mid-conversation reopens its port (VSERPORT_CHANGE ends the wait early). A guest
/// saved before it noticed costs the next wake one retried handshake, never correctness.
const HANGUP_WAIT: Duration = Duration::from_millis(50);
/// How long QEMU gets to exit after `quit` or SIGTERM before SIGKILL.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Hardware virtualisation, or QEMU's emulator (correct, about ten times slower).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub qemu_bin: PathBuf,
    pub guest: GuestKernel,
    /// The initramfs (agent as /init), built by the caller from the guest kit.
    pub initramfs: PathBuf,
    pub accel: Accel,
    /// Where run dirs of sandboxes live (`<run_root>/<id>`), to find VMs after a restart.
    pub run_root: PathBuf,
    /// Host ids of the container engine's shifted image trees (to build disks from them).
    pub uid_base: u32,
    pub uid_count: u32,
    /// The host TSC frequency in kHz, pinned on the guest's command line (TCG guests hang
    /// in some boots without it).
    pub tsc_khz: Option<u64>,
    /// The daemon's cgroup parent (the container engine's); VMs' QEMUs go under
    /// `<parent>/vm/<id>` ([`cgroup`]).
    pub cgroup_parent: String,
}

/// What `vm.json` in a run dir records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VmFile {
    pid: u32,
    volume: PathBuf,
}

/// What a saved state was made with: resuming needs the same QEMU, guest kernel and agent,
/// and the same guest memory size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub qemu: String,
    pub kernel: String,
    /// sha256 of the initramfs (the agent and modules in it).
    pub initramfs: String,
    pub memory_bytes: u64,
    pub state_bytes: u64,
    /// sha256 of `state.bin`.
    pub state_sha256: String,
    pub saved_at_unix_ms: u64,
}

struct Vm {
    /// Our child when this daemon started it (reaped by `liveness`); `None` when adopted.
    child: Option<Child>,
    pid: u32,
    volume: PathBuf,
    drain: Option<agent_log::Drain>,
}

#[derive(Debug)]
pub struct VmEngine {
    cfg: VmConfig,
    qemu_version: String,
    initramfs_sha256: String,
    cgroups: cgroup::Cgroups,
    vms: Mutex<HashMap<String, Vm>>,
    /// One operation at a time per VM (QEMU serves one QMP client).
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> EngineError + 'a {
    move |source| EngineError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// sha256 of a file, hex.
fn sha256_file(path: &Path) -> io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    io::copy(&mut fs::File::open(path)?, &mut h)?;
    Ok(format!("{:x}", h.finalize()))
}

/// The QEMU version `qemu_bin --version` prints (`7.2.19`).
pub fn qemu_version(qemu_bin: &Path) -> io::Result<String> {
    let out = Command::new(qemu_bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .map(|v| v.trim_end_matches(',').to_owned())
        .filter(|_| out.status.success())
        .ok_or_else(|| io::Error::other(format!("unexpected `{} --version`: {text}", qemu_bin.display())))
}

/// The host's TSC frequency in kHz, from `/proc/cpuinfo` (`cpu MHz`).
pub fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// Whether `pid` is a live (not zombie) process whose command line names `id`.
fn pid_runs(pid: u32, id: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next());
    if state == Some("Z") || state == Some("X") {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .any(|arg| arg == format!("burrow-{id}").as_bytes())
    })
}

/// The guest's vCPUs: the sandbox's cpus, rounded up; one under TCG. A guest with more
/// than one vCPU under TCG can hang in early boot on a loaded host (seen here: its console
/// reported a soft lockup of CPU#1 in pid 1's initcalls, for minutes), and TCG's vCPUs
/// share the host's cores anyway; the cgroup's cpu quota is `cpus` either way.
fn vcpus(spec: &SandboxSpec, accel: Accel) -> u32 {
    match accel {
        Accel::Tcg => 1,
        Accel::Kvm => (spec.resources.cpus.ceil() as u32).clamp(1, 16),
    }
}

/// A guest kernel command line word must not let a value add words of its own.
fn cmdline_safe(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b':'))
}

/// The first `nameserver` of a resolv.conf.
fn nameserver(resolv: &Path) -> Option<String> {
    fs::read_to_string(resolv)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("nameserver "))
        .map(|s| s.trim().to_owned())
        .filter(|s| s.parse::<std::net::Ipv4Addr>().is_ok())
}

impl VmEngine {
    /// Checks QEMU and the guest kit. The accelerator was decided by the caller (a test
    /// boot, see [`crate::vm`] docs in `docs/vm.md`).
    pub fn new(mut cfg: VmConfig) -> Result<Self> {
        // An absolute path: QEMU is started in a mount namespace of its own.
        if let Some(found) = crate::container::find_executable(&cfg.qemu_bin) {
            cfg.qemu_bin = found;
        }
        let qemu_version = qemu_version(&cfg.qemu_bin).map_err(|e| {
            EngineError::Unavailable(
                "vm",
                format!(
                    "cannot run {}: {e}; install Debian's qemu-system-x86 (scripts/setup.sh)",
                    cfg.qemu_bin.display()
                ),
            )
        })?;
        let initramfs_sha256 = sha256_file(&cfg.initramfs).map_err(io_err("read", &cfg.initramfs))?;
        let cgroups = cgroup::Cgroups::new(cgroup::Hierarchy::detect(), &cfg.cgroup_parent)?;
        let engine = Self {
            cfg,
            qemu_version,
            initramfs_sha256,
            cgroups,
            vms: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        };
        engine.sweep_cgroups();
        Ok(engine)
    }

    /// Removes the cgroups of VMs whose QEMU is gone (a daemon killed while it stopped
    /// one, a QEMU that died while no daemon ran). A QEMU in its cgroup that no `vm.json`
    /// names (the daemon died between starting it and recording it) can never be found
    /// again: it is killed first.
    fn sweep_cgroups(&self) {
        for id in self.cgroups.list() {
            let recorded = self.vm_file(&id).map(|f| f.pid).filter(|p| pid_runs(*p, &id));
            if recorded.is_some() {
                continue;
            }
            for pid in self.cgroups.pids(&id) {
                if pid_runs(pid, &id) {
                    tracing::warn!(id, pid, "killing a QEMU no daemon recorded");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::SIGKILL,
                    );
                }
            }
            match self.cgroups.remove(&id) {
                Ok(()) => tracing::info!(id, "removed a leftover VM cgroup"),
                Err(e) => tracing::warn!(id, error = %e, "cannot remove a leftover VM cgroup"),
            }
        }
    }

    /// The cgroup directories of VM `id`'s QEMU.
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.cgroups.dirs(id)
    }

    pub fn accel(&self) -> Accel {
        self.cfg.accel
    }

    pub fn qemu_version(&self) -> &str {
        &self.qemu_version
    }

    pub fn kernel_release(&self) -> &str {
        &self.cfg.guest.release
    }

    fn lock(&self, id: &str) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn run_dir(&self, id: &str) -> PathBuf {
        self.cfg.run_root.join(id)
    }

    fn vm_file(&self, id: &str) -> Option<VmFile> {
        let text = fs::read(self.run_dir(id).join("vm.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The pid of the VM's QEMU, if it runs.
    fn pid(&self, id: &str) -> Option<u32> {
        if let Some(vm) = self.vms.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return pid_runs(vm.pid, id).then_some(vm.pid);
        }
        let f = self.vm_file(id)?;
        pid_runs(f.pid, id).then_some(f.pid)
    }

    fn volume(&self, id: &str) -> Option<PathBuf> {
        if let Some(vm) = self.vms.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Some(vm.volume.clone());
        }
        self.vm_file(id).map(|f| f.volume)
    }

    fn qmp(&self, id: &str) -> Result<qmp::Qmp> {
        qmp::Qmp::connect(
            &self.run_dir(id).join(QEMU_DIR).join("qmp.sock"),
            Duration::from_secs(2),
        )
    }

    /// The saved state in `volume`, checked against this host: a state made by another
    /// QEMU, guest kernel or agent is refused with what differs.
    pub fn saved_state(&self, volume: &Path, memory_bytes: u64) -> Result<Option<Manifest>> {
        let path = volume.join(MANIFEST_FILE);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let m: Manifest = serde_json::from_slice(&text)
            .map_err(|e| EngineError::Spec(format!("the saved VM state's manifest is unreadable: {e}")))?;
        let refuse = |what: String| {
            Err(EngineError::Spec(format!(
                "the saved memory state cannot be resumed on this host: {what}; \
                 stop the sandbox (its disk is kept) and start it again"
            )))
        };
        if m.version != MANIFEST_VERSION {
            return refuse(format!(
                "manifest version {} (this burrowd reads {MANIFEST_VERSION})",
                m.version
            ));
        }
        if m.qemu != self.qemu_version {
            return refuse(format!(
                "it was saved by QEMU {}, this host runs QEMU {}",
                m.qemu, self.qemu_version
            ));
        }
        if m.kernel != self.cfg.guest.release {
            return refuse(format!(
                "it was saved with guest kernel {}, this host has {}",
                m.kernel, self.cfg.guest.release
            ));
        }
        if m.initramfs != self.initramfs_sha256 {
            return refuse("it was saved with another agent or guest modules".into());
        }
        if m.memory_bytes != memory_bytes {
            return refuse(format!(
                "it has {} MiB of guest memory, the sandbox is configured for {} MiB",
                m.memory_bytes >> 20,
                memory_bytes >> 20
            ));
        }
        let state = volume.join(STATE_FILE);
        let len = fs::metadata(&state).map_err(io_err("stat", &state))?.len();
        let sum = sha256_file(&state).map_err(io_err("read", &state))?;
        if len != m.state_bytes || sum != m.state_sha256 {
            return Err(EngineError::Spec(format!(
                "the saved memory state is damaged ({} does not match its manifest); \
                 stop the sandbox (its disk is kept) and start it again",
                state.display()
            )));
        }
        Ok(Some(m))
    }

    fn cmdline(&self, spec: &SandboxSpec) -> Result<String> {
        let mut c = String::from("console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check burrow.guest=1");
        if let Some(khz) = self.cfg.tsc_khz {
            c.push_str(&format!(" tsc_early_khz={khz}"));
        }
        if !cmdline_safe(&spec.hostname) {
            return Err(EngineError::Spec(format!(
                "hostname {:?} cannot be passed to a guest",
                spec.hostname
            )));
        }
        c.push_str(&format!(" burrow.hostname={}", spec.hostname));
        c.push_str(&format!(" burrow.pids={}", spec.resources.pids));
        if spec.netns.is_some() {
            c.push_str(&format!(
                " burrow.ip={} burrow.gw={}",
                netns::GUEST_ADDR,
                netns::HOST_SIDE
            ));
            let resolv = spec
                .shared_dirs
                .iter()
                .find(|(inside, _)| inside == "/etc/resolv.conf");
            if let Some(ns) = resolv.and_then(|(_, host)| nameserver(host)) {
                c.push_str(&format!(" burrow.dns={ns}"));
            }
        }
        Ok(c)
    }

    /// QEMU's arguments for `spec`; `incoming`: it waits for a saved state to resume from.
    /// The disk and memory files are given as fds QEMU inherits (`/proc/self/fd/N`): the
    /// pool's directories stay closed to QEMU's uid.
    fn args(&self, spec: &SandboxSpec, incoming: bool, disk_fd: i32, mem_fd: i32) -> Result<Vec<String>> {
        let run = &spec.run_dir;
        let disk = PathBuf::from(format!("/proc/self/fd/{disk_fd}"));
        let mem = PathBuf::from(format!("/proc/self/fd/{mem_fd}"));
        let mb = spec.resources.memory_mb;
        let cpus = vcpus(spec, self.cfg.accel);
        let p = |p: &Path| {
            let s = p.to_string_lossy().into_owned();
            // QEMU option values are comma-separated: a comma in a path would split it.
            if s.contains(',') {
                Err(EngineError::Spec(format!("path {s:?} contains a comma")))
            } else {
                Ok(s)
            }
        };
        let accel = self.cfg.accel.as_str();
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("burrow-{}", spec.id),
            "-M".into(),
            "microvm,memory-backend=mem,pit=off,pic=off,isa-serial=on,rtc=on".into(),
            "-accel".into(),
            match self.cfg.accel {
                // TCG's translation cache defaults to 1 GiB of host memory; a small guest
                // needs a few MiB of it.
                Accel::Tcg => format!("{accel},tb-size=32"),
                Accel::Kvm => accel.to_owned(),
            },
            "-cpu".into(),
            if self.cfg.accel == Accel::Kvm {
                "host".into()
            } else {
                "max".into()
            },
            "-smp".into(),
            cpus.to_string(),
            "-m".into(),
            format!("{mb}M"),
            "-object".into(),
            format!(
                "memory-backend-file,id=mem,size={mb}M,mem-path={},share=on",
                p(&mem)?
            ),
            // A bounded block I/O pool: the cgroup's pids limit counts on it.
            "-object".into(),
            format!(
                "main-loop,id=mainloop,thread-pool-max={}",
                cgroup::THREAD_POOL_MAX
            ),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-sandbox".into(),
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
            "-kernel".into(),
            p(self.cfg.guest.boot_image())?,
            "-initrd".into(),
            p(&self.cfg.initramfs)?,
            "-append".into(),
            self.cmdline(spec)?,
            "-chardev".into(),
            "stdio,id=console,signal=off".into(),
            "-serial".into(),
            "chardev:console".into(),
            "-drive".into(),
            format!(
                "id=root,file={},format=raw,if=none,discard=unmap,aio=threads",
                p(&disk)?
            ),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
            "-device".into(),
            "virtio-rng-device".into(),
            "-device".into(),
            "virtio-serial-device".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                p(&run.join(QEMU_DIR).join("agent.sock"))?
            ),
            "-device".into(),
            "virtserialport,chardev=agent,name=burrow.agent,id=agentport".into(),
            "-qmp".into(),
            format!(
                "unix:{},server=on,wait=off",
                p(&run.join(QEMU_DIR).join("qmp.sock"))?
            ),
        ];
        if spec.netns.is_some() {
            a.extend([
                "-netdev".into(),
                format!("tap,id=net0,fd={TAP_FD}"),
                "-device".into(),
                "virtio-net-device,netdev=net0,mac=52:54:00:62:77:01".into(),
            ]);
        }
        if incoming {
            a.extend(["-incoming".into(), "defer".into()]);
        }
        Ok(a)
    }

    /// The host uid and gid QEMU runs as for sandbox `id`: one of 65536 right above the
    /// container engine's range, chosen by the id, so VMs do not share one with containers
    /// (and rarely with each other). The gid is the kvm group's where KVM is used.
    pub fn qemu_ids(&self, id: &str) -> (u32, u32) {
        let mut h: u32 = 0x811c_9dc5;
        for b in id.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        let uid = self.cfg.uid_base + self.cfg.uid_count + h % 65536;
        let gid = match self.cfg.accel {
            Accel::Kvm => fs::metadata("/dev/kvm").map_or(uid, |m| std::os::unix::fs::MetadataExt::gid(&m)),
            Accel::Tcg => uid,
        };
        (uid, gid)
    }

    fn ensure_memory_file(path: &Path, bytes: u64) -> Result<()> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open", path))?;
        if f.metadata().map_err(io_err("stat", path))?.len() != bytes {
            f.set_len(bytes).map_err(io_err("size", path))?;
        }
        Ok(())
    }

    /// Waits for QEMU to bring up QMP; if it exits first, says why from its output.
    fn wait_started(&self, id: &str, child: &mut Child, run_dir: &Path) -> Result<qmp::Qmp> {
        let sock = run_dir.join(QEMU_DIR).join("qmp.sock");
        let deadline = Instant::now() + QMP_WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = crate::container::runc::tail(&run_dir.join(agent_log::LOG_FILE), 4096);
                return Err(EngineError::Command {
                    cmd: format!("qemu for {id}"),
                    detail: format!("exited at start ({status}): {log}"),
                });
            }
            if sock.exists()
                && let Ok(q) = qmp::Qmp::connect(&sock, Duration::from_millis(200))
            {
                return Ok(q);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(EngineError::Command {
                    cmd: format!("qemu for {id}"),
                    detail: format!("no QMP socket within {QMP_WAIT:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn start_locked(&self, spec: &SandboxSpec) -> Result<()> {
        let run = &spec.run_dir;
        fs::create_dir_all(run).map_err(io_err("create", run))?;
        let disk = spec.rootfs.join(crate::DISK_IMAGE);
        if !disk.is_file() {
            return Err(EngineError::Spec(format!(
                "the sandbox has no disk image at {}",
                disk.display()
            )));
        }
        if self.pid(&spec.id).is_some() {
            return Ok(());
        }
        // QEMU joins its cgroup before it runs anything: the files are opened here, the
        // child writes itself into them before it execs.
        let limits = cgroup::Limits::for_vm(
            spec.resources.memory_mb,
            spec.resources.cpus,
            vcpus(spec, self.cfg.accel),
        );
        self.cgroups.remove(&spec.id)?;
        let procs = self.cgroups.create(&spec.id, limits)?;
        let launched = self.launch(spec, &procs);
        drop(procs);
        if launched.is_err() {
            self.end_cgroup(&spec.id);
        }
        launched
    }

    /// Ends whatever runs in VM `id`'s cgroup after a failed start, and removes it.
    fn end_cgroup(&self, id: &str) {
        let pids = self.cgroups.pids(id);
        for pid in &pids {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), nix::sys::signal::SIGKILL);
        }
        let deadline = Instant::now() + EXIT_WAIT;
        while pids.iter().any(|p| pid_runs(*p, id)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Err(e) = self.cgroups.remove(id) {
            tracing::warn!(id, error = %e, "cannot remove the VM's cgroup");
        }
    }

    /// Starts QEMU for `spec` in the cgroup whose `cgroup.procs` files are `procs`.
    fn launch(&self, spec: &SandboxSpec, procs: &[OwnedFd]) -> Result<()> {
        let run = &spec.run_dir;
        let proc_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
        let mem_bytes = spec.resources.memory_mb << 20;
        let saved = self.saved_state(&spec.rootfs, mem_bytes)?;
        Self::ensure_memory_file(&spec.rootfs.join(MEMORY_FILE), mem_bytes)?;
        if let Some(ns) = &spec.netns {
            let (uid, gid) = self.qemu_ids(&spec.id);
            netns::wire(ns, uid, gid)?;
        }
        remove_if_exists(&run.join("vm.json"))?;
        // QEMU runs as the VM's own unprivileged uid: it may write its sockets' directory,
        // the disk, the memory file, the tap; nothing else of the host.
        let (uid, gid) = self.qemu_ids(&spec.id);
        let qdir = run.join(QEMU_DIR);
        let _ = fs::remove_dir_all(&qdir);
        fs::create_dir(&qdir).map_err(io_err("create", &qdir))?;
        std::os::unix::fs::chown(&qdir, Some(uid), Some(gid)).map_err(io_err("chown", &qdir))?;
        fs::set_permissions(&qdir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io_err("chmod", &qdir))?;
        for f in [crate::DISK_IMAGE, MEMORY_FILE] {
            let path = spec.rootfs.join(f);
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(io_err("chown", &path))?;
        }
        let state_file = match &saved {
            Some(_) => {
                let path = spec.rootfs.join(STATE_FILE);
                Some(fs::File::open(&path).map_err(io_err("open", &path))?)
            }
            None => None,
        };
        let state_fd = state_file.as_ref().map(|f| f.as_raw_fd());
        let open_rw = |name: &str| {
            let path = spec.rootfs.join(name);
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err("open", &path))
        };
        let (disk_file, mem_file) = (open_rw(crate::DISK_IMAGE)?, open_rw(MEMORY_FILE)?);
        let (disk_fd, mem_fd) = (disk_file.as_raw_fd(), mem_file.as_raw_fd());
        let args = self.args(spec, state_fd.is_some(), disk_fd, mem_fd)?;
        let fifo = run.join(agent_log::FIFO_FILE);
        let (output, drain) = agent_log::create(run).map_err(io_err("create", &fifo))?;
        let output2 = output.try_clone().map_err(io_err("dup", &fifo))?;
        let netns = match &spec.netns {
            Some(ns) => Some(fs::File::open(ns).map_err(io_err("open", ns))?),
            None => None,
        };
        let netns_fd = netns.as_ref().map(|f| f.as_raw_fd());
        let jail_dir = run.join(JAIL_DIR);
        fs::create_dir_all(&jail_dir).map_err(io_err("create", &jail_dir))?;
        let kvm = Path::new("/dev/kvm");
        let devices: &[&Path] = if self.cfg.accel == Accel::Kvm { &[kvm] } else { &[] };
        let jail = jail::Jail::plan(
            &jail_dir,
            &[
                &self.cfg.qemu_bin,
                self.cfg.guest.boot_image(),
                &self.cfg.initramfs,
            ],
            devices,
            &qdir,
        )?;
        let mut cmd = Command::new(&self.cfg.qemu_bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(output2));
        // SAFETY: between fork and exec only async-signal-safe syscalls on values prepared
        // before the fork (nothing is allocated): join the VM's cgroup and the sandbox's
        // network namespace (their fds are open in the parent), enter the planned mount
        // namespace (this is the forked child, single-threaded, as `Jail::enter` needs),
        // drop to the VM's uid and gid with no supplementary groups, start a new session,
        // and let the saved state's fd survive exec.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &proc_fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some(fd) = netns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The tap, opened while still privileged, at the fd QEMU is told.
                    let tun = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR);
                    if tun < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let mut ifr = [0u8; 40];
                    ifr[..netns::TAP.len()].copy_from_slice(netns::TAP.as_bytes());
                    let flags: i16 = 0x0002 | 0x1000 | 0x4000; // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
                    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
                    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
                    if libc::ioctl(tun, TUNSETIFF as _, ifr.as_mut_ptr()) != 0
                        || libc::dup2(tun, TAP_FD) != TAP_FD
                    {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(tun);
                }
                // Its own mount namespace and root, while it may still mount.
                jail.enter()?;
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                libc::setsid();
                for fd in [disk_fd, mem_fd] {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some(fd) = state_fd
                    && libc::fcntl(fd, libc::F_SETFD, 0) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io_err("start", &self.cfg.qemu_bin))?;
        drop((netns, disk_file, mem_file));
        let pid = child.id();
        let started = self.wait_started(&spec.id, &mut child, run);
        let mut q = match started {
            Ok(q) => q,
            Err(e) => {
                drain.finish(Duration::from_secs(2));
                let log = crate::container::runc::tail(&run.join(agent_log::LOG_FILE), 4096);
                return Err(match e {
                    EngineError::Command { cmd, detail } if !detail.contains(&log) => EngineError::Command {
                        cmd,
                        detail: format!("{detail}; output: {log}"),
                    },
                    e => e,
                });
            }
        };
        let file = VmFile {
            pid,
            volume: spec.rootfs.clone(),
        };
        let vm_json = run.join("vm.json");
        fs::write(&vm_json, serde_json::to_vec(&file).expect("serialises"))
            .map_err(io_err("write", &vm_json))?;
        self.vms.lock().unwrap_or_else(|p| p.into_inner()).insert(
            spec.id.clone(),
            Vm {
                child: Some(child),
                pid,
                volume: spec.rootfs.clone(),
                drain: Some(drain),
            },
        );
        if saved.is_some() {
            let loaded = (|| {
                q.ignore_shared_memory()?;
                let fd = state_fd.expect("a saved state was opened");
                q.load_state(format!("fd:{fd}"), STATE_WAIT)?;
                if !q.running()? {
                    q.cont()?;
                }
                Ok(())
            })();
            if let Err(e) = loaded {
                let _ = self.kill(&spec.id);
                return Err(e);
            }
            drop(state_file);
            // The guest runs on: its memory and disk move away from the saved state, which
            // must never be resumed again.
            for f in [MANIFEST_FILE, STATE_FILE] {
                remove_if_exists(&spec.rootfs.join(f))?;
            }
        }
        Ok(())
    }

    /// SIGKILL to QEMU, and waits for it to be gone.
    fn kill(&self, id: &str) -> Result<()> {
        let vm = self.vms.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        let pid = vm
            .as_ref()
            .map(|v| v.pid)
            .or_else(|| self.vm_file(id).map(|f| f.pid));
        if let Some(pid) = pid.filter(|p| pid_runs(*p, id)) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
        }
        if let Some(mut vm) = vm {
            if let Some(mut child) = vm.child.take() {
                let _ = child.wait();
            }
            if let Some(d) = vm.drain.take() {
                d.finish(Duration::from_secs(2));
            }
        }
        if let Some(pid) = pid {
            let deadline = Instant::now() + EXIT_WAIT;
            while pid_runs(pid, id) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.cgroups.remove(id)
    }

    /// Asks QEMU to quit and waits for it to be gone (SIGKILL after [`EXIT_WAIT`]).
    fn quit(&self, id: &str) -> Result<()> {
        if let Ok(mut q) = self.qmp(id) {
            let _ = q.quit();
        }
        let pid = self.pid(id);
        let deadline = Instant::now() + EXIT_WAIT;
        if let Some(pid) = pid {
            while pid_runs(pid, id) && Instant::now() < deadline {
                if let Some(vm) = self.vms.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id)
                    && let Some(c) = vm.child.as_mut()
                {
                    let _ = c.try_wait();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        self.kill(id)
    }

    fn suspend_locked(&self, id: &str, hang_up: &(dyn Fn() + Send + Sync)) -> Result<()> {
        let volume = self
            .volume(id)
            .ok_or_else(|| EngineError::Spec(format!("VM {id} does not run")))?;
        let mut q = self.qmp(id)?;
        // The host hangs up the agent channel now that QMP listens: the guest must see that
        // before its CPUs stop, so it is saved waiting for a new connection rather than
        // inside the old one (whose HTTP/2 state a new host could not continue). The guest
        // closes and reopens its port on a hangup; QEMU says so with VSERPORT_CHANGE.
        hang_up();
        let closed = q.wait_event(
            "VSERPORT_CHANGE",
            |d| d["id"] == "agentport" && d["open"] == false,
            HANGUP_WAIT,
        )?;
        tracing::debug!(id, closed, "agent port before suspend");
        q.stop()?;
        q.ignore_shared_memory()?;
        let tmp = volume.join("state.tmp");
        let state = volume.join(STATE_FILE);
        let file = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        q.send_fd(
            "state",
            OwnedFd::from(file.try_clone().map_err(io_err("dup", &tmp))?),
        )?;
        let saved = q.save_state("fd:state".into(), STATE_WAIT);
        if let Err(e) = saved {
            let _ = q.cont();
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        file.sync_all().map_err(io_err("sync", &tmp))?;
        drop(file);
        // Guest RAM is the shared file: on disk before QEMU goes, so a host crash keeps it.
        let mem = volume.join(MEMORY_FILE);
        fs::File::open(&mem)
            .and_then(|f| f.sync_data())
            .map_err(io_err("sync", &mem))?;
        fs::rename(&tmp, &state).map_err(io_err("rename", &state))?;
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            qemu: self.qemu_version.clone(),
            kernel: self.cfg.guest.release.clone(),
            initramfs: self.initramfs_sha256.clone(),
            memory_bytes: fs::metadata(&mem).map_err(io_err("stat", &mem))?.len(),
            state_bytes: fs::metadata(&state).map_err(io_err("stat", &state))?.len(),
            state_sha256: sha256_file(&state).map_err(io_err("read", &state))?,
            saved_at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let mpath = volume.join(MANIFEST_FILE);
        let mtmp = volume.join("state.json.tmp");
        fs::write(&mtmp, serde_json::to_vec_pretty(&manifest).expect("serialises"))
            .and_then(|()| fs::File::open(&mtmp)?.sync_all())
            .and_then(|()| fs::rename(&mtmp, &mpath))
            .map_err(io_err("write", &mpath))?;
        drop(q);
        self.quit(id)
    }
}

impl Engine for VmEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Vm
    }

    fn describe(&self) -> String {
        format!(
            "QEMU {} microvm, accel {}, guest kernel {}",
            self.qemu_version,
            self.cfg.accel.as_str(),
            self.cfg.guest.release
        )
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            freeze: true,
            memory_snapshot: true,
            shared_dirs: false,
            agent_shutdown: true,
            one_connection: true,
            own_kernel: true,
        }
    }

    fn disk_kind(&self) -> DiskKind {
        DiskKind::Image
    }

    fn prepare_image(&self, tree: &Path, out: &Path) -> Result<()> {
        disk::make_ext4(
            tree,
            &out.join(crate::DISK_IMAGE),
            self.cfg.uid_base,
            self.cfg.uid_count,
        )
    }

    fn start(&self, spec: &SandboxSpec) -> Result<()> {
        let lock = self.lock(&spec.id);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.start_locked(spec)
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<()> {
        let lock = self.lock(id);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        // The caller asked the agent to shut the guest down (its processes get their grace,
        // then it syncs and powers off): give it that long to end by itself.
        if !grace.is_zero()
            && let Some(pid) = self.pid(id)
        {
            let deadline = Instant::now() + grace + Duration::from_secs(5);
            while pid_runs(pid, id) && Instant::now() < deadline {
                if let Some(vm) = self.vms.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id)
                    && let Some(c) = vm.child.as_mut()
                {
                    let _ = c.try_wait();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.quit(id)?;
        let run = self.run_dir(id);
        remove_if_exists(&run.join("vm.json"))?;
        let _ = fs::remove_dir_all(run.join(QEMU_DIR));
        let _ = fs::remove_dir(run.join(JAIL_DIR));
        Ok(())
    }

    fn status(&self, id: &str) -> Result<RuntimeStatus> {
        let Some(pid) = self.pid(id) else {
            return Ok(if self.vm_file(id).is_some() {
                RuntimeStatus::Stopped
            } else {
                RuntimeStatus::Missing
            });
        };
        let lock = self.lock(id);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match self.qmp(id).and_then(|mut q| q.running()) {
            Ok(false) => RuntimeStatus::Paused { pid },
            _ => RuntimeStatus::Running { pid },
        })
    }

    fn list(&self) -> Result<Vec<String>> {
        let Ok(entries) = fs::read_dir(&self.cfg.run_root) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| self.pid(id).is_some())
            .collect())
    }

    fn adopt(&self, id: &str) -> Result<()> {
        let Some(f) = self.vm_file(id) else {
            return Ok(());
        };
        if !pid_runs(f.pid, id) {
            return Ok(());
        }
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        if vms.contains_key(id) {
            return Ok(());
        }
        let run = self.run_dir(id);
        let drain = agent_log::attach(&run).map_err(io_err("drain", &run))?;
        vms.insert(
            id.to_owned(),
            Vm {
                child: None,
                pid: f.pid,
                volume: f.volume,
                drain,
            },
        );
        Ok(())
    }

    fn freeze(&self, id: &str) -> Result<()> {
        let lock = self.lock(id);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.qmp(id)?.stop()
    }

    fn thaw(&self, id: &str) -> Result<()> {
        let lock = self.lock(id);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.qmp(id)?.cont()
    }

    fn stats(&self, id: &str) -> Option<Stats> {
        let pid = self.pid(id)?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(Stats {
            memory_bytes: rss_kb * 1024,
            pids: 0,
            oom_kills: 0,
            pids_limit: None,
        })
    }

    fn liveness(&self, id: &str) -> Result<Liveness> {
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(vm) = vms.get_mut(id) {
            if let Some(child) = vm.child.as_mut() {
                return Ok(match child.try_wait() {
                    Ok(None) => Liveness::Alive,
                    Ok(Some(status)) => Liveness::Dead {
                        how: Some(format!("QEMU {status}")),
                    },
                    Err(_) => Liveness::Dead { how: None },
                });
            }
            return Ok(if pid_runs(vm.pid, id) {
                Liveness::Alive
            } else {
                Liveness::Dead {
                    how: Some("QEMU exited".into()),
                }
            });
        }
        drop(vms);
        Ok(if self.pid(id).is_some() {
            Liveness::Alive
        } else {
            Liveness::Dead { how: None }
        })
    }

    fn suspend(&self, id: &str, hang_up: &(dyn Fn() + Send + Sync)) -> Result<()> {
        let lock = self.lock(id);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.suspend_locked(id, hang_up)
    }

    fn suspended(&self, volume: &Path) -> bool {
        volume.join(MANIFEST_FILE).is_file()
    }

    fn discard_suspended(&self, volume: &Path) -> Result<()> {
        for f in [MANIFEST_FILE, STATE_FILE] {
            remove_if_exists(&volume.join(f))?;
        }
        Ok(())
    }

    fn agent_dialer(&self, run_dir: &Path) -> crate::AgentDialer {
        crate::AgentDialer::Unix(run_dir.join(QEMU_DIR).join("agent.sock"))
    }

    /// Grows `disk.img`; a running QEMU is told at once (`block_resize` of the `root`
    /// drive), so the guest sees the larger device without a restart. A VM that does not
    /// run (stopped, or asleep with its memory saved) grows its filesystem at its next boot.
    /// A VM's cpus and memory are fixed when QEMU starts (the caller only hands out VMs
    /// booted with the asked-for ones) and its hostname is the guest's business (the
    /// agent's `SetClock`): nothing to do on the host.
    fn reassign(
        &self,
        _id: &str,
        _run_dir: &Path,
        hostname: &str,
        _resources: &crate::Resources,
    ) -> Result<bool> {
        Ok(cmdline_safe(hostname))
    }

    fn grow_disk(&self, id: &str, volume: &Path, bytes: u64) -> Result<bool> {
        let lock = self.lock(id);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = volume.join(crate::DISK_IMAGE);
        disk::grow(&path, bytes)?;
        if self.pid(id).is_none() {
            return Ok(false);
        }
        let size = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
        self.qmp(id)?.block_resize("root", size)?;
        Ok(true)
    }

    fn ready_timeout(&self) -> Duration {
        match self.cfg.accel {
            Accel::Kvm => Duration::from_secs(30),
            Accel::Tcg => Duration::from_secs(120),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_values_cannot_add_words() {
        assert!(cmdline_safe("my-box.1"));
        assert!(!cmdline_safe("a b"));
        assert!(!cmdline_safe("x init=/bin/sh"));
        assert!(!cmdline_safe(""));
    }

    #[test]
    fn qemu_version_is_read_from_its_banner() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("qemu");
        fs::write(
            &fake,
            "#!/bin/sh\necho 'QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)'\n",
        )
        .unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(&mut fs::metadata(&fake).unwrap().permissions(), 0o755);
        fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        assert_eq!(qemu_version(&fake).unwrap(), "7.2.19");
    }
}
