//! Attacks on the daemon-side connectors, from inside real sandboxes: the credential proxy
//! (explicit and transparent) must never connect to an address of the host itself, nor
//! outside `--uplink-only`, whatever the sandbox's mode.
//!
//! The world: a daemon (which the testkit runs with `--uplink-only 198.18.0.0/15`), then a
//! fake internet in a namespace this test makes, on a veth whose host side (198.19.N.1) is
//! thereby one of the host's own addresses, added after the daemon started (so the daemon
//! must notice it). Listeners on the host (`0.0.0.0`, and 198.19.N.1:80/443) count every
//! connection they get. 198.51.100.N lives in the fake internet too, routed from the host
//! (never a real network), but outside the uplink list. Nothing here reaches a real network.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use burrow_testkit::burrow_client::{Client, ClientError, Method};
use burrow_testkit::fixtures::{create, sh_parts};
use burrow_testkit::{Daemon, unique_name};
use serde_json::{Value, json};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace with a veth to the host: 198.19.N.1 on the host side, the fake DNS on
/// 198.19.N.2, HTTP/HTTPS echo servers on every address of the namespace (198.19.N.10 and
/// 198.51.100.N among them).
struct FakeInternet {
    ns: String,
    host_if: String,
    net: u8,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// Last, so that the network is only given back once the namespace is gone.
    _claim: burrow_testkit::Claim,
}

impl FakeInternet {
    /// Claims a network 198.19.N.0/24 (N from 20 to 219) for [`FakeInternet::start`]: claimed,
    /// not derived from the pid, as test processes run side by side.
    fn claim() -> burrow_testkit::Claim {
        let in_use = burrow_testkit::host_ipv4_addrs();
        burrow_testkit::claim("egress-attack-internets", 200, |n| {
            let prefix = format!("198.19.{}.", n + 20);
            !in_use.iter().any(|a| a.starts_with(&prefix))
        })
    }

    /// The network of a claim: N in 198.19.N.0/24.
    fn net_of(claim: &burrow_testkit::Claim) -> u8 {
        claim.number as u8 + 20
    }

    fn start(claim: burrow_testkit::Claim) -> FakeInternet {
        let net = FakeInternet::net_of(&claim);
        let ns = format!("bwt-eatk-{net}");
        let host_if = format!("bwea{net}");
        // Whatever a killed test process left on this network would clash.
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("198.19.{net}.1/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        for a in [format!("198.19.{net}.2/24"), format!("198.19.{net}.10/24")] {
            ip(&["-n", &ns, "addr", "add", &a, "dev", "eth0"]);
        }
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("198.51.100.{net}/32"),
            "dev",
            "lo",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &format!("198.19.{net}.1"),
        ]);
        // The outside-uplink address is routed into the namespace, never to a real uplink
        // (the route goes when the veth does).
        ip(&[
            "route",
            "add",
            &format!("198.51.100.{net}/32"),
            "via",
            &format!("198.19.{net}.2"),
            "dev",
            &host_if,
        ]);

        let dir = tempfile::tempdir().unwrap();
        // The echo servers want a certificate; nothing here checks it.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["site.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let log = dir.path().join("requests.log");
        std::fs::write(&log, "").unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fake_internet.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", script, "--cert"])
            .arg(dir.path().join("cert.pem"))
            .arg("--key")
            .arg(dir.path().join("key.pem"))
            .arg("--log")
            .arg(&log)
            .arg(format!("site.test=198.19.{net}.10"))
            // The trap: a name whose answer is the host's own address.
            .arg(format!("hostlocal.test=198.19.{net}.1"))
            .arg(format!("outside.test=198.51.100.{net}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("fake internet");
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
            _dir: dir,
            _claim: claim,
        }
    }

    /// The host's own address on the veth.
    fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.net, 1)
    }

    fn dns(&self) -> String {
        format!("198.19.{}.2:53", self.net)
    }

    fn site(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, self.net, 10)
    }

    fn outside(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, self.net)
    }

    /// The addresses the echo servers were reached at, one per request, in order.
    fn reached(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["local"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
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

/// A service on the host that counts the connections it gets and answers each with a small
/// HTTP response.
struct HostService {
    port: u16,
    seen: Arc<AtomicUsize>,
}

impl HostService {
    fn start(bind: SocketAddr) -> HostService {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("binding {bind} on the host: {e}"));
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nHOST-LOCAL\n",
                    );
                });
            }
        });
        HostService { port, seen }
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

struct World {
    inet: FakeInternet,
    daemon: Daemon,
    /// On the host's 0.0.0.0, a random port.
    any: HostService,
    /// On the host's veth address, ports 80 and 443 (what the transparent proxy gets).
    http: HostService,
    tls: HostService,
}

static WORLD_NS: OnceLock<String> = OnceLock::new();

extern "C" fn remove_world_namespace() {
    if let Some(ns) = WORLD_NS.get() {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

fn world() -> &'static World {
    static WORLD: OnceLock<&'static World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let claim = FakeInternet::claim();
            let net = FakeInternet::net_of(&claim);
            // The daemon first: the host address the fake internet adds comes after it
            // started, so the daemon must keep its list of host addresses current.
            let daemon = Daemon::start_with(&["--dns-upstream", &format!("198.19.{net}.2:53")]);
            let inet = FakeInternet::start(claim);
            assert_eq!(inet.dns(), format!("198.19.{net}.2:53"));
            let _ = WORLD_NS.set(inet.ns.clone());
            // SAFETY: registers a plain extern "C" function with no captured state.
            unsafe { libc::atexit(remove_world_namespace) };
            let host = inet.host_addr();
            let w = World {
                any: HostService::start(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
                http: HostService::start(SocketAddr::from((host, 80))),
                tls: HostService::start(SocketAddr::from((host, 443))),
                inet,
                daemon,
            };
            let w: &'static World = Box::leak(Box::new(w));
            tx.send(w).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("test world")
    })
}

/// The tests count what the host services and the fake internet got: one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

async fn set_policy(c: &Client, name: &str, policy: Value) -> Result<Value, ClientError> {
    c.request_json(
        Method::PUT,
        &format!("/v1/sandboxes/{name}/policy/network"),
        Some(&policy),
    )
    .await
}

/// Through the explicit proxy, absolute-form: the body, then the status on the last line.
fn via_proxy(url: &str) -> String {
    format!("curl -s --max-time 10 -x \"$http_proxy\" -w '\\n%{{http_code}}' {url}")
}

/// Through the explicit proxy with `CONNECT`: the proxy's answer to the CONNECT.
fn via_connect(url: &str) -> String {
    format!("curl -s --max-time 10 -p -x \"$http_proxy\" -o /dev/null -w '%{{http_connect}}' {url}")
}

/// Straight to the address (tcp/80 and 443 are redirected to the transparent proxy).
fn direct(url: &str) -> String {
    format!(
        "env -u HTTPS_PROXY -u https_proxy -u HTTP_PROXY -u http_proxy curl -sk --max-time 10 -w '\\n%{{http_code}}' {url}"
    )
}

/// curl saw the connection closed (or reset) without an HTTP response: exit 52 or 56.
#[track_caller]
fn closed_without_answer(code: i32, out: &str, err: &str) {
    assert!(
        matches!(code, 52 | 56) && status(out) == "000",
        "closed without an answer expected, got exit {code}: {out}{err}"
    );
}

/// The last line of curl's output: the status it printed.
fn status(out: &str) -> &str {
    out.lines().last().unwrap_or("").trim()
}

const HOST_OWN: &str = "the address is one of the host's own";
const OUTSIDE: &str = "outside the daemon's uplink ranges";

/// The host itself reaches its service on `addr:port` (the probe can see a connection).
fn host_reaches(svc: &HostService, addr: Ipv4Addr) {
    let before = svc.seen();
    let mut s = TcpStream::connect_timeout(&SocketAddr::from((addr, svc.port)), Duration::from_secs(3))
        .unwrap_or_else(|e| {
            panic!(
                "control: the host cannot reach its own service on {addr}:{}: {e}",
                svc.port
            )
        });
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("HOST-LOCAL"), "control: {reply:?}");
    assert_eq!(svc.seen(), before + 1, "control: the service counts connections");
}

#[tokio::test]
async fn open_mode_proxy_refuses_the_hosts_own_addresses() {
    let _serial = serial().await;
    let w = world();
    let c = w.daemon.client();
    let name = unique_name("eatk-open");
    create(&c, &name).await;
    let host = w.inet.host_addr();
    host_reaches(&w.any, host);
    host_reaches(&w.http, host);
    let (any, http, tls) = (w.any.seen(), w.http.seen(), w.tls.seen());

    // Explicit, absolute-form, to a service on the host's 0.0.0.0.
    let (_, out, err) = sh_parts(&c, &name, &via_proxy(&format!("http://{host}:{}/", w.any.port))).await;
    assert_eq!(status(&out), "403", "{out}{err}");
    assert!(out.contains(HOST_OWN), "{out}");
    // CONNECT to it.
    let (_, out, err) = sh_parts(&c, &name, &via_connect(&format!("http://{host}:{}/", w.any.port))).await;
    assert_eq!(out.trim(), "403", "{out}{err}");
    // Transparent tcp/80 and tcp/443 to the host's address: closed without an answer.
    let (code, out, err) = sh_parts(&c, &name, &direct(&format!("http://{host}/"))).await;
    closed_without_answer(code, &out, &err);
    let (code, out, err) = sh_parts(&c, &name, &direct(&format!("https://{host}/"))).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(!out.contains("HOST-LOCAL"), "{out}");
    assert_eq!(
        (w.any.seen(), w.http.seen(), w.tls.seen()),
        (any, http, tls),
        "a host service got a connection from the proxy"
    );
    let seen = w.daemon.events_until(&name, HOST_OWN).await;
    assert!(seen.contains("egress.denied"), "{seen}");

    // Control: the same three paths to an address of the fake internet work.
    let site = w.inet.site();
    let (_, out, err) = sh_parts(&c, &name, &via_proxy(&format!("http://{site}/x"))).await;
    assert_eq!(status(&out), "200", "{out}{err}");
    let (_, out, err) = sh_parts(&c, &name, &via_connect(&format!("http://{site}/x"))).await;
    assert_eq!(out.trim(), "200", "{out}{err}");
    let (_, out, err) = sh_parts(&c, &name, &direct(&format!("http://{site}/x"))).await;
    assert_eq!(status(&out), "200", "{out}{err}");
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test]
async fn policy_mode_name_resolving_to_the_host_is_refused() {
    let _serial = serial().await;
    let w = world();
    let c = w.daemon.client();
    let name = unique_name("eatk-pol");
    create(&c, &name).await;
    set_policy(
        &c,
        &name,
        json!({"mode": "policy", "rules": [
            {"domain": "hostlocal.test", "action": "allow"},
            {"domain": "site.test", "action": "allow"}]}),
    )
    .await
    .unwrap();
    let host = w.inet.host_addr();
    host_reaches(&w.any, host);
    let (any, http) = (w.any.seen(), w.http.seen());

    // The name is allowed and resolves to the host's address...
    let (code, out, _) = sh_parts(&c, &name, "getent hosts hostlocal.test").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&host.to_string()), "{out}");
    // ...but no path through the proxy connects to it.
    let url = format!("http://hostlocal.test:{}/", w.any.port);
    let (_, out, err) = sh_parts(&c, &name, &via_proxy(&url)).await;
    assert_eq!(status(&out), "403", "{out}{err}");
    assert!(out.contains(HOST_OWN), "{out}");
    let (_, out, err) = sh_parts(&c, &name, &via_connect(&url)).await;
    assert_eq!(out.trim(), "403", "{out}{err}");
    let (code, out, err) = sh_parts(&c, &name, &direct("http://hostlocal.test/")).await;
    closed_without_answer(code, &out, &err);
    assert_eq!(
        (w.any.seen(), w.http.seen()),
        (any, http),
        "a host service got a connection from the proxy"
    );

    // Control: an allowed name of the fake internet goes through, both ways.
    let (_, out, err) = sh_parts(&c, &name, &via_proxy("http://site.test/y")).await;
    assert_eq!(status(&out), "200", "{out}{err}");
    let (_, out, err) = sh_parts(&c, &name, &direct("http://site.test/y")).await;
    assert_eq!(status(&out), "200", "{out}{err}");
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test]
async fn the_proxy_honours_uplink_only() {
    let _serial = serial().await;
    let w = world();
    let c = w.daemon.client();
    let name = unique_name("eatk-up");
    create(&c, &name).await;
    let outside = w.inet.outside();
    let site = w.inet.site();
    // Control: the host reaches the outside address (it is routed into the fake internet).
    let before = w.inet.reached().len();
    let mut s = TcpStream::connect_timeout(&SocketAddr::from((outside, 80)), Duration::from_secs(3))
        .expect("control: the host reaches the outside-uplink address");
    s.write_all(b"GET /control HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("200"), "control: {reply}");
    let reached = w.inet.reached();
    assert_eq!(
        reached[before..],
        [outside.to_string()],
        "control: the log sees it"
    );

    let before = w.inet.reached().len();
    for (what, script) in [
        ("absolute-form", via_proxy(&format!("http://{outside}/"))),
        ("by name", via_proxy("http://outside.test/")),
    ] {
        let (_, out, err) = sh_parts(&c, &name, &script).await;
        assert_eq!(status(&out), "403", "{what}: {out}{err}");
        assert!(out.contains(OUTSIDE), "{what}: {out}");
    }
    let (_, out, err) = sh_parts(&c, &name, &via_connect(&format!("http://{outside}/"))).await;
    assert_eq!(out.trim(), "403", "{out}{err}");
    let (code, out, err) = sh_parts(&c, &name, &direct(&format!("http://{outside}/"))).await;
    closed_without_answer(code, &out, &err);
    let (code, out, err) = sh_parts(&c, &name, &direct(&format!("https://{outside}/"))).await;
    assert_ne!(code, 0, "{out}{err}");
    let reached = w.inet.reached();
    assert!(
        !reached[before..].contains(&outside.to_string()),
        "the proxy connected outside the uplink list: {:?}",
        &reached[before..]
    );
    w.daemon.events_until(&name, OUTSIDE).await;

    // Control: inside the list, the same requests pass.
    let (_, out, err) = sh_parts(&c, &name, &via_proxy(&format!("http://{site}/z"))).await;
    assert_eq!(status(&out), "200", "{out}{err}");
    let (_, out, err) = sh_parts(&c, &name, &direct(&format!("http://{site}/z"))).await;
    assert_eq!(status(&out), "200", "{out}{err}");
    c.delete_sandbox(&name).await.unwrap();
}
