//! Resolving caller-supplied paths inside the pool root, and nowhere else.
//!
//! Owns the rule "every path a driver touches is beneath the pool root": paths are checked
//! lexically (absolute, under the root, no `..`), then opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` from a descriptor of the root, so neither `..` nor a symlink planted
//! inside a volume (sandboxes write their own trees) can redirect an operation outside.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, mkdirat};

use crate::error::{Result, StorageError};

/// The pool root, held open so resolution does not depend on the root's path staying put.
#[derive(Debug)]
pub(crate) struct PoolRoot {
    path: PathBuf,
    fd: OwnedFd,
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        // RESOLVE_NO_SYMLINKS also covers the final component (ELOOP), so no O_NOFOLLOW,
        // which would turn a symlink into a confusing ENOTDIR with O_DIRECTORY.
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

fn dir_how() -> OpenHow {
    how(OFlag::O_RDONLY | OFlag::O_DIRECTORY)
}

impl PoolRoot {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StorageError::errno("open pool root", path, e))?;
        Ok(Self {
            path: path.to_owned(),
            fd,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The part of `path` below the root: non-empty, only normal components.
    pub(crate) fn relative<'a>(&self, path: &'a Path) -> Result<&'a Path> {
        let outside = || StorageError::OutsidePool(path.to_owned());
        let rel = path.strip_prefix(&self.path).map_err(|_| outside())?;
        if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(outside());
        }
        Ok(rel)
    }

    /// Opens the directory at `path` (a volume, normally) for ioctls and `fstat`.
    pub(crate) fn open_dir(&self, path: &Path) -> Result<OwnedFd> {
        let rel = self.relative(path)?;
        openat2(self.fd.as_fd(), rel, dir_how()).map_err(|e| resolve_error("open", path, e))
    }

    /// Opens the parent directory of `path` and returns it with the final component. With
    /// `create`, missing parent directories are made (mode 0755, like `mkdir -p`).
    pub(crate) fn open_parent(&self, path: &Path, create: bool) -> Result<(OwnedFd, OsString)> {
        let rel = self.relative(path)?;
        let mut components: Vec<_> = rel.components().map(|c| c.as_os_str()).collect();
        let name = components.pop().expect("relative() is non-empty").to_owned();
        let mut dir = openat2(self.fd.as_fd(), ".", dir_how())
            .map_err(|e| StorageError::errno("open pool root", &self.path, e))?;
        for (i, comp) in components.iter().enumerate() {
            if create {
                match mkdirat(dir.as_fd(), *comp, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => {
                        let at: PathBuf = self.path.join(components[..=i].iter().collect::<PathBuf>());
                        return Err(StorageError::errno("create directory", &at, e));
                    }
                }
            }
            dir = openat2(dir.as_fd(), *comp, dir_how()).map_err(|e| {
                let at: PathBuf = self.path.join(components[..=i].iter().collect::<PathBuf>());
                resolve_error("open", &at, e)
            })?;
        }
        Ok((dir, name))
    }
}

/// Maps errors of a confined lookup: escaping the root or meeting a symlink is `OutsidePool`.
pub(crate) fn resolve_error(op: &'static str, path: &Path, e: Errno) -> StorageError {
    match e {
        Errno::ENOENT => StorageError::NotFound(path.to_owned()),
        Errno::EXDEV | Errno::ELOOP => StorageError::OutsidePool(path.to_owned()),
        // A file where a directory should be.
        Errno::ENOTDIR => StorageError::NotVolume(path.to_owned()),
        e => StorageError::errno(op, path, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_checks() {
        let dir = tempfile::tempdir().unwrap();
        let root = PoolRoot::open(dir.path()).unwrap();
        let p = |s: &str| dir.path().join(s);
        assert!(root.relative(&p("images/a")).is_ok());
        for bad in [
            dir.path().to_owned(),
            p("images/../../etc"),
            p(".."),
            PathBuf::from("/etc/passwd"),
            PathBuf::from("images/a"),
        ] {
            assert!(
                matches!(root.relative(&bad), Err(StorageError::OutsidePool(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let root = PoolRoot::open(dir.path()).unwrap();
        let err = root.open_parent(&dir.path().join("link/x"), true).unwrap_err();
        assert!(matches!(err, StorageError::OutsidePool(_)), "{err}");
        let err = root.open_dir(&dir.path().join("link")).unwrap_err();
        assert!(matches!(err, StorageError::OutsidePool(_)), "{err}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn open_parent_creates_missing_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = PoolRoot::open(dir.path()).unwrap();
        let (_fd, name) = root.open_parent(&dir.path().join("a/b/c"), true).unwrap();
        assert_eq!(name, "c");
        assert!(dir.path().join("a/b").is_dir());
        assert!(!dir.path().join("a/b/c").exists());
    }
}
