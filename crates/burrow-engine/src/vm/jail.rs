//! QEMU's own mount namespace: a root that holds only what QEMU needs, so a QEMU taken
//! over by its guest finds no host file to read or write beyond its own.
//!
//! The root is a small tmpfs (read-only once built) with, at their host paths:
//! - read-only: `/usr` (QEMU, its libraries, modules and firmware; the guest kit under
//!   `/usr/local`), the `/lib*`, `/bin`, `/sbin` of the host (recreated as symlinks where
//!   they are, as on merged-/usr hosts), `/etc/ld.so.cache`, and each file QEMU is named on
//!   its command line that lies outside those (the initramfs, in the host's cache);
//! - `/dev/null`, `/dev/zero`, `/dev/random`, `/dev/urandom` (and `/dev/kvm` with KVM);
//! - a `/proc` of its own (`hidepid=invisible,subset=pid`: QEMU sees its own process, and
//!   reaches the disk and memory files it inherited through `/proc/self/fd`);
//! - read-write: the VM's socket directory (`run/<id>/vm`) alone.
//!
//! The daemon's data dir, the pool (other sandboxes, their volumes, checkpoints), other run
//! dirs, `/root`, `/home`, `/var`, `/tmp` are not in it. The disk, memory and state files and
//! the tap are open before the jail is entered and passed as fds.
//!
//! A [`Jail`] is planned before the fork (all allocation happens here) and entered in the
//! child between fork and exec with raw syscalls only ([`Jail::enter`]).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::{EngineError, Result};

/// Host trees QEMU's root binds read-only (or recreates as the symlinks they are).
const SYSTEM_TREES: [&str; 7] = ["/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"];
/// Single host files it binds read-only when present.
const SYSTEM_FILES: [&str; 1] = ["/etc/ld.so.cache"];
/// Device nodes it binds.
const DEVICES: [&str; 4] = ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"];

#[derive(Debug)]
enum Step {
    Dir(CString),
    File(CString),
    Symlink {
        target: CString,
        link: CString,
    },
    /// A bind mount; `ro`: read-only.
    Bind {
        src: CString,
        dst: CString,
        ro: bool,
        dev: bool,
    },
    Proc(CString),
}

/// A planned root for QEMU: where it is built (an empty directory on the host, covered by a
/// tmpfs in the child's namespace only) and the steps that fill it.
#[derive(Debug)]
pub struct Jail {
    root: CString,
    steps: Vec<Step>,
    /// What the plan makes visible, at host paths (for tests and messages).
    visible: Vec<PathBuf>,
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| EngineError::Spec(format!("path {} holds a NUL byte", p.display())))
}

impl Jail {
    /// Plans a root at `root` (an existing empty directory) in which `files` (QEMU's binary,
    /// the guest kernel, the initramfs) can be read, `devices` beyond the default ones
    /// (`/dev/kvm`) opened, and `rw_dir` (the VM's socket directory) written.
    pub fn plan(root: &Path, files: &[&Path], devices: &[&Path], rw_dir: &Path) -> Result<Self> {
        let mut j = Self {
            root: cstring(root)?,
            steps: Vec::new(),
            visible: Vec::new(),
        };
        let mut made: Vec<PathBuf> = Vec::new();
        let mut trees: Vec<PathBuf> = Vec::new();
        for t in SYSTEM_TREES {
            let host = Path::new(t);
            let Ok(meta) = std::fs::symlink_metadata(host) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(host).map_err(|e| EngineError::Io {
                    op: "read link",
                    path: host.to_owned(),
                    source: e,
                })?;
                j.steps.push(Step::Symlink {
                    target: cstring(&target)?,
                    link: cstring(&root.join(&t[1..]))?,
                });
            } else if meta.is_dir() {
                j.bind(root, host, &mut made, true, false)?;
                trees.push(host.to_owned());
            }
        }
        let under_tree = |p: &Path| trees.iter().any(|t| p.starts_with(t));
        for f in SYSTEM_FILES.iter().map(Path::new).filter(|p| p.is_file()) {
            j.bind(root, f, &mut made, true, false)?;
        }
        for f in files {
            // Resolved, so a symlink into a tree that is bound counts as under it.
            let real = std::fs::canonicalize(f).map_err(|e| EngineError::Io {
                op: "resolve",
                path: f.to_path_buf(),
                source: e,
            })?;
            if !under_tree(f) || !under_tree(&real) {
                j.bind(root, f, &mut made, true, false)?;
            }
        }
        for d in DEVICES.iter().map(Path::new).chain(devices.iter().copied()) {
            if d.exists() {
                j.bind(root, d, &mut made, false, true)?;
            }
        }
        j.ensure_dir(root, Path::new("/proc"), &mut made)?;
        j.steps.push(Step::Proc(cstring(&root.join("proc"))?));
        j.visible.push(PathBuf::from("/proc"));
        j.bind(root, rw_dir, &mut made, false, false)?;
        Ok(j)
    }

    /// Host paths the jail shows.
    pub fn visible(&self) -> &[PathBuf] {
        &self.visible
    }

    /// Makes `dir` (a host path) and its parents inside the root.
    fn ensure_dir(&mut self, root: &Path, dir: &Path, made: &mut Vec<PathBuf>) -> Result<()> {
        let mut at = PathBuf::from("/");
        for c in dir.components().skip(1) {
            at.push(c);
            if !made.contains(&at) {
                self.steps.push(Step::Dir(cstring(
                    &root.join(at.strip_prefix("/").expect("absolute")),
                )?));
                made.push(at.clone());
            }
        }
        Ok(())
    }

    fn bind(&mut self, root: &Path, host: &Path, made: &mut Vec<PathBuf>, ro: bool, dev: bool) -> Result<()> {
        if !host.is_absolute() {
            return Err(EngineError::Spec(format!("{} is not absolute", host.display())));
        }
        let inside = root.join(host.strip_prefix("/").expect("absolute"));
        if host.is_dir() {
            self.ensure_dir(root, host, made)?;
        } else {
            if let Some(parent) = host.parent() {
                self.ensure_dir(root, parent, made)?;
            }
            self.steps.push(Step::File(cstring(&inside)?));
        }
        self.steps.push(Step::Bind {
            src: cstring(host)?,
            dst: cstring(&inside)?,
            ro,
            dev,
        });
        self.visible.push(host.to_owned());
        Ok(())
    }

    /// Enters the jail: a new mount namespace whose root is the planned one. For the child
    /// between fork and exec, while it still has the privileges to mount: raw syscalls on
    /// the plan's prepared strings only, nothing allocated.
    ///
    /// # Safety
    /// Must run in a freshly forked, single-threaded child (it changes the process's mount
    /// namespace, root and working directory).
    pub unsafe fn enter(&self) -> io::Result<()> {
        let fail = || Err(io::Error::last_os_error());
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: for every call below, each pointer is a NUL-terminated string owned by
        // `self` or a literal, alive for the call; none of the calls keeps it.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            // Nothing mounted here reaches the host, nothing the host mounts later reaches here.
            if libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            if libc::mount(
                c"tmpfs".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=0755,size=1m".as_ptr().cast(),
            ) != 0
            {
                return fail();
            }
            for step in &self.steps {
                let ok = match step {
                    Step::Dir(p) => {
                        libc::mkdir(p.as_ptr(), 0o755) == 0 || *libc::__errno_location() == libc::EEXIST
                    }
                    Step::File(p) => {
                        let fd = libc::open(
                            p.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        fd >= 0 && libc::close(fd) == 0
                    }
                    Step::Symlink { target, link } => libc::symlink(target.as_ptr(), link.as_ptr()) == 0,
                    Step::Bind { src, dst, ro, dev } => {
                        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
                        if *ro {
                            flags |= libc::MS_RDONLY;
                        }
                        if !*dev {
                            flags |= libc::MS_NODEV;
                        }
                        if *dev || !*ro {
                            flags |= libc::MS_NOEXEC;
                        }
                        libc::mount(src.as_ptr(), dst.as_ptr(), null, libc::MS_BIND, std::ptr::null()) == 0
                            && libc::mount(null, dst.as_ptr(), null, flags, std::ptr::null()) == 0
                    }
                    Step::Proc(p) => {
                        libc::mount(
                            c"proc".as_ptr(),
                            p.as_ptr(),
                            c"proc".as_ptr(),
                            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                            c"hidepid=invisible,subset=pid".as_ptr().cast(),
                        ) == 0
                    }
                };
                if !ok {
                    return fail();
                }
            }
            // The plan's root becomes `/`; the host's root is detached from this namespace.
            if libc::chdir(self.root.as_ptr()) != 0
                || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
                || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                return fail();
            }
            // The tmpfs itself read-only: QEMU writes nothing but its socket directory.
            if libc::mount(
                null,
                c"/".as_ptr(),
                null,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_shows_qemus_files_and_its_own_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("jail");
        let own = dir.path().join("run/sb-1/vm");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        let initramfs = dir.path().join("cache/initramfs.cpio");
        std::fs::create_dir_all(initramfs.parent().unwrap()).unwrap();
        std::fs::write(&initramfs, b"x").unwrap();
        let j = Jail::plan(&root, &[Path::new("/usr/bin/env"), &initramfs], &[], &own).unwrap();
        let v = j.visible();
        assert!(v.contains(&PathBuf::from("/usr")), "{v:?}");
        assert!(v.contains(&initramfs), "{v:?}");
        assert!(v.contains(&own), "{v:?}");
        assert!(v.contains(&PathBuf::from("/dev/null")), "{v:?}");
        assert!(
            !v.iter().any(|p| p == Path::new("/usr/bin/env")),
            "a file under /usr is not bound again: {v:?}"
        );
        // Nothing else of the host's: not the run dir's other entries, not /var, /tmp, /root.
        for hidden in [
            dir.path().join("run"),
            "/var".into(),
            "/tmp".into(),
            "/root".into(),
            "/home".into(),
        ] {
            assert!(!v.contains(&hidden), "{} is visible: {v:?}", hidden.display());
        }
        // Each bind's parents are made first.
        let dirs: Vec<String> = j
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Dir(p) => Some(p.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let run = root.join(dir.path().join("run").strip_prefix("/").unwrap());
        let at = |p: &Path| dirs.iter().position(|d| d == &p.to_string_lossy()).unwrap();
        assert!(at(&run) < at(&run.join("sb-1")), "{dirs:?}");
    }
}
