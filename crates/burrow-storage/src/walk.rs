//! Read-only walks over a volume's tree (sizes, nested subvolumes).
//!
//! Walks never follow symlinks. They read trees a sandbox may be writing to, so what they
//! return is advisory: anything acted on afterwards goes through `confine.rs` again.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};
use crate::sys::BTRFS_SUBVOL_ROOT_INO;

/// Calls `f` for every entry below `root` (not `root` itself), depth first, without following
/// symlinks. `f` returns whether to descend into a directory.
fn for_each(root: &Path, mut f: impl FnMut(&Path, &std::fs::Metadata) -> bool) -> Result<()> {
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // Vanished while walking (a sandbox deleting its own files): nothing to count.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io("read directory", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io("read directory", &dir, e))?;
            let path = entry.path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io("stat", &path, e)),
            };
            if f(&path, &meta) && meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// Sum of `st_size` of every file and symlink, hard links counted once. This is the apparent
/// size, not the exclusive disk usage: btrfs can only tell that with qgroups, which are off.
pub(crate) fn apparent_size(root: &Path) -> Result<u64> {
    let mut total = 0u64;
    let mut seen = HashSet::new();
    for_each(root, |_, meta| {
        if !meta.is_dir() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino()))) {
            total += meta.size();
        }
        true
    })?;
    Ok(total)
}

/// Subvolumes directly nested in the volume at `root` (not descending into them).
pub(crate) fn nested_subvolumes(root: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for_each(root, |path, meta| {
        if meta.is_dir() && meta.ino() == BTRFS_SUBVOL_ROOT_INO {
            found.push(path.to_owned());
            return false;
        }
        true
    })?;
    Ok(found)
}
