//! Putting another root filesystem under a running container, without starting a new one:
//! a restore, or a pre-started sandbox becoming a fork or a woken sandbox, in a few
//! milliseconds instead of a container start.
//!
//! The agent first ends every other process in the sandbox (`Quiesce`). Then a thread of
//! the daemon of its own (its filesystem context unshared, so it alone may join another
//! mount namespace) takes a private, detached copy of the new root's mount, joins the
//! sandbox's mount namespace, attaches the copy beside the old root, moves every mount that
//! sits on the old root (`/proc`, `/dev`, `/sys`, `/.burrow`, `/etc/hosts`, ...; each with
//! what is mounted below it) to the same place in the new one, and pivots into it, as runc
//! does at a start: every process whose root was the old root (the agent) now has the new
//! one, and the old root is detached. The agent then re-executes itself (`Reexec`).
//!
//! What the sandbox could tamper with is never trusted: the mount points in the new root
//! are opened beneath it with no symlink followed (`openat2`, `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS`), and a mount point that is missing is made there, owned by the
//! sandbox's root. Any failure leaves the caller to start the sandbox the usual way.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_SIZE_VER0: usize = 32;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;
const RESOLVE_NO_XDEV: u64 = 0x01;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// What nearly every first command reads (see [`prefetch`]): the loader's cache, the loader,
/// the C library, the shells and what `bash` links. Paths as in the tree; symlinks among them
/// (`/bin`, `/lib64`, ...) resolve inside it.
const FIRST_COMMAND_FILES: &[&str] = &[
    "etc/ld.so.cache",
    "lib64/ld-linux-x86-64.so.2",
    "lib/x86_64-linux-gnu/libc.so.6",
    "lib/x86_64-linux-gnu/libtinfo.so.6",
    "bin/sh",
    "bin/bash",
    "usr/bin/true",
    "usr/bin/env",
];
/// A file bigger than this is not what the list means: left alone.
const PREFETCH_MAX: i64 = 16 << 20;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(ret: libc::c_long, what: &str) -> io::Result<libc::c_long> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(ret)
}

fn owned(ret: libc::c_long, what: &str) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(check(ret, what)?).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pid (in our pid namespace) of the process behind `pidfd`.
fn pid_of(pidfd: &OwnedFd) -> io::Result<u32> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .and_then(|p| u32::try_from(p).ok().filter(|&p| p > 0))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the sandbox's init has exited"))
}

/// The mount points that sit directly on the root mount, in mount order, from a
/// `/proc/<pid>/mountinfo`. Mounts below them move with them.
pub(crate) fn top_mounts(mountinfo: &str) -> io::Result<Vec<String>> {
    let entries: Vec<(u64, u64, String)> = mountinfo
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let id = f.next()?.parse().ok()?;
            let parent = f.next()?.parse().ok()?;
            let point = super::lxcfs::unescape(f.nth(2)?);
            Some((id, parent, point))
        })
        .collect();
    let ids: std::collections::HashSet<u64> = entries.iter().map(|e| e.0).collect();
    let root = entries
        .iter()
        .find(|(_, parent, point)| point == "/" && !ids.contains(parent))
        .map(|e| e.0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no root mount in mountinfo"))?;
    let mut tops = Vec::new();
    for (_, parent, point) in &entries {
        if *parent == root && point != "/" && !tops.contains(point) {
            tops.push(point.clone());
        }
    }
    Ok(tops)
}

/// Opens (O_PATH) `rel` beneath `dir`, following no symlink and never leaving `dir`; makes
/// what is missing on the way (directories, and the last component as a directory or an
/// empty file as `want_dir` says), owned by `owner`. The last component must be of the
/// wanted kind.
fn mount_point(dir: &OwnedFd, rel: &Path, want_dir: bool, owner: u32) -> io::Result<OwnedFd> {
    let comps: Vec<_> = rel.components().collect();
    let mut cur = dir.try_clone()?;
    for (i, c) in comps.iter().enumerate() {
        let std::path::Component::Normal(name) = c else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mount point not a plain path",
            ));
        };
        let is_dir = i + 1 < comps.len() || want_dir;
        let cname = cstr(Path::new(name))?;
        let next = match open_beneath(&cur, &cname) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                make_owned(&cur, &cname, is_dir, owner)?;
                open_beneath(&cur, &cname)?
            }
            Err(e) => return Err(e),
        };
        let kind = file_kind(&next)?;
        let ok = if is_dir {
            kind == libc::S_IFDIR
        } else {
            kind == libc::S_IFREG
        };
        if !ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "mount point {} is not a {}",
                    rel.display(),
                    if is_dir { "directory" } else { "file" }
                ),
            ));
        }
        cur = next;
    }
    Ok(cur)
}

/// Makes `name` in `dir` (a directory, or an empty file), owned by `owner`.
fn make_owned(dir: &OwnedFd, name: &CString, is_dir: bool, owner: u32) -> io::Result<()> {
    if is_dir {
        // SAFETY: mkdirat on an fd we own and a NUL-terminated name.
        let ret = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) };
        check(ret.into(), "making a mount point")?;
    } else {
        // SAFETY: openat on an fd we own and a NUL-terminated name; returns a new fd.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644,
            )
        };
        drop(owned(fd.into(), "making a mount point")?);
    }
    // SAFETY: fchownat on an fd we own and a NUL-terminated name, no symlink followed.
    let ret = unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            owner,
            owner,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(ret.into(), "chown of a mount point").map(drop)
}

/// The file type bits (`S_IFMT`) of what `fd` refers to.
fn file_kind(fd: &OwnedFd) -> io::Result<libc::mode_t> {
    // SAFETY: an all-zero `stat` is a valid value for the kernel to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`, which lives for the call; the fd is ours.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }.into(), "fstat")?;
    Ok(st.st_mode & libc::S_IFMT)
}

fn open_beneath(dir: &OwnedFd, name: &CString) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    owned(openat2(dir, name, flags, resolve), "opening a mount point")
}

/// openat2(2) of `name` at `dir` with `flags` and `resolve`; the raw return.
fn openat2(dir: &OwnedFd, name: &CString, flags: libc::c_int, resolve: u64) -> libc::c_long {
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve,
    };
    // SAFETY: openat2 reads `how` (its size passed) and the NUL-terminated name.
    unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    }
}

/// Starts the kernel reading [`FIRST_COMMAND_FILES`] of the tree at `root` into the page
/// cache (`POSIX_FADV_WILLNEED`: asynchronous). The tree is a sandbox's: every path is
/// resolved inside it (`RESOLVE_IN_ROOT`, no magic links, no mount crossed), only regular
/// files are read, and nothing is written. Best effort: a file that is missing or not what
/// it should be is skipped.
pub(crate) fn prefetch(root: &Path) {
    let Ok(root) = cstr(root) else { return };
    // SAFETY: open reads the NUL-terminated path; the fd returned is owned below.
    let dir = unsafe { libc::open(root.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    let Ok(dir) = owned(dir.into(), "opening a root to prefetch") else {
        return;
    };
    for name in FIRST_COMMAND_FILES {
        let Ok(name) = CString::new(*name) else { continue };
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        let ret = openat2(
            &dir,
            &name,
            flags,
            RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
        );
        let Ok(file) = owned(ret, "opening a file to prefetch") else {
            continue;
        };
        // SAFETY: an all-zero `stat` is a valid value for the kernel to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into `st`, which lives for the call; the fd is ours.
        if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0
            || st.st_mode & libc::S_IFMT != libc::S_IFREG
            || st.st_size > PREFETCH_MAX
        {
            continue;
        }
        // SAFETY: posix_fadvise on our own fd; no memory is passed.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, st.st_size, libc::POSIX_FADV_WILLNEED) };
    }
}

/// A detached, private copy of the mount at `path` (and what is mounted below it).
fn private_copy(path: &CString) -> io::Result<OwnedFd> {
    private_copy_with(path, 0)
}

/// [`private_copy`] with `attr_set` (`MOUNT_ATTR_*`) set on every mount of the copy.
fn private_copy_with(path: &CString, attr_set: u64) -> io::Result<OwnedFd> {
    // SAFETY: open_tree reads the NUL-terminated path; returns a new fd.
    let tree = owned(
        unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                path.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
            )
        },
        "open_tree",
    )?;
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr` (its size passed) and the empty path.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | AT_RECURSIVE as libc::c_int,
            &attr as *const MountAttr,
            MOUNT_ATTR_SIZE_VER0,
        )
    };
    check(ret, "mount_setattr")?;
    Ok(tree)
}

/// move_mount(2): `from` (a path, or the mount behind `from_fd` when the path is empty)
/// onto `to` (likewise).
fn move_mount(from_fd: RawFd, from: &CString, to_fd: RawFd, to: &CString, what: &str) -> io::Result<()> {
    let mut flags = 0;
    if from.is_empty() {
        flags |= MOVE_MOUNT_F_EMPTY_PATH;
    }
    if to.is_empty() {
        flags |= MOVE_MOUNT_T_EMPTY_PATH;
    }
    // SAFETY: move_mount reads the two NUL-terminated paths; the fds are the caller's.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from_fd,
            from.as_ptr(),
            to_fd,
            to.as_ptr(),
            flags,
        )
    };
    check(ret, what).map(drop)
}

/// Whether the mount point `path` (never a symlink: a mount point cannot be replaced, and
/// the sandbox cannot mount) is a directory.
fn is_dir(path: &CString) -> io::Result<bool> {
    // SAFETY: an all-zero `stat` is a valid value for the kernel to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: lstat reads the NUL-terminated path and writes into `st`.
    let ret = unsafe { libc::lstat(path.as_ptr(), &mut st) };
    check(ret.into(), "lstat of a mount")?;
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// As runc does: pivots into `root` with the old root stacked on it, then detaches that.
fn pivot_into(root: &OwnedFd) -> io::Result<()> {
    // SAFETY: fchdir on an fd we own.
    check(unsafe { libc::fchdir(root.as_raw_fd()) }.into(), "fchdir")?;
    // SAFETY: pivot_root reads two static NUL-terminated paths.
    let ret = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    check(ret, "pivot_root")?;
    // SAFETY: umount2 reads a static NUL-terminated path.
    let ret = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
    check(ret.into(), "detaching the old root")?;
    // SAFETY: chdir reads a static NUL-terminated path.
    check(unsafe { libc::chdir(c"/".as_ptr()) }.into(), "chdir").map(drop)
}

/// Puts the host directory `new_root` under the mount namespace of the process behind
/// `pidfd` as its root (see the module's text). `owner`: the host uid of the sandbox's
/// root, which owns mount points made in the new root. `rebinds` (path inside, host path):
/// read-only binds that replace the ones at those paths instead of moving over (a sandbox
/// woken into another's runtime gets its own `/.burrow/host` and checkpoints).
pub(crate) fn replace_root(
    pidfd: OwnedFd,
    new_root: &Path,
    owner: u32,
    rebinds: &[(String, std::path::PathBuf)],
) -> io::Result<()> {
    let pid = pid_of(&pidfd)?;
    let tops = top_mounts(&std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?)?;
    let src = cstr(new_root)?;
    let empty = CString::default();
    // The copies are made here, in the host's mount namespace, where their paths mean
    // what the caller meant; read-only, as runc binds them (`ro,nosuid,nodev`).
    let mut copies = Vec::new();
    for (inside, source) in rebinds {
        let rel = Path::new(inside)
            .strip_prefix("/")
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{inside}: not absolute")))?
            .to_owned();
        let dir = std::fs::metadata(source)?.is_dir();
        let copy = private_copy_with(
            &cstr(source)?,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )?;
        copies.push((inside.clone(), rel, dir, copy));
    }
    std::thread::Builder::new()
        .name("replace-root".into())
        .spawn(move || -> io::Result<()> {
            let t = std::time::Instant::now();
            let mut at = Vec::new();
            let mut mark = |what: &'static str| at.push((what, t.elapsed().as_secs_f64() * 1e3));
            // A private copy: nothing mounted in the sandbox may ever reach the host's tree.
            let tree = private_copy(&src)?;
            mark("copy");
            // Only a thread with a filesystem context of its own may join a mount namespace.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
            nix::sched::setns(&pidfd, nix::sched::CloneFlags::CLONE_NEWNS)?;
            mark("setns");
            // From here on "/" is the sandbox's (old) root.
            let spot = CString::new(format!("/.burrow-newroot-{:016x}", rand_u64()))
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            nix::unistd::mkdir(spot.as_c_str(), nix::sys::stat::Mode::from_bits_truncate(0o700))?;
            move_mount(
                tree.as_raw_fd(),
                &empty,
                libc::AT_FDCWD,
                &spot,
                "attaching the new root",
            )?;
            mark("attach");
            let root = nix::fcntl::open(
                spot.as_c_str(),
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_NOFOLLOW
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )?;
            for top in tops.iter().filter(|t| !copies.iter().any(|c| &c.0 == *t)) {
                let path = Path::new(top);
                let from = cstr(path)?;
                let rel = path.strip_prefix("/").unwrap_or(path);
                let to = mount_point(&root, rel, is_dir(&from)?, owner)
                    .map_err(|e| io::Error::new(e.kind(), format!("{top}: {e}")))?;
                move_mount(
                    libc::AT_FDCWD,
                    &from,
                    to.as_raw_fd(),
                    &empty,
                    &format!("moving {top}"),
                )?;
            }
            mark("moves");
            for (inside, rel, dir, copy) in &copies {
                // One below a mount that moved over (`/.burrow/host` in `/.burrow`) came
                // with it: detached first. (Its path is in the engine's own tmpfs.)
                if !tops.contains(inside) {
                    let moved = CString::new(format!("{}/{}", spot.to_string_lossy(), rel.display()))
                        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
                    // SAFETY: umount2 reads the NUL-terminated path.
                    let ret = unsafe { libc::umount2(moved.as_ptr(), libc::MNT_DETACH) };
                    check(ret.into(), &format!("detaching {inside}"))?;
                }
                let to = mount_point(&root, rel, *dir, owner)
                    .map_err(|e| io::Error::new(e.kind(), format!("{inside}: {e}")))?;
                move_mount(
                    copy.as_raw_fd(),
                    &empty,
                    to.as_raw_fd(),
                    &empty,
                    &format!("binding {inside}"),
                )?;
            }
            mark("rebinds");
            pivot_into(&root)?;
            mark("pivot");
            tracing::debug!(steps = ?at, "root replaced");
            Ok(())
        })?
        .join()
        .map_err(|_| io::Error::other("the replace-root thread panicked"))?
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most 8 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    if n != 8 {
        return u64::from(std::process::id()) << 32
            | u64::from(std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.subsec_nanos()));
    }
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burrow_testkit::page_cache::{cold_file, resident_pages};

    /// The prefetch reads the files of the list into the page cache, and only from inside
    /// the tree: a symlink in it pointing out (absolute, or up with `..`) resolves inside
    /// the tree, and the file outside stays out of the cache. The control: the same probe
    /// sees the file inside go into the cache.
    #[test]
    fn prefetch_reads_the_first_commands_files_and_nothing_outside_the_tree() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let outside = dir.path().join("secret");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("lib/x86_64-linux-gnu")).unwrap();
        cold_file(&outside);
        std::os::unix::fs::symlink(&outside, root.join("etc/ld.so.cache")).unwrap();
        std::os::unix::fs::symlink("../../../secret", root.join("lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        cold_file(&root.join("usr/bin/bash"));

        prefetch(&root);
        // WILLNEED only starts the reads: wait (bounded) for the file inside.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while resident_pages(&root.join("usr/bin/bash")) < 256 {
            assert!(
                std::time::Instant::now() < deadline,
                "bin/bash never came into the cache"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(resident_pages(&outside), 0, "a file outside the tree was read");
    }

    #[test]
    fn top_mounts_are_the_children_of_the_root_mount() {
        let info = "\
1200 1100 0:50 /sb / rw,relatime - btrfs /dev/loop0 rw
1201 1200 0:51 / /proc rw - proc proc rw
1202 1201 0:52 /proc/meminfo /proc/meminfo ro - fuse.lxcfs lxcfs rw
1203 1200 0:53 / /dev rw - tmpfs tmpfs rw
1204 1203 0:54 / /dev/pts rw - devpts devpts rw
1205 1200 0:55 /x /etc/hosts ro - btrfs /dev/loop0 rw
1206 1200 0:55 /y /my\\040dir ro - btrfs /dev/loop0 rw
";
        assert_eq!(
            top_mounts(info).unwrap(),
            ["/proc", "/dev", "/etc/hosts", "/my dir"]
        );
        assert!(top_mounts("1 2 0:1 / /proc rw - proc proc rw\n").is_err());
    }
}
