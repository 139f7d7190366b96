//! Root trees for images: building a Debian tarball, extracting it, and shifting its owners
//! into the host uid range that sandboxes' user namespaces map to root.
//!
//! Image trees are stored shifted once (uid/gid `n` on disk is `uid_base + n`), so a sandbox
//! is a plain snapshot of its image with no per-sandbox chown. This module never touches the
//! pool's volumes itself: callers extract into a volume they created and then mark it
//! read-only.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Result, StorageError};
use crate::sys;

/// Packages on top of `minbase` for a usable interactive image. `ncurses-base` gives terminfo
/// for `xterm`/`screen` (already in minbase, listed so the intent survives a suite change);
/// `netbase` gives `/etc/services` and `/etc/protocols`, which Python and git look up.
pub const DEFAULT_DEBIAN_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "ca-certificates",
    "curl",
    "git",
    "python3",
    "procps",
    "iproute2",
    "less",
    "vim-tiny",
    "ncurses-base",
    "netbase",
];

const XATTR_CAPS: &CStr = c"security.capability";
const XATTR_ACL_ACCESS: &CStr = c"system.posix_acl_access";
const XATTR_ACL_DEFAULT: &CStr = c"system.posix_acl_default";
/// `VFS_CAP_REVISION_3`: namespaced file capabilities carry a root uid that must shift too.
const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

/// Rewrites the ids inside one kind of xattr value.
type ShiftXattr = fn(&Path, Vec<u8>, u32, u32) -> Result<Vec<u8>>;

/// One tree entry, read before anything is changed so that a refused id changes nothing.
struct Entry {
    path: CString,
    uid: u32,
    gid: u32,
    mode: u32,
    symlink: bool,
    /// Extended attributes that `lchown` clears (caps) or that hold ids (ACLs), already
    /// shifted, to be written back after the chown.
    xattrs: Vec<(&'static CStr, Vec<u8>)>,
}

fn cpath(path: &Path) -> CString {
    // Paths from read_dir never contain NUL.
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

fn shift_id(path: &Path, id: u32, uid_base: u32, count: u32) -> Result<u32> {
    if id >= count {
        return Err(StorageError::IdOutOfRange {
            path: path.to_owned(),
            id,
            count,
        });
    }
    Ok(id + uid_base)
}

/// Rewrites the ids of named-user/named-group entries of a POSIX ACL xattr value.
fn shift_acl(path: &Path, mut value: Vec<u8>, uid_base: u32, count: u32) -> Result<Vec<u8>> {
    // 4-byte header (version), then 8-byte entries: tag u16, perm u16, id u32 (little endian).
    for entry in value.get_mut(4..).unwrap_or_default().chunks_exact_mut(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        if tag == ACL_USER || tag == ACL_GROUP {
            let id = u32::from_le_bytes(entry[4..8].try_into().expect("8-byte chunk"));
            let shifted = shift_id(path, id, uid_base, count)?;
            entry[4..8].copy_from_slice(&shifted.to_le_bytes());
        }
    }
    Ok(value)
}

/// Rewrites the root uid of a v3 (namespaced) file capability; v2 values apply in every
/// namespace and are kept as they are.
fn shift_caps(path: &Path, mut value: Vec<u8>, uid_base: u32, count: u32) -> Result<Vec<u8>> {
    if value.len() >= 24 {
        let magic = u32::from_le_bytes(value[0..4].try_into().expect("4 bytes"));
        if magic & VFS_CAP_REVISION_MASK == VFS_CAP_REVISION_3 {
            let rootid = u32::from_le_bytes(value[20..24].try_into().expect("4 bytes"));
            let shifted = shift_id(path, rootid, uid_base, count)?;
            value[20..24].copy_from_slice(&shifted.to_le_bytes());
        }
    }
    Ok(value)
}

fn read_entry(path: &Path, meta: &std::fs::Metadata, uid_base: u32, count: u32) -> Result<Entry> {
    shift_id(path, meta.uid(), uid_base, count)?;
    shift_id(path, meta.gid(), uid_base, count)?;
    let c = cpath(path);
    let symlink = meta.file_type().is_symlink();
    let mut xattrs = Vec::new();
    if !symlink {
        let names = sys::llistxattr(&c).map_err(|e| StorageError::errno("list xattrs", path, e))?;
        for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let (key, shift): (&'static CStr, ShiftXattr) = match name {
                n if n == XATTR_CAPS.to_bytes() => (XATTR_CAPS, shift_caps),
                n if n == XATTR_ACL_ACCESS.to_bytes() => (XATTR_ACL_ACCESS, shift_acl),
                n if n == XATTR_ACL_DEFAULT.to_bytes() => (XATTR_ACL_DEFAULT, shift_acl),
                _ => continue,
            };
            let value = sys::lgetxattr(&c, key).map_err(|e| StorageError::errno("read xattr", path, e))?;
            if let Some(v) = value {
                xattrs.push((key, shift(path, v, uid_base, count)?));
            }
        }
    }
    Ok(Entry {
        path: c,
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode(),
        symlink,
        xattrs,
    })
}

fn apply(entry: &Entry, uid_base: u32) -> Result<()> {
    let path = Path::new(std::ffi::OsStr::from_bytes(entry.path.to_bytes()));
    std::os::unix::fs::lchown(path, Some(entry.uid + uid_base), Some(entry.gid + uid_base))
        .map_err(|e| StorageError::io("lchown", path, e))?;
    // chown drops setuid/setgid (and file capabilities) on purpose; the image is trusted, so
    // put them back. Symlinks have no mode of their own.
    if !entry.symlink && entry.mode & 0o6000 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(entry.mode & 0o7777))
            .map_err(|e| StorageError::io("chmod", path, e))?;
    }
    for (name, value) in &entry.xattrs {
        if let Err(e) = sys::lsetxattr(&entry.path, name, value) {
            tracing::warn!(path = %path.display(), xattr = ?name, error = %e, "could not restore xattr after chown");
        }
    }
    Ok(())
}

/// Adds `uid_base` to the owner and group of every entry of the tree at `root` (symlinks
/// themselves, never their targets), keeping setuid/setgid bits, file capabilities and ACLs.
///
/// Ids must be below `count` (the size of the sandbox's user-namespace mapping); the whole
/// tree is checked before anything changes, so a refused tree is left as it was. Hard links
/// are shifted once. Not safe against a concurrent writer swapping directories for symlinks:
/// run it on freshly extracted trees nothing else uses.
pub fn shift_ownership(root: &Path, uid_base: u32, count: u32) -> Result<()> {
    if u64::from(uid_base) + u64::from(count) > u64::from(u32::MAX) + 1 {
        return Err(StorageError::IdOutOfRange {
            path: root.to_owned(),
            id: uid_base,
            count,
        });
    }
    let root_meta = std::fs::symlink_metadata(root).map_err(|e| StorageError::io("stat", root, e))?;
    let mut entries = vec![read_entry(root, &root_meta, uid_base, count)?];
    let mut seen_links = HashSet::new();
    let mut dirs = if root_meta.is_dir() {
        vec![root.to_owned()]
    } else {
        Vec::new()
    };
    while let Some(dir) = dirs.pop() {
        let list = std::fs::read_dir(&dir).map_err(|e| StorageError::io("read directory", &dir, e))?;
        for item in list {
            let item = item.map_err(|e| StorageError::io("read directory", &dir, e))?;
            let path: PathBuf = item.path();
            let meta = std::fs::symlink_metadata(&path).map_err(|e| StorageError::io("stat", &path, e))?;
            if meta.is_dir() {
                dirs.push(path.clone());
            } else if meta.nlink() > 1 && !seen_links.insert((meta.dev(), meta.ino())) {
                // Another name of an inode already listed: shifting it twice would add the
                // base twice.
                continue;
            }
            entries.push(read_entry(&path, &meta, uid_base, count)?);
        }
    }
    if uid_base == 0 {
        return Ok(());
    }
    // lchown is a metadata-only syscall; two threads roughly halve the wall time on ~10k+
    // entries without risking ordering issues (entries are independent inodes).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let chunk = entries.len().div_ceil(workers).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().try_for_each(|e| apply(e, uid_base))))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("shift worker panicked"))
    })
}

/// Extracts `tar` into the existing directory `dest` with numeric owners, permissions, xattrs
/// (file capabilities included) and ACLs, using GNU tar.
pub fn extract_tar(tar: &Path, dest: &Path) -> Result<()> {
    let out = Command::new("tar")
        .args([
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--acls",
            "-xpf",
        ])
        .arg(tar)
        .arg("-C")
        .arg(dest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| StorageError::io("spawn tar to extract", tar, e))?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if detail.contains("No space left") {
            return Err(StorageError::NoSpace(format!(
                "extract {} into {}: {detail}",
                tar.display(),
                dest.display()
            )));
        }
        return Err(StorageError::Command {
            cmd: format!("tar -xpf {} -C {}", tar.display(), dest.display()),
            detail: format!("{}: {detail}", out.status),
        });
    }
    Ok(())
}

/// Removes a temporary file unless disarmed.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Builds a Debian root tree tarball at `cache_tar` with mmdebstrap (`minbase` plus
/// `packages`), passing every line mmdebstrap prints on stderr to `progress`.
///
/// The tarball is written under a temporary name in the same directory, synced and renamed,
/// so `cache_tar` is either absent or complete.
pub fn build_debian_rootfs(
    cache_tar: &Path,
    suite: &str,
    packages: &[&str],
    mirror: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let file_name = cache_tar.file_name().ok_or_else(|| StorageError::Io {
        op: "build rootfs at",
        path: cache_tar.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let parent = match cache_tar.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| StorageError::io("create directory", &parent, e))?;
    // mmdebstrap picks the output format from the extension, so the temp name ends in .tar.
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp.tar", std::process::id()));
    let tmp = parent.join(tmp_name);
    let guard = TempFile(Some(tmp.clone()));

    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--variant=minbase");
    if !packages.is_empty() {
        cmd.arg(format!("--include={}", packages.join(",")));
    }
    cmd.arg(suite).arg(&tmp);
    if let Some(m) = mirror {
        cmd.arg(m);
    }
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| StorageError::Command {
            cmd: shown.clone(),
            detail: format!("cannot start (is mmdebstrap installed?): {e}"),
        })?;
    let mut tail = std::collections::VecDeque::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            progress(&line);
            if tail.len() == 20 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait().map_err(|e| StorageError::Command {
        cmd: shown.clone(),
        detail: e.to_string(),
    })?;
    if !status.success() {
        return Err(StorageError::Command {
            cmd: shown,
            detail: format!("{status}: {}", Vec::from(tail).join("\n")),
        });
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&tmp)
        .map_err(|e| StorageError::io("open built tarball", &tmp, e))?;
    file.sync_all().map_err(|e| StorageError::io("sync", &tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, cache_tar).map_err(|e| StorageError::io("rename tarball to", cache_tar, e))?;
    std::mem::forget(guard);
    if let Ok(dir) = std::fs::File::open(&parent) {
        // Make the rename itself durable; failure only risks redoing the build after a crash.
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_ids_shift_and_are_range_checked() {
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, id) in [
            (0x01u16, u32::MAX),
            (ACL_USER, 5),
            (ACL_GROUP, 7),
            (0x20, u32::MAX),
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&7u16.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        let out = shift_acl(Path::new("/x"), acl.clone(), 1000, 65536).unwrap();
        let id_at =
            |v: &[u8], i: usize| u32::from_le_bytes(v[4 + i * 8 + 4..4 + i * 8 + 8].try_into().unwrap());
        assert_eq!(id_at(&out, 0), u32::MAX);
        assert_eq!(id_at(&out, 1), 1005);
        assert_eq!(id_at(&out, 2), 1007);
        assert!(shift_acl(Path::new("/x"), acl, 1000, 6).is_err());
    }

    #[test]
    fn v3_caps_root_shifts_v2_untouched() {
        let mut v3 = vec![0u8; 24];
        v3[0..4].copy_from_slice(&(VFS_CAP_REVISION_3 | 1).to_le_bytes());
        let out = shift_caps(Path::new("/x"), v3, 100_000, 65536).unwrap();
        assert_eq!(u32::from_le_bytes(out[20..24].try_into().unwrap()), 100_000);
        let v2 = vec![1u8; 20];
        assert_eq!(
            shift_caps(Path::new("/x"), v2.clone(), 100_000, 65536).unwrap(),
            v2
        );
    }
}
