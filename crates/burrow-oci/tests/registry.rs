//! `pull` against a real registry (Debian's `docker-registry`, filled by `skopeo`) and against an in-process
//! registry that demands bearer tokens, serves a multi-platform index and redirects blobs to another origin.
//! Only loopback addresses are ever contacted.
//!
//! Needs `apt-get install docker-registry skopeo`. Set `BURROW_OCI_SKIP_REGISTRY_TESTS=1` to skip the
//! `docker-registry` test on hosts without them.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_oci::{OciError, Platform, PullOptions, pull};
use common::*;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const SKOPEO_BIN: &str = "/usr/bin/skopeo";

fn pull_opts() -> PullOptions {
    PullOptions {
        platform: Platform::linux_amd64(),
        timeout: Duration::from_secs(20),
        ..PullOptions::default()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the registry when the test ends, however it ends.
struct RegistryProcess {
    child: Child,
    log: PathBuf,
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RegistryProcess {
    fn start(dir: &Path) -> (Self, u16) {
        let port = free_port();
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let log = dir.join("registry.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start docker-registry");
        let mut registry = Self { child, log };
        registry.wait_ready(port);
        (registry, port)
    }

    /// Bounded poll of `GET /v2/` until it answers 200.
    fn wait_ready(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "docker-registry exited with {status}: {}",
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry not ready: {}",
            fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_docker_registry_pushed_by_skopeo() {
    if std::env::var_os("BURROW_OCI_SKIP_REGISTRY_TESTS").is_some() {
        eprintln!("BURROW_OCI_SKIP_REGISTRY_TESTS set: skipping");
        return;
    }
    for bin in [REGISTRY_BIN, SKOPEO_BIN] {
        assert!(
            Path::new(bin).exists(),
            "{bin} missing: apt-get install -y docker-registry skopeo (or set BURROW_OCI_SKIP_REGISTRY_TESTS=1)"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let image = build_image();
    let layout = tmp.path().join("layout");
    write_oci_layout(&layout, &image);
    let (_registry, port) = RegistryProcess::start(tmp.path());
    let target = format!("127.0.0.1:{port}/team/tool:1");

    // skopeo keeps its state under $HOME; give it a private one.
    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();
    let skopeo = || {
        let mut c = Command::new(SKOPEO_BIN);
        c.env("HOME", &home)
            .env_remove("http_proxy")
            .env_remove("https_proxy");
        c
    };
    run(skopeo()
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{TAG}", layout.display()))
        .arg(format!("docker://{target}")));
    let inspect = run(skopeo()
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{target}")));
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    let skopeo_digest = inspect["Digest"].as_str().unwrap().to_owned();

    let out = tmp.path().join("out");
    fs::create_dir(&out).unwrap();
    let mut lines = Vec::new();
    let config = pull(&target, &out.join("root"), &pull_opts(), &mut |l: &str| {
        lines.push(l.to_owned())
    })
    .await
    .unwrap();
    assert_tree(&out.join("root"));
    assert_config(&config, &image);
    assert_eq!(config.digest.as_deref(), Some(skopeo_digest.as_str()));
    assert_eq!(config.manifest_digest.as_deref(), Some(skopeo_digest.as_str()));
    // skopeo may recompress layers on push, so count progress lines rather than match our blob digests.
    let downloads = lines.iter().filter(|l| l.ends_with("downloading")).count();
    assert_eq!(downloads, image.layers.len(), "{lines:?}");
    assert_only(&out, &["root"]);

    // By digest too.
    let by_digest = format!("127.0.0.1:{port}/team/tool@{skopeo_digest}");
    let again = pull(&by_digest, &out.join("again"), &pull_opts(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(again.digest, config.digest);

    // Unknown tag: a registry error, nothing left behind.
    let err = pull(
        &format!("127.0.0.1:{port}/team/tool:nope"),
        &out.join("nope"),
        &pull_opts(),
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OciError::Registry { status: 404, .. }), "{err}");
    assert_only(&out, &["again", "root"]);
}

// ---- In-process registry with bearer auth, a multi-platform index and cross-origin blob redirects ----

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(Full::new(Bytes::from(body))).unwrap()
}

async fn serve(
    listener: tokio::net::TcpListener,
    handler: Arc<dyn Fn(Request<Incoming>) -> Reply + Send + Sync>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, std::convert::Infallible>(handler(req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

struct MockRegistry {
    port: u16,
    index_digest: String,
    /// Requests seen, as "METHOD path auth?".
    log: Arc<Mutex<Vec<String>>>,
}

async fn start_mock(image: &TestImage, corrupt_layer: Option<usize>) -> MockRegistry {
    let registry = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let storage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = registry.local_addr().unwrap().port();
    let storage_port = storage.local_addr().unwrap().port();

    // An index with an arm64 decoy first, then our amd64 manifest.
    let decoy = format!("sha256:{}", "d".repeat(64));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": decoy, "size": 10,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": image.manifest_digest(),
             "size": image.manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}}
        ]
    }))
    .unwrap();
    let index_digest = sha256(&index);
    let mut blobs: HashMap<String, Vec<u8>> = image.blobs().into_iter().collect();
    if let Some(i) = corrupt_layer {
        let blob = blobs.get_mut(&image.layers[i].digest()).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
    }
    let blobs = Arc::new(blobs);
    let manifest = image.manifest.clone();
    let log = Arc::new(Mutex::new(Vec::new()));

    let registry_log = log.clone();
    let registry_blobs = blobs.clone();
    let (index_body, index_d) = (index.clone(), index_digest.clone());
    let handler = move |req: Request<Incoming>| -> Reply {
        let path = req.uri().path().to_owned();
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        registry_log
            .lock()
            .unwrap()
            .push(format!("registry {path} {auth}"));
        if path == "/token" {
            // basic auth "burrow:s3cret"
            if auth != "Basic YnVycm93OnMzY3JldA==" {
                return reply(StatusCode::UNAUTHORIZED, &[], b"{}".to_vec());
            }
            let q = req.uri().query().unwrap_or_default();
            assert!(
                q.contains("service=mock") && q.contains("scope=repository%3Ateam%2Ftool%3Apull"),
                "{q}"
            );
            return reply(StatusCode::OK, &[], br#"{"token":"t0k3n"}"#.to_vec());
        }
        if auth != "Bearer t0k3n" {
            let challenge = format!(
                r#"Bearer realm="http://127.0.0.1:{port}/token",service="mock",scope="repository:team/tool:pull""#
            );
            return reply(
                StatusCode::UNAUTHORIZED,
                &[("www-authenticate", challenge)],
                b"{}".to_vec(),
            );
        }
        let json = |ct: &str, body: &Vec<u8>| {
            reply(
                StatusCode::OK,
                &[
                    ("content-type", ct.to_owned()),
                    ("docker-content-digest", sha256(body)),
                ],
                body.clone(),
            )
        };
        match path.strip_prefix("/v2/team/tool/") {
            Some("manifests/1") => json("application/vnd.oci.image.index.v1+json", &index_body),
            Some(m) if m == format!("manifests/{index_d}") => {
                json("application/vnd.oci.image.index.v1+json", &index_body)
            }
            Some(m) if m == format!("manifests/{}", sha256(&manifest)) => {
                json("application/vnd.oci.image.manifest.v1+json", &manifest)
            }
            Some(b) if b.starts_with("blobs/") && registry_blobs.contains_key(&b[6..]) => reply(
                StatusCode::TEMPORARY_REDIRECT,
                &[(
                    "location",
                    format!("http://127.0.0.1:{storage_port}/storage/{}?sig=1", &b[6..]),
                )],
                Vec::new(),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                &[],
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#.to_vec(),
            ),
        }
    };
    tokio::spawn(serve(registry, Arc::new(handler)));

    let storage_log = log.clone();
    let storage_handler = move |req: Request<Incoming>| -> Reply {
        let path = req.uri().path().to_owned();
        let has_auth = req.headers().contains_key("authorization");
        storage_log
            .lock()
            .unwrap()
            .push(format!("storage {path} auth={has_auth}"));
        if has_auth {
            return reply(
                StatusCode::FORBIDDEN,
                &[],
                b"credentials leaked to storage".to_vec(),
            );
        }
        match path.strip_prefix("/storage/").and_then(|d| blobs.get(d)) {
            Some(blob) => reply(StatusCode::OK, &[], blob.clone()),
            None => reply(StatusCode::NOT_FOUND, &[], Vec::new()),
        }
    };
    tokio::spawn(serve(storage, Arc::new(storage_handler)));

    MockRegistry {
        port,
        index_digest,
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_with_bearer_token_index_and_redirects() {
    let image = build_image();
    let mock = start_mock(&image, None).await;
    let tmp = tempfile::tempdir().unwrap();
    let reference = format!("127.0.0.1:{}/team/tool:1", mock.port);

    // Without credentials the token service refuses.
    let err = pull(&reference, &tmp.path().join("anon"), &pull_opts(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::Auth { .. }), "{err}");
    assert!(!tmp.path().join("anon").exists());

    let opts = PullOptions {
        username: Some("burrow".into()),
        password: Some("s3cret".into()),
        ..pull_opts()
    };
    let config = pull(&reference, &tmp.path().join("root"), &opts, &mut |_| {})
        .await
        .unwrap();
    assert_tree(&tmp.path().join("root"));
    assert_config(&config, &image);
    assert_eq!(config.digest.as_deref(), Some(mock.index_digest.as_str()));
    assert_eq!(
        config.manifest_digest.as_deref(),
        Some(image.manifest_digest().as_str())
    );
    let log = mock.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|l| l.starts_with("storage ") && l.ends_with("auth=false")),
        "{log:?}"
    );
    assert!(
        !log.iter().any(|l| l.contains(&"d".repeat(64))),
        "fetched the arm64 decoy: {log:?}"
    );

    // arm64 selects the decoy, whose manifest the registry does not have.
    let arm = PullOptions {
        platform: "linux/arm64".parse().unwrap(),
        ..opts.clone()
    };
    let err = pull(&reference, &tmp.path().join("arm"), &arm, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::Registry { status: 404, .. }), "{err}");
    let s390 = PullOptions {
        platform: "linux/s390x".parse().unwrap(),
        ..opts.clone()
    };
    let err = pull(&reference, &tmp.path().join("s390x"), &s390, &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, OciError::NoMatchingPlatform { .. }), "{err}");
    assert_only(tmp.path(), &["root"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_registry_blob_is_refused() {
    let image = build_image();
    let mock = start_mock(&image, Some(1)).await;
    let tmp = tempfile::tempdir().unwrap();
    let opts = PullOptions {
        username: Some("burrow".into()),
        password: Some("s3cret".into()),
        ..pull_opts()
    };
    let reference = format!("127.0.0.1:{}/team/tool:1", mock.port);
    let err = pull(&reference, &tmp.path().join("root"), &opts, &mut |_| {})
        .await
        .unwrap_err();
    let digest = image.layers[1].digest();
    assert!(
        matches!(&err, OciError::DigestMismatch { digest: d, .. } if *d == digest),
        "{err}"
    );
    assert_only(tmp.path(), &[]);
}
