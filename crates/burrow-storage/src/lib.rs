//! The storage pool owns every byte of sandbox and image data on disk.
//!
//! Layout under the pool root: `images/<name>` (read-only volumes), `sandboxes/<id>` (one
//! writable volume each: the root tree for containers), `checkpoints/<sandbox-id>/<vN>`
//! (read-only snapshots). On btrfs every volume is a subvolume and `snapshot` is O(1); the
//! `dir` fallback copies whole trees and says loudly that it is slow.
//!
//! This crate never knows about sandboxes' state, the database or engines: it is handed
//! paths inside its root and does exactly the disk operation asked.

use std::path::{Path, PathBuf};

mod btrfs;
mod confine;
mod dir;
mod error;
pub mod rootfs;
mod setup;
mod sys;
mod walk;

pub use error::{Result, StorageError};
pub use setup::{open_pool, release_pool};
pub use sys::lowest_priority_for_this_thread;

/// The `dir` driver on the existing directory `root`, as it is: none of [`open_pool`]'s setup
/// (no lock, no change of owner or mode), so it needs no privileges. For in-process tests;
/// the daemon opens its pool with [`open_pool`].
pub fn dir_pool(root: &Path) -> Result<Box<dyn Pool>> {
    Ok(Box::new(dir::DirPool::new(root)?))
}

/// What kind of pool to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// btrfs if the data dir is btrfs, else a loop-backed btrfs file; `dir` only if btrfs
    /// cannot be used at all (no kernel support or no btrfs-progs).
    Auto,
    /// btrfs (direct or loop-backed) or an error; never the slow fallback.
    Btrfs,
    /// Plain directories and full copies, even where btrfs would work.
    Dir,
}

/// How `open_pool` picks and sizes the pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub kind: PoolKind,
    /// Size of the sparse loop file when one has to be created (ignored afterwards: an
    /// existing `pool.img` keeps its size).
    pub loop_size_bytes: u64,
    /// The host gid of the sandboxes' root (`uid_base`): the one group that may traverse the
    /// pool root (mode 0710, owner root), as runc's init must to reach a root tree from
    /// inside the user namespace. `None`: 0700, root only.
    pub sandbox_gid: Option<u32>,
}

/// The operations every pool driver offers. All paths are absolute and inside `root()`.
pub trait Pool: Send + Sync + std::fmt::Debug {
    /// `btrfs` or `dir`, for `GET /v1/version` and logs.
    fn kind_name(&self) -> &'static str;
    /// The directory under which `images/`, `sandboxes/` and `checkpoints/` live.
    fn root(&self) -> &Path;
    /// Creates a new, empty, writable volume at `path` (parent dirs are created).
    fn create_volume(&self, path: &Path) -> Result<()>;
    /// Makes `dst` a copy of `src` (btrfs: a snapshot, O(1)). `dst` must not exist.
    fn snapshot(&self, src: &Path, dst: &Path, readonly: bool) -> Result<()>;
    /// Deletes the volume at `path`. Deleting a missing volume is Ok (idempotent).
    fn delete_volume(&self, path: &Path) -> Result<()>;
    /// Marks a volume read-only or writable (btrfs: the subvolume flag, enforced by the
    /// kernel; dir: recorded only).
    fn set_readonly(&self, path: &Path, readonly: bool) -> Result<()>;
    /// Whether the volume is marked read-only.
    fn is_readonly(&self, path: &Path) -> Result<bool>;
    /// Whether `path` is a volume of this pool.
    fn is_volume(&self, path: &Path) -> bool;
    /// Bytes used by the volume. For now always the apparent size (a walk summing file sizes,
    /// hard links once), not exclusive usage: that needs btrfs qgroups, which are off.
    fn volume_size(&self, path: &Path) -> Result<u64>;
    /// [`Pool::volume_size`] of a read-only snapshot made by [`Pool::snapshot`], which may
    /// be read faster than by a walk (btrfs reads it from the snapshot's btree).
    fn snapshot_size(&self, path: &Path) -> Result<u64> {
        self.volume_size(path)
    }
    /// Limits what the volume may write itself (extents it creates; data shared with its
    /// source snapshot is not counted) to `bytes`; writes past it fail with EDQUOT inside. Drivers without quotas return
    /// `Ok(false)` (the limit is not enforced), btrfs returns `Ok(true)`.
    /// [`Pool::snapshot`] (writable) and [`Pool::set_quota`] in one step: btrfs limits the
    /// new volume in the very transaction that makes it, so no separate commit has to be
    /// waited for.
    fn snapshot_limited(&self, src: &Path, dst: &Path, bytes: u64) -> Result<bool> {
        self.snapshot(src, dst, false)?;
        self.set_quota(dst, bytes)
    }
    fn set_quota(&self, path: &Path, bytes: u64) -> Result<bool> {
        let _ = (path, bytes);
        Ok(false)
    }
    /// Bytes charged to the volume against its quota (what it wrote itself and still holds,
    /// directly or through snapshots of it), when the driver keeps quotas; `None` otherwise.
    fn charged_bytes(&self, path: &Path) -> Result<Option<u64>> {
        let _ = path;
        Ok(None)
    }
    /// Blocks until the space of deleted volumes is free again (btrfs frees a deleted
    /// snapshot's data in the background, otherwise at the next periodic commit, up to 30 s
    /// later, and only then does it stop counting against quotas and the pool).
    fn reclaim(&self) -> Result<()> {
        Ok(())
    }
    /// Size and free space of the filesystem the pool lives on.
    fn space(&self) -> Result<PoolSpace> {
        let st = nix::sys::statvfs::statvfs(self.root()).map_err(|e| StorageError::Io {
            op: "statvfs",
            path: self.root().to_owned(),
            source: e.into(),
        })?;
        let frag = st.fragment_size().max(1);
        Ok(PoolSpace {
            size_bytes: st.blocks() * frag,
            free_bytes: st.blocks_available() * frag,
        })
    }
}

/// How big the pool's filesystem is and how much of it is free (for new data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpace {
    pub size_bytes: u64,
    pub free_bytes: u64,
}

impl dyn Pool {
    pub fn images_dir(&self) -> PathBuf {
        self.root().join("images")
    }
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.root().join("sandboxes")
    }
    pub fn image_path(&self, name: &str) -> PathBuf {
        self.images_dir().join(name)
    }
    pub fn sandbox_path(&self, id: &str) -> PathBuf {
        self.sandboxes_dir().join(id)
    }
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root().join("checkpoints")
    }
    /// `checkpoints/<sandbox-id>/<version>`.
    pub fn checkpoint_path(&self, sandbox_id: &str, version: &str) -> PathBuf {
        self.checkpoints_dir().join(sandbox_id).join(version)
    }
}
