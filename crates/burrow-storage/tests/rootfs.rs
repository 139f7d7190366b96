//! Image root trees: ownership shifting and tar extraction.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use burrow_storage::StorageError;
use burrow_storage::rootfs::{extract_tar, shift_ownership};
use common::is_root;

const BASE: u32 = 100_000;
const COUNT: u32 = 65_536;

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("burrow-rootfs-test-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

#[test]
fn shift_maps_ids_and_keeps_special_bits() {
    if !is_root() {
        return;
    }
    let dir = scratch();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    let su = root.join("usr/bin/su");
    std::fs::write(&su, b"\x7fELF").unwrap();
    std::fs::set_permissions(&su, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let sg = root.join("usr/bin/chage");
    std::fs::write(&sg, b"x").unwrap();
    std::os::unix::fs::chown(&sg, Some(0), Some(42)).unwrap();
    std::fs::set_permissions(&sg, std::fs::Permissions::from_mode(0o2755)).unwrap();
    std::fs::create_dir(root.join("home")).unwrap();
    std::os::unix::fs::chown(root.join("home"), Some(1000), Some(1000)).unwrap();
    std::fs::hard_link(&su, root.join("usr/bin/su-hardlink")).unwrap();
    // A symlink whose target is outside the tree: only the link itself changes owner.
    let outside = dir.path().join("outside");
    std::fs::write(&outside, b"host file").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink("usr/bin/su", root.join("rel")).unwrap();
    // A file capability (CAP_NET_RAW+ep), which chown would otherwise drop.
    let ping = root.join("usr/bin/ping");
    std::fs::write(&ping, b"x").unwrap();
    let have_setcap = std::process::Command::new("setcap")
        .args(["cap_net_raw+ep"])
        .arg(&ping)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);

    shift_ownership(&root, BASE, COUNT).unwrap();

    assert_eq!(owner(&root), (BASE, BASE));
    assert_eq!(owner(&su), (BASE, BASE));
    assert_eq!(
        std::fs::metadata(&su).unwrap().mode() & 0o7777,
        0o4755,
        "setuid kept"
    );
    assert_eq!(owner(&sg), (BASE, BASE + 42));
    assert_eq!(
        std::fs::metadata(&sg).unwrap().mode() & 0o7777,
        0o2755,
        "setgid kept"
    );
    assert_eq!(owner(&root.join("home")), (BASE + 1000, BASE + 1000));
    assert_eq!(
        owner(&root.join("usr/bin/su-hardlink")),
        (BASE, BASE),
        "shifted once"
    );
    assert_eq!(owner(&root.join("escape")), (BASE, BASE));
    assert_eq!(owner(&outside), (0, 0), "symlink target untouched");
    assert_eq!(std::fs::read_link(root.join("escape")).unwrap(), outside);
    assert_eq!(owner(&root.join("rel")), (BASE, BASE));
    if have_setcap {
        let out = std::process::Command::new("getcap").arg(&ping).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("cap_net_raw"), "capability lost: {text:?}");
    }
}

#[test]
fn shift_refuses_ids_outside_the_range_and_changes_nothing() {
    if !is_root() {
        return;
    }
    let dir = scratch();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("a/ok"), b"").unwrap();
    std::fs::write(root.join("a/nobody"), b"").unwrap();
    std::os::unix::fs::chown(root.join("a/nobody"), Some(65_534), Some(COUNT)).unwrap();

    let err = shift_ownership(&root, BASE, COUNT).unwrap_err();
    assert!(
        matches!(err, StorageError::IdOutOfRange { id: COUNT, count: COUNT, ref path } if path.ends_with("a/nobody")),
        "{err}"
    );
    assert_eq!(owner(&root.join("a/ok")), (0, 0));
    assert_eq!(owner(&root), (0, 0));

    // A range that would overflow u32 is refused up front.
    assert!(shift_ownership(&root, u32::MAX - 10, COUNT).is_err());
}

#[test]
fn extract_reports_tar_errors() {
    if !is_root() {
        return;
    }
    let dir = scratch();
    let bogus = dir.path().join("bogus.tar");
    std::fs::write(&bogus, b"this is not a tar archive").unwrap();
    let err = extract_tar(&bogus, dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StorageError::Command { .. }), "{text}");
    assert!(text.contains("bogus.tar") && text.contains("tar:"), "{text}");

    // A round trip keeps owners and special bits.
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("s"), b"x").unwrap();
    std::os::unix::fs::chown(src.join("s"), Some(7), Some(8)).unwrap();
    std::fs::set_permissions(src.join("s"), std::fs::Permissions::from_mode(0o4711)).unwrap();
    let tar = dir.path().join("t.tar");
    let st = std::process::Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    extract_tar(&tar, &dest).unwrap();
    let m = std::fs::metadata(dest.join("s")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (7, 8, 0o4711));
}

/// Needs a Debian mirror and ~20 s: `cargo test -p burrow-storage -- --ignored`.
#[test]
#[ignore = "downloads Debian packages"]
fn build_debian_rootfs_then_extract_and_shift() {
    use burrow_storage::rootfs::{DEFAULT_DEBIAN_PACKAGES, build_debian_rootfs};
    if !is_root() {
        return;
    }
    let dir = scratch();
    let tar = dir.path().join("cache/bookworm.tar");
    let mut lines = Vec::new();
    build_debian_rootfs(&tar, "bookworm", DEFAULT_DEBIAN_PACKAGES, None, &mut |l| {
        lines.push(l.to_owned())
    })
    .unwrap();
    assert!(lines.iter().any(|l| l.contains("success")), "{lines:?}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("bookworm.tar")]);

    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    extract_tar(&tar, &root).unwrap();
    shift_ownership(&root, BASE, COUNT).unwrap();
    assert_eq!(owner(&root.join("usr/bin/bash")), (BASE, BASE));
    assert_eq!(
        std::fs::metadata(root.join("usr/bin/su")).unwrap().mode() & 0o4000,
        0o4000
    );
    assert!(root.join("usr/share/terminfo/x/xterm").exists() || root.join("lib/terminfo/x/xterm").exists());
    assert!(root.join("etc/services").exists());
}

#[test]
fn build_failure_leaves_no_partial_tarball() {
    use burrow_storage::rootfs::build_debian_rootfs;
    if !is_root() {
        return;
    }
    let dir = scratch();
    let tar = dir.path().join("bad.tar");
    let mut seen = 0;
    let err = build_debian_rootfs(
        &tar,
        "no-such-suite-burrow",
        &[],
        Some("http://127.0.0.1:9/debian"),
        &mut |_| seen += 1,
    )
    .unwrap_err();
    assert!(matches!(err, StorageError::Command { .. }), "{err}");
    assert!(seen > 0, "mmdebstrap's stderr was not streamed");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "left files behind"
    );
}
