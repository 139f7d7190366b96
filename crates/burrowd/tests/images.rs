//! Images end to end: Burrowfile builds (cached layers, failures leave nothing), OCI
//! archive import with digest verification, and pulls from a real registry (Debian's
//! `docker-registry`, pushed to with `skopeo`) on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use burrow_api::{CreateSandbox, ExecRequest, SandboxName};
use burrow_testkit::burrow_client::{Client, Method};
use burrow_testkit::{raw_unix, shared, unique_name};
use sha2::{Digest, Sha256};

fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

async fn sh(c: &Client, name: &str, script: &str) -> burrow_api::ExecResult {
    c.exec(
        name,
        &ExecRequest {
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("exec {script}: {e}"))
}

async fn create_from(c: &Client, image: &str) -> String {
    let name = unique_name("img");
    let req = CreateSandbox {
        name: SandboxName::parse(&name).unwrap(),
        image: Some(image.to_owned()),
        ..Default::default()
    };
    c.create_sandbox(&req)
        .await
        .unwrap_or_else(|e| panic!("create from {image}: {e}"));
    name
}

fn sandbox_volumes(data: &Path) -> usize {
    std::fs::read_dir(data.join("pool/sandboxes"))
        .map(|r| r.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn burrowfile_build_caches_layers_and_failures_leave_nothing() {
    let d = shared();
    let c = d.client();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("app.txt"), "hello from the context\n").unwrap();
    std::fs::create_dir(ctx.path().join("dir")).unwrap();
    std::fs::write(ctx.path().join("dir/nested.txt"), "nested\n").unwrap();
    std::fs::write(
        ctx.path().join("Burrowfile"),
        "# a test image\nFROM base\nENV GREETING=hi\nWORKDIR /app\nCOPY app.txt /app/\nCOPY dir /app/dir\nRUN echo built > /app/built && \\\n    echo out-$((6*7))\n",
    )
    .unwrap();
    let image = unique_name("built");
    let path = format!("/v1/images/build?name={image}");
    let r = raw_unix(
        &d.socket,
        "POST",
        &path,
        &[
            ("content-type", "application/x-tar"),
            ("accept", "application/x-ndjson"),
        ],
        tar_dir(ctx.path()),
    )
    .await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("out-42"), "{text}");
    assert!(text.lines().last().unwrap().contains("\"complete\""), "{text}");
    let sb = create_from(&c, &image).await;
    let out = sh(&c, &sb, "pwd; echo $GREETING; cat app.txt dir/nested.txt built").await;
    assert_eq!(out.stdout, "/app\nhi\nhello from the context\nnested\nbuilt\n");
    // Files the agent wrote belong to the sandbox's root, not to some host uid.
    assert_eq!(sh(&c, &sb, "stat -c %u /app/app.txt").await.stdout, "0\n");

    // A rebuild reuses every layer.
    let image2 = unique_name("built");
    let r = raw_unix(
        &d.socket,
        "POST",
        &format!("/v1/images/build?name={image2}"),
        &[
            ("content-type", "application/x-tar"),
            ("accept", "application/x-ndjson"),
        ],
        tar_dir(ctx.path()),
    )
    .await;
    let text = String::from_utf8(r.body).unwrap();
    assert_eq!(text.matches("using cached layer").count(), 3, "{text}");
    assert!(!text.contains("out-42"), "a cached step ran again: {text}");

    // A failing step: 422 with the step's output; no image, no build sandbox left.
    let before = sandbox_volumes(&d.data_dir);
    std::fs::write(
        ctx.path().join("Burrowfile"),
        "FROM base\nRUN echo about-to-fail; exit 3\n",
    )
    .unwrap();
    let bad = unique_name("broken");
    let r = raw_unix(
        &d.socket,
        "POST",
        &format!("/v1/images/build?name={bad}"),
        &[("content-type", "application/x-tar")],
        tar_dir(ctx.path()),
    )
    .await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let msg = r.error_message();
    assert!(
        msg.contains("line 2") && msg.contains("about-to-fail") && msg.contains("exit code 3"),
        "{msg}"
    );
    let images: serde_json::Value = c.get_json("/v1/images").await.unwrap();
    assert!(!images.to_string().contains(&bad));
    assert_eq!(
        sandbox_volumes(&d.data_dir),
        before,
        "the failed build left a sandbox volume"
    );
    let list = c.list_sandboxes(Some("build-"), &[], None, None).await.unwrap();
    assert!(list.sandboxes.is_empty());

    // Bad Burrowfiles name the line; a missing COPY source is named.
    for (text, needle) in [
        ("FROM base\nFROB x\n", "line 2"),
        ("FROM base\nCOPY nope /x\n", "'nope' is not in the build context"),
        ("FROM no-such-image\n", "no-such-image"),
    ] {
        std::fs::write(ctx.path().join("Burrowfile"), text).unwrap();
        let r = raw_unix(
            &d.socket,
            "POST",
            &format!("/v1/images/build?name={bad}"),
            &[("content-type", "application/x-tar")],
            tar_dir(ctx.path()),
        )
        .await;
        assert!(r.status == 422 || r.status == 404, "{text}: {}", r.status);
        assert!(
            r.error_message().contains(needle),
            "{text}: {}",
            r.error_message()
        );
    }
    // No content type: 415.
    let r = raw_unix(
        &d.socket,
        "POST",
        &format!("/v1/images/build?name={bad}"),
        &[],
        tar_dir(ctx.path()),
    )
    .await;
    assert_eq!(r.status, 415);
    c.delete_sandbox(&sb).await.unwrap();
}

// ----- OCI ----------------------------------------------------------------------------

fn sha(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes an OCI image layout with one layer: a static busybox as /bin/sh, a file and an
/// env var. Returns (layout dir, layer digest).
fn header(size: usize, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn oci_layout(dir: &Path) -> String {
    let mut layer = tar::Builder::new(Vec::new());
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (scripts/setup.sh installs it)");
    let mut h = header(busybox.len(), 0o755);
    h.set_cksum();
    layer
        .append_data(&mut h, "bin/busybox", busybox.as_slice())
        .unwrap();
    for link in ["sh", "cat", "echo", "pwd", "stat", "ls"] {
        let mut h = header(0, 0o777);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_cksum();
        layer
            .append_link(&mut h, format!("bin/{link}"), "busybox")
            .unwrap();
    }
    let hello = b"hello from an OCI image\n";
    let mut h = header(hello.len(), 0o644);
    h.set_cksum();
    layer.append_data(&mut h, "hello.txt", &hello[..]).unwrap();
    let layer = layer.into_inner().unwrap();
    let layer_digest = sha(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "FOO=bar"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for b in [&layer, &config, &manifest] {
        std::fs::write(blobs.join(sha(b)), b).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "1"}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    layer_digest
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_archive_import_verifies_digests() {
    let d = shared();
    let c = d.client();
    let dir = tempfile::tempdir().unwrap();
    let layer_digest = oci_layout(dir.path());
    let name = unique_name("oci");
    let r = raw_unix(
        &d.socket,
        "POST",
        &format!("/v1/images/import?name={name}"),
        &[("content-type", "application/x-tar")],
        tar_dir(dir.path()),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let sb = create_from(&c, &name).await;
    let out = sh(&c, &sb, "cat /hello.txt; echo $FOO").await;
    assert_eq!(out.stdout, "hello from an OCI image\nbar\n");
    c.delete_sandbox(&sb).await.unwrap();

    // A flipped byte in the layer: refused, naming the blob; no image.
    let blob = dir.path().join("blobs/sha256").join(&layer_digest);
    let mut data = std::fs::read(&blob).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();
    let bad = unique_name("oci-bad");
    let r = raw_unix(
        &d.socket,
        "POST",
        &format!("/v1/images/import?name={bad}"),
        &[("content-type", "application/x-tar")],
        tar_dir(dir.path()),
    )
    .await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.error_message().contains(&layer_digest[..12]),
        "{}",
        r.error_message()
    );
    // Truncated.
    std::fs::write(&blob, &data[..mid]).unwrap();
    let r = raw_unix(
        &d.socket,
        "POST",
        &format!("/v1/images/import?name={bad}"),
        &[("content-type", "application/x-tar")],
        tar_dir(dir.path()),
    )
    .await;
    assert_eq!(r.status, 422);
    let images: serde_json::Value = c.get_json("/v1/images").await.unwrap();
    assert!(!images.to_string().contains(&bad));
    assert!(
        std::fs::read_dir(d.data_dir.join("pool/images"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains(&bad))
    );
}

struct Registry(Child, PathBuf);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_registry() -> (Registry, u16) {
    let port = free_port();
    let dir = tempfile::Builder::new()
        .prefix("burrow-registry-")
        .tempdir()
        .unwrap()
        .keep();
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n", dir.join("data").display()),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (scripts/setup.sh installs it)");
    let reg = Registry(child, dir);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "registry did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (reg, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_from_a_real_registry() {
    let d = shared();
    let c = d.client();
    let dir = tempfile::tempdir().unwrap();
    oci_layout(dir.path());
    let (_reg, port) = start_registry();
    let reference = format!("127.0.0.1:{port}/team/tool:1");
    let st = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:1", dir.path().display()))
        .arg(format!("docker://{reference}"))
        .stdout(Stdio::null())
        .status()
        .expect("skopeo (scripts/setup.sh installs it)");
    assert!(st.success(), "skopeo push failed");
    let name = unique_name("pulled");
    let img: serde_json::Value = c
        .request_json(
            Method::POST,
            "/v1/images/pull",
            Some(&serde_json::json!({"reference": reference, "name": name})),
        )
        .await
        .unwrap();
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    let digest = serde_json::from_slice::<serde_json::Value>(&inspect.stdout).unwrap()["Digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        img["source"].as_str().unwrap().contains(&digest),
        "{img} vs {digest}"
    );
    let sb = create_from(&c, &name).await;
    assert_eq!(
        sh(&c, &sb, "cat /hello.txt").await.stdout,
        "hello from an OCI image\n"
    );
    c.delete_sandbox(&sb).await.unwrap();
    // Unknown tag: a clear error, nothing made.
    let e = c
        .request_json::<serde_json::Value, _>(Method::POST, "/v1/images/pull", Some(&serde_json::json!({"reference": format!("127.0.0.1:{port}/team/tool:nope"), "name": "nope-img"})))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(422), "{e}");
}

/// `images rm` leaves the deleted image's cached build layers behind; `images prune` removes
/// exactly those no existing image was built from, says how many and how big, and the layers
/// of images that remain still serve their rebuilds. Built images report their real size.
#[tokio::test(flavor = "multi_thread")]
async fn images_prune_removes_only_layers_no_image_was_built_from() {
    // A daemon of its own: pruning must not race the other tests' builds.
    let d = burrow_testkit::Daemon::start();
    let c = d.client();
    let layers = || {
        std::fs::read_dir(d.data_dir.join("pool/images/.layers"))
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    };
    let build = |image: String, burrowfile: &'static str| {
        let socket = d.socket.clone();
        async move {
            let ctx = tempfile::tempdir().unwrap();
            std::fs::write(ctx.path().join("Burrowfile"), burrowfile).unwrap();
            let r = raw_unix(
                &socket,
                "POST",
                &format!("/v1/images/build?name={image}"),
                &[
                    ("content-type", "application/x-tar"),
                    ("accept", "application/x-ndjson"),
                ],
                tar_dir(ctx.path()),
            )
            .await;
            let text = String::from_utf8(r.body).unwrap();
            assert!(text.lines().last().unwrap().contains("\"complete\""), "{text}");
            text
        }
    };
    let shared_step = "FROM base\nRUN head -c 3000000 /dev/urandom > /shared\n";
    let (gone, kept) = (unique_name("gone"), unique_name("kept"));
    build(
        gone.clone(),
        "FROM base\nRUN head -c 3000000 /dev/urandom > /shared\nRUN head -c 2000000 /dev/urandom > /own\n",
    )
    .await;
    build(kept.clone(), shared_step).await;
    assert_eq!(layers(), 2, "the shared step is one layer");
    let images = c.list_images().await.unwrap().images;
    let size = images.iter().find(|i| i.name == gone).unwrap().size_bytes;
    assert!(size > 5_000_000, "a built image's real size: {size}");

    // Control: nothing to prune while both images exist.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(burrow_testkit::bin_dir().join("burrow"))
            .args(args)
            .env("BURROW_SOCKET", &d.socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(cli(&["images", "prune"]), "removed 0 cached build layers (0 B)\n");
    cli(&["images", "rm", &gone]);
    assert_eq!(layers(), 2, "images rm leaves its layers in the cache");
    let out = cli(&["images", "prune"]);
    assert!(out.starts_with("removed 1 cached build layer ("), "{out}");
    assert_eq!(layers(), 1);
    let r: burrow_api::PruneResult = c
        .request_json(Method::POST, "/v1/images/prune", None::<&()>)
        .await
        .unwrap();
    assert_eq!(r, burrow_api::PruneResult::default(), "nothing left to prune");
    // The kept image's layer still serves its rebuild.
    let text = build(unique_name("again"), shared_step).await;
    assert!(text.contains("using cached layer"), "{text}");
}
