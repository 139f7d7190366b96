//! The daemon's lxcfs (container::lxcfs) against the real Debian `lxcfs`: started on a mount
//! point of its own, adopted by a second owner, replaced when its process dies (a dead FUSE
//! mount fails every read with ENOTCONN), and unmounted on release when nothing uses it.

use std::path::Path;
use std::time::Duration;

use burrow_engine::container::lxcfs::Lxcfs;

fn ready() -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        "not root"
    } else if std::process::Command::new("lxcfs")
        .arg("--version")
        .output()
        .is_err()
    {
        "lxcfs is not installed (scripts/setup.sh)"
    } else {
        return true;
    };
    burrow_testkit::prerequisite(false, why)
}

fn mounted(dir: &Path) -> bool {
    let want = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want) && l.contains(" - fuse.lxcfs "))
}

fn pid_of(pidfile: &Path) -> i32 {
    std::fs::read_to_string(pidfile).unwrap().trim().parse().unwrap()
}

#[test]
fn lxcfs_is_started_adopted_replaced_when_dead_and_released() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lxcfs");
    let pidfile = tmp.path().join("lxcfs.pid");

    let ours = Lxcfs::new("lxcfs", &dir);
    assert!(!ours.available() && !mounted(&dir));
    assert_eq!(ours.ensure().as_deref(), Some(dir.as_path()));
    assert!(ours.available() && mounted(&dir));
    let meminfo = std::fs::read_to_string(dir.join("proc/meminfo")).unwrap();
    assert!(meminfo.starts_with("MemTotal:"), "{meminfo}");
    let first = pid_of(&pidfile);

    // Another owner (the next daemon) adopts the mount; it needs no binary for that.
    let next = Lxcfs::new("/nonexistent/lxcfs", &dir);
    assert_eq!(next.ensure().as_deref(), Some(dir.as_path()));
    assert_eq!(pid_of(&pidfile), first);
    // Control: with nothing mounted where it looks, the missing binary means no view.
    let none = Lxcfs::new("/nonexistent/lxcfs", tmp.path().join("elsewhere"));
    assert_eq!(none.ensure(), None);

    // lxcfs dies: its mount answers ENOTCONN, and the next start gets a new lxcfs there.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), nix::sys::signal::SIGKILL).unwrap();
    let gone = (0..2000).any(|_| {
        std::thread::sleep(Duration::from_millis(5));
        std::fs::read_to_string(dir.join("proc/uptime")).is_err()
    });
    assert!(gone, "a killed lxcfs still answers");
    assert!(!ours.available());
    assert_eq!(ours.ensure().as_deref(), Some(dir.as_path()));
    assert_ne!(pid_of(&pidfile), first);
    assert!(std::fs::read_to_string(dir.join("proc/uptime")).is_ok());
    assert!(ours.available());

    // Its FUSE connection is aborted while the process still runs (what a dying lxcfs looks
    // like for a moment: reads fail before the process is gone): not available, and the next
    // start replaces it.
    let second = pid_of(&pidfile);
    abort_connection(&dir);
    assert!(std::fs::read_to_string(dir.join("proc/uptime")).is_err());
    assert!(
        !ours.available(),
        "an lxcfs whose mount fails reads counts as available"
    );
    assert_eq!(ours.ensure().as_deref(), Some(dir.as_path()));
    assert_ne!(pid_of(&pidfile), second);
    assert!(std::fs::read_to_string(dir.join("proc/uptime")).is_ok());

    // A process in a mount namespace of its own holds a bind mount of one of its files, as a
    // sandbox does: release leaves lxcfs mounted.
    let target = tmp.path().join("uptime");
    std::fs::write(&target, "").unwrap();
    let mut holder = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {}/proc/uptime {} && echo ready && exec sleep 600",
            dir.display(),
            target.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "ready\n");
    ours.release();
    assert!(mounted(&dir) && ours.available(), "released while in use");

    // Nothing else uses it: release unmounts it and lxcfs ends (it removes its pidfile then).
    holder.kill().unwrap();
    holder.wait().unwrap();
    ours.release();
    assert!(!mounted(&dir));
    assert!(ends(&pidfile), "lxcfs still runs after its release");
}

/// Aborts the FUSE connection of the mount at `dir` through fusectl, mounted in a mount
/// namespace of its own so that the host's mount table stays as it was.
fn abort_connection(dir: &Path) {
    use std::os::linux::fs::MetadataExt;
    let dev = std::fs::metadata(dir).unwrap().st_dev();
    let id = nix::sys::stat::minor(dev);
    let status = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t fusectl none /sys/fs/fuse/connections && echo 1 > /sys/fs/fuse/connections/{id}/abort"
        ))
        .status()
        .unwrap();
    assert!(status.success(), "aborting FUSE connection {id}: {status}");
}

/// Waits (bounded) until the lxcfs of `pidfile` has ended: the file is gone.
fn ends(pidfile: &Path) -> bool {
    (0..6000).any(|_| {
        std::thread::sleep(Duration::from_millis(5));
        !pidfile.exists()
    })
}
