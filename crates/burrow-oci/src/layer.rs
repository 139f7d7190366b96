//! Applying layer tarballs to a root directory, overlay-style.
//!
//! Owns: decompression (sniffed: gzip, zstd or plain tar), digest and `diff_id` verification of the stream,
//! whiteouts (`.wh.<name>`, `.wh..wh..opq`), hard links, symlinks, ownership, modes, mtimes and xattrs.
//!
//! Must never: write outside the root. Entry paths with `..` are refused; absolute paths are taken relative to
//! the root; every parent directory is resolved component by component with chroot semantics (a symlink
//! `bin -> /usr/bin` in the image means `<root>/usr/bin`, `..` stops at the root), and the final component is
//! never followed: whatever is there is replaced. This resolution is done in user space and is only sound
//! because nothing else writes into the tree while we extract (it is a private staging directory).
//!
//! Device nodes and FIFOs are skipped (logged); the daemon does not let sandboxes create them either.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use filetime::FileTime;
use tar::EntryType;

use crate::OciError;
use crate::digest::{Expected, HashingReader, Sha256Digest};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
/// Same bound as the kernel's ELOOP limit.
const MAX_SYMLINK_HOPS: usize = 40;

/// What a layer contained, for progress messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Hard links created.
    pub hardlinks: u64,
    /// Whiteouts (including opaque markers) applied.
    pub whiteouts: u64,
    /// Device nodes, FIFOs and unknown entry types that were skipped.
    pub skipped: u64,
    /// Extended attributes the filesystem refused (logged, not fatal).
    pub xattr_failures: u64,
}

impl std::fmt::Display for LayerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files, {} dirs, {} symlinks, {} hard links, {} whiteouts",
            self.files, self.dirs, self.symlinks, self.hardlinks, self.whiteouts
        )?;
        if self.skipped > 0 {
            write!(f, ", {} skipped (devices/fifos)", self.skipped)?;
        }
        if self.xattr_failures > 0 {
            write!(f, ", {} xattrs not supported here", self.xattr_failures)?;
        }
        Ok(())
    }
}

/// How a layer blob is checked while it is applied.
#[derive(Debug)]
pub(crate) struct LayerCheck {
    /// Human name for errors: the digest, or the path inside a docker-save archive.
    pub(crate) name: String,
    /// Digest and size of the blob as stored (compressed).
    pub(crate) blob: Option<Expected>,
    /// Digest of the uncompressed tar stream (the config's `rootfs.diff_ids` entry).
    pub(crate) diff_id: Option<Sha256Digest>,
}

#[derive(Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: FileTime,
}

/// A root directory being built from layers.
pub(crate) struct Rootfs {
    root: PathBuf,
    chown: bool,
    /// Directory modes and mtimes are applied after the last layer: adding children changes a directory's
    /// mtime, and a read-only mode would stop us (when not root) from adding them.
    deferred: BTreeMap<PathBuf, DirMeta>,
}

/// Per-layer bookkeeping for opaque directories: paths this layer wrote and all their ancestors survive an
/// opaque marker; everything else under the directory came from lower layers and goes.
#[derive(Default)]
struct LayerState {
    keep: HashSet<PathBuf>,
}

impl LayerState {
    fn wrote(&mut self, root: &Path, path: &Path) {
        let mut p = path;
        while p != root && self.keep.insert(p.to_path_buf()) {
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
    }
}

impl Rootfs {
    /// `root` must be an existing, empty directory that nothing else writes to.
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            // Ownership is reproduced only when we are root; the daemon shifts uids afterwards.
            chown: nix::unistd::geteuid().is_root(),
            deferred: BTreeMap::new(),
        }
    }

    /// Decompresses (gzip, zstd or none, by magic bytes), verifies and applies one layer blob.
    ///
    /// On a verification failure the tree is left half-applied; callers discard the whole staging root.
    pub(crate) fn apply_blob(&mut self, blob: impl Read, check: &LayerCheck) -> Result<LayerStats, OciError> {
        let limit = check.blob.as_ref().and_then(|e| e.size);
        let mut raw = HashingReader::new(blob, limit);
        let mut buffered = BufReader::with_capacity(256 * 1024, &mut raw);
        let layer_err = |reason: String| OciError::Layer {
            layer: check.name.clone(),
            reason,
        };

        let (applied, diff) = {
            let decoder: Box<dyn Read + '_> =
                match sniff(&mut buffered).map_err(|e| layer_err(e.to_string()))? {
                    Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(&mut buffered)),
                    Compression::Zstd => Box::new(
                        zstd::stream::read::Decoder::with_buffer(&mut buffered)
                            .map_err(|e| layer_err(format!("zstd: {e}")))?,
                    ),
                    Compression::None => Box::new(&mut buffered),
                };
            let mut diff = HashingReader::new(decoder, None);
            let applied = self.apply_tar(&mut diff, &check.name);
            // The tar reader stops at the end-of-archive marker; hash the padding after it too.
            let diff = diff.drain();
            (applied, diff)
        };
        // Whatever the decompressor did not consume (trailing garbage) still belongs to the blob.
        let rest = io::copy(&mut buffered, &mut io::sink());
        drop(buffered);
        let blob_hash = raw.drain();

        // A bad blob explains any tar or decompression error, so report it first.
        if let Some(expected) = &check.blob {
            let hasher = blob_hash.map_err(|e| layer_err(format!("reading blob: {e}")))?;
            expected.check(hasher)?;
        }
        let stats = applied?;
        rest.map_err(|e| layer_err(format!("reading blob: {e}")))?;
        let diff = diff.map_err(|e| layer_err(format!("decompressing: {e}")))?;
        if let Some(expected) = &check.diff_id {
            let actual = diff.finish();
            if &actual != expected {
                return Err(OciError::DiffIdMismatch {
                    layer: check.name.clone(),
                    expected: expected.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok(stats)
    }

    fn apply_tar(&mut self, stream: impl Read, layer: &str) -> Result<LayerStats, OciError> {
        let layer_err = |reason: String| OciError::Layer {
            layer: layer.to_owned(),
            reason,
        };
        let mut archive = tar::Archive::new(stream);
        let mut stats = LayerStats::default();
        let mut state = LayerState::default();
        let entries = archive
            .entries()
            .map_err(|e| layer_err(format!("reading tar: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| layer_err(format!("reading tar: {e}")))?;
            let raw_path = entry
                .path()
                .map_err(|e| layer_err(format!("entry with bad path: {e}")))?
                .into_owned();
            self.apply_entry(&mut entry, &raw_path, &mut state, &mut stats)
                .map_err(|reason| layer_err(format!("entry {}: {reason}", raw_path.display())))?;
        }
        Ok(stats)
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &Path,
        state: &mut LayerState,
        stats: &mut LayerStats,
    ) -> Result<(), String> {
        let components = normalize(raw_path)?;
        let kind = entry.header().entry_type();

        let Some((name, parents)) = components.split_last() else {
            // The root itself ("./").
            if kind != EntryType::Directory {
                return Err("the root of a layer must be a directory".into());
            }
            let meta = EntryMeta::read(entry).map_err(|e| e.to_string())?;
            let root = self.root.clone();
            self.set_owner_and_xattrs(&root, &meta, stats)?;
            self.deferred.insert(root, meta.dir());
            return Ok(());
        };

        let name_bytes = name.as_bytes();
        if name_bytes.starts_with(WHITEOUT_PREFIX) {
            stats.whiteouts += 1;
            let Some(parent) = self
                .resolve_dir(parents, false)
                .map_err(|e| format!("resolving parent: {e}"))?
            else {
                return Ok(()); // Nothing below to hide.
            };
            if name_bytes == WHITEOUT_OPAQUE {
                self.make_opaque(&parent, state)
                    .map_err(|e| format!("opaque directory: {e}"))?;
            } else if name_bytes.starts_with(WHITEOUT_META_PREFIX) {
                // Other aufs metadata (.wh..wh.plnk and friends): not content.
                stats.whiteouts -= 1;
                stats.skipped += 1;
            } else {
                let victim = &name_bytes[WHITEOUT_PREFIX.len()..];
                if victim.is_empty() || victim == b"." || victim == b".." || victim.contains(&b'/') {
                    return Err("malformed whiteout".into());
                }
                let victim = parent.join(OsStr::from_bytes(victim));
                // Whiteouts hide lower layers only.
                if !state.keep.contains(&victim) {
                    self.remove(&victim).map_err(|e| format!("whiteout: {e}"))?;
                }
            }
            return Ok(());
        }

        if matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo) {
            tracing::debug!(path = %raw_path.display(), ?kind, "skipping device node or fifo");
            stats.skipped += 1;
            return Ok(());
        }
        if !matches!(
            kind,
            EntryType::Regular
                | EntryType::Continuous
                | EntryType::GNUSparse
                | EntryType::Directory
                | EntryType::Symlink
                | EntryType::Link
        ) {
            tracing::warn!(path = %raw_path.display(), ?kind, "skipping unsupported tar entry type");
            stats.skipped += 1;
            return Ok(());
        }

        let parent = self
            .resolve_dir(parents, true)
            .map_err(|e| format!("resolving parent: {e}"))?
            .ok_or("parent directory missing")?;
        let path = parent.join(name);
        let meta = EntryMeta::read(entry).map_err(|e| e.to_string())?;

        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        self.remove(&path).map_err(|e| format!("replacing: {e}"))?;
                        DirBuilder::new()
                            .mode(0o755)
                            .create(&path)
                            .map_err(|e| format!("mkdir: {e}"))?;
                    }
                }
                self.set_owner_and_xattrs(&path, &meta, stats)?;
                self.deferred.insert(path.clone(), meta.dir());
                stats.dirs += 1;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| format!("bad symlink target: {e}"))?
                    .ok_or("symlink without target")?
                    .into_owned();
                if target.as_os_str().is_empty() {
                    return Err("symlink with empty target".into());
                }
                self.remove(&path).map_err(|e| format!("replacing: {e}"))?;
                std::os::unix::fs::symlink(&target, &path).map_err(|e| format!("symlink: {e}"))?;
                self.set_owner_and_xattrs(&path, &meta, stats)?;
                filetime::set_symlink_file_times(&path, meta.mtime, meta.mtime)
                    .map_err(|e| format!("setting mtime: {e}"))?;
                stats.symlinks += 1;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| format!("bad hard link target: {e}"))?
                    .ok_or("hard link without target")?
                    .into_owned();
                let target_components = normalize(&target).map_err(|e| format!("hard link target: {e}"))?;
                let (target_name, target_parents) = target_components
                    .split_last()
                    .ok_or("hard link to the root directory")?;
                let target_path = self
                    .resolve_dir(target_parents, false)
                    .map_err(|e| format!("resolving hard link target: {e}"))?
                    .ok_or_else(|| format!("hard link target {} does not exist", target.display()))?
                    .join(target_name);
                match fs::symlink_metadata(&target_path) {
                    Ok(m) if m.is_dir() => return Err("hard link to a directory".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("hard link target {}: {e}", target.display())),
                }
                if target_path != path {
                    self.remove(&path).map_err(|e| format!("replacing: {e}"))?;
                    fs::hard_link(&target_path, &path).map_err(|e| format!("link: {e}"))?;
                }
                stats.hardlinks += 1;
            }
            _ => {
                self.remove(&path).map_err(|e| format!("replacing: {e}"))?;
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| format!("create: {e}"))?;
                io::copy(entry, &mut file).map_err(|e| format!("writing content: {e}"))?;
                if self.chown {
                    std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
                        .map_err(|e| format!("chown: {e}"))?;
                }
                // After chown, which clears set-id bits.
                file.set_permissions(fs::Permissions::from_mode(meta.mode))
                    .map_err(|e| format!("chmod: {e}"))?;
                set_xattrs(&path, &meta, stats);
                filetime::set_file_handle_times(&file, Some(meta.mtime), Some(meta.mtime))
                    .map_err(|e| format!("setting mtime: {e}"))?;
                stats.files += 1;
            }
        }
        state.wrote(&self.root, &path);
        Ok(())
    }

    fn set_owner_and_xattrs(
        &self,
        path: &Path,
        meta: &EntryMeta,
        stats: &mut LayerStats,
    ) -> Result<(), String> {
        if self.chown {
            std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
                .map_err(|e| format!("chown: {e}"))?;
        }
        set_xattrs(path, meta, stats);
        Ok(())
    }

    /// Resolves `components` (already free of `..`) to a directory inside the root, following symlinks with
    /// chroot semantics. Missing directories are created when `create`; otherwise `Ok(None)` says "absent".
    fn resolve_dir(&self, components: &[OsString], create: bool) -> io::Result<Option<PathBuf>> {
        let mut pending: Vec<OsString> = components.iter().rev().cloned().collect();
        let mut resolved: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(component) = pending.pop() {
            if component == "." || component.is_empty() {
                continue;
            }
            if component == ".." {
                resolved.pop();
                continue;
            }
            let candidate = join_all(&self.root, &resolved).join(&component);
            match fs::symlink_metadata(&candidate) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(io::Error::other("too many levels of symbolic links"));
                    }
                    let target = fs::read_link(&candidate)?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    for part in target.components().rev() {
                        match part {
                            Component::Normal(n) => pending.push(n.to_owned()),
                            Component::ParentDir => pending.push("..".into()),
                            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                        }
                    }
                }
                Ok(m) if m.is_dir() => resolved.push(component),
                Ok(_) => {
                    return Err(io::Error::other(format!(
                        "{} is not a directory",
                        display_in_root(&resolved, &component)
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    DirBuilder::new().mode(0o755).create(&candidate)?;
                    resolved.push(component);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some(join_all(&self.root, &resolved)))
    }

    /// Removes whatever is at `path` (never following a symlink there). Absent is fine.
    fn remove(&mut self, path: &Path) -> io::Result<()> {
        let result = match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(path),
            Ok(_) => fs::remove_file(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        result?;
        // Directory metadata queued for anything under the removed path no longer applies.
        let gone: Vec<PathBuf> = self
            .deferred
            .range(path.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.deferred.remove(&p);
        }
        Ok(())
    }

    /// Hides everything under `dir` that lower layers put there.
    fn make_opaque(&mut self, dir: &Path, state: &LayerState) -> io::Result<()> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for child in fs::read_dir(&d)? {
                let child = child?.path();
                if state.keep.contains(&child) {
                    if fs::symlink_metadata(&child)?.is_dir() {
                        stack.push(child);
                    }
                } else {
                    self.remove(&child)?;
                }
            }
        }
        Ok(())
    }

    /// Applies deferred directory modes and mtimes, deepest first. Call once, after the last layer.
    pub(crate) fn finish(self) -> Result<(), OciError> {
        for (path, meta) in self.deferred.iter().rev() {
            let apply = || -> io::Result<()> {
                match fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e),
                }
                fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))?;
                filetime::set_symlink_file_times(path, meta.mtime, meta.mtime)
            };
            apply().map_err(|e| OciError::io(format!("setting metadata of {}", path.display()), e))?;
        }
        Ok(())
    }
}

fn join_all(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(parts);
    p
}

fn display_in_root(resolved: &[OsString], last: &OsStr) -> String {
    let mut p = PathBuf::from("/");
    p.extend(resolved);
    p.push(last);
    p.display().to_string()
}

/// Splits an entry path into plain components: leading `/` and `.` are dropped, `..` is refused.
fn normalize(path: &Path) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("path contains '..'".into()),
            Component::Prefix(_) => return Err("path has a prefix".into()),
        }
    }
    Ok(out)
}

fn set_xattrs(path: &Path, meta: &EntryMeta, stats: &mut LayerStats) {
    for (name, value) in &meta.xattrs {
        // Overlayfs metadata would change the meaning of the tree if it were ever used as an overlay layer.
        let bytes = name.as_bytes();
        if bytes.starts_with(b"trusted.overlay.") || bytes.starts_with(b"user.overlay.") {
            stats.skipped += 1;
            continue;
        }
        // Not fatal: tmpfs and some other filesystems refuse user.* or trusted.* attributes.
        if let Err(e) = xattr::set(path, name, value) {
            tracing::debug!(path = %path.display(), name = %name.to_string_lossy(), error = %e, "xattr not set");
            stats.xattr_failures += 1;
        }
    }
}

/// Metadata of one tar entry, with PAX overrides applied.
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: FileTime,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl EntryMeta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Self> {
        let header = entry.header();
        let mut meta = Self {
            mode: header.mode()? & 0o7777,
            uid: u32::try_from(header.uid()?).map_err(io::Error::other)?,
            gid: u32::try_from(header.gid()?).map_err(io::Error::other)?,
            mtime: FileTime::from_unix_time(i64::try_from(header.mtime()?).unwrap_or(0), 0),
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    meta.xattrs.push((name.into(), value.to_vec()));
                    continue;
                }
                let text = std::str::from_utf8(value).unwrap_or_default();
                match key {
                    "uid" => meta.uid = text.parse().map_err(io::Error::other)?,
                    "gid" => meta.gid = text.parse().map_err(io::Error::other)?,
                    "mtime" => {
                        if let Some(t) = parse_pax_time(text) {
                            meta.mtime = t;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(meta)
    }

    fn dir(&self) -> DirMeta {
        DirMeta {
            mode: self.mode,
            mtime: self.mtime,
        }
    }
}

fn parse_pax_time(text: &str) -> Option<FileTime> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(FileTime::from_unix_time(secs, nanos))
}

enum Compression {
    Gzip,
    Zstd,
    None,
}

fn sniff(reader: &mut impl BufRead) -> io::Result<Compression> {
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> (tempfile::TempDir, Rootfs) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        (dir, Rootfs::new(root))
    }

    fn os(parts: &[&str]) -> Vec<OsString> {
        parts.iter().map(OsString::from).collect()
    }

    #[test]
    fn normalize_refuses_parent_and_strips_root() {
        assert_eq!(normalize(Path::new("/a/./b")).unwrap(), os(&["a", "b"]));
        assert_eq!(normalize(Path::new("./")).unwrap(), Vec::<OsString>::new());
        assert!(normalize(Path::new("a/../../b")).is_err());
    }

    #[test]
    fn resolve_follows_symlinks_like_chroot() {
        let (_tmp, fs_root) = rootfs();
        let root = fs_root.root.clone();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("/usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
        fs::write(root.join("file"), b"x").unwrap();

        assert_eq!(
            fs_root.resolve_dir(&os(&["bin"]), false).unwrap(),
            Some(root.join("usr/bin"))
        );
        assert_eq!(
            fs_root.resolve_dir(&os(&["up", "usr"]), false).unwrap(),
            Some(root.join("usr"))
        );
        assert_eq!(fs_root.resolve_dir(&os(&["missing"]), false).unwrap(), None);
        assert!(fs_root.resolve_dir(&os(&["loop1"]), true).is_err());
        assert!(fs_root.resolve_dir(&os(&["file", "x"]), true).is_err());
        assert_eq!(
            fs_root.resolve_dir(&os(&["up", "new", "dir"]), true).unwrap(),
            Some(root.join("new/dir"))
        );
    }

    #[test]
    fn pax_time_parses_fractions() {
        assert_eq!(
            parse_pax_time("12.5"),
            Some(FileTime::from_unix_time(12, 500_000_000))
        );
        assert_eq!(parse_pax_time("7"), Some(FileTime::from_unix_time(7, 0)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
