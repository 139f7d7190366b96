//! The `dir` fallback driver: full copies that keep what a root tree needs.

mod common;

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use burrow_storage::{PoolKind, StorageError};
use common::{MIB, TestPool, is_root};

fn set_xattr(path: &Path, name: &CStr, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: both strings are NUL-terminated and `value` is readable for its length.
    let r = unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {path:?}: {}", std::io::Error::last_os_error());
}

fn get_xattr(path: &Path, name: &CStr) -> Vec<u8> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let n = unsafe { libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "getxattr {path:?}: {}", std::io::Error::last_os_error());
    buf.truncate(n as usize);
    buf
}

#[test]
fn snapshot_preserves_owners_modes_links_and_xattrs() {
    if !is_root() {
        return;
    }
    let t = TestPool::new(PoolKind::Dir, 0);
    let pool = t.pool();
    assert_eq!(pool.kind_name(), "dir");
    assert!(!t.image().exists(), "the dir pool must not create a loop image");
    let src = t.path("images/base");
    pool.create_volume(&src).unwrap();
    assert!(matches!(pool.create_volume(&src), Err(StorageError::Exists(_))));

    std::fs::create_dir(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/suid"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(src.join("etc/suid"), Some(100_000), Some(100_042)).unwrap();
    std::fs::set_permissions(src.join("etc/suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(src.join("etc"), Some(100_005), Some(100_006)).unwrap();
    std::os::unix::fs::symlink("../etc/suid", src.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling")).unwrap();
    std::os::unix::fs::lchown(src.join("dangling"), Some(100_007), Some(100_007)).unwrap();
    std::fs::hard_link(src.join("etc/suid"), src.join("hard")).unwrap();
    set_xattr(&src.join("etc/suid"), c"user.burrow-test", b"kept");
    set_xattr(&src.join("etc/suid"), c"trusted.burrow-test", b"kept too");

    let dst = t.path("sandboxes/copy");
    pool.snapshot(&src, &dst, false).unwrap();
    assert!(pool.is_volume(&dst));
    assert!(matches!(
        pool.snapshot(&src, &dst, false),
        Err(StorageError::Exists(_))
    ));

    let m = std::fs::metadata(dst.join("etc/suid")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (100_000, 100_042, 0o4755));
    let d = std::fs::metadata(dst.join("etc")).unwrap();
    assert_eq!((d.uid(), d.gid()), (100_005, 100_006));
    assert_eq!(
        std::fs::read_link(dst.join("rel-link")).unwrap().to_str(),
        Some("../etc/suid")
    );
    assert_eq!(
        std::fs::read_link(dst.join("dangling")).unwrap().to_str(),
        Some("/nonexistent/target")
    );
    assert_eq!(
        std::fs::symlink_metadata(dst.join("dangling")).unwrap().uid(),
        100_007
    );
    assert_eq!(
        std::fs::metadata(dst.join("hard")).unwrap().ino(),
        m.ino(),
        "hard link kept"
    );
    assert_eq!(get_xattr(&dst.join("etc/suid"), c"user.burrow-test"), b"kept");
    assert_eq!(
        get_xattr(&dst.join("etc/suid"), c"trusted.burrow-test"),
        b"kept too"
    );

    // Independent copies.
    std::fs::write(dst.join("new"), b"x").unwrap();
    assert!(!src.join("new").exists());

    // Read-only is recorded (not enforced) and does not leak into writable copies.
    let ro = t.path("checkpoints/copy/v1");
    pool.snapshot(&dst, &ro, true).unwrap();
    assert!(pool.is_readonly(&ro).unwrap());
    let fork = t.path("sandboxes/fork");
    pool.snapshot(&ro, &fork, false).unwrap();
    assert!(!pool.is_readonly(&fork).unwrap());
    pool.set_readonly(&fork, true).unwrap();
    assert!(pool.is_readonly(&fork).unwrap());
    pool.set_readonly(&fork, false).unwrap();
    assert!(!pool.is_readonly(&fork).unwrap());

    assert!(pool.volume_size(&dst).unwrap() > 0);
    pool.delete_volume(&dst).unwrap();
    pool.delete_volume(&dst).unwrap();
    assert!(!dst.exists());
    // No temporary copies left behind.
    let leftovers: Vec<_> = std::fs::read_dir(t.path("sandboxes"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn dir_pool_refuses_outside_paths() {
    if !is_root() {
        return;
    }
    let t = TestPool::new(PoolKind::Dir, 0);
    let pool = t.pool();
    let vol = t.path("sandboxes/v");
    pool.create_volume(&vol).unwrap();
    let outside = tempfile::tempdir_in("/var/tmp").unwrap();
    std::os::unix::fs::symlink(outside.path(), vol.join("escape")).unwrap();
    for p in [t.path("../x"), vol.join("escape/y"), outside.path().to_owned()] {
        assert!(
            matches!(pool.create_volume(&p), Err(StorageError::OutsidePool(_))),
            "{p:?}"
        );
        assert!(matches!(
            pool.snapshot(&vol, &p, false),
            Err(StorageError::OutsidePool(_))
        ));
        assert!(matches!(
            pool.delete_volume(&p),
            Err(StorageError::OutsidePool(_))
        ));
    }
    assert!(outside.path().exists());
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
}

#[test]
fn auto_uses_btrfs_when_it_can() {
    if !is_root() {
        return;
    }
    let t = TestPool::new(PoolKind::Auto, 512 * MIB);
    assert_eq!(t.pool().kind_name(), "btrfs");
}
