//! All-or-nothing output: an image is built in a hidden temporary directory beside the destination and renamed
//! into place only when every layer applied and verified. On any error (or panic, or a dropped pull future) the
//! temporary directory is removed and the destination is left as it was.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::OciError;

pub(crate) struct Staging {
    dir: TempDir,
    dest: PathBuf,
}

impl Staging {
    /// `dest` must not exist, or be an empty directory; its parent must exist (and should be on the same
    /// filesystem the caller wants the root on: the final step is a rename).
    pub(crate) fn new(dest: &Path) -> Result<Self, OciError> {
        let bad = |reason: &str| OciError::Destination {
            path: dest.to_path_buf(),
            reason: reason.into(),
        };
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => {
                let mut entries =
                    fs::read_dir(dest).map_err(|e| OciError::io(format!("reading {}", dest.display()), e))?;
                if entries.next().is_some() {
                    return Err(bad("exists and is not empty"));
                }
            }
            Ok(_) => return Err(bad("exists and is not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(OciError::io(format!("checking {}", dest.display()), e)),
        }
        let name = dest.file_name().ok_or_else(|| bad("has no file name"))?;
        let parent = match dest.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => return Err(bad("has no parent directory")),
        };
        if !parent.is_dir() {
            return Err(bad("parent directory does not exist"));
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!(".{}.burrow-oci-", name.to_string_lossy()))
            .tempdir_in(parent)
            .map_err(|e| OciError::io(format!("creating staging directory in {}", parent.display()), e))?;
        let staging = Self {
            dir,
            dest: dest.to_path_buf(),
        };
        DirBuilder::new()
            .mode(0o755)
            .create(staging.rootfs())
            .map_err(|e| OciError::io("creating staging root", e))?;
        DirBuilder::new()
            .mode(0o700)
            .create(staging.scratch())
            .map_err(|e| OciError::io("creating staging scratch directory", e))?;
        Ok(staging)
    }

    /// Where the root tree is assembled.
    pub(crate) fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Room for downloaded blobs and decompressed archives; removed with the staging directory.
    pub(crate) fn scratch(&self) -> PathBuf {
        self.dir.path().join("scratch")
    }

    /// Moves the finished root to the destination; the rest of the staging directory is removed.
    pub(crate) fn commit(self) -> Result<(), OciError> {
        fs::rename(self.rootfs(), &self.dest)
            .map_err(|e| OciError::io(format!("moving image root to {}", self.dest.display()), e))
    }
}
