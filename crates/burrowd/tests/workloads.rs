//! Real work inside a sandbox just works: what ordinary tools send passes the proxy
//! unchanged. The fake internet (a DNS server and HTTP/HTTPS echo servers in a namespace this
//! test makes, as in `network.rs`, whose harness this copies) is all it reaches: the daemon
//! may only forward to 198.18.0.0/15 and resolves through the fake DNS only.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use burrow_api::{CreateSandbox, ExecRequest, SandboxName};
use burrow_testkit::burrow_client::{Client, Method};
use burrow_testkit::{Daemon, unique_name};
use serde_json::{Value, json};

/// A namespace with a veth to the host: 198.18.N.1 on the host side, the servers on
/// 198.18.N.2 (DNS) and one address per name from 198.18.N.10.
struct FakeInternet {
    ns: String,
    host_if: String,
    net: u8,
    child: Child,
    log: PathBuf,
    ca_pem: PathBuf,
    _dir: tempfile::TempDir,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl FakeInternet {
    fn start(names: &[&str]) -> FakeInternet {
        let net = (std::process::id() % 200) as u8 + 20;
        let ns = format!("bwt-inet-{net}");
        let host_if = format!("bwti{net}");
        // A namespace left by an earlier run of this binary with the same pid would clash.
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("198.18.{net}.1/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("198.18.{net}.2/24"),
            "dev",
            "eth0",
        ]);
        for i in 0..names.len() {
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("198.18.{net}.{}/24", 10 + i),
                "dev",
                "eth0",
            ]);
        }
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("198.18.{net}.1"),
        ]);

        let dir = tempfile::tempdir().unwrap();
        // A test CA and one certificate for every name.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fake internet test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();
        let log = dir.path().join("requests.log");
        std::fs::write(&log, "").unwrap();

        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fake_internet.py");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, "python3", script, "--cert"])
            .arg(dir.path().join("cert.pem"))
            .arg("--key")
            .arg(dir.path().join("key.pem"))
            .arg("--log")
            .arg(&log);
        for (i, n) in names.iter().enumerate() {
            cmd.arg(format!("{n}=198.18.{net}.{}", 10 + i));
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("fake internet");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "READY", "fake internet did not start");
        FakeInternet {
            ns,
            host_if,
            net,
            child,
            log,
            ca_pem,
            _dir: dir,
        }
    }

    fn dns(&self) -> String {
        format!("198.18.{}.2:53", self.net)
    }

    /// Every request the echo servers received.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for FakeInternet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

const NAMES: &[&str] = &["api.github.test", "deb.test"];

/// Removes the shared fake internet's namespace (and with it both ends of its veth) when the
/// test process exits: statics are never dropped.
extern "C" fn remove_world_namespace() {
    if let Some(ns) = WORLD_NS.get() {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

static WORLD_NS: OnceLock<String> = OnceLock::new();

/// One fake internet and one daemon resolving through it, for every test of this binary.
fn world() -> &'static (FakeInternet, Daemon) {
    static WORLD: OnceLock<&'static (FakeInternet, Daemon)> = OnceLock::new();
    WORLD.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        // Spawned from a thread that lives as long as the process (the daemon gets SIGTERM
        // when it ends, like `shared()`).
        std::thread::spawn(move || {
            let inet = FakeInternet::start(NAMES);
            let _ = WORLD_NS.set(inet.ns.clone());
            // SAFETY: registers a plain extern "C" function with no captured state.
            unsafe { libc::atexit(remove_world_namespace) };
            let ca = inet.ca_pem.display().to_string();
            let dns = inet.dns();
            let d = Daemon::start_with(&["--dns-upstream", &dns, "--egress-ca", &ca]);
            let w: &'static (FakeInternet, Daemon) = Box::leak(Box::new((inet, d)));
            tx.send(w).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("test world")
    })
}

async fn create(c: &Client, name: &str) {
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(name).unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn sh(c: &Client, name: &str, script: &str) -> (i32, String, String) {
    let r = c
        .exec(
            name,
            &ExecRequest {
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec in {name}: {e}"));
    (r.exit_code, r.stdout, r.stderr)
}

/// A Debian mirror path: the placeholder prefix `bm1_` inside a package's file name.
const DEB: &str = "/debian/pool/main/m/mesa/libgbm1_22.3.6-1%2bdeb12u2_amd64.deb";

/// `curl` over plain HTTP from a sandbox (through the explicit proxy, or redirected tcp/80
/// when `direct`): prints the status, then the body.
fn curl_http(url: &str, direct: bool, extra: &str) -> String {
    let unset = if direct {
        "env -u HTTP_PROXY -u http_proxy "
    } else {
        ""
    };
    format!(
        "{unset}curl -sS -o /tmp/body -w '%{{http_code}}\\n' --connect-timeout 3 --max-time 10 {extra} '{url}' && cat /tmp/body"
    )
}

/// `apt-get install libgbm1` fetched `…/libgbm1_22.3.6-1%2bdeb12u2_amd64.deb` over plain HTTP
/// and the proxy refused it ("secret placeholders are only replaced over HTTPS") because of the
/// four characters `bm1_`. Now the same fetch reaches the server, from a sandbox without
/// secrets and from one holding a secret; control: the latter's real placeholder in the same
/// request is still refused, and nothing reaches the server.
#[tokio::test]
async fn a_package_whose_name_holds_the_placeholder_prefix_downloads_over_plain_http() {
    let (inet, d) = world();
    let c = d.client();
    let plain = unique_name("wl");
    let holder = unique_name("wls");
    let secret = unique_name("gh");
    create(&c, &plain).await;
    create(&c, &holder).await;
    let _: Value = c
        .request_json(
            Method::POST,
            "/v1/secrets",
            Some(&json!({"name": secret, "value": "ghp_REALsecretVALUE0123456789",
                         "inject": {"header": "Authorization", "format": "token %s"},
                         "hosts": ["api.github.test"]})),
        )
        .await
        .unwrap();
    let _: Value = c
        .request_json(
            Method::PUT,
            &format!("/v1/sandboxes/{holder}/secrets/{secret}"),
            Some(&json!({"env": "GITHUB_TOKEN"})),
        )
        .await
        .unwrap();
    let referer = format!("-H 'Referer: http://deb.test{DEB}'");
    for name in [&plain, &holder] {
        for direct in [false, true] {
            let (code, out, err) = sh(
                &c,
                name,
                &curl_http(&format!("http://deb.test{DEB}"), direct, &referer),
            )
            .await;
            assert_eq!(code, 0, "{name} direct={direct}: {out}{err}");
            let (status, body) = out.split_once('\n').unwrap_or_else(|| panic!("{out}"));
            assert_eq!(status, "200", "{name} direct={direct}: {body}");
            // The echo server's answer: what reached it, unchanged.
            let seen: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
            assert_eq!(seen["path"], DEB);
            assert_eq!(seen["headers"]["referer"], format!("http://deb.test{DEB}"));
        }
    }

    // Control: the holder's real placeholder over plain HTTP is refused, nothing sent.
    let before = inet.requests().len();
    for direct in [false, true] {
        let auth = "-H \"Authorization: token $GITHUB_TOKEN\"";
        let (code, out, err) = sh(
            &c,
            &holder,
            &curl_http(&format!("http://deb.test{DEB}"), direct, auth),
        )
        .await;
        assert_eq!(code, 0, "direct={direct}: {out}{err}");
        assert_eq!(
            out.trim_end(),
            "403\nburrow proxy: secret placeholders are only replaced over HTTPS",
            "direct={direct}"
        );
    }
    assert_eq!(
        inet.requests().len(),
        before,
        "a refused request reached the server"
    );
    for name in [&plain, &holder] {
        c.delete_sandbox(name).await.unwrap();
    }
}
