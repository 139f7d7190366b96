//! Shared fixtures for the pool tests: a data dir per test on a non-btrfs filesystem (so the
//! loop-backed path is exercised), released on drop even when the test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burrow_storage::{Pool, PoolKind, PoolOptions, open_pool, release_pool};

pub const MIB: u64 = 1024 * 1024;

/// These tests mount filesystems and chown files; without root they cannot run at all.
pub fn is_root() -> bool {
    burrow_testkit::prerequisite(
        nix::unistd::geteuid().is_root(),
        "needs root (mounts, loop devices, chown)",
    )
}

/// A data dir with an open pool. Dropping it drops the pool, then unmounts and detaches the
/// loop device, then removes the directory.
pub struct TestPool {
    pool: Option<Box<dyn Pool>>,
    pub data_dir: tempfile::TempDir,
}

impl TestPool {
    pub fn new(kind: PoolKind, size: u64) -> Self {
        let data_dir = tempfile::Builder::new()
            .prefix("burrow-storage-test-")
            .tempdir_in("/var/tmp")
            .expect("create data dir");
        // The guard exists before the pool is opened, so a half-made mount is still released.
        let mut guard = TestPool { pool: None, data_dir };
        guard.reopen(kind, size);
        guard
    }

    pub fn btrfs() -> Self {
        Self::new(PoolKind::Btrfs, 1024 * MIB)
    }

    /// Opens the pool of the same data dir again, dropping the previous handle without
    /// releasing anything (what a daemon crash leaves behind).
    pub fn reopen(&mut self, kind: PoolKind, size: u64) {
        self.pool = None;
        let opts = PoolOptions {
            kind,
            loop_size_bytes: size,
            sandbox_gid: None,
        };
        self.pool = Some(open_pool(self.data_dir.path(), &opts).expect("open pool"));
    }

    /// Like [`TestPool::reopen`] with any options (e.g. a sandbox gid).
    pub fn reopen_with(&mut self, opts: &PoolOptions) {
        self.pool = None;
        self.pool = Some(open_pool(self.data_dir.path(), opts).expect("open pool"));
    }

    /// Drops the pool handle (and its open root directory) without releasing anything.
    pub fn close(&mut self) {
        self.pool = None;
    }

    pub fn pool(&self) -> &dyn Pool {
        self.pool.as_deref().expect("pool is open")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.pool().root().join(rel)
    }

    pub fn image(&self) -> PathBuf {
        std::fs::canonicalize(self.data_dir.path())
            .unwrap()
            .join("pool.img")
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        self.pool = None;
        if let Err(e) = release_pool(self.data_dir.path()) {
            eprintln!("release_pool({}) failed: {e}", self.data_dir.path().display());
        }
    }
}

/// Mount entries whose mount point is exactly `path`.
pub fn mounts_at(path: &Path) -> Vec<String> {
    let target = path.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(target))
        .map(str::to_owned)
        .collect()
}

/// Per-mount options (`rw,nosuid,relatime`) of the topmost mount exactly at `path`.
pub fn mount_options(path: &Path) -> Option<String> {
    mounts_at(path)
        .last()
        .and_then(|l| l.split(' ').nth(5).map(str::to_owned))
}

/// Loop devices backed by `image`.
pub fn loops_of(image: &Path) -> Vec<String> {
    let out = std::process::Command::new("losetup")
        .args(["--noheadings", "--output", "NAME", "--associated"])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}
