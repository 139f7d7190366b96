//! The btrfs driver on a real loop-backed btrfs: volumes, snapshots, read-only, crash reuse,
//! confinement and a full pool.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use burrow_storage::{PoolKind, PoolOptions, StorageError, release_pool};
use common::{MIB, TestPool, is_root, loops_of, mount_options, mounts_at};
use nix::mount::MsFlags;

#[test]
fn create_snapshot_delete() {
    if !is_root() {
        return;
    }
    let t = TestPool::btrfs();
    let pool = t.pool();
    assert_eq!(pool.kind_name(), "btrfs");
    let vol = t.path("sandboxes/a");
    pool.create_volume(&vol).unwrap();
    assert!(pool.is_volume(&vol));
    assert_eq!(std::fs::metadata(&vol).unwrap().ino(), 256);
    assert!(matches!(pool.create_volume(&vol), Err(StorageError::Exists(_))));
    std::fs::write(vol.join("hello"), b"world").unwrap();
    assert_eq!(pool.volume_size(&vol).unwrap(), 5);

    let snap = t.path("checkpoints/a/v1");
    pool.snapshot(&vol, &snap, false).unwrap();
    assert!(pool.is_volume(&snap));
    assert_eq!(std::fs::read(snap.join("hello")).unwrap(), b"world");
    assert!(matches!(
        pool.snapshot(&vol, &snap, false),
        Err(StorageError::Exists(_))
    ));

    // A plain directory is not a volume and cannot be snapshotted.
    std::fs::create_dir(vol.join("plain")).unwrap();
    assert!(!pool.is_volume(&vol.join("plain")));
    assert!(matches!(
        pool.snapshot(&vol.join("plain"), &t.path("x"), false),
        Err(StorageError::NotVolume(_))
    ));
    assert!(matches!(
        pool.snapshot(&t.path("missing"), &t.path("x"), false),
        Err(StorageError::NotFound(_))
    ));

    pool.delete_volume(&snap).unwrap();
    pool.delete_volume(&vol).unwrap();
    assert!(!vol.exists() && !snap.exists());
    // Idempotent, also when a parent is missing.
    pool.delete_volume(&vol).unwrap();
    pool.delete_volume(&t.path("nothing/here")).unwrap();
}

#[test]
fn snapshot_is_independent_both_ways() {
    if !is_root() {
        return;
    }
    let t = TestPool::btrfs();
    let pool = t.pool();
    let src = t.path("sandboxes/src");
    let dst = t.path("sandboxes/dst");
    pool.create_volume(&src).unwrap();
    std::fs::write(src.join("shared"), b"v1").unwrap();
    pool.snapshot(&src, &dst, false).unwrap();

    std::fs::write(src.join("shared"), b"changed in src").unwrap();
    std::fs::write(src.join("only-src"), b"x").unwrap();
    std::fs::write(dst.join("only-dst"), b"y").unwrap();
    std::fs::remove_file(dst.join("shared")).unwrap();

    assert_eq!(std::fs::read(src.join("shared")).unwrap(), b"changed in src");
    assert!(!src.join("only-dst").exists());
    assert!(!dst.join("shared").exists());
    assert!(!dst.join("only-src").exists());
    assert_eq!(std::fs::read(dst.join("only-dst")).unwrap(), b"y");
}

#[test]
fn readonly_snapshots_refuse_writes_and_can_be_deleted() {
    if !is_root() {
        return;
    }
    let t = TestPool::btrfs();
    let pool = t.pool();
    let src = t.path("sandboxes/s");
    pool.create_volume(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let ro = t.path("checkpoints/s/v1");
    pool.snapshot(&src, &ro, true).unwrap();
    assert!(pool.is_readonly(&ro).unwrap());
    assert!(!pool.is_readonly(&src).unwrap());

    let err = std::fs::write(ro.join("new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::write(ro.join("f"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    // Toggling works both ways.
    pool.set_readonly(&ro, false).unwrap();
    std::fs::write(ro.join("new"), b"x").unwrap();
    pool.set_readonly(&ro, true).unwrap();
    assert!(std::fs::write(ro.join("new2"), b"x").is_err());
    pool.set_readonly(&ro, true).unwrap();

    // A writable snapshot of a read-only one (restore/fork) is writable.
    let fork = t.path("sandboxes/fork");
    pool.snapshot(&ro, &fork, false).unwrap();
    std::fs::write(fork.join("f"), b"forked").unwrap();
    assert_eq!(std::fs::read(ro.join("f")).unwrap(), b"data");

    pool.delete_volume(&ro).unwrap();
    assert!(!ro.exists());
}

#[test]
fn deleting_the_source_keeps_the_snapshot() {
    if !is_root() {
        return;
    }
    let t = TestPool::btrfs();
    let pool = t.pool();
    let src = t.path("sandboxes/s");
    pool.create_volume(&src).unwrap();
    let payload: Vec<u8> = (0..4 * MIB as usize).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(src.join("deep/dir")).unwrap();
    std::fs::write(src.join("deep/dir/blob"), &payload).unwrap();
    let snap = t.path("checkpoints/s/v1");
    pool.snapshot(&src, &snap, true).unwrap();
    pool.delete_volume(&src).unwrap();
    assert!(!src.exists());
    assert_eq!(std::fs::read(snap.join("deep/dir/blob")).unwrap(), payload);
}

#[test]
fn nested_subvolumes_are_deleted_with_their_parent() {
    if !is_root() {
        return;
    }
    let t = TestPool::btrfs();
    let pool = t.pool();
    let vol = t.path("sandboxes/n");
    pool.create_volume(&vol).unwrap();
    // What a sandbox could do itself with `btrfs subvolume create` inside its tree.
    pool.create_volume(&vol.join("inner")).unwrap();
    pool.create_volume(&vol.join("inner/deeper")).unwrap();
    std::fs::write(vol.join("inner/deeper/f"), b"x").unwrap();
    pool.set_readonly(&vol, true).unwrap();
    pool.delete_volume(&vol).unwrap();
    assert!(!vol.exists());
}

#[test]
fn reopen_after_crash_reuses_the_mount() {
    if !is_root() {
        return;
    }
    let mut t = TestPool::btrfs();
    let vol = t.path("sandboxes/keep");
    t.pool().create_volume(&vol).unwrap();
    std::fs::write(vol.join("f"), b"survives").unwrap();
    let root = t.pool().root().to_owned();
    let before = mounts_at(&root);
    assert_eq!(before.len(), 1, "{before:?}");
    let loops = loops_of(&t.image());
    assert_eq!(loops.len(), 1, "{loops:?}");

    // Drop without release, as a crashed daemon would.
    t.reopen(PoolKind::Btrfs, 1024 * MIB);
    assert_eq!(mounts_at(&root), before, "the mount must be reused, not stacked");
    assert_eq!(loops_of(&t.image()), loops);
    assert_eq!(std::fs::read(vol.join("f")).unwrap(), b"survives");
    assert!(t.pool().is_volume(&vol));

    // After an unmount (e.g. a reboot of the mount, the loop device left attached) the
    // existing loop device is mounted again rather than a second one attached.
    t.close();
    // The kernel can still hold the mount for a moment after the last file closes (EBUSY
    // seen under a loaded suite): retry, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match nix::mount::umount(&root) {
            Ok(()) => break,
            Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("umount {}: {e}", root.display()),
        }
    }
    t.reopen(PoolKind::Auto, 1024 * MIB);
    assert_eq!(t.pool().kind_name(), "btrfs");
    assert_eq!(loops_of(&t.image()), loops);
    assert_eq!(std::fs::read(vol.join("f")).unwrap(), b"survives");
}

#[test]
fn release_is_complete_and_idempotent() {
    if !is_root() {
        return;
    }
    let t = TestPool::btrfs();
    let root = t.pool().root().to_owned();
    let image = t.image();
    let data_dir = t.data_dir.path().to_owned();
    drop(t);
    assert!(mounts_at(&root).is_empty());
    // The data dir is gone with the guard; releasing again is still fine.
    release_pool(&data_dir).unwrap();
    assert!(!image.exists());

    let t = TestPool::btrfs();
    let image = t.image();
    let root = t.pool().root().to_owned();
    // Releasing while the handle is still open (busy) detaches lazily.
    release_pool(t.data_dir.path()).unwrap();
    release_pool(t.data_dir.path()).unwrap();
    assert!(mounts_at(&root).is_empty());
    drop(t);
    assert!(loops_of(&image).is_empty());
}

#[test]
fn pools_in_parallel() {
    if !is_root() {
        return;
    }
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let t = TestPool::btrfs();
                let pool = t.pool();
                let vol = t.path(&format!("sandboxes/p{i}"));
                pool.create_volume(&vol).unwrap();
                std::fs::write(vol.join("id"), i.to_string()).unwrap();
                for n in 0..10 {
                    pool.snapshot(&vol, &t.path(&format!("checkpoints/p{i}/v{n}")), true)
                        .unwrap();
                }
                assert_eq!(
                    std::fs::read_to_string(t.path(&format!("checkpoints/p{i}/v9/id"))).unwrap(),
                    i.to_string()
                );
                let root = pool.root().to_owned();
                (t, root)
            })
        })
        .collect();
    let pools: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let images: Vec<_> = pools.iter().map(|(t, _)| loops_of(&t.image())).collect();
    for (i, a) in images.iter().enumerate() {
        assert_eq!(a.len(), 1);
        for b in &images[i + 1..] {
            assert_ne!(a, b, "two pools share a loop device");
        }
    }
    for (t, root) in pools {
        drop(t);
        assert!(mounts_at(&root).is_empty());
    }
}

#[test]
fn paths_outside_the_pool_are_refused() {
    if !is_root() {
        return;
    }
    let t = TestPool::btrfs();
    let pool = t.pool();
    let outside = tempfile::tempdir_in("/var/tmp").unwrap();
    let vol = t.path("sandboxes/v");
    pool.create_volume(&vol).unwrap();
    // A sandbox plants a symlink to the host inside its own tree.
    std::os::unix::fs::symlink(outside.path(), vol.join("escape")).unwrap();
    std::os::unix::fs::symlink("/", t.path("sandboxes/root-link")).unwrap();

    let bad = [
        t.path("sandboxes/../../etc-copy"),
        t.path("../x"),
        pool.root().to_owned(),
        vol.join("escape/new"),
        t.path("sandboxes/root-link/tmp/x"),
        std::path::PathBuf::from("/var/tmp/not-in-pool"),
        std::path::PathBuf::from("sandboxes/relative"),
    ];
    for p in &bad {
        let outside_err = |r: Result<(), StorageError>| matches!(r, Err(StorageError::OutsidePool(_)));
        assert!(outside_err(pool.create_volume(p)), "create {p:?}");
        assert!(outside_err(pool.snapshot(&vol, p, false)), "snapshot to {p:?}");
        assert!(outside_err(pool.delete_volume(p)), "delete {p:?}");
        assert!(outside_err(pool.set_readonly(p, true)), "set_readonly {p:?}");
        assert!(!pool.is_volume(p));
    }
    assert!(matches!(
        pool.snapshot(&t.path("sandboxes/root-link"), &t.path("x"), false),
        Err(StorageError::OutsidePool(_))
    ));
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
}

#[test]
fn full_pool_reports_no_space() {
    if !is_root() {
        return;
    }
    let t = TestPool::new(PoolKind::Btrfs, 300 * MIB);
    let pool = t.pool();
    let small = t.path("sandboxes/small");
    pool.create_volume(&small).unwrap();
    std::fs::write(small.join("f"), b"small").unwrap();
    let vol = t.path("sandboxes/big");
    pool.create_volume(&vol).unwrap();

    // Write until btrfs says no; the write must fail with ENOSPC, which the crate maps to
    // NoSpace wherever it meets it.
    let path = vol.join("fill");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; MIB as usize];
    let mut written = 0u64;
    let err = loop {
        if let Err(e) = file.write_all(&chunk) {
            break e;
        }
        written += MIB;
        assert!(written <= 400 * MIB, "a 300 MiB pool took {written} bytes");
    };
    drop(file);
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    eprintln!("pool full after {} MiB", written / MIB);

    // Metadata has its own reserve, so btrfs normally still creates subvolumes and snapshots
    // on a data-full pool; either way the outcome is success or NoSpace with nothing left
    // half-made.
    let after = t.path("sandboxes/after");
    let snap = t.path("checkpoints/small/v1");
    for (op, r, dst) in [
        ("create", pool.create_volume(&after), &after),
        ("snapshot", pool.snapshot(&small, &snap, true), &snap),
    ] {
        eprintln!("{op} on a full pool: {r:?}");
        match r {
            Ok(()) => assert!(pool.is_volume(dst)),
            Err(StorageError::NoSpace(_)) => assert!(!dst.exists()),
            Err(e) => panic!("{op} on a full pool: unexpected {e}"),
        }
    }

    // Space comes back once the data goes (freed at the next commit, which syncfs forces).
    // Nothing else references the fill file; a deleted *subvolume* would only give its space
    // back after the background cleaner ran.
    // Under load btrfs can hand the freed extents back a commit later than the first syncfs:
    // poll (bounded) until the write goes through.
    std::fs::remove_file(&path).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        nix::unistd::syncfs(std::fs::File::open(pool.root()).unwrap()).unwrap();
        match std::fs::write(vol.join("again"), vec![1u8; 16 * MIB as usize]) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("space did not come back after the fill file was deleted: {e}"),
        }
    }
}

fn has_flags(options: &str) -> (bool, bool) {
    let has = |f: &str| options.split(',').any(|o| o == f);
    (has("nosuid"), has("nodev"))
}

/// `(mode & 0o7777, uid, gid)`.
fn stat(p: &std::path::Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn pool_files_are_closed_to_host_users_even_for_old_pools() {
    if !is_root() {
        return;
    }
    let mut t = TestPool::btrfs();
    let root = t.pool().root().to_owned();
    let image = t.image();
    let lock = image.with_file_name("pool.lock");
    // A new pool: the image and lock are root's only, the mount nosuid,nodev, the root 0700.
    assert_eq!(stat(&image), (0o600, 0, 0));
    assert_eq!(stat(&lock), (0o600, 0, 0));
    assert_eq!(has_flags(&mount_options(&root).unwrap()), (true, true));
    assert_eq!(stat(&root), (0o700, 0, 0));

    // As an earlier version left it: a world-readable image, a plain mount, an open root.
    t.close();
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::mount::mount(
        None::<&str>,
        &root,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .unwrap();
    // Control: the probes see the old state.
    let old = mount_options(&root).unwrap();
    assert_eq!(has_flags(&old), (false, false), "{old}");
    assert_eq!(stat(&image).0, 0o644);

    // Opening it brings it into line, keeping the mount's other flags; with a sandbox gid
    // the root is traversable by that group only.
    t.reopen_with(&PoolOptions {
        kind: PoolKind::Btrfs,
        loop_size_bytes: 1024 * MIB,
        sandbox_gid: Some(2_000_000),
    });
    assert_eq!(stat(&image), (0o600, 0, 0));
    assert_eq!(stat(&lock), (0o600, 0, 0));
    let new = mount_options(&root).unwrap();
    assert_eq!(has_flags(&new), (true, true), "{new}");
    assert!(new.split(',').any(|o| o == "noatime"), "{new}");
    assert_eq!(mounts_at(&root).len(), 1, "remounted, not stacked");
    assert_eq!(stat(&root), (0o710, 0, 2_000_000));
}

/// Writes 1 MiB chunks (each synced) into a new file of `vol` until `max` MiB or an error.
fn fill(vol: &std::path::Path, name: &str, max: u64) -> (u64, Option<std::io::Error>) {
    let mut file = std::fs::File::create(vol.join(name)).unwrap();
    let chunk = vec![0x5au8; MIB as usize];
    for i in 0..max {
        if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_data()) {
            return (i, Some(e));
        }
    }
    (max, None)
}

/// A snapshot made with a limit is limited from its first write: past the limit writes fail
/// with EDQUOT. The control: the same writes into an unlimited snapshot of the same source
/// succeed.
#[test]
fn a_limited_snapshot_refuses_writes_past_its_limit() {
    if !is_root() {
        return;
    }
    let t = TestPool::btrfs();
    let pool = t.pool();
    let vol = t.path("sandboxes/src");
    pool.create_volume(&vol).unwrap();
    std::fs::write(vol.join("kept"), b"shared with the snapshots").unwrap();
    let limited = t.path("sandboxes/limited");
    assert!(
        pool.snapshot_limited(&vol, &limited, 8 * MIB).unwrap(),
        "btrfs enforces the limit"
    );
    assert_eq!(
        std::fs::read(limited.join("kept")).unwrap(),
        b"shared with the snapshots"
    );
    let (written, err) = fill(&limited, "fill", 64);
    let err = err.unwrap_or_else(|| panic!("64 MiB went into a snapshot limited to 8 MiB"));
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    assert!((1..=8).contains(&written), "{written} MiB before the limit");

    let free = t.path("sandboxes/free");
    pool.snapshot(&vol, &free, false).unwrap();
    let (written, err) = fill(&free, "fill", 16);
    assert!(err.is_none() && written == 16, "{err:?} after {written} MiB");
}

/// A read-only snapshot's size read from its btree is what the walk finds: every file's and
/// symlink's st_size (a sparse file's too), an inode with two links once, directories and
/// empty files nothing. The control: the live volume, walked, says the same, and a file
/// written after the snapshot counts in the volume, not in the snapshot. A snapshot of a
/// volume with a nested subvolume (walked) comes out the same way.
#[test]
fn a_snapshots_size_is_what_a_walk_of_it_finds() {
    if !is_root() {
        return;
    }
    let t = TestPool::btrfs();
    let pool = t.pool();
    let vol = t.path("sandboxes/s");
    pool.create_volume(&vol).unwrap();
    std::fs::create_dir_all(vol.join("a/b")).unwrap();
    std::fs::write(vol.join("a/b/ten"), [7u8; 10]).unwrap();
    std::fs::write(vol.join("big"), vec![1u8; 3 * MIB as usize]).unwrap();
    std::fs::hard_link(vol.join("big"), vol.join("a/big-again")).unwrap();
    std::os::unix::fs::symlink("a/b/ten", vol.join("link")).unwrap();
    std::fs::write(vol.join("empty"), b"").unwrap();
    let sparse = std::fs::File::create(vol.join("sparse")).unwrap();
    sparse.set_len(1 << 30).unwrap();
    drop(sparse);
    for i in 0..2000 {
        std::fs::write(vol.join(format!("a/many-{i}")), b"xy").unwrap();
    }
    let expected = 10 + 3 * MIB + "a/b/ten".len() as u64 + (1 << 30) + 2 * 2000;
    assert_eq!(pool.volume_size(&vol).unwrap(), expected, "the walk");

    let snap = t.path("checkpoints/s/v1");
    pool.snapshot(&vol, &snap, true).unwrap();
    std::fs::write(vol.join("after"), [0u8; 100]).unwrap();
    assert_eq!(pool.snapshot_size(&snap).unwrap(), expected);
    assert_eq!(pool.volume_size(&vol).unwrap(), expected + 100);

    pool.create_volume(&vol.join("inner")).unwrap();
    std::fs::write(vol.join("inner/f"), [0u8; 5]).unwrap();
    let snap2 = t.path("checkpoints/s/v2");
    pool.snapshot(&vol, &snap2, true).unwrap();
    assert_eq!(
        pool.snapshot_size(&snap2).unwrap(),
        expected + 100,
        "a nested subvolume is an empty directory in a snapshot"
    );
}
