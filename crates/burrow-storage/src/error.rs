//! The crate's one error type and the single place where OS errors become typed errors.
//!
//! Every variant carries the path and, where it helps, the operation, so a log line alone
//! says what failed. `ENOSPC`/`EDQUOT` always become [`StorageError::NoSpace`] so callers can
//! map "disk full" to one API error whatever operation hit it.

use std::path::{Path, PathBuf};

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("volume {0} does not exist")]
    NotFound(PathBuf),
    #[error("volume {0} already exists")]
    Exists(PathBuf),
    #[error("path {0} is outside the pool")]
    OutsidePool(PathBuf),
    #[error("{0} is not a volume of this pool")]
    NotVolume(PathBuf),
    #[error("the pool is full: {0}")]
    NoSpace(String),
    #[error("{path}: id {id} is outside the mapped range 0..{count}")]
    IdOutOfRange { path: PathBuf, id: u32, count: u32 },
    /// btrfs cannot be used on this host (no kernel support, no btrfs-progs, mount refused).
    /// `open_pool` with [`crate::PoolKind::Auto`] falls back to the `dir` driver on this error.
    #[error("btrfs is unusable here: {0}")]
    BtrfsUnusable(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {detail}")]
    Command { cmd: String, detail: String },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    /// Wraps an I/O error, turning "no space" into [`StorageError::NoSpace`].
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                StorageError::NoSpace(format!("{op} {}: {source}", path.display()))
            }
            _ => StorageError::Io {
                op,
                path: path.to_owned(),
                source,
            },
        }
    }

    /// Same as [`StorageError::io`] for errors coming from `nix`.
    pub(crate) fn errno(op: &'static str, path: &Path, errno: Errno) -> Self {
        Self::io(op, path, std::io::Error::from(errno))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_and_edquot_are_no_space() {
        for e in [Errno::ENOSPC, Errno::EDQUOT] {
            let err = StorageError::errno("write", Path::new("/p/x"), e);
            assert!(
                matches!(err, StorageError::NoSpace(ref m) if m.contains("/p/x")),
                "{err}"
            );
        }
        let err = StorageError::errno("write", Path::new("/p/x"), Errno::EIO);
        assert!(matches!(err, StorageError::Io { op: "write", .. }));
    }
}
