//! LXCFS, the host's view of a sandbox's own limits in `/proc` and `/sys/devices/system/cpu`.
//!
//! LXCFS (Debian's `lxcfs`) is a FUSE filesystem that answers a read of its `proc/meminfo`,
//! `cpuinfo`, `stat`, `uptime`, `loadavg`, `diskstats`, `swaps` and `sys/devices/system/cpu`
//! with the values of the *reader's* container: the memory and CPU (CFS quota) limits of the
//! cgroup of the init of the reader's pid namespace, and that init's start time. The engine
//! bind-mounts these files read-only over the sandbox's own (see [`PROC_FILES`], [`SYS_CPU`]),
//! so `free`, `top`, `uptime`, `nproc`-style sysconf calls and runtimes that size themselves
//! from `/proc` see the burrow's limits rather than the host's.
//!
//! One lxcfs per daemon, on a mount point of its own. It is started detached (a process group
//! of its own) and outlives the daemon: sandboxes keep running across daemon restarts, and a
//! bind mount of a FUSE filesystem whose process is gone fails every read with ENOTCONN. The
//! next daemon adopts the mount when it is healthy. The daemon unmounts it on exit only when
//! no other mount namespace (no sandbox) still holds one of its files; even then lxcfs keeps
//! serving the bind mounts that exist and exits by itself once the last one is gone.
//!
//! This module only keeps lxcfs mounted; it never touches a sandbox.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::sys;

/// Files of lxcfs's `proc/` that are bind-mounted over the sandbox's `/proc/<name>` (all of
/// them on runc's list of files that may be mounted over `/proc`). Not `slabinfo`: a sandbox
/// has no use for it, and the host's is root-only.
pub const PROC_FILES: &[&str] = &[
    "cpuinfo",
    "diskstats",
    "loadavg",
    "meminfo",
    "stat",
    "swaps",
    "uptime",
];

/// lxcfs's copy of `/sys/devices/system/cpu` (a full directory: `online`, `cpuN`, …, with
/// only the sandbox's CPUs), bind-mounted over the sandbox's.
pub const SYS_CPU: &str = "sys/devices/system/cpu";

/// How long a new lxcfs gets to mount itself.
const START_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LxcfsError {
    #[error("lxcfs not found ({0})")]
    NotFound(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lxcfs did not mount {dir}: {detail}")]
    Start { dir: PathBuf, detail: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LxcfsError + 'a {
    move |source| LxcfsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The lxcfs that serves one daemon's sandboxes.
#[derive(Debug)]
pub struct Lxcfs {
    bin: PathBuf,
    dir: PathBuf,
    pidfile: PathBuf,
    log: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The lxcfs process that serves `dir`, when a daemon of ours started it (this one or an
    /// earlier one: its pidfile is ours). `None` with `mounted`: someone else's (adopted).
    process: Option<OwnedFd>,
    /// The lxcfs this daemon started, to reap once it exits (it is our child).
    child: Option<Child>,
    /// Whether `dir` is a healthy lxcfs mount, as last checked.
    mounted: bool,
    /// Whether the last attempt to get one failed (logged once; not retried).
    failed: bool,
}

impl Lxcfs {
    /// An lxcfs (`bin`, a bare name is looked up on PATH) to be mounted at `dir`; nothing
    /// runs until [`Lxcfs::ensure`].
    pub fn new(bin: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> Self {
        let dir: PathBuf = dir.into();
        let with_ext = |ext: &str| {
            let mut p = dir.clone().into_os_string();
            p.push(ext);
            PathBuf::from(p)
        };
        Self {
            bin: bin.into(),
            pidfile: with_ext(".pid"),
            log: with_ext(".log"),
            dir,
            state: Mutex::new(State::default()),
        }
    }

    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether sandboxes started now get the view (lxcfs was mounted and its process, where
    /// known, still runs). Never starts anything.
    pub fn available(&self) -> bool {
        let mut st = self.lock();
        st.mounted && self.alive(&mut st)
    }

    /// The mount point of a healthy lxcfs, adopting the one already mounted there or starting
    /// one (again, if it died). `None` when there is none to be had: sandboxes then start
    /// without the view (logged once).
    pub fn ensure(&self) -> Option<PathBuf> {
        let mut st = self.lock();
        let was_mounted = st.mounted;
        if was_mounted && self.alive(&mut st) {
            return Some(self.dir.clone());
        }
        if st.failed {
            return None;
        }
        if was_mounted {
            tracing::warn!(
                dir = %self.dir.display(),
                "lxcfs died; starting it again (running sandboxes get ENOTCONN from its files until they restart)"
            );
        }
        match self.attach_or_start(&mut st) {
            Ok(()) => Some(self.dir.clone()),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "sandboxes start without their own view of /proc (lxcfs): they see the host's memory, CPUs and uptime"
                );
                st.failed = true;
                st.mounted = false;
                None
            }
        }
    }

    /// At daemon exit: unmounts lxcfs if a daemon of ours started it and no sandbox (no
    /// other mount namespace) holds one of its files. Otherwise it stays, for the sandboxes
    /// that use it and for the next daemon to adopt.
    pub fn release(&self) {
        let mut st = self.lock();
        if !st.mounted || st.process.is_none() {
            return;
        }
        let Some(dev) = mounted_device(&self.dir) else {
            return;
        };
        match used_elsewhere(&dev) {
            Ok(false) => {}
            Ok(true) => {
                tracing::debug!(dir = %self.dir.display(), "lxcfs stays: sandboxes use it");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "lxcfs stays: cannot tell whether sandboxes use it");
                return;
            }
        }
        // lxcfs exits by itself once its last mount is gone.
        match nix::mount::umount2(&self.dir, nix::mount::MntFlags::empty()) {
            Ok(()) => {
                // It ends once its last mount is gone, within seconds (its load average
                // thread wakes every few); the host's init reaps it once the daemon is gone.
                st.mounted = false;
                st.process = None;
                st.child = None;
                let _ = fs::remove_dir(&self.dir);
                let _ = fs::remove_file(&self.log);
                tracing::debug!(dir = %self.dir.display(), "lxcfs unmounted");
            }
            Err(e) => tracing::warn!(dir = %self.dir.display(), error = %e, "unmounting lxcfs"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the lxcfs process we know of still runs; one we have no pidfd of (adopted
    /// without our pidfile) is asked through its mount instead.
    fn alive(&self, st: &mut State) -> bool {
        match &st.process {
            None if healthy(&self.dir) => true,
            None => {
                st.mounted = false;
                false
            }
            Some(fd) if !sys::wait_pidfd(fd, Duration::ZERO).unwrap_or(true) => {
                if healthy(&self.dir) {
                    return true;
                }
                // Its mount fails reads while the process still runs: it is exiting (the
                // FUSE connection closes before the process is gone) or its connection was
                // aborted. Either way it serves nothing more; make sure it has ended before
                // another takes its place.
                if let Err(e) = sys::pidfd_kill(fd) {
                    tracing::warn!(error = %e, "could not kill an lxcfs that no longer answers");
                }
                if !sys::wait_pidfd(fd, Duration::from_secs(5)).unwrap_or(false) {
                    tracing::warn!("an lxcfs that no longer answers has not ended within 5 s");
                }
                self.forget_process(st);
                false
            }
            Some(_) => {
                self.forget_process(st);
                false
            }
        }
    }

    /// The lxcfs we knew has ended: reaps it when it was our child.
    fn forget_process(&self, st: &mut State) {
        st.process = None;
        st.mounted = false;
        if let Some(mut child) = st.child.take() {
            let status = child.try_wait();
            tracing::debug!(?status, "lxcfs exited");
        }
    }

    fn attach_or_start(&self, st: &mut State) -> Result<(), LxcfsError> {
        if mounted_device(&self.dir).is_some() {
            if healthy(&self.dir) {
                st.process = self.pidfile_process();
                st.mounted = true;
                tracing::info!(
                    dir = %self.dir.display(),
                    ours = st.process.is_some(),
                    "adopted a running lxcfs"
                );
                return Ok(());
            }
            // A dead FUSE mount (ENOTCONN): detach it. Sandboxes that hold its files keep
            // failing until they restart, and then get the new one.
            tracing::warn!(dir = %self.dir.display(), "replacing a dead lxcfs mount");
            nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| io_err("umount", &self.dir)(e.into()))?;
        }
        let (child, pidfd) = self.start()?;
        st.process = Some(pidfd);
        st.child = Some(child);
        st.mounted = true;
        Ok(())
    }

    /// The lxcfs named by our pidfile, if it runs.
    fn pidfile_process(&self) -> Option<OwnedFd> {
        let pid: u32 = fs::read_to_string(&self.pidfile).ok()?.trim().parse().ok()?;
        let fd = sys::pidfd_open(pid).ok()??;
        // Opened before the check, so the pid is not recycled in between.
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "lxcfs").then_some(fd)
    }

    /// Starts lxcfs on `dir` and waits until it is mounted.
    fn start(&self) -> Result<(Child, OwnedFd), LxcfsError> {
        let bin = super::find_executable(&self.bin)
            .ok_or_else(|| LxcfsError::NotFound(self.bin.display().to_string()))?;
        if let Some(parent) = self.dir.parent() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        match fs::create_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err("create", &self.dir)(e)),
            _ => {}
        }
        let log = fs::File::create(&self.log).map_err(io_err("create", &self.log))?;
        let err_log = log.try_clone().map_err(io_err("dup", &self.log))?;
        let mut cmd = Command::new(&bin);
        // -f: we keep the process (and reap it); --enable-cfs: CPU views from the CFS quota,
        // which is how sandboxes are limited; -l: a per-sandbox load average; --enable-pidfd:
        // no pid reuse races in its bookkeeping.
        cmd.arg("-f")
            .arg("-p")
            .arg(&self.pidfile)
            .args(["--enable-cfs", "--enable-pidfd", "-l"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            // Its own process group: a signal to the daemon's (a terminal's ^C, a service
            // manager's stop) must not take down what running sandboxes read from.
            .process_group(0);
        let mut child = cmd.spawn().map_err(io_err("spawn", &bin))?;
        let pid = child.id();
        // Our child: reaped when it is seen to have died (`alive`), by the host's init
        // once the daemon is gone.
        let pidfd = match sys::pidfd_open(pid) {
            Ok(Some(fd)) => fd,
            _ => {
                let _ = child.wait();
                return Err(self.start_failed("exited at once"));
            }
        };
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(self.start_failed(&format!("exited ({status})")));
            }
            if mounted_device(&self.dir).is_some() && healthy(&self.dir) {
                tracing::info!(dir = %self.dir.display(), pid, "lxcfs started");
                return Ok((child, pidfd));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.start_failed("not mounted after 10 s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn start_failed(&self, what: &str) -> LxcfsError {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("; ");
        LxcfsError::Start {
            dir: self.dir.clone(),
            detail: format!("{what}; log: {tail}"),
        }
    }
}

/// Whether the lxcfs at `dir` answers (a dead one fails with ENOTCONN).
fn healthy(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::FUSE_SUPER_MAGIC)
        && fs::metadata(dir.join("proc/meminfo")).is_ok()
}

/// The device (`major:minor`) of the lxcfs mounted at `dir` (the topmost mount there), from
/// our mount table.
fn mounted_device(dir: &Path) -> Option<String> {
    let table = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = dir.to_str()?;
    table
        .lines()
        .rev()
        .filter_map(parse_mountinfo)
        .find(|m| m.mount_point == want && m.fstype == "fuse.lxcfs")
        .map(|m| m.device)
}

/// Whether a mount namespace other than ours has a bind mount of a file or directory of the
/// lxcfs of device `dev`: what sandboxes hold. A copy of the whole mount (in a namespace
/// cloned from ours since: a runc init before its `pivot_root`, a service with a private
/// /tmp) is no user; it only keeps lxcfs alive until it goes.
fn used_elsewhere(dev: &str) -> io::Result<bool> {
    let ours = fs::read_link("/proc/self/ns/mnt")?;
    let mut seen = std::collections::HashSet::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(ns) = fs::read_link(entry.path().join("ns/mnt")) else {
            continue;
        };
        if ns == ours || !seen.insert(ns) {
            continue;
        }
        // A process gone meanwhile: its namespace is someone else's too, or gone.
        let Ok(table) = fs::read_to_string(entry.path().join("mountinfo")) else {
            continue;
        };
        if table
            .lines()
            .filter_map(parse_mountinfo)
            .any(|m| m.device == dev && m.root != "/")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[derive(Debug, PartialEq, Eq)]
struct MountEntry {
    device: String,
    /// The path within the filesystem that is mounted (`/` unless a bind mount of part of it).
    root: String,
    mount_point: String,
    fstype: String,
}

/// One line of `/proc/<pid>/mountinfo`: `id parent major:minor root mount-point options
/// [optional fields…] - fstype source super-options`, with `\ooo` escapes in paths.
fn parse_mountinfo(line: &str) -> Option<MountEntry> {
    let mut fields = line.split(' ');
    let device = fields.nth(2)?.to_owned();
    let root = unescape(fields.next()?);
    let mount_point = unescape(fields.next()?);
    let fstype = fields.skip_while(|f| *f != "-").nth(1)?.to_owned();
    Some(MountEntry {
        device,
        root,
        mount_point,
        fstype,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(
                    d.iter()
                        .fold(0u8, |acc, c| acc.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let line = "46 27 0:42 / /run/burrow/lxcfs\\040x rw,nosuid,nodev,relatime shared:1 - fuse.lxcfs lxcfs rw,user_id=0,group_id=0,allow_other";
        assert_eq!(
            parse_mountinfo(line),
            Some(MountEntry {
                device: "0:42".into(),
                root: "/".into(),
                mount_point: "/run/burrow/lxcfs x".into(),
                fstype: "fuse.lxcfs".into(),
            })
        );
        // A sandbox's bind mount of one lxcfs file.
        let bind = "356 287 0:73 /proc/meminfo /proc/meminfo ro,nosuid,nodev,noexec,relatime - fuse.lxcfs lxcfs rw,user_id=0";
        let m = parse_mountinfo(bind).unwrap();
        assert_eq!(
            (m.root.as_str(), m.mount_point.as_str()),
            ("/proc/meminfo", "/proc/meminfo")
        );
        let plain = "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw";
        assert_eq!(parse_mountinfo(plain).unwrap().fstype, "proc");
        assert_eq!(parse_mountinfo("garbage"), None);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\011c\\134d"), "a b\tc\\d");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn pidfile_and_log_sit_next_to_the_mount_point() {
        let l = Lxcfs::new("lxcfs", "/run/burrow/lxcfs-abc");
        assert_eq!(l.pidfile, Path::new("/run/burrow/lxcfs-abc.pid"));
        assert_eq!(l.log, Path::new("/run/burrow/lxcfs-abc.log"));
        assert!(!l.available());
    }

    #[test]
    fn a_missing_binary_means_no_view_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let l = Lxcfs::new("/nonexistent/lxcfs", dir.path().join("mnt"));
        assert_eq!(l.ensure(), None);
        // Given up: not retried on every sandbox start.
        assert_eq!(l.ensure(), None);
        assert!(!l.available());
    }
}
