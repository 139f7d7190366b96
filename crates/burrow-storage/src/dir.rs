//! The `dir` driver: volumes are plain directories and a snapshot is a full copy.
//!
//! Used only where btrfs cannot be (no kernel support, no btrfs-progs). Copies go through
//! `cp -a --reflink=auto`, which keeps owners, modes, timestamps, xattrs, ACLs, symlinks,
//! device nodes and hard links within the copied tree, and clones extents for free when the
//! data dir happens to be on a reflink-capable filesystem (XFS). Copies are written to a
//! hidden temporary name and renamed, so a failed or interrupted snapshot leaves no volume.
//!
//! Any directory inside the root counts as a volume (there is no subvolume to tell them
//! apart), so `is_volume` is true for `images/` itself too; callers only ask about paths they
//! made. Read-only is recorded, not enforced: an xattr on the volume's top directory
//! (`trusted.*`, which a sandbox's namespaced root cannot touch) remembers the flag so
//! `is_readonly` answers; enforcing it would need an immutable-attribute walk of every file.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::stat::{Mode, mkdirat};
use std::os::fd::AsFd;

use crate::confine::PoolRoot;
use crate::error::{Result, StorageError};
use crate::{Pool, sys, walk};

const READONLY_XATTR: &CStr = c"trusted.burrow.readonly";

#[derive(Debug)]
pub(crate) struct DirPool {
    root: PoolRoot,
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| StorageError::Io {
        op: "encode path",
        path: path.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

impl DirPool {
    pub(crate) fn new(root: &Path) -> Result<Self> {
        tracing::warn!(
            pool = %root.display(),
            "using the `dir` storage pool: every create, checkpoint, restore and fork copies \
             the whole tree and will be SLOW (seconds per GB); install btrfs-progs and use a \
             kernel with btrfs for O(1) snapshots"
        );
        Ok(Self {
            root: PoolRoot::open(root)?,
        })
    }

    /// Resolves `path` to an existing directory inside the pool, refusing symlinked parents.
    fn existing(&self, path: &Path) -> Result<()> {
        self.root.open_dir(path).map(drop)
    }

    fn mark_readonly(&self, path: &Path, readonly: bool) -> Result<()> {
        let c = cpath(path)?;
        let r = if readonly {
            sys::lsetxattr(&c, READONLY_XATTR, b"1")
        } else {
            sys::lremovexattr(&c, READONLY_XATTR)
        };
        r.map_err(|e| StorageError::errno("mark read-only", path, e))
    }
}

impl Pool for DirPool {
    fn kind_name(&self) -> &'static str {
        "dir"
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn create_volume(&self, path: &Path) -> Result<()> {
        let (parent, name) = self.root.open_parent(path, true)?;
        mkdirat(parent.as_fd(), name.as_os_str(), Mode::from_bits_truncate(0o755)).map_err(|e| match e {
            Errno::EEXIST => StorageError::Exists(path.to_owned()),
            e => StorageError::errno("create directory", path, e),
        })
    }

    fn snapshot(&self, src: &Path, dst: &Path, readonly: bool) -> Result<()> {
        self.existing(src)?;
        let (_parent, name) = self.root.open_parent(dst, true)?;
        if std::fs::symlink_metadata(dst).is_ok() {
            return Err(StorageError::Exists(dst.to_owned()));
        }
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(&name);
        tmp_name.push(format!(".partial-{}", std::process::id()));
        let tmp: PathBuf = dst.with_file_name(tmp_name);
        let started = Instant::now();
        let out = Command::new("cp")
            .args(["-a", "--reflink=auto", "--no-target-directory", "--"])
            .arg(src)
            .arg(&tmp)
            .output()
            .map_err(|e| StorageError::io("spawn cp for", dst, e))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            let detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if detail.contains("No space left") || detail.contains("Disk quota exceeded") {
                return Err(StorageError::NoSpace(format!(
                    "copy {} to {}: {detail}",
                    src.display(),
                    dst.display()
                )));
            }
            return Err(StorageError::Command {
                cmd: format!("cp -a {} {}", src.display(), tmp.display()),
                detail,
            });
        }
        let finish = self.mark_readonly(&tmp, readonly).and_then(|()| {
            std::fs::rename(&tmp, dst).map_err(|e| StorageError::io("rename snapshot to", dst, e))
        });
        if let Err(e) = finish {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        tracing::warn!(
            src = %src.display(),
            dst = %dst.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "dir pool: snapshot was a full copy"
        );
        Ok(())
    }

    fn delete_volume(&self, path: &Path) -> Result<()> {
        match self.existing(path) {
            Err(StorageError::NotFound(_)) => return Ok(()),
            r => r?,
        }
        // std's remove_dir_all does not follow symlinks inside the tree.
        match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StorageError::io("delete directory", path, e))
            }
            _ => Ok(()),
        }
    }

    fn set_readonly(&self, path: &Path, readonly: bool) -> Result<()> {
        self.existing(path)?;
        self.mark_readonly(path, readonly)
    }

    fn is_readonly(&self, path: &Path) -> Result<bool> {
        self.existing(path)?;
        let value = sys::lgetxattr(&cpath(path)?, READONLY_XATTR)
            .map_err(|e| StorageError::errno("read read-only mark", path, e))?;
        Ok(value.is_some())
    }

    fn is_volume(&self, path: &Path) -> bool {
        self.existing(path).is_ok()
    }

    fn volume_size(&self, path: &Path) -> Result<u64> {
        self.existing(path)?;
        walk::apparent_size(path)
    }
}
