//! The Files API end to end against a real daemon and real sandboxes: streaming, listing,
//! archives, error statuses, and above all that no path, symlink, tar entry or race ever
//! reaches the host's filesystem.

use std::path::Path;
use std::time::Instant;

use burrow_api::{CreateSandbox, ExecRequest, FileKind, SandboxName};
use burrow_testkit::burrow_client::{ByteStream, Client, ClientError, WriteFileOptions};
use burrow_testkit::fixtures::{create_unique, sh_ok};
use burrow_testkit::{shared, unique_name};
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

/// One sandbox shared by the tests of this binary.
async fn sandbox() -> (Client, String) {
    static NAME: OnceCell<String> = OnceCell::const_new();
    let c = shared().client();
    let name = NAME.get_or_init(|| create_unique(&c, "files")).await.clone();
    (c, name)
}

fn status(e: &ClientError) -> u16 {
    e.status().unwrap_or_else(|| panic!("not an API error: {e}"))
}

/// `len` bytes of a fixed pseudo-random block, each MiB stamped with its index (so no two
/// chunks are alike), as a stream of 1 MiB chunks.
fn generated(len: usize) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let block: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    futures::stream::iter((0..len.div_ceil(1 << 20)).map(move |i| {
        let mut chunk = block.clone();
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
        chunk.truncate((len - i * (1 << 20)).min(1 << 20));
        Ok(Bytes::from(chunk))
    }))
}

async fn sha_of_stream(mut s: impl futures::Stream<Item = std::io::Result<Bytes>> + Unpin) -> (String, u64) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        n += c.len() as u64;
        h.update(&c);
    }
    (hex(&h.finalize()), n)
}

async fn sha_of_download(mut s: ByteStream) -> (String, u64) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    while let Some(c) = s.next().await {
        let c = c.expect("download broke off");
        n += c.len() as u64;
        h.update(&c);
    }
    (hex(&h.finalize()), n)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mib_s(bytes: u64, since: Instant) -> f64 {
    bytes as f64 / (1 << 20) as f64 / since.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn large_file_round_trip_is_streamed() {
    let (c, name) = sandbox().await;
    const LEN: usize = 200 << 20;
    let (expected, n) = sha_of_stream(Box::pin(generated(LEN))).await;
    assert_eq!(n, LEN as u64);

    let t = Instant::now();
    c.write_file(
        &name,
        "/root/big.bin",
        WriteFileOptions::default(),
        generated(LEN),
    )
    .await
    .unwrap();
    eprintln!("upload 200 MiB: {:.0} MiB/s", mib_s(LEN as u64, t));
    let inside = sh_ok(
        &c,
        &name,
        "sha256sum /root/big.bin; stat -c '%s %a %u' /root/big.bin",
    )
    .await;
    assert!(inside.starts_with(&expected), "{inside}");
    assert!(inside.ends_with(&format!("{LEN} 644 0\n")), "{inside}");

    let t = Instant::now();
    let (got, n) = sha_of_download(c.read_file(&name, "/root/big.bin").await.unwrap()).await;
    eprintln!("download 200 MiB: {:.0} MiB/s", mib_s(n, t));
    assert_eq!((got, n), (expected, LEN as u64));
    c.remove_file(&name, "/root/big.bin", false).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_list_mkdir_rename_delete() {
    let (c, name) = sandbox().await;
    let all: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let opts = WriteFileOptions {
        mode: Some(0o640),
        mkdir: true,
    };
    c.write_file_bytes(&name, "/srv/t1/deep/bin.dat", opts, all.clone())
        .await
        .unwrap();
    assert_eq!(
        c.read_file_bytes(&name, "/srv/t1/deep/bin.dat").await.unwrap(),
        all
    );
    c.write_file_bytes(&name, "/srv/t1/empty", WriteFileOptions::default(), Vec::new())
        .await
        .unwrap();
    sh_ok(&c, &name, "ln -s deep/bin.dat /srv/t1/link").await;

    let list = c.list_files(&name, "/srv/t1").await.unwrap();
    let got: Vec<_> = list.entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(
        got,
        [
            ("deep", FileKind::Dir),
            ("empty", FileKind::File),
            ("link", FileKind::Symlink)
        ]
    );
    let deep = c.list_files(&name, "/srv/t1/deep").await.unwrap();
    assert_eq!(deep.entries.len(), 1);
    let e = &deep.entries[0];
    assert_eq!((e.name.as_str(), e.size, e.mode), ("bin.dat", 70_000, 0o640));
    assert!(e.mtime.ends_with('Z') && e.mtime.starts_with("20"), "{}", e.mtime);
    // Reading through a symlink reads its target.
    assert_eq!(c.read_file_bytes(&name, "/srv/t1/link").await.unwrap(), all);

    c.rename_file(&name, "/srv/t1/deep", "/srv/t1/moved")
        .await
        .unwrap();
    assert_eq!(
        c.read_file_bytes(&name, "/srv/t1/moved/bin.dat").await.unwrap(),
        all
    );
    let e = c.remove_file(&name, "/srv/t1", false).await.unwrap_err();
    assert_eq!(status(&e), 409, "{e}");
    c.remove_file(&name, "/srv/t1", true).await.unwrap();
    let e = c.list_files(&name, "/srv/t1").await.unwrap_err();
    assert_eq!(status(&e), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_have_fitting_statuses() {
    let (c, name) = sandbox().await;
    let code = |e: ClientError| (status(&e), e.code().unwrap_or_default().to_owned());
    let e = c.read_file_bytes(&name, "/no/such/file").await.unwrap_err();
    assert_eq!(code(e), (404, "file_not_found".into()));
    for bad in ["relative/path", "", "/a\0b"] {
        let e = c.read_file_bytes(&name, bad).await.unwrap_err();
        assert_eq!(status(&e), 400, "{bad:?}: {e}");
    }
    let long = format!("/{}", "a".repeat(5000));
    assert_eq!(status(&c.read_file_bytes(&name, &long).await.unwrap_err()), 400);
    let e = c.read_file_bytes(&name, "/etc").await.unwrap_err();
    assert_eq!(status(&e), 409, "{e}");
    let e = c.list_files(&name, "/etc/hostname").await.unwrap_err();
    assert_eq!(status(&e), 409, "{e}");
    let e = c
        .write_file_bytes(&name, "/no/such/dir/f", WriteFileOptions::default(), "x")
        .await
        .unwrap_err();
    assert_eq!(status(&e), 404, "{e}");
    let e = c
        .write_file_bytes(&name, "/etc", WriteFileOptions::default(), "x")
        .await
        .unwrap_err();
    assert_eq!(status(&e), 409, "{e}");
    let e = c.remove_file(&name, "/", true).await.unwrap_err();
    assert_eq!(status(&e), 400, "{e}");
    let e = c.rename_file(&name, "/nope-a", "/nope-b").await.unwrap_err();
    assert_eq!(status(&e), 404, "{e}");
    let e = c
        .read_file_bytes("no-such-sandbox-f", "/etc/hostname")
        .await
        .unwrap_err();
    assert_eq!(code(e), (404, "not_found".into()));

    // Raw requests: a missing path, a bad mode, a JSON-ish body is just bytes.
    let r = c
        .request_bytes(
            burrow_testkit::burrow_client::Method::GET,
            &format!("/v1/sandboxes/{name}/files"),
            None,
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(status(&r), 400);
    let r = c
        .request_bytes(
            burrow_testkit::burrow_client::Method::PUT,
            &format!("/v1/sandboxes/{name}/files?path=/tmp/m&mode=999"),
            None,
            Bytes::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(status(&r), 400);
    c.request_bytes(
        burrow_testkit::burrow_client::Method::PUT,
        &format!("/v1/sandboxes/{name}/files?path=/tmp/j.json&mode=0600"),
        Some("application/json"),
        Bytes::from_static(b"{not json"),
    )
    .await
    .unwrap();
    assert_eq!(
        c.read_file_bytes(&name, "/tmp/j.json").await.unwrap(),
        b"{not json"
    );
    assert_eq!(sh_ok(&c, &name, "stat -c %a /tmp/j.json").await, "600\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn sleeping_sandbox_is_woken() {
    let c = shared().client();
    let name = create_unique(&c, "files-sleep").await;
    c.sandbox_action(&name, "sleep").await.unwrap();
    assert_eq!(
        c.read_file_bytes(&name, "/etc/hostname").await.unwrap(),
        format!("{name}\n").as_bytes()
    );
    assert_eq!(
        c.get_sandbox(&name).await.unwrap().status,
        burrow_api::SandboxStatus::Running
    );
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_is_507_and_leaves_nothing() {
    let (c, name) = sandbox().await;
    // /dev/shm is a 64 MiB tmpfs in every container sandbox.
    let e = c
        .write_file(
            &name,
            "/dev/shm/too-big",
            WriteFileOptions::default(),
            generated(100 << 20),
        )
        .await
        .unwrap_err();
    assert_eq!(status(&e), 507, "{e}");
    assert!(e.to_string().contains("out of disk space"), "{e}");
    let left = c.list_files(&name, "/dev/shm").await.unwrap();
    assert!(left.entries.is_empty(), "{:?}", left.entries);

    // An archive whose second file does not fit: the first stays (extracted whole), the one
    // cut short is removed rather than left truncated.
    let tar = tar_of(|b| {
        add_file(b, "d/small", b"whole", 0o644);
        add_file(b, "d/big", &vec![7u8; 100 << 20], 0o644);
    });
    let e = c
        .write_archive(&name, "/dev/shm", futures::stream::iter([Ok(Bytes::from(tar))]))
        .await
        .unwrap_err();
    assert_eq!(status(&e), 507, "{e}");
    let left = c.list_files(&name, "/dev/shm/d").await.unwrap();
    let names: Vec<_> = left.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["small"], "the truncated file stayed");
    c.remove_file(&name, "/dev/shm/d", true).await.unwrap();
}

/// An upload into a sandbox already at its disk limit: the server refuses it at once (the
/// file cannot even be created), before reading the body, and the client still gets that 507
/// and its message, not "Broken pipe" from writing the rest of the body into a closed
/// connection. For a file and an archive. Control: the same uploads succeed once there is room.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_into_a_full_disk_gets_the_507_not_a_broken_pipe() {
    let c = shared().client();
    let name = unique_name("full");
    let req = CreateSandbox {
        name: SandboxName::parse(&name).unwrap(),
        disk_gb: Some(1),
        ..Default::default()
    };
    c.create_sandbox(&req).await.unwrap();
    let fill = ExecRequest {
        cmd: vec![
            "sh".into(),
            "-c".into(),
            "head -c 1100M /dev/zero > /root/fill; sync; touch /root/probe".into(),
        ],
        ..Default::default()
    };
    let out = c.exec(&name, &fill).await.unwrap();
    assert!(
        out.stderr.contains("Disk quota exceeded"),
        "the disk is full: {out:?}"
    );
    // `info` shows what the limit counts.
    let usage = c.get_sandbox(&name).await.unwrap().usage.expect("usage");
    let charged = usage.disk_bytes.expect("disk_bytes on a btrfs pool");
    assert!(charged > 1000 << 20 && charged <= 1 << 30, "{charged}");
    let big = 700 << 20;
    let e = c
        .write_file(&name, "/root/more", WriteFileOptions::default(), generated(big))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(507), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("out of disk space")
            && msg.contains("its disk limit is 1 GiB")
            && !msg.contains("checkpoint"),
        "{msg}"
    );
    let tar = tar_of(|b| add_file(b, "d/more", &vec![7u8; 300 << 20], 0o644));
    let chunks = move || {
        let v: Vec<std::io::Result<Bytes>> = tar
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(v)
    };
    let e = c.write_archive(&name, "/root", chunks()).await.unwrap_err();
    assert_eq!(e.status(), Some(507), "{e}");
    assert!(e.to_string().contains("out of disk space"), "{e}");

    // Removing the file frees nothing while a checkpoint holds its data, and the 507 says so.
    let cp: serde_json::Value = c
        .request_json(
            burrow_testkit::burrow_client::Method::POST,
            &format!("/v1/sandboxes/{name}/checkpoints"),
            Some(&serde_json::json!({})),
        )
        .await
        .unwrap();
    let cp_id = cp["id"].as_str().unwrap().to_owned();
    c.remove_file(&name, "/root/fill", false).await.unwrap();
    let e = c
        .write_file(&name, "/root/more", WriteFileOptions::default(), generated(big))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(507), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("it has 1 checkpoint,") && msg.contains(&format!("burrow rm-checkpoint {name} vN")),
        "{msg}"
    );

    // Control: the checkpoint deleted, there is room again, and the same uploads succeed.
    c.request_bytes(
        burrow_testkit::burrow_client::Method::DELETE,
        &format!("/v1/sandboxes/{name}/checkpoints/{cp_id}"),
        None,
        Bytes::new(),
    )
    .await
    .unwrap();
    // btrfs frees a deleted snapshot's data in the background: bounded wait until the charge
    // is gone.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let usage = c.get_sandbox(&name).await.unwrap().usage.unwrap();
        if usage.disk_bytes.unwrap() < 100 << 20 {
            break;
        }
        assert!(Instant::now() < deadline, "still charged: {usage:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    c.write_file(&name, "/root/more", WriteFileOptions::default(), generated(big))
        .await
        .unwrap();
    c.write_archive(&name, "/root", chunks()).await.unwrap();
    c.delete_sandbox(&name).await.unwrap();
}

fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

fn add_symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, path, target).unwrap();
}

/// A tar entry with a raw name (the tar crate's setters refuse `..`).
fn add_raw(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, link: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    {
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn once(data: Vec<u8>) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::iter([Ok(Bytes::from(data))])
}

async fn download(s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    futures::pin_mut!(s);
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn archives_in_and_out() {
    let (c, name) = sandbox().await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let tar = tar_of(|b| {
        add_file(b, "proj/README", b"hello\n", 0o644);
        add_file(b, "proj/src/deep/x.bin", &big, 0o600);
        add_file(b, "proj/run.sh", b"#!/bin/sh\necho ran\n", 0o755);
        add_symlink(b, "proj/latest", "src/deep/x.bin");
    });
    c.write_archive(&name, "/srv/arch", once(tar)).await.unwrap();
    let out = sh_ok(
        &c,
        &name,
        "cd /srv/arch/proj && readlink latest && stat -c '%a %u' run.sh src/deep/x.bin && ./run.sh",
    )
    .await;
    assert_eq!(out, "src/deep/x.bin\n755 0\n600 0\nran\n");
    assert_eq!(
        c.read_file_bytes(&name, "/srv/arch/proj/latest").await.unwrap(),
        big
    );

    let tar = download(c.read_archive(&name, "/srv/arch/proj").await.unwrap()).await;
    let mut ar = tar::Archive::new(&tar[..]);
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        if path == "proj/src/deep/x.bin" {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            assert_eq!(data, big);
        }
        if path == "proj/latest" {
            assert_eq!(e.header().entry_type(), tar::EntryType::Symlink);
            assert_eq!(e.link_name().unwrap().unwrap(), Path::new("src/deep/x.bin"));
        }
        seen.push(path);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "proj",
            "proj/README",
            "proj/latest",
            "proj/run.sh",
            "proj/src",
            "proj/src/deep",
            "proj/src/deep/x.bin"
        ]
    );
    let e = c.read_archive(&name, "/srv/none").await.err().unwrap();
    assert_eq!(status(&e), 404);
}

/// Fails if a file named `marker` exists anywhere the host might have been written to.
fn assert_not_on_host(marker: &str) {
    for dir in ["/tmp", "/", "/etc", "/var/tmp", "/root"] {
        let p = Path::new(dir).join(marker);
        assert!(
            std::fs::symlink_metadata(&p).is_err(),
            "{} appeared on the host",
            p.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_and_dotdot_resolve_inside_the_sandbox() {
    let c = shared().client();
    let name = create_unique(&c, "files-esc").await;
    let marker = format!("burrow-marker-{}", unique_name("m"));
    sh_ok(&c, &name, &format!("echo {marker} > /etc/shadow")).await;
    sh_ok(
        &c,
        &name,
        "ln -s /etc/shadow /tmp/l1 && ln -s /../../../../../../etc/shadow /tmp/l2 && \
         ln -s /../../.. /tmp/up && ln -s ../../../../../../../../ /tmp/rel",
    )
    .await;
    let host_shadow = std::fs::read("/etc/shadow").unwrap_or_default();
    let want = format!("{marker}\n").into_bytes();
    for p in [
        "/tmp/l1",
        "/tmp/l2",
        "/tmp/up/etc/shadow",
        "/tmp/rel/etc/shadow",
        "/../../../../etc/shadow",
        "/tmp/../../../../../etc/./shadow",
        "/proc/1/root/etc/shadow",
        "/proc/self/root/etc/shadow",
    ] {
        let got = c
            .read_file_bytes(&name, p)
            .await
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(got, want, "{p} did not resolve to the sandbox's /etc/shadow");
        assert_ne!(got, host_shadow);
    }
    // Listing through an escaping link lists the sandbox's root.
    let root = c.list_files(&name, "/tmp/up").await.unwrap();
    assert!(root.entries.iter().any(|e| e.name == "etc"));

    // Writes through escaping links and `..` land inside the sandbox.
    sh_ok(&c, &name, &format!("ln -s /../../../../tmp/{marker}-w1 /tmp/wl")).await;
    let opts = WriteFileOptions::default();
    c.write_file_bytes(&name, "/tmp/wl", opts, "w1").await.unwrap();
    c.write_file_bytes(&name, &format!("/tmp/rel/tmp/{marker}-w2"), opts, "w2")
        .await
        .unwrap();
    c.write_file_bytes(&name, &format!("/../../../../../{marker}-w3"), opts, "w3")
        .await
        .unwrap();
    c.write_file_bytes(&name, &format!("/proc/1/root/tmp/{marker}-w4"), opts, "w4")
        .await
        .unwrap();
    let inside = sh_ok(
        &c,
        &name,
        &format!("cat /tmp/{marker}-w1 /tmp/{marker}-w2 /{marker}-w3 /tmp/{marker}-w4"),
    )
    .await;
    assert_eq!(inside, "w1w2w3w4");
    for suffix in ["-w1", "-w2", "-w3", "-w4"] {
        assert_not_on_host(&format!("{marker}{suffix}"));
    }
    // Renames and removals cannot reach the host either.
    let e = c
        .rename_file(
            &name,
            &format!("/tmp/{marker}-w1"),
            &format!("/tmp/rel/../../../../tmp/{marker}-r"),
        )
        .await;
    assert!(e.is_ok(), "{e:?}");
    assert_not_on_host(&format!("{marker}-r"));
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_archives_are_refused_or_confined() {
    let (c, name) = sandbox().await;
    let marker = format!("burrow-tar-{}", unique_name("m"));
    use tar::EntryType as T;

    // `..` entries: refused.
    let t = tar_of(|b| {
        add_raw(
            b,
            T::Regular,
            &format!("../../../../../../tmp/{marker}"),
            "",
            b"evil",
        )
    });
    let e = c.write_archive(&name, "/srv/hostile", once(t)).await.unwrap_err();
    assert_eq!(status(&e), 400, "{e}");

    // Absolute names: confined under the target.
    let t = tar_of(|b| add_raw(b, T::Regular, &format!("/tmp/{marker}-abs"), "", b"abs"));
    c.write_archive(&name, "/srv/hostile", once(t)).await.unwrap();
    assert_eq!(
        c.read_file_bytes(&name, &format!("/srv/hostile/tmp/{marker}-abs"))
            .await
            .unwrap(),
        b"abs"
    );

    // A symlink, then a write through it: refused.
    let t = tar_of(|b| {
        add_raw(b, T::Symlink, "esc", "/../../../../../tmp", b"");
        add_raw(b, T::Regular, &format!("esc/{marker}-sym"), "", b"evil");
    });
    let e = c
        .write_archive(&name, "/srv/hostile2", once(t))
        .await
        .unwrap_err();
    assert_eq!(status(&e), 400, "{e}");
    let e = c
        .read_file_bytes(&name, &format!("/tmp/{marker}-sym"))
        .await
        .unwrap_err();
    assert_eq!(status(&e), 404, "the write went through the link: {e}");

    // Extracting into a directory that is itself an escaping symlink stays in the sandbox.
    sh_ok(&c, &name, "ln -sfn /../../../../../../tmp /srv/linkdir").await;
    let t = tar_of(|b| add_file(b, &format!("{marker}-via-dir"), b"ok", 0o644));
    c.write_archive(&name, "/srv/linkdir", once(t)).await.unwrap();
    assert_eq!(
        c.read_file_bytes(&name, &format!("/tmp/{marker}-via-dir"))
            .await
            .unwrap(),
        b"ok"
    );

    for suffix in ["", "-abs", "-sym", "-via-dir"] {
        assert_not_on_host(&format!("{marker}{suffix}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn swapping_a_directory_for_a_symlink_during_uploads_never_escapes() {
    let (c, name) = sandbox().await;
    let marker = format!("burrow-race-{}", unique_name("m"));
    sh_ok(&c, &name, "mkdir -p /srv/race/d").await;
    // Inside the sandbox: flip /srv/race/d between a directory and a link that would point
    // at the host's /tmp if anything resolved it on the host.
    let flipper = {
        let c = c.clone();
        let name = name.clone();
        tokio::spawn(async move {
            sh_ok(
                &c,
                &name,
                "i=0; while [ $i -lt 400 ]; do \
                   rm -rf /srv/race/d; ln -s /../../../../../../tmp /srv/race/d; \
                   rm -f /srv/race/d; mkdir /srv/race/d; i=$((i+1)); done",
            )
            .await
        })
    };
    const N: usize = 40;
    let mut ok = 0;
    for i in 0..N {
        let path = format!("/srv/race/d/{marker}-{i}");
        let r = c
            .write_file(&name, &path, WriteFileOptions::default(), generated(256 << 10))
            .await;
        ok += usize::from(r.is_ok());
        let t = tar_of(|b| add_file(b, &format!("{marker}-t{i}"), b"x", 0o644));
        let _ = c.write_archive(&name, "/srv/race/d", once(t)).await;
    }
    flipper.await.unwrap();
    eprintln!("{ok}/{N} racing uploads succeeded");
    for i in 0..N {
        assert_not_on_host(&format!("{marker}-{i}"));
        assert_not_on_host(&format!("{marker}-t{i}"));
    }
}
