//! File operations against the real agent binary running on the host (`--listen`).
//!
//! Here the agent is not the init of a sandbox, so "/" is the host's: these tests work in
//! temp dirs and check what the agent itself guarantees (atomic writes, owners and modes,
//! error codes, archives confined to their directory). Confinement to the sandbox's root
//! is tested end to end in burrowd's tests.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use burrow_agent_proto::Connection;
use burrow_agent_proto::v1::{
    FileType, ListDirRequest, ReadArchiveRequest, ReadFileRequest, RemoveRequest, RenameRequest,
    WriteArchiveHeader, WriteArchiveInput, WriteFileHeader, WriteFileInput, write_archive_input,
    write_file_input,
};
use common::*;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// Deterministic, incompressible-looking bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn header(path: &str, mode: Option<u32>, mkdir: bool) -> WriteFileHeader {
    WriteFileHeader {
        path: path.into(),
        mode,
        mkdir,
    }
}

/// Sends `header`, `data` in chunks, and `done` when asked.
async fn write(
    conn: &mut Connection,
    h: WriteFileHeader,
    data: &[u8],
    done: bool,
) -> Result<u64, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    let msg = |k| WriteFileInput { kind: Some(k) };
    let chunks: Vec<Vec<u8>> = data.chunks(1 << 20).map(<[u8]>::to_vec).collect();
    let feeder = tokio::spawn(async move {
        tx.send(msg(write_file_input::Kind::Header(h))).await.ok()?;
        for c in chunks {
            tx.send(msg(write_file_input::Kind::Data(c))).await.ok()?;
        }
        if done {
            tx.send(msg(write_file_input::Kind::Done(true))).await.ok()?;
        }
        Some(())
    });
    let r = conn.client.write_file(ReceiverStream::new(rx)).await;
    let _ = feeder.await;
    r.map(|r| r.into_inner().size)
}

async fn read(conn: &mut Connection, path: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = conn
        .client
        .read_file(ReadFileRequest { path: path.into() })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = stream.message().await? {
        assert!(c.data.len() <= 1 << 20);
        out.extend_from_slice(&c.data);
    }
    Ok(out)
}

async fn read_archive(conn: &mut Connection, path: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = conn
        .client
        .read_archive(ReadArchiveRequest { path: path.into() })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = stream.message().await? {
        out.extend_from_slice(&c.data);
    }
    Ok(out)
}

async fn write_archive(conn: &mut Connection, dir: &str, tar: Vec<u8>) -> Result<u64, tonic::Status> {
    let msg = |k| WriteArchiveInput { kind: Some(k) };
    let mut msgs = vec![msg(write_archive_input::Kind::Header(WriteArchiveHeader {
        path: dir.into(),
        mkdir: true,
    }))];
    msgs.extend(
        tar.chunks(64 * 1024)
            .map(|c| msg(write_archive_input::Kind::Data(c.to_vec()))),
    );
    msgs.push(msg(write_archive_input::Kind::Done(true)));
    let r = conn.client.write_archive(tokio_stream::iter(msgs)).await;
    r.map(|r| r.into_inner().entries)
}

fn no_temp_files(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".burrow-"))
        .collect();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");
}

#[tokio::test]
async fn large_binary_round_trip() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let dir = tempfile::tempdir().unwrap();
    let path = s(&dir.path().join("big.bin"));
    let data = pattern(48 << 20, 7);
    assert_eq!(
        write(&mut conn, header(&path, None, false), &data, true)
            .await
            .unwrap(),
        data.len() as u64
    );
    let back = read(&mut conn, &path).await.unwrap();
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o644
    );
    // Empty files and NUL/high bytes.
    let empty = s(&dir.path().join("empty"));
    write(&mut conn, header(&empty, None, false), b"", true)
        .await
        .unwrap();
    assert_eq!(read(&mut conn, &empty).await.unwrap(), b"");
    write(&mut conn, header(&empty, None, false), b"\0\xff\xfe\n", true)
        .await
        .unwrap();
    assert_eq!(read(&mut conn, &empty).await.unwrap(), b"\0\xff\xfe\n");
    no_temp_files(dir.path());
}

#[tokio::test]
async fn write_semantics() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // mkdir creates parents; without it a missing parent is NotFound.
    let deep = s(&d.join("a/b/c.txt"));
    let e = write(&mut conn, header(&deep, None, false), b"x", true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    write(&mut conn, header(&deep, Some(0o600), true), b"x", true)
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&deep).unwrap().mode() & 0o7777, 0o600);
    assert!(d.join("a/b").is_dir());

    // An existing file keeps its owner and mode unless a mode is given.
    let f = d.join("kept");
    std::fs::write(&f, b"old").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o751)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&f, Some(1234), Some(4321)).unwrap();
    }
    write(&mut conn, header(&s(&f), None, false), b"new", true)
        .await
        .unwrap();
    let m = std::fs::metadata(&f).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, std::fs::read(&f).unwrap()),
        (0o751, b"new".to_vec())
    );
    if is_root() {
        assert_eq!((m.uid(), m.gid()), (1234, 4321));
    }
    write(&mut conn, header(&s(&f), Some(0o640), false), b"new2", true)
        .await
        .unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);

    // A final symlink is followed: the link stays, its target changes.
    std::os::unix::fs::symlink("kept", d.join("link")).unwrap();
    write(
        &mut conn,
        header(&s(&d.join("link")), None, false),
        b"via link",
        true,
    )
    .await
    .unwrap();
    assert!(
        std::fs::symlink_metadata(d.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&f).unwrap(), b"via link");

    // Wrong targets and bad paths.
    let e = write(&mut conn, header(&s(d), None, false), b"x", true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    for bad in ["relative/x", "", "/a\0b"] {
        let e = write(&mut conn, header(bad, None, false), b"x", true)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
    }
    let e = write(
        &mut conn,
        header(&s(&d.join("m")), Some(0o17777), false),
        b"x",
        true,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // An upload that ends without `done` changes nothing and leaves nothing behind.
    let e = write(
        &mut conn,
        header(&s(&f), None, false),
        &pattern(3 << 20, 1),
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::Aborted, "{e:?}");
    assert_eq!(std::fs::read(&f).unwrap(), b"via link");
    assert!(!d.join("never").exists());
    no_temp_files(d);
}

#[tokio::test]
async fn read_errors() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let dir = tempfile::tempdir().unwrap();
    let e = read(&mut conn, &s(&dir.path().join("nope"))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = read(&mut conn, &s(dir.path())).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("is a directory"), "{}", e.message());
    let e = read(&mut conn, "etc/passwd").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A FIFO is refused instead of blocking the agent.
    nix::unistd::mkfifo(
        &dir.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let e = read(&mut conn, &s(&dir.path().join("fifo"))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn list_remove_rename() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("sub/deeper")).unwrap();
    std::fs::write(d.join("sub/deeper/f"), b"1").unwrap();
    std::fs::write(d.join("b.txt"), b"hello").unwrap();
    std::os::unix::fs::symlink("/nonexistent", d.join("dangling")).unwrap();

    let mut stream = conn
        .client
        .list_dir(ListDirRequest { path: s(d) })
        .await
        .unwrap()
        .into_inner();
    let mut entries = Vec::new();
    while let Some(b) = stream.message().await.unwrap() {
        entries.extend(b.entries);
    }
    let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.r#type())).collect();
    assert_eq!(
        names,
        [
            ("b.txt", FileType::File),
            ("dangling", FileType::Symlink),
            ("sub", FileType::Dir)
        ]
    );
    assert_eq!(entries[0].size, 5);
    assert!(entries[0].mtime > 1_600_000_000);

    let e = conn
        .client
        .list_dir(ListDirRequest {
            path: s(&d.join("b.txt")),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = conn
        .client
        .list_dir(ListDirRequest {
            path: s(&d.join("zz")),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let rename = |from: &Path, to: &Path| RenameRequest {
        from: s(from),
        to: s(to),
    };
    conn.client
        .rename(rename(&d.join("b.txt"), &d.join("sub/c.txt")))
        .await
        .unwrap();
    assert_eq!(std::fs::read(d.join("sub/c.txt")).unwrap(), b"hello");
    let e = conn
        .client
        .rename(rename(&d.join("b.txt"), &d.join("x")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let rm = |p: &Path, recursive| RemoveRequest {
        path: s(p),
        recursive,
    };
    let e = conn.client.remove(rm(&d.join("sub"), false)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // A symlink is removed, not followed.
    conn.client.remove(rm(&d.join("dangling"), false)).await.unwrap();
    assert!(std::fs::symlink_metadata(d.join("dangling")).is_err());
    conn.client.remove(rm(&d.join("sub"), true)).await.unwrap();
    assert!(!d.join("sub").exists());
    let e = conn.client.remove(rm(Path::new("/"), true)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn archives_round_trip() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::fs::write(tree.join("a/b/nested.bin"), pattern(300_000, 3)).unwrap();
    std::fs::write(tree.join("top.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(tree.join("top.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("a/b/nested.bin", tree.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", tree.join("abs-link")).unwrap();

    let tar = read_archive(&mut conn, &s(&tree)).await.unwrap();
    let mut names: Vec<String> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_end_matches('/')
                .to_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "tree",
            "tree/a",
            "tree/a/b",
            "tree/a/b/nested.bin",
            "tree/abs-link",
            "tree/link",
            "tree/top.sh"
        ]
    );

    let dst = tempfile::tempdir().unwrap();
    let into = dst.path().join("new/dir");
    assert_eq!(write_archive(&mut conn, &s(&into), tar).await.unwrap(), 7);
    let out = into.join("tree");
    assert_eq!(
        std::fs::read(out.join("a/b/nested.bin")).unwrap(),
        pattern(300_000, 3)
    );
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        Path::new("a/b/nested.bin")
    );
    assert_eq!(
        std::fs::read_link(out.join("abs-link")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert_eq!(
        std::fs::metadata(out.join("top.sh")).unwrap().mode() & 0o7777,
        0o755
    );

    // A single file archives as one entry named after it.
    let tar = read_archive(&mut conn, &s(&tree.join("top.sh"))).await.unwrap();
    let entries: Vec<_> = tar::Archive::new(&tar[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().into_owned())
        .collect();
    assert_eq!(entries, [Path::new("top.sh")]);
    let e = read_archive(&mut conn, &s(&tree.join("none"))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// Builds a tar with raw entry names (the tar crate's safe setters refuse `..`).
fn evil_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        {
            let raw = h.as_old_mut();
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test]
async fn archives_cannot_escape_their_directory() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let base = tempfile::tempdir().unwrap();
    let target = base.path().join("x/y/target");
    std::fs::create_dir_all(&target).unwrap();
    let marker = format!("burrow-evil-{}", std::process::id());
    let outside = base.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    use tar::EntryType as T;

    // `..` in a name: refused.
    let t = evil_tar(&[(&format!("../../{marker}"), T::Regular, "", b"pwned")]);
    let e = write_archive(&mut conn, &s(&target), t).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(!base.path().join("x").join(&marker).exists());

    // An absolute name lands inside the target.
    let abs = format!("{}/{marker}", outside.display());
    let t = evil_tar(&[(&abs, T::Regular, "", b"confined")]);
    write_archive(&mut conn, &s(&target), t).await.unwrap();
    assert!(!outside.join(&marker).exists());
    assert_eq!(
        std::fs::read(target.join(abs.trim_start_matches('/'))).unwrap(),
        b"confined"
    );

    // Symlink first, then a file through it: refused, nothing outside.
    let t = evil_tar(&[
        ("esc", T::Symlink, &s(&outside), b""),
        (&format!("esc/{marker}"), T::Regular, "", b"pwned"),
    ]);
    let e = write_archive(&mut conn, &s(&target), t).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(!outside.join(&marker).exists());
    let t = evil_tar(&[
        ("rel", T::Symlink, "../../..", b""),
        (&format!("rel/{marker}"), T::Regular, "", b"pwned"),
    ]);
    assert!(write_archive(&mut conn, &s(&target), t).await.is_err());
    assert!(!base.path().join(&marker).exists());

    // A symlink then a regular file of the same name replaces the link, never writes
    // through it.
    std::fs::write(outside.join("victim"), b"safe").unwrap();
    let t = evil_tar(&[
        ("v", T::Symlink, &s(&outside.join("victim")), b""),
        ("v", T::Regular, "", b"pwned"),
    ]);
    write_archive(&mut conn, &s(&target), t).await.unwrap();
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"safe");

    // Hard links out of the directory: refused.
    let t = evil_tar(&[("h", T::Link, &s(&outside.join("victim")), b"")]);
    assert!(write_archive(&mut conn, &s(&target), t).await.is_err());
    let t = evil_tar(&[("h2", T::Link, "../../../outside/victim", b"")]);
    assert!(write_archive(&mut conn, &s(&target), t).await.is_err());
    assert_eq!(std::fs::metadata(outside.join("victim")).unwrap().nlink(), 1);

    // Not a tar at all.
    let e = write_archive(&mut conn, &s(&target), vec![7u8; 4096])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
}

#[tokio::test]
async fn disk_full_leaves_no_partial_file() {
    burrow_testkit::require!(is_root(), "needs root to mount a small tmpfs");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mnt)
        .status()
        .is_ok_and(|s| s.success());
    burrow_testkit::require!(ok, "cannot mount a tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt);
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let f = mnt.join("f");
    std::fs::write(&f, b"before").unwrap();
    let e = write(&mut conn, header(&s(&f), None, false), &pattern(4 << 20, 2), true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(std::fs::read(&f).unwrap(), b"before");
    no_temp_files(mnt);
}
