//! Finding, creating, mounting and releasing the pool: everything before the first volume
//! operation and after the last.
//!
//! Owns `data_dir/pool` (the root), `data_dir/pool.img` (the sparse loop-backed btrfs file
//! used when the data dir is not btrfs) and `data_dir/pool.lock` (serialises setup and
//! teardown of one data dir; daemons with different data dirs never contend).
//!
//! Mounts outlive the daemon on purpose: running sandboxes keep using them after a crash, and
//! the next start finds the pool already mounted and reuses it. Only [`release_pool`] unmounts.
//!
//! Host users other than root never reach into the pool (it holds every sandbox's files,
//! owned by the sandboxes' shared host uid range): `pool.img` is 0600, the pool root is 0710
//! owned by `root:<sandbox root gid>` (only runc's init, as the sandbox's root, needs to
//! traverse it), and a mounted pool has `nosuid,nodev`, so a setuid file or device node a
//! sandbox plants is inert on the host. Inside sandboxes this costs nothing: `no_new_privs`
//! already makes setuid inert there, and `/dev` is a tmpfs. Pools made before these rules are
//! brought into line every time they are opened.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::statfs::{BTRFS_SUPER_MAGIC, statfs};

use crate::btrfs::BtrfsPool;
use crate::dir::DirPool;
use crate::error::{Result, StorageError};
use crate::{Pool, PoolKind, PoolOptions};

const POOL_DIR: &str = "pool";
const POOL_IMAGE: &str = "pool.img";
const POOL_LOCK: &str = "pool.lock";
/// `pool.img` (the raw disk of every sandbox) and `pool.lock`.
const IMAGE_MODE: u32 = 0o600;
/// The pool root: root's, traversable by the sandboxes' root group only.
const ROOT_MODE: u32 = 0o710;
/// Mount flags of a loop-mounted pool, on top of whatever else the mount has.
const MOUNT_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// Opens (creating on first use) the storage pool of `data_dir`; its root is `data_dir/pool`.
///
/// * data dir on btrfs: `data_dir/pool` is used directly.
/// * otherwise: a sparse btrfs image `data_dir/pool.img` of `opts.loop_size_bytes` is made on
///   first start and mounted on `data_dir/pool` through a loop device (direct I/O, so pages
///   are not cached twice); a mount left by an earlier run is reused.
/// * `PoolKind::Dir`, or `Auto` when btrfs cannot be set up for a new pool: plain directories.
///
/// An existing `pool.img` that fails to mount is an error even with `Auto`: falling back would
/// silently hide every existing volume.
pub fn open_pool(data_dir: &Path, opts: &PoolOptions) -> Result<Box<dyn Pool>> {
    std::fs::create_dir_all(data_dir).map_err(|e| StorageError::io("create data dir", data_dir, e))?;
    let data_dir =
        std::fs::canonicalize(data_dir).map_err(|e| StorageError::io("resolve data dir", data_dir, e))?;
    let pool_dir = data_dir.join(POOL_DIR);
    std::fs::create_dir_all(&pool_dir).map_err(|e| StorageError::io("create pool dir", &pool_dir, e))?;
    let _lock = lock(&data_dir)?;

    let pool: Box<dyn Pool> = if opts.kind == PoolKind::Dir {
        Box::new(DirPool::new(&pool_dir)?)
    } else {
        match setup_btrfs(&data_dir, &pool_dir, opts) {
            Ok(()) => Box::new(BtrfsPool::new(&pool_dir)?),
            Err(StorageError::BtrfsUnusable(why)) if opts.kind == PoolKind::Auto => {
                tracing::warn!(pool = %pool_dir.display(), reason = %why, "btrfs unusable, falling back to the dir pool");
                Box::new(DirPool::new(&pool_dir)?)
            }
            Err(e) => return Err(e),
        }
    };
    // After mounting: on a loop pool this is the btrfs root inode, which hides the dir below.
    close_root(&pool_dir, opts.sandbox_gid)?;
    Ok(pool)
}

/// Makes the pool root `root:<gid>` 0710 (0700 without a gid).
fn close_root(pool_dir: &Path, gid: Option<u32>) -> Result<()> {
    std::os::unix::fs::chown(pool_dir, Some(0), Some(gid.unwrap_or(0)))
        .map_err(|e| StorageError::io("chown pool root", pool_dir, e))?;
    let mode = if gid.is_some() { ROOT_MODE } else { 0o700 };
    std::fs::set_permissions(pool_dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| StorageError::io("chmod pool root", pool_dir, e))
}

/// Unmounts `data_dir/pool` if it is the mount of `data_dir/pool.img` and detaches every loop
/// device backed by that image. Meant for ephemeral daemons (tests); idempotent. Drop the
/// pool first: a busy mount is detached lazily and freed when its last user goes away.
pub fn release_pool(data_dir: &Path) -> Result<()> {
    let data_dir = match std::fs::canonicalize(data_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io("resolve data dir", data_dir, e)),
    };
    let image = data_dir.join(POOL_IMAGE);
    if !image.exists() {
        return Ok(());
    }
    let pool_dir = data_dir.join(POOL_DIR);
    let _lock = lock(&data_dir)?;
    let loops = loop_devices_of(&image)?;
    // Several mounts can be stacked on the pool dir after odd histories; take off ours only.
    while let Some(m) = mount_at(&pool_dir)? {
        if !loops.contains(&PathBuf::from(&m.source)) {
            break;
        }
        match nix::mount::umount(&pool_dir) {
            Ok(()) => {}
            Err(Errno::EBUSY) => {
                tracing::warn!(pool = %pool_dir.display(), "pool busy, detaching lazily");
                nix::mount::umount2(&pool_dir, MntFlags::MNT_DETACH)
                    .map_err(|e| StorageError::errno("unmount", &pool_dir, e))?;
            }
            Err(Errno::EINVAL) => break,
            Err(e) => return Err(StorageError::errno("unmount", &pool_dir, e)),
        }
    }
    for dev in loops {
        // A device still in use (lazily unmounted) is only marked for auto-clear by this.
        run(Command::new("losetup").arg("-d").arg(&dev))?;
    }
    Ok(())
}

fn lock(data_dir: &Path) -> Result<Flock<File>> {
    let path = data_dir.join(POOL_LOCK);
    // 0600: anyone who could open it could hold the lock and stall every start.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(IMAGE_MODE)
        .open(&path)
        .map_err(|e| StorageError::io("open lock", &path, e))?;
    file.set_permissions(std::fs::Permissions::from_mode(IMAGE_MODE))
        .map_err(|e| StorageError::io("chmod lock", &path, e))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| StorageError::errno("lock", &path, e))
}

fn is_btrfs(path: &Path) -> Result<bool> {
    let st = statfs(path).map_err(|e| StorageError::errno("statfs", path, e))?;
    Ok(st.filesystem_type() == BTRFS_SUPER_MAGIC)
}

fn setup_btrfs(data_dir: &Path, pool_dir: &Path, opts: &PoolOptions) -> Result<()> {
    // Covers a data dir on btrfs, our loop mount left by an earlier run, and a btrfs the
    // administrator mounted on the pool dir.
    let image = data_dir.join(POOL_IMAGE);
    if image.exists() {
        // Images made before it was 0600.
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(IMAGE_MODE))
            .map_err(|e| StorageError::io("chmod pool image", &image, e))?;
    }
    if is_btrfs(pool_dir)? {
        match mount_at(pool_dir)? {
            Some(m) => {
                tracing::info!(pool = %pool_dir.display(), source = %m.source, "reusing mounted btrfs pool");
                harden_mount(pool_dir, &m)?;
            }
            None => tracing::info!(pool = %pool_dir.display(), "data dir is on btrfs, using it directly"),
        }
        return Ok(());
    }
    let fresh = !image.exists();
    if std::fs::read_dir(pool_dir)
        .map_err(|e| StorageError::io("read pool dir", pool_dir, e))?
        .next()
        .is_some()
    {
        // Left by an earlier `dir` pool: mounting over it would hide its volumes.
        return Err(StorageError::BtrfsUnusable(format!(
            "{} is not empty and not a btrfs mount (an earlier dir pool?); refusing to mount over it",
            pool_dir.display()
        )));
    }
    if fresh {
        make_image(&image, opts.loop_size_bytes)?;
    }
    match attach_and_mount(&image, pool_dir) {
        Ok(()) => Ok(()),
        Err(StorageError::BtrfsUnusable(why)) if !fresh => Err(StorageError::Command {
            cmd: format!("mount {}", image.display()),
            detail: format!("existing pool image cannot be mounted: {why}"),
        }),
        Err(e) => {
            if fresh {
                let _ = std::fs::remove_file(&image);
            }
            Err(e)
        }
    }
}

/// Formats a sparse image under a temporary name and renames it, so a crash never leaves a
/// half-formatted `pool.img`.
fn make_image(image: &Path, size: u64) -> Result<()> {
    let tmp = image.with_extension("img.tmp");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(IMAGE_MODE)
        .open(&tmp)
        .map_err(|e| StorageError::io("create pool image", &tmp, e))?;
    // A leftover temporary file keeps its old mode through `open`.
    file.set_permissions(std::fs::Permissions::from_mode(IMAGE_MODE))
        .map_err(|e| StorageError::io("chmod pool image", &tmp, e))?;
    file.set_len(size)
        .map_err(|e| StorageError::io("size pool image", &tmp, e))?;
    drop(file);
    let out = Command::new("mkfs.btrfs")
        .args(["-q", "-f", "-L", "burrow"])
        .arg(&tmp)
        .output();
    let result = match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StorageError::BtrfsUnusable(
            "mkfs.btrfs not found (install btrfs-progs)".into(),
        )),
        Err(e) => Err(StorageError::io("spawn mkfs.btrfs for", &tmp, e)),
        Ok(o) if !o.status.success() => Err(StorageError::BtrfsUnusable(format!(
            "mkfs.btrfs {}: {}",
            tmp.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Ok(_) => std::fs::rename(&tmp, image).map_err(|e| StorageError::io("rename pool image to", image, e)),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn attach_and_mount(image: &Path, pool_dir: &Path) -> Result<()> {
    // A loop device may survive from an earlier run (crash between attach and mount, or the
    // fs still mounted in a sandbox's mount namespace); mounting that one again is the only
    // safe choice, since btrfs refuses the same filesystem on two devices.
    let existing = loop_devices_of(image)?.into_iter().next();
    let (dev, attached) = match existing {
        Some(dev) => (dev, false),
        None => {
            let out = run(Command::new("losetup")
                .args(["--find", "--show", "--direct-io=on"])
                .arg(image))
            .map_err(|e| StorageError::BtrfsUnusable(e.to_string()))?;
            (PathBuf::from(out.trim()), true)
        }
    };
    // nosuid,nodev: a setuid file or device node a sandbox makes is inert on the host. The
    // flags are locked on the sandboxes' bind mounts of their root trees (made from inside a
    // user namespace), which changes nothing there: `no_new_privs` already makes setuid
    // inert, and `/dev` is a tmpfs of its own.
    let mounted = nix::mount::mount(
        Some(dev.as_path()),
        pool_dir,
        Some("btrfs"),
        MOUNT_FLAGS,
        None::<&str>,
    );
    if let Err(e) = mounted {
        if attached {
            let _ = run(Command::new("losetup").arg("-d").arg(&dev));
        }
        return Err(StorageError::BtrfsUnusable(format!(
            "mount {} ({}) on {}: {e}",
            dev.display(),
            image.display(),
            pool_dir.display()
        )));
    }
    tracing::info!(pool = %pool_dir.display(), device = %dev.display(), "mounted loop-backed btrfs pool");
    Ok(())
}

/// Adds `nosuid,nodev` to a pool mount made without them (by an earlier version, or by the
/// administrator), keeping its other per-mount flags. Sandboxes already running keep their
/// own copies of the mount as they were.
fn harden_mount(pool_dir: &Path, m: &MountEntry) -> Result<()> {
    let mut flags = MsFlags::empty();
    for opt in m.options.split(',') {
        flags |= match opt {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            "nosymfollow" => MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW),
            _ => MsFlags::empty(),
        };
    }
    if flags.contains(MOUNT_FLAGS) {
        return Ok(());
    }
    tracing::info!(pool = %pool_dir.display(), options = %m.options, "remounting the pool nosuid,nodev");
    nix::mount::mount(
        None::<&str>,
        pool_dir,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags | MOUNT_FLAGS,
        None::<&str>,
    )
    .map_err(|e| StorageError::errno("remount nosuid,nodev", pool_dir, e))
}

/// Loop devices whose backing file is `image`.
fn loop_devices_of(image: &Path) -> Result<Vec<PathBuf>> {
    let out = run(Command::new("losetup")
        .args(["--noheadings", "--output", "NAME", "--associated"])
        .arg(image))?;
    Ok(out
        .lines()
        .map(|l| PathBuf::from(l.trim()))
        .filter(|p| !p.as_os_str().is_empty())
        .collect())
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| StorageError::Command {
        cmd: shown.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(StorageError::Command {
            cmd: shown,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One line of `/proc/self/mountinfo`, the fields we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub options: String,
    pub fstype: String,
    pub source: String,
}

/// The topmost mount whose mount point is exactly `path`.
pub(crate) fn mount_at(path: &Path) -> Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| StorageError::io("read", Path::new("/proc/self/mountinfo"), e))?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path))
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                options: (*fields.get(5)?).to_owned(),
                fstype: (*fields.get(sep + 1)?).to_owned(),
                source: unescape(fields.get(sep + 2)?),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash in mountinfo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let text = "43 27 0:39 / /tmp/a\\040b/pool rw,relatime shared:5 master:1 - btrfs /dev/loop0 rw,space_cache=v2\n\
                    24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/tmp/a b/pool"));
        assert_eq!(m[0].fstype, "btrfs");
        assert_eq!(m[0].options, "rw,relatime");
        assert_eq!(m[0].source, "/dev/loop0");
        assert_eq!(m[1].source, "devtmpfs");
    }

    #[test]
    fn unescape_leaves_plain_text_alone() {
        assert_eq!(unescape("abc\\"), "abc\\");
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("x\\012"), "x\n");
    }
}
