//! The btrfs driver: every volume is a subvolume, every snapshot is a btrfs snapshot (O(1)).
//!
//! Owns the mapping from `Pool` operations to subvolume ioctls (`sys.rs`). It never mounts or
//! formats anything (that is `setup.rs`) and never walks into a volume except to find nested
//! subvolumes a sandbox made itself, which must go before their parent can be deleted.
//!
//! Quotas (qgroups) are deliberately not enabled: they make every snapshot and delete pay for
//! accounting. Per-sandbox disk limits will need them (or `btrfs quota` simple mode on newer
//! kernels); until then `volume_size` is an apparent-size walk.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{FileStat, SFlag, fstat, fstatat};

use crate::confine::{PoolRoot, resolve_error};
use crate::error::{Result, StorageError};
use crate::{Pool, sys, walk};

#[derive(Debug)]
pub(crate) struct BtrfsPool {
    root: PoolRoot,
    quota_on: std::sync::atomic::AtomicBool,
}

fn is_subvol_root(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
        && st.st_ino == sys::BTRFS_SUBVOL_ROOT_INO
}

impl BtrfsPool {
    pub(crate) fn new(root: &Path) -> Result<Self> {
        Ok(Self {
            root: PoolRoot::open(root)?,
            quota_on: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Opens an existing volume, refusing directories that are not subvolume roots.
    fn open_volume(&self, path: &Path) -> Result<OwnedFd> {
        let fd = self.root.open_dir(path)?;
        let st = fstat(&fd).map_err(|e| StorageError::errno("stat", path, e))?;
        if !is_subvol_root(&st) {
            return Err(StorageError::NotVolume(path.to_owned()));
        }
        Ok(fd)
    }

    fn destroy(&self, path: &Path, parent: &OwnedFd, name: &std::ffi::OsStr) -> Result<()> {
        let mut cleared_readonly = false;
        let mut removed_nested = false;
        loop {
            match sys::snap_destroy(parent.as_fd(), name) {
                Ok(()) => return Ok(()),
                Err(Errno::ENOENT) => return Ok(()),
                // Read-only subvolumes can refuse removal of nested ones; clearing the flag
                // is done only on failure because SETFLAGS commits a transaction.
                Err(Errno::EPERM | Errno::EROFS | Errno::EACCES) if !cleared_readonly => {
                    cleared_readonly = true;
                    self.set_readonly(path, false)?;
                }
                // A sandbox may create subvolumes inside its own tree (no privilege needed);
                // btrfs refuses to delete a subvolume that still contains others.
                Err(Errno::ENOTEMPTY) if !removed_nested => {
                    removed_nested = true;
                    if self.is_readonly(path)? {
                        self.set_readonly(path, false)?;
                        cleared_readonly = true;
                    }
                    for nested in walk::nested_subvolumes(path)? {
                        self.delete_volume(&nested)?;
                    }
                }
                Err(e) => return Err(StorageError::errno("delete subvolume", path, e)),
            }
        }
    }

    pub(crate) fn is_readonly(&self, path: &Path) -> Result<bool> {
        let fd = self.open_volume(path)?;
        let flags =
            sys::subvol_flags(fd.as_fd()).map_err(|e| StorageError::errno("get subvolume flags", path, e))?;
        Ok(flags & sys::BTRFS_SUBVOL_RDONLY != 0)
    }
}

impl Pool for BtrfsPool {
    fn kind_name(&self) -> &'static str {
        "btrfs"
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn create_volume(&self, path: &Path) -> Result<()> {
        let (parent, name) = self.root.open_parent(path, true)?;
        sys::subvol_create(parent.as_fd(), &name).map_err(|e| match e {
            Errno::EEXIST => StorageError::Exists(path.to_owned()),
            e => StorageError::errno("create subvolume", path, e),
        })
    }

    fn snapshot(&self, src: &Path, dst: &Path, readonly: bool) -> Result<()> {
        let src_fd = self.open_volume(src)?;
        let (parent, name) = self.root.open_parent(dst, true)?;
        sys::snap_create(parent.as_fd(), src_fd.as_fd(), &name, readonly).map_err(|e| match e {
            Errno::EEXIST => StorageError::Exists(dst.to_owned()),
            e => StorageError::errno("snapshot subvolume", dst, e),
        })
    }

    fn snapshot_limited(&self, src: &Path, dst: &Path, bytes: u64) -> Result<bool> {
        self.ensure_quota()?;
        let src_fd = self.open_volume(src)?;
        let (parent, name) = self.root.open_parent(dst, true)?;
        match sys::snap_create_limited(parent.as_fd(), src_fd.as_fd(), &name, false, Some(bytes)) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Err(StorageError::Exists(dst.to_owned())),
            // A kernel that takes no limit with a snapshot: the two steps.
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => {
                self.snapshot(src, dst, false)?;
                self.set_quota(dst, bytes)
            }
            Err(e) => Err(StorageError::errno("snapshot subvolume", dst, e)),
        }
    }

    fn delete_volume(&self, path: &Path) -> Result<()> {
        let (parent, name) = match self.root.open_parent(path, false) {
            Err(StorageError::NotFound(_)) => return Ok(()),
            r => r?,
        };
        let st = match fstatat(parent.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(resolve_error("stat", path, e)),
        };
        if !is_subvol_root(&st) {
            return Err(StorageError::NotVolume(path.to_owned()));
        }
        self.destroy(path, &parent, &name)
    }

    fn set_readonly(&self, path: &Path, readonly: bool) -> Result<()> {
        let fd = self.open_volume(path)?;
        let flags =
            sys::subvol_flags(fd.as_fd()).map_err(|e| StorageError::errno("get subvolume flags", path, e))?;
        let new = if readonly {
            flags | sys::BTRFS_SUBVOL_RDONLY
        } else {
            flags & !sys::BTRFS_SUBVOL_RDONLY
        };
        if new == flags {
            return Ok(());
        }
        sys::set_subvol_flags(fd.as_fd(), new)
            .map_err(|e| StorageError::errno("set subvolume flags", path, e))
    }

    fn is_readonly(&self, path: &Path) -> Result<bool> {
        BtrfsPool::is_readonly(self, path)
    }

    fn is_volume(&self, path: &Path) -> bool {
        self.open_volume(path).is_ok()
    }

    fn volume_size(&self, path: &Path) -> Result<u64> {
        self.open_volume(path)?;
        walk::apparent_size(path)
    }

    fn snapshot_size(&self, path: &Path) -> Result<u64> {
        let vol = self.open_volume(path)?;
        // What the walk counts (st_size of everything but directories, an inode once,
        // however many links it has), read from the subvolume's btree: a walk of a fresh
        // snapshot costs 0.1–0.3 s of CPU for the base image (none of its inodes is in
        // memory yet), this a few ms. Only for a read-only snapshot: making one writes its
        // source's data back and puts its inode items into the tree, and nothing changes it
        // after; a writable volume's tree lags its files (items are written back later). A
        // volume with nested subvolumes (their inodes are in trees of their own), or one
        // the search is refused on, is walked.
        let readonly = sys::subvol_flags(vol.as_fd()).is_ok_and(|f| f & sys::BTRFS_SUBVOL_RDONLY != 0);
        if !readonly {
            return walk::apparent_size(path);
        }
        let mut total = 0u64;
        let read = sys::for_each_inode(vol.as_fd(), |inode| {
            if inode.mode & libc::S_IFMT != libc::S_IFDIR && inode.nlink > 0 {
                total += inode.size;
            }
        });
        match read {
            Ok(false) => Ok(total),
            _ => walk::apparent_size(path),
        }
    }

    fn set_quota(&self, path: &Path, bytes: u64) -> Result<bool> {
        let vol = self.open_volume(path)?;
        self.ensure_quota()?;
        sys::limit_referenced(vol.as_fd(), bytes)
            .map_err(|e| StorageError::errno("limit the qgroup of", path, e))?;
        Ok(true)
    }

    fn reclaim(&self) -> Result<()> {
        // Commit (the deletion becomes a dead root and the cleaner is woken), wait for the
        // cleaner to drop every deleted subvolume, then commit the freed extents.
        btrfs_cli(&["filesystem", "sync"], self.root())?;
        btrfs_cli(&["subvolume", "sync"], self.root())?;
        btrfs_cli(&["filesystem", "sync"], self.root())
    }

    fn charged_bytes(&self, path: &Path) -> Result<Option<u64>> {
        self.open_volume(path)?;
        // `-f`: only the volume's own qgroup, `--raw`: bytes. The row is
        // `0/ID REFERENCED EXCLUSIVE ...`; with simple quotas both count what it wrote.
        // Quotas off (no limit was ever set on this pool): nothing is charged.
        let Ok(out) = btrfs_output(&["qgroup", "show", "-f", "--raw"], path) else {
            return Ok(None);
        };
        Ok(out
            .lines()
            .find(|l| l.starts_with("0/"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
    }
}

impl BtrfsPool {
    /// Turns quotas on for the pool, once. Simple quotas (Linux 6.7+) charge each extent to
    /// the subvolume that wrote it and cost nothing at snapshot time; classic qgroups (the
    /// fallback on older kernels) must account shared extents on every snapshot and make
    /// snapshots of big volumes slow (hundreds of ms at 2 GB), so they are a last resort.
    fn ensure_quota(&self) -> Result<()> {
        if self.quota_on.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let root = std::fs::File::open(self.root()).map_err(|source| StorageError::Io {
            op: "open",
            path: self.root().to_owned(),
            source,
        })?;
        match sys::enable_simple_quota(std::os::fd::AsFd::as_fd(&root)) {
            // EEXIST: quotas are on already (this pool was opened before).
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => {
                tracing::warn!(error = %e, "simple quotas unavailable; using classic btrfs qgroups (slower snapshots)");
                btrfs_cli(&["quota", "enable"], self.root())?;
            }
        }
        self.quota_on.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Runs `btrfs ARGS PATH` (for the rare administration: syncs, quota reports).
fn btrfs_cli(args: &[&str], path: &Path) -> Result<()> {
    btrfs_output(args, path).map(drop)
}

/// Runs `btrfs ARGS PATH` and returns what it printed.
fn btrfs_output(args: &[&str], path: &Path) -> Result<String> {
    let out = std::process::Command::new("btrfs")
        .args(args)
        .arg(path)
        .output()
        .map_err(|source| StorageError::Io {
            op: "spawn btrfs",
            path: path.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(StorageError::Command {
            cmd: format!("btrfs {} {}", args.join(" "), path.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}
