//! Test infrastructure: real `burrowd` daemons in temporary data dirs, with their own unix
//! socket, TCP port, runc root, cgroup parent and loop-backed btrfs pool, so that several
//! run side by side, in one test process or several. Nothing is mocked.
//!
//! Binaries are found in `BURROW_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else the
//! workspace's `target/debug`. The static agent is found by burrowd itself (the musl build
//! next to it) or through `BURROW_AGENT_BIN`.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use burrow_client::Client;

pub use burrow_client;

pub mod cli;
pub mod fakes;
pub mod fixtures;
pub mod page_cache;
mod template;

/// Directory holding the built `burrowd` and `burrow` binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BURROW_BIN_DIR") {
        return PathBuf::from(d);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(t).join("debug");
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug")
}

pub fn burrow_bin() -> PathBuf {
    bin_dir().join("burrow")
}

/// A running daemon and everything it owns.
#[derive(Debug)]
pub struct Daemon {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    child: Mutex<Option<Child>>,
    addr: Mutex<Option<SocketAddr>>,
    env: Mutex<Vec<(String, String)>>,
    log: PathBuf,
    /// This daemon's sandbox subnet (a /24 of its own, so daemons run side by side).
    pub subnet: String,
    _subnet_claim: Claim,
    extra_args: Vec<String>,
    _dir: tempfile::TempDir,
}

/// Whether a test's prerequisite (root, a tool, a kernel feature) is there. When it is not,
/// under `BURROW_TEST_STRICT=1` (set by `scripts/test.sh`, so in CI) the test fails and says
/// what is missing; otherwise it says so on stderr and the caller returns early (a developer's
/// machine not set up for the suite). Use [`require!`] in a test body.
pub fn prerequisite(present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    assert!(
        std::env::var_os("BURROW_TEST_STRICT").is_none_or(|v| v != "1"),
        "cannot run this test: {what} (BURROW_TEST_STRICT=1: a missing prerequisite is a failure)"
    );
    eprintln!("skipping: {what}");
    false
}

/// `require!(cond, "what is missing {}", x)`: returns from the test when `cond` is false,
/// or fails it under `BURROW_TEST_STRICT=1` ([`prerequisite`]).
#[macro_export]
macro_rules! require {
    ($cond:expr, $($what:tt)+) => {
        if !$crate::prerequisite($cond, &format!($($what)+)) {
            return;
        }
    };
}

/// Where test processes claim what must be theirs alone on this host (a daemon's subnet,
/// a fake internet's network): one lock file per thing, locked (`flock`) for as long as its
/// holder lives. The kernel drops a lock when its process ends, however it ends.
const CLAIMS: &str = "/run/burrow-test-claims";

/// A held claim on one of `kind`'s numbers; dropping it lets another test take the number.
#[derive(Debug)]
pub struct Claim {
    pub number: u32,
    _lock: std::fs::File,
}

/// Claims a number of `kind` below `count` that no other test process on this host holds and
/// for which `usable` says yes (e.g. nothing on the host uses it already). Test processes run
/// side by side (the lanes of `scripts/test.sh`), so a pid or a counter cannot tell them
/// apart; a lock file per number can.
pub fn claim(kind: &str, count: u32, usable: impl Fn(u32) -> bool) -> Claim {
    let dir = Path::new(CLAIMS).join(kind);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    // Start somewhere else in each process so claims seldom meet.
    let start = rand_u32() % count;
    for i in 0..count {
        let number = (start + i) % count;
        if !usable(number) {
            continue;
        }
        let path = dir.join(number.to_string());
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        if lock.try_lock().is_ok() {
            return Claim { number, _lock: lock };
        }
    }
    panic!("all {count} of {kind} are claimed or in use on this host");
}

/// A /24 of 10.100.0.0 to 10.187.255.0 that no other test daemon uses, held while the claim
/// lives. The other suites keep out of that range (OpenAPI 10.99, TypeScript 10.188, burrow-net
/// 10.192-199, Python 10.200-249, MCP 10.250: docs/testing.md), as they run at the same time.
/// One that an interface of the host already has an address in (a daemon of an ended test
/// process still cleaning up, or one left behind) is passed over: burrowd would refuse it.
fn claim_subnet() -> (String, Claim) {
    let in_use = host_ipv4_addrs();
    let prefix = |n: u32| format!("10.{}.{}.", 100 + n / 256, n % 256);
    let c = claim("subnets", 88 * 256, |n| {
        let p = prefix(n);
        !in_use.iter().any(|a| a.starts_with(&p))
    });
    (format!("{}0/24", prefix(c.number)), c)
}

/// The host's IPv4 addresses, as text (`ip -o -4 addr`).
pub fn host_ipv4_addrs() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .expect("ip -o -4 addr show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            Some(words.next()?.split('/').next()?.to_owned())
        })
        .collect()
}

impl Daemon {
    /// Starts a daemon with a fresh data dir and waits until it serves.
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Like [`Daemon::start`], with extra `burrowd` arguments (kept across restarts), e.g.
    /// `--dns-upstream` pointing at a test's own resolver.
    pub fn start_with(extra_args: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("burrow-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        // Sandbox root (an unprivileged host uid) must traverse to its root tree.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let data_dir = dir.path().join("data");
        let socket = dir.path().join("burrowd.sock");
        let log = dir.path().join("burrowd.log");
        let (subnet, subnet_claim) = claim_subnet();
        let d = Daemon {
            data_dir,
            socket,
            child: Mutex::new(None),
            addr: Mutex::new(None),
            env: Mutex::new(Vec::new()),
            log,
            subnet,
            _subnet_claim: subnet_claim,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
        };
        // The base image comes with the template's pool instead of an import of its own.
        if let Some(template) = template::data_dir_for(&d.extra_args)
            && let Err(e) = template::copy_to(&template, &d.data_dir)
        {
            eprintln!("copying the template data dir: {e}; this daemon imports the base image");
            let _ = std::fs::remove_dir_all(&d.data_dir);
        }
        d.spawn();
        d
    }

    /// Sets extra environment for the next (re)start, e.g. `BURROW_FAULT`.
    pub fn set_env(&self, env: &[(&str, &str)]) {
        *self.env.lock().unwrap() = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// Whether the daemon process is still alive (it may have aborted at a fault point).
    pub fn wait_exit(&self) -> Option<std::process::ExitStatus> {
        let mut guard = self.child.lock().unwrap();
        let status = guard.as_mut().map(|c| c.wait().expect("wait"));
        *guard = None;
        status
    }

    fn spawn(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let mut cmd = Command::new(bin_dir().join("burrowd"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--pool-size-gb")
            .arg("16")
            .arg("--ephemeral")
            // Networking on, on a subnet of its own. Sandbox traffic may only be forwarded
            // to 198.18.0.0/15, where tests build their fake internet, and DNS goes to a
            // port where nothing listens unless a test passes its own resolver: nothing a
            // test does can reach a real network.
            .arg("--subnet")
            .arg(&self.subnet)
            .arg("--uplink-only")
            .arg("198.18.0.0/15")
            .args(if self.extra_args.iter().any(|a| a == "--dns-upstream") {
                &[][..]
            } else {
                &["--dns-upstream", "127.0.0.1:9"][..]
            })
            // No pre-started sandboxes unless a test asks (`--prestart N`): most tests count
            // what a daemon runs; `prestart.rs` and the conformance suite turn them on.
            .args(if self.extra_args.iter().any(|a| a == "--prestart") {
                &[][..]
            } else {
                &["--prestart", "0"][..]
            })
            // Pools keep their size unless a test asks for growth (it would boot sandboxes in
            // the background of tests that only want one from the pool).
            .args(if self.extra_args.iter().any(|a| a == "--prestart-max") {
                &[][..]
            } else {
                &["--prestart-max", "0"][..]
            })
            .args(if self.extra_args.iter().any(|a| a == "--prestart-vm") {
                &[][..]
            } else {
                &["--prestart-vm", "0"][..]
            })
            .args(&self.extra_args)
            .env("BURROW_LOG", "info,burrow=debug")
            // Its lxcfs mount next to its data dir, where the leftover cleanup finds it
            // (a test's `set_env` may move it).
            .env("BURROW_LXCFS_DIR", self._dir.path().join("lxcfs"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        for (k, v) in self.env.lock().unwrap().iter() {
            cmd.env(k, v);
        }
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours;
        // it makes the daemon get SIGTERM (ephemeral cleanup) when the thread that spawned it
        // ends, which for `shared()` is a keeper thread that lives as long as the test process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        // Before the spawn: the new daemon writes it as soon as it listens.
        let _ = std::fs::remove_file(self.data_dir.join("burrowd.addr"));
        let child = cmd
            .spawn()
            .expect("spawning burrowd (build it first: cargo build)");
        *self.child.lock().unwrap() = Some(child);
        self.wait_ready();
    }

    /// Waits until /healthz answers on the unix socket (bounded: 10 minutes, because the
    /// very first daemon on a host builds the base image tarball; later ones import it).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "burrowd exited during start ({status}); log:\n{}",
                    self.log_text()
                );
            }
            let ok = healthz_blocking(&self.socket);
            if ok {
                let addr = std::fs::read_to_string(self.data_dir.join("burrowd.addr")).expect("burrowd.addr");
                *self.addr.lock().unwrap() = Some(addr.trim().parse().expect("addr"));
                return;
            }
            assert!(
                Instant::now() < deadline,
                "burrowd did not become ready; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sandbox `name`'s event stream, history replayed (`since=0`), read until `needle`
    /// shows up (bounded: 30 s); returns the text read.
    pub async fn events_until(&self, name: &str, needle: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        s.write_all(
            format!("GET /v1/sandboxes/{name}/events?since=0 HTTP/1.1\r\nHost: burrow\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if text.contains(needle) {
                return text;
            }
            let mut chunk = [0u8; 8192];
            let got = tokio::time::timeout_at(deadline.into(), s.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no event with {needle:?} came: {text}"))
                .unwrap();
            assert!(got > 0, "event stream closed: {text}");
            buf.extend_from_slice(&chunk[..got]);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::unix(&self.socket)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.lock().unwrap().expect("daemon is running")
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin token")
            .trim()
            .to_owned()
    }

    pub fn tcp_client(&self) -> Client {
        Client::tcp(&format!("http://{}", self.addr()), Some(self.token())).expect("tcp client")
    }

    /// `burrow` CLI command pointed at this daemon's socket.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(burrow_bin());
        c.env("BURROW_SOCKET", &self.socket)
            .env_remove("BURROW_URL")
            .env_remove("BURROW_TOKEN");
        c
    }

    /// Kills the daemon with SIGKILL (no cleanup at all), as a crash would.
    pub fn kill9(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same data dir.
    pub fn restart(&self) {
        assert!(self.child.lock().unwrap().is_none(), "kill it first");
        self.spawn();
    }

    /// Restarts the daemon so that the operation reaching pause point `point`
    /// (`burrow_core::fault::pause`) waits there; returns the file whose existence says it
    /// is waiting and whose removal lets it go on (see [`Daemon::wait_paused`]).
    pub fn pause_at(&self, point: &str) -> PathBuf {
        let pause = self.data_dir.parent().unwrap().join("pause");
        self.set_env(&[
            ("BURROW_PAUSE", point),
            ("BURROW_PAUSE_FILE", pause.to_str().unwrap()),
        ]);
        self.kill9();
        self.restart();
        pause
    }

    /// Waits (bounded, 30 s) until an operation waits at the pause point of `pause`.
    pub async fn wait_paused(&self, pause: &Path, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !pause.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} never reached its pause point"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Host pid of the daemon.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().as_ref().expect("running").id()
    }

    /// SIGTERM and wait: the ephemeral daemon destroys its sandboxes and pool.
    pub fn shutdown(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing test shows what the daemon saw (its directory goes with it).
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(120)..];
            eprintln!(
                "---- burrowd log (last {} lines) ----\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
        self.shutdown();
    }
}

/// A blocking `GET /healthz` (usable from inside or outside an async runtime).
fn healthz_blocking(socket: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: burrow\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200")
}

/// One daemon shared by every test of a test binary. It is spawned from a thread that
/// lives as long as the process, and gets SIGTERM (and cleans up) when the process exits.
pub fn shared() -> &'static Daemon {
    static SHARED: OnceLock<&'static Daemon> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let d: &'static Daemon = Box::leak(Box::new(Daemon::start()));
            tx.send(d).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("shared daemon start")
    })
}

/// A raw HTTP response, for tests of the wire format.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    /// The `error.code` of an error envelope.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    pub fn error_message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends one request with exactly the given headers and body over a unix socket.
pub async fn raw_unix(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> RawResponse {
    let stream = tokio::net::UnixStream::connect(socket).await.expect("connect");
    raw_over(hyper_util::rt::TokioIo::new(stream), method, path, headers, body).await
}

/// Sends one request over TCP.
pub async fn raw_tcp(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> RawResponse {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    raw_over(hyper_util::rt::TokioIo::new(stream), method, path, headers, body).await
}

async fn raw_over<T>(io: T, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> RawResponse
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Full};
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "burrow");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(hyper::body::Bytes::from(body)))
        .expect("request");
    let resp = send.send_request(req).await.expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    RawResponse {
        status,
        headers,
        body,
    }
}

/// A unique sandbox name for a test.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    // getrandom(2) via libc, to avoid a dependency for four bytes.
    // SAFETY: the buffer is valid for 4 bytes for the duration of the call.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    assert_eq!(n, 4);
    u32::from_ne_bytes(b)
}
