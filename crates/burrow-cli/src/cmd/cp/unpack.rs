//! Unpacks a tar stream from a sandbox into a local directory, treating it as hostile.
//!
//! The archive is made by the agent, which runs as root inside a sandbox the host does not
//! trust; `burrow cp` often runs as root on the host. So, whatever the archive says:
//!
//! * nothing is written outside the destination directory: names that are absolute or
//!   contain `..` are refused (the whole copy fails), every parent is opened with
//!   `O_NOFOLLOW` from the destination's file descriptor down (a symlink from the archive or
//!   already in the destination is never followed, the entry is refused), a file is written
//!   only after unlinking whatever had its name (never through a symlink or an existing hard
//!   link), and hard links may only name files inside the destination;
//! * device nodes and FIFOs are never created: they are skipped with a warning;
//! * without `preserve`: setuid, setgid and sticky bits are dropped and nothing is chowned,
//!   so every file belongs to the user running `burrow cp`. With `preserve` the archive's
//!   numeric owners (the sandbox's uids, 0 is root) and full modes are applied.
//!
//! When `top` is given, every entry must lie under that first component (the name of the
//! copied directory), so a download into an existing directory cannot replace its siblings.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use anyhow::{Context as _, bail};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstatat, futimens, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};

/// How to unpack.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Keep the archive's owners and setuid/setgid/sticky bits.
    pub preserve: bool,
}

/// A directory whose mode and times are applied at the end (so a read-only directory can
/// still be filled first).
struct DirFix {
    comps: Vec<OsString>,
    mode: u32,
    mtime: u64,
    owner: Option<(u32, u32)>,
}

/// Unpacks `archive` into the directory `dest`. Warnings (skipped entries) go to `warn`.
/// Returns the number of entries written.
pub fn unpack(
    archive: impl Read,
    dest: &Path,
    top: Option<&OsStr>,
    opts: Options,
    warn: &mut dyn FnMut(String),
) -> anyhow::Result<u64> {
    let root = nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", dest.display()))?;
    let mut ar = tar::Archive::new(archive);
    let mut dirs = Vec::new();
    let mut count = 0;
    for entry in ar.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let raw = entry.path().context("reading an entry's name")?.into_owned();
        let shown = raw.display().to_string();
        let comps = components(&raw, top).with_context(|| format!("archive entry '{shown}'"))?;
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644);
        let mode = if opts.preserve {
            mode & 0o7777
        } else {
            mode & 0o777
        };
        let mtime = entry.header().mtime().unwrap_or(0);
        let owner = if opts.preserve {
            let h = entry.header();
            let id = |v: io::Result<u64>| v.ok().and_then(|v| u32::try_from(v).ok());
            Some((
                id(h.uid()).context("owner out of range")?,
                id(h.gid()).context("group out of range")?,
            ))
        } else {
            None
        };
        let Some((name, parents)) = comps.split_last() else {
            // The destination itself (`.`): its mode is the user's business.
            continue;
        };
        let fail = |what: &str| format!("archive entry '{shown}': {what}");
        if kind.is_dir() {
            let dir = walk(&root, parents, true).with_context(|| fail("cannot open its parent"))?;
            make_dir(&dir, name).with_context(|| fail("cannot create the directory"))?;
            dirs.push(DirFix {
                comps: comps.clone(),
                mode,
                mtime,
                owner,
            });
        } else if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            let dir = walk(&root, parents, true).with_context(|| fail("cannot open its parent"))?;
            clear(&dir, name).with_context(|| fail("cannot replace what is there"))?;
            let fd = openat(
                &dir,
                name.as_os_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .with_context(|| fail("cannot create the file"))?;
            let mut file = std::fs::File::from(fd);
            io::copy(&mut entry, &mut file).with_context(|| fail("writing"))?;
            if let Some((uid, gid)) = owner {
                fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                    .with_context(|| fail("chown"))?;
            }
            // After chown, which clears setuid/setgid.
            fchmod(&file, Mode::from_bits_truncate(mode)).with_context(|| fail("chmod"))?;
            let t = TimeSpec::new(mtime as i64, 0);
            futimens(&file, &t, &t).with_context(|| fail("setting its time"))?;
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .context("reading a symlink's target")?
                .with_context(|| fail("symlink without a target"))?
                .into_owned();
            let dir = walk(&root, parents, true).with_context(|| fail("cannot open its parent"))?;
            clear(&dir, name).with_context(|| fail("cannot replace what is there"))?;
            // The target is stored, never resolved: it may point anywhere, nothing is
            // written through it.
            symlinkat(target.as_os_str(), &dir, name.as_os_str()).with_context(|| fail("symlink"))?;
            if let Some((uid, gid)) = owner {
                fchownat(
                    &dir,
                    name.as_os_str(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .with_context(|| fail("chown"))?;
            }
            let t = TimeSpec::new(mtime as i64, 0);
            utimensat(&dir, name.as_os_str(), &t, &t, UtimensatFlags::NoFollowSymlink)
                .with_context(|| fail("setting its time"))?;
        } else if kind.is_hard_link() {
            let target = entry
                .link_name()
                .context("reading a hard link's target")?
                .with_context(|| fail("hard link without a target"))?
                .into_owned();
            let tcomps = components(&target, top)
                .with_context(|| fail(&format!("hard link target '{}'", target.display())))?;
            let Some((tname, tparents)) = tcomps.split_last() else {
                bail!(fail("hard link to the destination itself"));
            };
            let tdir = walk(&root, tparents, false).with_context(|| fail("cannot open the link's target"))?;
            let dir = walk(&root, parents, true).with_context(|| fail("cannot open its parent"))?;
            clear(&dir, name).with_context(|| fail("cannot replace what is there"))?;
            // No AT_SYMLINK_FOLLOW: a symlink target is linked as the symlink itself.
            linkat(&tdir, tname.as_os_str(), &dir, name.as_os_str(), AtFlags::empty())
                .with_context(|| fail("hard link"))?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let what = if kind.is_fifo() { "FIFO" } else { "device node" };
            warn(format!("skipped {what} '{shown}' (burrow cp never creates them)"));
            continue;
        } else {
            warn(format!("skipped '{shown}' of unsupported type {:?}", kind));
            continue;
        }
        count += 1;
    }
    // Deepest first, so a directory's time is set after its children were written.
    for d in dirs.iter().rev() {
        let fd = walk(&root, &d.comps, false)
            .with_context(|| format!("reopening {}", d.comps.join(OsStr::new("/")).display()))?;
        if let Some((uid, gid)) = d.owner {
            fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        }
        fchmod(&fd, Mode::from_bits_truncate(d.mode))?;
        let t = TimeSpec::new(d.mtime as i64, 0);
        futimens(&fd, &t, &t)?;
    }
    Ok(count)
}

/// The normal components of an archive name. Absolute names, `..` and (with `top`) names
/// outside `top/` are refused.
fn components(path: &Path, top: Option<&OsStr>) -> anyhow::Result<Vec<OsString>> {
    if path.as_os_str().as_bytes().contains(&0) {
        bail!("the name contains a NUL byte");
    }
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => bail!("the name contains '..'"),
            Component::RootDir | Component::Prefix(_) => bail!("the name is absolute"),
        }
    }
    if let Some(top) = top
        && out.first().map(OsString::as_os_str) != Some(top)
    {
        bail!("not under '{}/', the directory being copied", top.display());
    }
    Ok(out)
}

/// Opens the directory `comps` below `root`, never following a symlink; with `create`,
/// missing directories are made (mode 0755 less the umask).
fn walk(root: &OwnedFd, comps: &[OsString], create: bool) -> anyhow::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut cur: Option<OwnedFd> = None;
    for c in comps {
        let at = cur.as_ref().unwrap_or(root).as_fd();
        let next = match openat(at, c.as_os_str(), flags, Mode::empty()) {
            Err(Errno::ENOENT) if create => {
                match mkdirat(at, c.as_os_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e).with_context(|| format!("cannot create '{}'", c.display())),
                }
                openat(at, c.as_os_str(), flags, Mode::empty())
            }
            other => other,
        };
        cur = Some(match next {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                bail!(
                    "'{}' is a symlink or not a directory; refusing to go through it",
                    c.display()
                )
            }
            Err(e) => return Err(e).with_context(|| format!("cannot open '{}'", c.display())),
        });
    }
    match cur {
        Some(fd) => Ok(fd),
        None => nix::unistd::dup(root).context("dup"),
    }
}

fn lstat_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Removes a non-directory at `name` (a file, a symlink: never written through); an
/// existing directory is an error.
fn clear(dir: &OwnedFd, name: &OsStr) -> anyhow::Result<()> {
    match lstat_at(dir, name)? {
        None => Ok(()),
        Some(st) if is_dir(&st) => bail!("a directory is in the way"),
        Some(_) => Ok(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?),
    }
}

/// Makes the directory `name` (mode 0700 until the end), replacing a non-directory there.
fn make_dir(dir: &OwnedFd, name: &OsStr) -> anyhow::Result<()> {
    match mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => {
            if lstat_at(dir, name)?.is_some_and(|st| is_dir(&st)) {
                return Ok(());
            }
            clear(dir, name)?;
            Ok(mkdirat(dir, name, Mode::from_bits_truncate(0o700))?)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    /// A raw ustar header, so names the `tar` builder would refuse (`..`, absolute) can be
    /// written as a hostile agent would.
    fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64, link: Option<&str>) -> tar::Header {
        let mut h = tar::Header::new_old();
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        fn new() -> Self {
            Tar(tar::Builder::new(Vec::new()))
        }
        fn file(mut self, name: &str, mode: u32, data: &[u8]) -> Self {
            let h = header(name, tar::EntryType::Regular, mode, data.len() as u64, None);
            self.0.append(&h, data).unwrap();
            self
        }
        fn dir(mut self, name: &str, mode: u32) -> Self {
            let h = header(name, tar::EntryType::Directory, mode, 0, None);
            self.0.append(&h, io::empty()).unwrap();
            self
        }
        fn link(mut self, name: &str, kind: tar::EntryType, target: &str) -> Self {
            let h = header(name, kind, 0o777, 0, Some(target));
            self.0.append(&h, io::empty()).unwrap();
            self
        }
        fn special(mut self, name: &str, kind: tar::EntryType) -> Self {
            let h = header(name, kind, 0o644, 0, None);
            self.0.append(&h, io::empty()).unwrap();
            self
        }
        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn run(tar: &[u8], dest: &Path, top: Option<&str>, preserve: bool) -> (anyhow::Result<u64>, Vec<String>) {
        let mut warnings = Vec::new();
        let r = unpack(tar, dest, top.map(OsStr::new), Options { preserve }, &mut |w| {
            warnings.push(w)
        });
        (r, warnings)
    }

    /// A scratch area: `dest` to unpack into and `outside` next to it, which must stay empty.
    struct Scratch {
        _tmp: tempfile::TempDir,
        dest: std::path::PathBuf,
        outside: std::path::PathBuf,
    }

    fn scratch() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("dest");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&dest).unwrap();
        std::fs::create_dir(&outside).unwrap();
        Scratch {
            dest,
            outside,
            _tmp: tmp,
        }
    }

    fn is_empty(dir: &Path) -> bool {
        std::fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn dot_dot_is_refused_and_writes_nothing_outside() {
        let s = scratch();
        let tar = Tar::new().file("x/../../outside/escape", 0o644, b"pwned").bytes();
        let (r, _) = run(&tar, &s.dest, None, false);
        let err = format!("{:#}", r.unwrap_err());
        assert!(err.contains("contains '..'"), "{err}");
        assert!(is_empty(&s.outside));
        // The same header without `..` is written: the probe writes files.
        let tar = Tar::new().file("x/outside/escape", 0o644, b"fine").bytes();
        run(&tar, &s.dest, None, false).0.unwrap();
        assert_eq!(std::fs::read(s.dest.join("x/outside/escape")).unwrap(), b"fine");
    }

    #[test]
    fn absolute_names_are_refused() {
        let s = scratch();
        let target = s.outside.join("abs");
        let tar = Tar::new().file(target.to_str().unwrap(), 0o644, b"pwned").bytes();
        let (r, _) = run(&tar, &s.dest, None, false);
        let err = format!("{:#}", r.unwrap_err());
        assert!(err.contains("is absolute"), "{err}");
        assert!(!target.exists());
        assert!(is_empty(&s.dest));
    }

    #[test]
    fn nothing_is_written_through_a_symlink_from_the_archive() {
        let s = scratch();
        let tar = Tar::new()
            .dir("x", 0o755)
            .link("x/link", tar::EntryType::Symlink, s.outside.to_str().unwrap())
            .file("x/link/planted", 0o644, b"pwned")
            .bytes();
        let (r, _) = run(&tar, &s.dest, Some("x"), false);
        let err = format!("{:#}", r.unwrap_err());
        assert!(err.contains("refusing to go through it"), "{err}");
        assert!(is_empty(&s.outside));
        // The symlink itself arrived, as a symlink.
        assert_eq!(std::fs::read_link(s.dest.join("x/link")).unwrap(), s.outside);
    }

    #[test]
    fn nothing_is_written_through_a_symlink_already_in_the_destination() {
        let s = scratch();
        std::fs::create_dir(s.dest.join("x")).unwrap();
        std::os::unix::fs::symlink(&s.outside, s.dest.join("x/sub")).unwrap();
        std::fs::write(s.outside.join("victim"), b"original").unwrap();
        std::os::unix::fs::symlink(s.outside.join("victim"), s.dest.join("x/file")).unwrap();
        let tar = Tar::new().file("x/sub/planted", 0o644, b"pwned").bytes();
        let (r, _) = run(&tar, &s.dest, Some("x"), false);
        assert!(format!("{:#}", r.unwrap_err()).contains("refusing to go through it"));
        // A file entry over a symlink replaces the symlink, never writes its target.
        let tar = Tar::new().file("x/file", 0o644, b"new").bytes();
        run(&tar, &s.dest, Some("x"), false).0.unwrap();
        assert_eq!(std::fs::read(s.outside.join("victim")).unwrap(), b"original");
        assert_eq!(std::fs::read(s.dest.join("x/file")).unwrap(), b"new");
        assert!(!s.outside.join("planted").exists());
    }

    #[test]
    fn hard_links_only_to_files_inside() {
        let s = scratch();
        std::fs::write(s.outside.join("secret"), b"secret").unwrap();
        let abs = s.outside.join("secret");
        for target in [abs.to_str().unwrap(), "x/../../outside/secret"] {
            let tar = Tar::new().link("x/stolen", tar::EntryType::Link, target).bytes();
            let (r, _) = run(&tar, &s.dest, None, false);
            assert!(r.is_err(), "{target}");
            assert!(!s.dest.join("x/stolen").exists());
        }
        // Through a symlink to the outside: refused too.
        let tar = Tar::new()
            .link("x/out", tar::EntryType::Symlink, s.outside.to_str().unwrap())
            .link("x/stolen", tar::EntryType::Link, "x/out/secret")
            .bytes();
        let (r, _) = run(&tar, &s.dest, None, false);
        assert!(format!("{:#}", r.unwrap_err()).contains("refusing to go through it"));
        assert_eq!(std::fs::metadata(s.outside.join("secret")).unwrap().nlink(), 1);
        // Control: a hard link inside is made.
        let tar = Tar::new()
            .file("y/a", 0o644, b"same")
            .link("y/b", tar::EntryType::Link, "y/a")
            .bytes();
        run(&tar, &s.dest, None, false).0.unwrap();
        assert_eq!(std::fs::metadata(s.dest.join("y/b")).unwrap().nlink(), 2);
    }

    #[test]
    fn entries_outside_the_copied_directory_are_refused() {
        let s = scratch();
        std::fs::write(s.dest.join(".bashrc"), b"mine").unwrap();
        let tar = Tar::new()
            .dir("x", 0o755)
            .file(".bashrc", 0o644, b"pwned")
            .bytes();
        let (r, _) = run(&tar, &s.dest, Some("x"), false);
        assert!(format!("{:#}", r.unwrap_err()).contains("not under 'x/'"));
        assert_eq!(std::fs::read(s.dest.join(".bashrc")).unwrap(), b"mine");
    }

    #[test]
    fn special_bits_and_nodes_are_dropped_unless_preserved() {
        let s = scratch();
        let tar = Tar::new()
            .dir("x", 0o1777)
            .file("x/suid", 0o4755, b"#!/bin/sh\n")
            .file("x/sgid", 0o2755, b"#!/bin/sh\n")
            .special("x/fifo", tar::EntryType::Fifo)
            .special("x/null", tar::EntryType::Char)
            .special("x/sda", tar::EntryType::Block)
            .bytes();
        let (r, warnings) = run(&tar, &s.dest, Some("x"), false);
        assert_eq!(r.unwrap(), 3);
        let mode = |p: &str| std::fs::symlink_metadata(s.dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!((mode("x"), mode("x/suid"), mode("x/sgid")), (0o777, 0o755, 0o755));
        for n in ["fifo", "null", "sda"] {
            assert!(!s.dest.join("x").join(n).exists(), "{n}");
        }
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("skipped FIFO 'x/fifo'"), "{warnings:?}");
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(std::fs::metadata(s.dest.join("x/suid")).unwrap().uid(), me);

        // Control: with `preserve` the same archive keeps the bits (and owners: uid 0).
        let p = scratch();
        let (r, _) = run(&tar, &p.dest, Some("x"), true);
        r.unwrap();
        let mode = |q: &str| std::fs::symlink_metadata(p.dest.join(q)).unwrap().mode() & 0o7777;
        assert_eq!(
            (mode("x"), mode("x/suid"), mode("x/sgid")),
            (0o1777, 0o4755, 0o2755)
        );
        if me == 0 {
            assert_eq!(std::fs::metadata(p.dest.join("x/suid")).unwrap().uid(), 0);
        }
        assert!(!p.dest.join("x/fifo").exists());
    }

    #[test]
    fn contents_modes_and_inner_symlinks_arrive() {
        let s = scratch();
        let tar = Tar::new()
            .dir("x", 0o555)
            .dir("x/sub", 0o750)
            .file("x/sub/data", 0o640, b"payload")
            .link("x/link", tar::EntryType::Symlink, "sub/data")
            .bytes();
        assert_eq!(run(&tar, &s.dest, Some("x"), false).0.unwrap(), 4);
        assert_eq!(std::fs::read(s.dest.join("x/link")).unwrap(), b"payload");
        let m = |p: &str| std::fs::symlink_metadata(s.dest.join(p)).unwrap();
        assert_eq!(m("x").permissions().mode() & 0o7777, 0o555);
        assert_eq!(m("x/sub").permissions().mode() & 0o7777, 0o750);
        assert_eq!(m("x/sub/data").permissions().mode() & 0o7777, 0o640);
        assert_eq!(m("x/sub/data").mtime(), 1_700_000_000);
        assert!(m("x/link").file_type().is_symlink());
    }
}
