//! A VM's disk: an image's root tree made into an ext4 filesystem image, once per image.
//!
//! Image trees on the pool are owned by the container engine's shifted ids (root is
//! `uid_base`). `mkfs.ext4 -d` copies owners as it sees them, so it runs in a user
//! namespace that maps `uid_base..+count` back to `0..count`: the guest's files are owned
//! by the guest's own root, with nothing of the host's id layout inside.
//!
//! The host never mounts a VM disk: it only writes a fresh filesystem from a trusted tree.
//! After that the disk belongs to the guest, and the host treats it as opaque bytes.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{EngineError, Result};

/// Free room a fresh image gets beyond its files; sandboxes grow their disk to `disk_gb`
/// at boot anyway.
const HEADROOM: u64 = 512 << 20;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> EngineError + 'a {
    move |source| EngineError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Bytes the files of `tree` take (apparent sizes, each rounded up to 4 KiB blocks).
fn tree_bytes(tree: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut dirs = vec![tree.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                dirs.push(entry.path());
            }
            total += meta.len().div_ceil(4096) * 4096 + 256;
        }
    }
    Ok(total)
}

/// Writes `out` (created, or replaced) as an ext4 image holding `tree`, with ids shifted
/// down by `uid_base` (see the module docs). Atomic: a temp file renamed into place.
pub fn make_ext4(tree: &Path, out: &Path, uid_base: u32, uid_count: u32) -> Result<()> {
    let used = tree_bytes(tree).map_err(io_err("measure", tree))?;
    let size = ((used + used / 3 + HEADROOM) >> 20) << 20;
    let tmp = out.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let file = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.set_len(size).map_err(io_err("size", &tmp))?;
    // mkfs runs as the namespace's root, which is `uid_base` on the host.
    std::os::unix::fs::fchown(&file, Some(uid_base), Some(uid_base)).map_err(io_err("chown", &tmp))?;
    drop(file);
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F", "-b", "4096", "-L", "burrow-root"])
        .args(["-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg("-d")
        .arg(tree)
        .arg(&tmp)
        .stdin(Stdio::null());
    let out_put = run_in_userns(cmd, uid_base, uid_count).map_err(io_err("run mkfs.ext4 for", &tmp))?;
    if !out_put.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(EngineError::Command {
            cmd: format!("mkfs.ext4 -d {}", tree.display()),
            detail: String::from_utf8_lossy(&out_put.stderr).trim().to_owned(),
        });
    }
    std::os::unix::fs::chown(&tmp, Some(0), Some(0)).map_err(io_err("chown", &tmp))?;
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, out).map_err(io_err("rename", out))?;
    Ok(())
}

/// Runs `cmd` as root of a new user namespace whose ids `0..count` are the host's
/// `base..base+count`. The child unshares, tells a helper thread its pid, and waits until
/// the helper has written its id maps; only then does it take uid 0 and exec.
fn run_in_userns(mut cmd: Command, base: u32, count: u32) -> io::Result<std::process::Output> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (ready_w_fd, go_r_fd) = (ready_w.as_raw_fd(), go_r.as_raw_fd());
    let map = format!("0 {base} {count}\n");
    let helper = std::thread::spawn(move || -> io::Result<()> {
        let mut pid = [0u8; 4];
        fs::File::from(ready_r).read_exact(&mut pid)?;
        let pid = i32::from_ne_bytes(pid);
        fs::write(format!("/proc/{pid}/uid_map"), &map)?;
        fs::write(format!("/proc/{pid}/gid_map"), &map)?;
        fs::File::from(go_w).write_all(b"g")
    });
    // SAFETY: the closure runs between fork and exec and only makes raw syscalls
    // (unshare, getpid, write, read, setgroups, setresgid, setresuid) on fds it owns; it
    // allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(io::Error::last_os_error());
            }
            let pid = libc::getpid().to_ne_bytes();
            if libc::write(ready_w_fd, pid.as_ptr().cast(), 4) != 4 {
                return Err(io::Error::last_os_error());
            }
            let mut b = 0u8;
            if libc::read(go_r_fd, (&raw mut b).cast(), 1) != 1 {
                return Err(io::Error::other("the id maps were not written"));
            }
            if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output();
    drop((ready_w, go_r));
    let mapped = helper
        .join()
        .map_err(|_| io::Error::other("id map helper panicked"))?;
    let out = out?;
    mapped?;
    Ok(out)
}

/// Grows the disk image at `path` to `bytes` (never shrinks it): the guest grows its
/// filesystem to the device's size at boot.
pub fn grow(path: &Path, bytes: u64) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let now = f.metadata().map_err(io_err("stat", path))?.size();
    if bytes > now {
        f.set_len(bytes).map_err(io_err("grow", path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_holds_the_tree_with_ids_shifted_down() {
        burrow_testkit::require!(
            nix::unistd::geteuid().is_root() && Command::new("mkfs.ext4").arg("-V").output().is_ok(),
            "root and mkfs.ext4 (e2fsprogs)"
        );
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::write(tree.join("etc/hostname"), "x\n").unwrap();
        fs::write(tree.join("etc/user-file"), "y\n").unwrap();
        let base = 3_000_000;
        for (p, id) in [("", 0), ("etc", 0), ("etc/hostname", 0), ("etc/user-file", 1000)] {
            std::os::unix::fs::lchown(tree.join(p), Some(base + id), Some(base + id)).unwrap();
        }
        let img = dir.path().join("disk.img");
        make_ext4(&tree, &img, base, 65536).unwrap();
        let ls = Command::new("debugfs")
            .args(["-R", "ls -l /etc"])
            .arg(&img)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&ls.stdout);
        let owner = |name: &str| {
            let line = text
                .lines()
                .find(|l| l.ends_with(name))
                .unwrap_or_else(|| panic!("{name} in {text}"));
            // `inode mode (type) uid gid size date time name`
            let cols: Vec<&str> = line.split_whitespace().collect();
            let at = cols.iter().position(|c| c.starts_with('(')).unwrap_or(1);
            (cols[at + 1].to_owned(), cols[at + 2].to_owned())
        };
        assert_eq!(owner("hostname"), ("0".into(), "0".into()));
        assert_eq!(owner("user-file"), ("1000".into(), "1000".into()));
        assert_eq!(
            fs::metadata(&img).unwrap().uid(),
            0,
            "the image file itself is the host's"
        );
    }
}
