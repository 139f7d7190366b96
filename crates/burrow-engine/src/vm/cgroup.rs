//! A VM's cgroup: QEMU runs in its own, `<cgroup parent>/vm/<id>`, so a guest (or a QEMU
//! bug) takes no more memory, cpu time or threads from the host than its sandbox was
//! given. The daemon's cgroup parent is the container engine's (one per data dir); VMs
//! sit under their own `vm` child of it, so a sweep of leftovers never meets runc's.
//!
//! Which hierarchy is detected, never assumed: a unified (v2) host gets one directory with
//! `memory.max`, `pids.max`, `cpu.max`; a legacy or hybrid host one per v1 controller
//! (`memory`, `pids`, `cpu`), the way runc does it. QEMU joins before it runs anything:
//! the daemon opens each `cgroup.procs` for writing before the fork, and the child writes
//! `0` (itself) to them before it drops privileges and execs (see `start_locked`).
//!
//! This module must never put anything but a VM's QEMU into these cgroups, nor touch a
//! cgroup outside `<parent>/vm`.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{EngineError, Result};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The child of the daemon's cgroup parent that holds one cgroup per running VM.
const VMS: &str = "vm";
/// The v1 controllers a VM's QEMU is limited by.
const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];
/// How long a removal waits for the kernel to see the last of QEMU's threads leave.
const REMOVE_WAIT: Duration = Duration::from_secs(2);
/// CFS period for the cpu quota (the kernel's default, as runc uses).
const CPU_PERIOD_US: u64 = 100_000;

/// Host memory QEMU may use beyond the guest's RAM. QEMU's own (anonymous) memory was
/// measured under TCG at ~53 MiB by the bench and 56 MiB here (`rss` in the cgroup's
/// `memory.stat` after a 512 MiB guest booted, wrote 300 MiB to its disk and filled 300 MiB
/// of its RAM), 32 MiB of it TCG's translation cache (`tb-size=32`). The kernel also
/// charges the host's page cache of the VM's disk I/O to QEMU and reclaims it at the limit
/// (in that run usage reached the limit and the cache shrank; QEMU went on). Three times the
/// measured figure: tight enough that a guest cannot grow QEMU without bound, loose enough
/// that QEMU's own needs never meet the OOM killer.
pub const QEMU_OVERHEAD_MIB: u64 = 160;

/// Workers of QEMU's block I/O thread pool (`aio=threads`), set on its command line
/// (`-object main-loop,thread-pool-max=`): QEMU aborts when it cannot start a thread, so
/// the pids limit must cover every thread it may start, and QEMU's default pool is 64.
pub const THREAD_POOL_MAX: u32 = 16;

/// QEMU's threads beyond the vCPUs and the I/O pool: the main loop, RCU's call thread,
/// the signalfd and migration threads a save or resume starts, and room to spare.
pub const PIDS_MARGIN: u64 = 16;

/// What a VM's QEMU may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// CPU time per [`CPU_PERIOD_US`], in µs.
    pub cpu_quota_us: u64,
}

impl Limits {
    /// Guest RAM plus [`QEMU_OVERHEAD_MIB`]; one thread per vCPU, the I/O pool and
    /// [`PIDS_MARGIN`]; `cpus` cores of cpu time.
    pub fn for_vm(memory_mb: u64, cpus: f64, vcpus: u32) -> Self {
        Self {
            memory_bytes: (memory_mb + QEMU_OVERHEAD_MIB) << 20,
            pids: 1 + u64::from(vcpus) + u64::from(THREAD_POOL_MAX) + PIDS_MARGIN,
            cpu_quota_us: ((cpus * CPU_PERIOD_US as f64) as u64).max(1000),
        }
    }
}

/// The host's cgroup hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy {
    /// Legacy or hybrid: one hierarchy per controller under `/sys/fs/cgroup/<controller>`.
    V1,
    /// Unified, mounted at `/sys/fs/cgroup`.
    V2,
}

impl Hierarchy {
    pub fn detect() -> Self {
        let unified = nix::sys::statfs::statfs(CGROUP_ROOT)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
        if unified { Self::V2 } else { Self::V1 }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> EngineError + 'a {
    move |source| EngineError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The cgroups of the VMs of one daemon.
#[derive(Debug, Clone)]
pub struct Cgroups {
    hierarchy: Hierarchy,
    root: PathBuf,
    /// The daemon's cgroup parent, without slashes at either end.
    parent: String,
}

impl Cgroups {
    pub fn new(hierarchy: Hierarchy, parent: &str) -> Result<Self> {
        let parent = parent.trim_matches('/');
        let ok = !parent.is_empty()
            && parent.split('/').all(|c| c != ".." && c != ".")
            && parent
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b));
        if !ok {
            return Err(EngineError::Spec(format!("cgroup parent {parent:?}")));
        }
        Ok(Self {
            hierarchy,
            root: PathBuf::from(CGROUP_ROOT),
            parent: parent.to_owned(),
        })
    }

    pub fn hierarchy(&self) -> Hierarchy {
        self.hierarchy
    }

    /// Where the VMs' cgroups live, one directory per hierarchy.
    fn bases(&self) -> Vec<PathBuf> {
        let rel = Path::new(&self.parent).join(VMS);
        match self.hierarchy {
            Hierarchy::V2 => vec![self.root.join(rel)],
            Hierarchy::V1 => V1_CONTROLLERS
                .iter()
                .map(|c| self.root.join(c).join(&rel))
                .collect(),
        }
    }

    /// The cgroup directories of VM `id` (one on v2, one per controller on v1).
    pub fn dirs(&self, id: &str) -> Vec<PathBuf> {
        self.bases().into_iter().map(|b| b.join(id)).collect()
    }

    /// Makes VM `id`'s cgroup with `limits` and returns its `cgroup.procs` files opened for
    /// writing (close-on-exec): the child writes `0` to each to join.
    pub fn create(&self, id: &str, limits: Limits) -> Result<Vec<OwnedFd>> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(EngineError::Spec(format!("VM id {id:?}")));
        }
        if self.hierarchy == Hierarchy::V1 {
            for c in V1_CONTROLLERS {
                let mount = self.root.join(c);
                if !mount.join("cgroup.procs").is_file() {
                    return Err(EngineError::Unavailable(
                        "vm",
                        format!(
                            "the cgroup v1 {c} controller is not mounted at {}",
                            mount.display()
                        ),
                    ));
                }
            }
        } else {
            self.enable_v2_controllers()?;
        }
        let mut procs = Vec::new();
        for dir in self.dirs(id) {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
            for (file, value) in self.limit_files(&dir, limits) {
                fs::write(&file, &value).map_err(io_err("write", &file))?;
            }
            let p = dir.join("cgroup.procs");
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(io_err("open", &p))?;
            procs.push(OwnedFd::from(f));
        }
        Ok(procs)
    }

    /// The files (in the order they must be written) and values that set `limits` in `dir`.
    fn limit_files(&self, dir: &Path, limits: Limits) -> Vec<(PathBuf, String)> {
        let mem = limits.memory_bytes.to_string();
        let pids = limits.pids.to_string();
        match self.hierarchy {
            Hierarchy::V2 => vec![
                (dir.join("memory.max"), mem),
                (dir.join("memory.swap.max"), "0".into()),
                (dir.join("pids.max"), pids),
                (
                    dir.join("cpu.max"),
                    format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us),
                ),
            ]
            .into_iter()
            .filter(|(f, _)| !f.ends_with("memory.swap.max") || f.exists())
            .collect(),
            Hierarchy::V1 => {
                let controller = dir
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(|r| r.components().next())
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .unwrap_or_default();
                match controller.as_str() {
                    "memory" => {
                        let mut v = vec![(dir.join("memory.limit_in_bytes"), mem.clone())];
                        // Swap accounting on: QEMU's memory may not spill to swap either.
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            v.push((memsw, mem));
                        }
                        v
                    }
                    "pids" => vec![(dir.join("pids.max"), pids)],
                    "cpu" => vec![
                        (dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()),
                        (dir.join("cpu.cfs_quota_us"), limits.cpu_quota_us.to_string()),
                    ],
                    _ => Vec::new(),
                }
            }
        }
    }

    /// v2: a cgroup's limits only exist where its parent hands it the controllers, from
    /// the root down to `<parent>/vm`.
    fn enable_v2_controllers(&self) -> Result<()> {
        let mut dir = self.root.clone();
        let rel = Path::new(&self.parent).join(VMS);
        for part in rel.components() {
            let control = dir.join("cgroup.subtree_control");
            let now = fs::read_to_string(&control).map_err(io_err("read", &control))?;
            let missing: Vec<&str> = ["memory", "pids", "cpu"]
                .into_iter()
                .filter(|c| !now.split_whitespace().any(|w| w == *c))
                .collect();
            if !missing.is_empty() {
                let value = missing
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                fs::write(&control, value).map_err(io_err("enable controllers in", &control))?;
            }
            dir = dir.join(part);
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        Ok(())
    }

    /// Removes VM `id`'s cgroup once QEMU is gone (the kernel may take a moment to see its
    /// last thread leave). Idempotent.
    pub fn remove(&self, id: &str) -> Result<()> {
        for dir in self.dirs(id) {
            let deadline = Instant::now() + REMOVE_WAIT;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(io_err("remove", &dir)(e)),
                }
            }
        }
        Ok(())
    }

    /// Ids of every VM cgroup there is, in any hierarchy.
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .bases()
            .iter()
            .filter_map(|b| fs::read_dir(b).ok())
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The processes in VM `id`'s cgroup.
    pub fn pids(&self, id: &str) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs(id)
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_cover_guest_ram_qemu_and_its_threads() {
        let l = Limits::for_vm(512, 1.5, 2);
        assert_eq!(l.memory_bytes, (512 + QEMU_OVERHEAD_MIB) << 20);
        assert_eq!(l.pids, 1 + 2 + u64::from(THREAD_POOL_MAX) + PIDS_MARGIN);
        assert_eq!(l.cpu_quota_us, 150_000);
    }

    #[test]
    fn v1_places_a_vm_under_the_parent_in_each_controller() {
        let c = Cgroups::new(Hierarchy::V1, "/burrow-abc/").unwrap();
        assert_eq!(
            c.dirs("sb-1"),
            [
                PathBuf::from("/sys/fs/cgroup/memory/burrow-abc/vm/sb-1"),
                PathBuf::from("/sys/fs/cgroup/pids/burrow-abc/vm/sb-1"),
                PathBuf::from("/sys/fs/cgroup/cpu/burrow-abc/vm/sb-1"),
            ]
        );
        let files = c.limit_files(
            Path::new("/sys/fs/cgroup/cpu/burrow-abc/vm/sb-1"),
            Limits::for_vm(256, 2.0, 2),
        );
        assert_eq!(files[1].1, "200000");
        let v2 = Cgroups::new(Hierarchy::V2, "burrow-abc").unwrap();
        assert_eq!(
            v2.dirs("sb-1"),
            [PathBuf::from("/sys/fs/cgroup/burrow-abc/vm/sb-1")]
        );
    }

    #[test]
    fn a_parent_or_id_cannot_leave_the_tree() {
        assert!(Cgroups::new(Hierarchy::V1, "../etc").is_err());
        assert!(Cgroups::new(Hierarchy::V1, "").is_err());
        let c = Cgroups::new(Hierarchy::V1, "burrow-x").unwrap();
        assert!(c.create("../x", Limits::for_vm(1, 1.0, 1)).is_err());
    }
}
