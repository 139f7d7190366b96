//! The fake internet of the network tests: a namespace with a veth to the host, a DNS
//! server and HTTP/HTTPS echo servers with a test CA (`fake_internet.py`), and one daemon that
//! may only forward to 198.18.0.0/15 and resolves through the fake DNS only. Names can serve
//! files or git repositories instead of the echo ([`Serve`]). Shared by the test binaries that
//! need it (`#[path]` module); each uses what it needs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use burrow_api::CreateSandbox;
use burrow_testkit::Daemon;
use burrow_testkit::burrow_client::Client;
use serde_json::Value;

/// A namespace with a veth to the host: 198.18.N.1 on the host side (N from 32 to 231), the
/// servers on 198.18.N.2 (DNS) and one address per name from 198.18.N.10.
pub struct FakeInternet {
    pub ns: String,
    host_if: String,
    pub net: u8,
    names: Vec<String>,
    child: Child,
    log: PathBuf,
    pub ca_pem: PathBuf,
    _dir: tempfile::TempDir,
    /// Last, so that the network is only given back once the namespace is gone.
    _claim: burrow_testkit::Claim,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a name serves instead of the echo.
pub enum Serve {
    /// The files under a directory (`index.html`/`index.json` for a directory).
    Static { name: &'static str, root: PathBuf },
    /// Git smart HTTP over the bare repositories in `root`; a push needs `Authorization` to be
    /// one of `auth`.
    Git {
        name: &'static str,
        root: PathBuf,
        auth: Vec<String>,
    },
}

impl FakeInternet {
    pub fn start(names: &[&str]) -> FakeInternet {
        FakeInternet::start_serving(names, &[])
    }

    pub fn start_serving(names: &[&str], serve: &[Serve]) -> FakeInternet {
        // Test processes run side by side: the network is claimed, not derived from the pid,
        // in 198.18.32-231 (burrow-net's tests take 198.18.0-31), and one that the host already
        // has an address in is passed over.
        let in_use = burrow_testkit::host_ipv4_addrs();
        let claim = burrow_testkit::claim("fake-internets", 200, |n| {
            let prefix = format!("198.18.{}.", n + 32);
            !in_use.iter().any(|a| a.starts_with(&prefix))
        });
        let net = claim.number as u8 + 32;
        let ns = format!("bwt-inet-{net}");
        let host_if = format!("bwti{net}");
        // Whatever a killed test process left on this network would clash.
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
        for s in serve {
            match s {
                Serve::Static { name, root } => {
                    cmd.arg("--static").arg(format!("{name}={}", root.display()));
                }
                Serve::Git { name, root, auth } => {
                    cmd.arg("--git").arg(format!("{name}={}", root.display()));
                    for a in auth {
                        cmd.arg("--git-auth").arg(a);
                    }
                }
            }
        }
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
            names: names.iter().map(|s| s.to_string()).collect(),
            child,
            log,
            ca_pem,
            _dir: dir,
            _claim: claim,
        }
    }

    pub fn addr(&self, name: &str) -> Ipv4Addr {
        let i = self.names.iter().position(|n| n == name).expect("known name");
        Ipv4Addr::new(198, 18, self.net, 10 + i as u8)
    }

    pub fn dns(&self) -> String {
        format!("198.18.{}.2:53", self.net)
    }

    /// Every request the servers received (a line still being written, by a server answering
    /// another test, is left for the next call).
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
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

/// Removes the shared fake internet's namespace (and with it both ends of its veth) when the
/// test process exits: statics are never dropped.
extern "C" fn remove_world_namespace() {
    if let Some(ns) = WORLD_NS.get() {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

static WORLD_NS: OnceLock<String> = OnceLock::new();

/// One fake internet serving `names` and one daemon resolving through it, for every test of
/// this binary (the first call's names win).
pub fn world(names: &'static [&'static str]) -> &'static (FakeInternet, Daemon) {
    world_serving(names, Vec::new)
}

/// [`world`], with some names serving what `serve` returns (called once, before the servers
/// start).
pub fn world_serving(
    names: &'static [&'static str],
    serve: impl FnOnce() -> Vec<Serve>,
) -> &'static (FakeInternet, Daemon) {
    static WORLD: OnceLock<&'static (FakeInternet, Daemon)> = OnceLock::new();
    WORLD.get_or_init(|| {
        let serve = serve();
        let (tx, rx) = std::sync::mpsc::channel();
        // Spawned from a thread that lives as long as the process (the daemon gets SIGTERM
        // when it ends, like `shared()`).
        std::thread::spawn(move || {
            let inet = FakeInternet::start_serving(names, &serve);
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

/// Creates sandbox `name` on the engine `BURROW_TEST_ENGINE` names (default: the
/// daemon's), so a whole suite can be run against VMs by hand.
pub async fn create(c: &Client, name: &str) {
    let engine = std::env::var("BURROW_TEST_ENGINE").ok().map(|e| {
        serde_json::from_value(serde_json::Value::String(e)).expect("BURROW_TEST_ENGINE: container or vm")
    });
    create_on(c, name, engine).await
}

/// Creates sandbox `name` on `engine` (None: the daemon's default).
pub async fn create_on(c: &Client, name: &str, engine: Option<burrow_api::EngineKind>) {
    let req = CreateSandbox {
        engine,
        ..burrow_testkit::fixtures::create_req(name)
    };
    burrow_testkit::fixtures::create_with(c, &req).await;
}

/// The Debian repository `scripts/setup.sh` builds (real .debs: the workload tools, the dev
/// image's packages, and their dependencies, indexed for apt).
pub const DEB_REPO: &str = "/var/cache/burrow/debian-repo";

/// What the fake internet's registries serve, built once per test process: the Debian
/// repository (a link to the cached one) under `deb/`, and `support/registries.py`'s PEP 503
/// index (`pypi/`), npm registry (`npm/`) and bare git repository (`git/`).
pub fn registries() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("deb")).unwrap();
        std::os::unix::fs::symlink(DEB_REPO, dir.path().join("deb/debian")).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/registries.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(dir.path())
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "registries.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

/// A secret for the credential proxy (injected as `header: format` for `hosts`), attached to
/// `sandbox` under `env`.
pub async fn attach_secret(
    c: &Client,
    sandbox: &str,
    secret: &str,
    value: &str,
    (header, format): (&str, &str),
    hosts: &[&str],
    env: &str,
) {
    use burrow_testkit::burrow_client::Method;
    let _: Value = c
        .request_json(
            Method::POST,
            "/v1/secrets",
            Some(&serde_json::json!({"name": secret, "value": value,
                                     "inject": {"header": header, "format": format},
                                     "hosts": hosts})),
        )
        .await
        .unwrap();
    let _: Value = c
        .request_json(
            Method::PUT,
            &format!("/v1/sandboxes/{sandbox}/secrets/{secret}"),
            Some(&serde_json::json!({"env": env})),
        )
        .await
        .unwrap();
}
