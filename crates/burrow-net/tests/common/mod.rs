//! Test harness: a daemon network per test (unique tag, subnet and fake internet), servers
//! bound inside namespaces, and clients that act as a sandbox.
//!
//! Nothing here sends a packet to a real network: every sandbox packet that is forwarded at
//! all is steered by a policy-routing rule (`iif <bridge>`, in a per-test table) into a
//! "fake internet" namespace the test made, and most tests also set `uplink_only` to
//! 198.18.0.0/15.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use burrow_net::{Cidr, HostNet, NetConfig, in_netns, original_dst};

pub const TIMEOUT: Duration = Duration::from_secs(2);
pub const DNS_PORT: u16 = 41053;
pub const PROXY_PORT: u16 = 41128;
pub const THTTP_PORT: u16 = 41080;
pub const TTLS_PORT: u16 = 41443;
/// The port every fake-internet server listens on (besides 80 and 443).
pub const WEB_PORT: u16 = 8000;
/// Extra addresses of the fake internet, each reachable from a sandbox by route.
pub const SITE2: Ipv4Addr = Ipv4Addr::new(198, 19, 77, 77);
pub const OUTSIDE_UPLINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const PRIVATE_TARGETS: [Ipv4Addr; 5] = [
    Ipv4Addr::new(10, 99, 99, 99),
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(172, 16, 9, 9),
    Ipv4Addr::new(192, 168, 9, 9),
    Ipv4Addr::new(100, 64, 9, 9),
];

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command and returns stdout, panicking with stderr on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like `sh` but ignores failure (cleanup paths).
pub fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

fn base36(mut n: u64, width: usize) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = digits[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).unwrap()
}

/// Whether any host address's network overlaps `c` (either way round).
fn host_overlaps(c: Cidr) -> bool {
    nix::ifaddrs::getifaddrs().unwrap().any(|i| {
        let addr = i.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip()));
        let mask = i.netmask.and_then(|a| a.as_sockaddr_in().map(|s| s.ip()));
        let (Some(addr), Some(mask)) = (addr, mask) else {
            return false;
        };
        let prefix = u32::from(mask).count_ones() as u8;
        let theirs = Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & u32::from(mask)),
            prefix,
        };
        theirs.contains(c.addr) || c.contains(theirs.addr)
    })
}

/// One test's network: a `HostNet` with a unique tag and subnet, and a fake internet.
/// Dropping it removes everything (teardown runs even when the test panics).
pub struct Env {
    pub net: HostNet,
    pub cfg: NetConfig,
    pub fake: FakeNet,
    next_host: AtomicU32,
}

impl Env {
    /// `uplink_only = Some([198.18.0.0/15])`.
    pub fn new() -> Env {
        Env::with_uplink(Some(vec![]))
    }

    /// `extra` = `None` for no uplink restriction; `Some(list)` for 198.18.0.0/15 + list.
    pub fn with_uplink(extra: Option<Vec<Cidr>>) -> Env {
        // Serialise picking a free subnet with creating it, across test processes.
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/burrow-net-test.lock");
        let _lock = nix::fcntl::Flock::lock(lock.unwrap(), nix::fcntl::FlockArg::LockExclusive).unwrap();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        assert!(n < 36, "too many environments in one test process");
        let pid = u64::from(std::process::id());
        let tag = format!("{}{}", base36(pid, 5), base36(u64::from(n), 1));
        let seed = pid
            .wrapping_mul(2_654_435_761)
            .wrapping_add(u64::from(n) * 40_503);
        // 10.192-199 and 198.18.0-31: the ranges no other suite's daemons or fake internets
        // use (docs/testing.md), as they run at the same time as these.
        let (subnet, fake_net) = (0..2_048u64)
            .map(|i| ((seed + i) % 2_048) as u32)
            .map(|c| {
                let subnet =
                    Cidr::new(Ipv4Addr::new(10, 192 + (c / 256) as u8, (c % 256) as u8, 0), 24).unwrap();
                let fake = Cidr::new(
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + c * 4),
                    30,
                )
                .unwrap();
                (subnet, fake)
            })
            .find(|(s, f)| !host_overlaps(*s) && !host_overlaps(*f))
            .expect("a free test subnet");
        let uplink = extra.map(|mut l| {
            l.insert(0, "198.18.0.0/15".parse().unwrap());
            l
        });
        let cfg = NetConfig {
            tag: tag.clone(),
            subnet,
            dns_port: DNS_PORT,
            proxy_port: PROXY_PORT,
            transparent_http_port: THTTP_PORT,
            transparent_tls_port: TTLS_PORT,
            uplink_only: uplink,
        };
        let net = HostNet::setup(cfg.clone()).expect("setup");
        // From here on, a panic must still tear down: build the guard before the fake net.
        let mut env = Env {
            net,
            cfg,
            fake: FakeNet::empty(),
            next_host: AtomicU32::new(2),
        };
        let [_, b, c, _] = subnet.addr.octets();
        let table = 0x6277_0000 + u32::from(b) * 256 + u32::from(c);
        env.fake = FakeNet::create(&tag, fake_net, env.net.bridge(), table);
        env
    }

    /// Attaches a new sandbox with the next free address.
    pub fn sandbox(&self) -> Sandbox {
        let n = self.next_host.fetch_add(1, Ordering::Relaxed);
        let id = format!("sb{n}");
        let addr = self.cfg.subnet.host(n).unwrap();
        let path = self.net.attach(&id, addr).expect("attach");
        Sandbox { id, addr, path }
    }

    pub fn gw(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.net.gateway(), port)
    }

    /// The fake internet's main address, `port`.
    pub fn site(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.fake.ns_ip, port)
    }
}

impl Drop for FakeNet {
    fn drop(&mut self) {
        self.remove();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.fake.remove();
        if let Err(e) = self.net.teardown() {
            eprintln!("teardown of {} failed: {e}", self.cfg.tag);
        }
    }
}

pub struct Sandbox {
    pub id: String,
    pub addr: Ipv4Addr,
    pub path: PathBuf,
}

/// A namespace standing for the internet: veth to the host (198.18.x.y/30), extra addresses
/// on its loopback, and a routing table the bridge's forwarded traffic is steered into.
pub struct FakeNet {
    pub ns: String,
    pub path: PathBuf,
    pub host_veth: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    table: u32,
    bridge: String,
    servers: Vec<TcpServer>,
}

impl FakeNet {
    fn empty() -> FakeNet {
        FakeNet {
            ns: String::new(),
            path: PathBuf::new(),
            host_veth: String::new(),
            host_ip: Ipv4Addr::UNSPECIFIED,
            ns_ip: Ipv4Addr::UNSPECIFIED,
            table: 0,
            bridge: String::new(),
            servers: Vec::new(),
        }
    }

    fn create(tag: &str, net: Cidr, bridge: &str, table: u32) -> FakeNet {
        let ns = format!("bwfake{tag}");
        let host_veth = format!("bwf{tag}h");
        let host_ip = net.host(1).unwrap();
        let ns_ip = net.host(2).unwrap();
        let mut fake = FakeNet {
            path: PathBuf::from("/run/netns").join(&ns),
            ns: ns.clone(),
            host_veth: host_veth.clone(),
            host_ip,
            ns_ip,
            table,
            bridge: bridge.to_owned(),
            servers: Vec::new(),
        };
        let t = table.to_string();
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        sh(&["ip", "addr", "add", &format!("{host_ip}/30"), "dev", &host_veth]);
        sh(&["ip", "link", "set", &host_veth, "up"]);
        let mut inside = vec![
            "link set lo up".to_owned(),
            "link set eth0 up".to_owned(),
            format!("addr add {ns_ip}/30 dev eth0"),
            format!("route add default via {host_ip}"),
        ];
        for a in PRIVATE_TARGETS.iter().chain([&SITE2, &OUTSIDE_UPLINK]) {
            inside.push(format!("addr add {a}/32 dev lo"));
        }
        let mut child = Command::new("ip")
            .args(["-n", &ns, "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all((inside.join("\n") + "\n").as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        // Everything the bridge forwards goes to the fake internet, never to a real uplink.
        sh(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &ns_ip.to_string(),
            "table",
            &t,
        ]);
        sh(&[
            "ip", "rule", "add", "iif", bridge, "table", &t, "priority", "1000",
        ]);
        for port in [WEB_PORT, 80, 443] {
            let server = TcpServer::start(
                Some(&fake.path),
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
                greet,
            );
            fake.servers.push(server);
        }
        fake
    }

    fn remove(&mut self) {
        if self.ns.is_empty() {
            return;
        }
        self.servers.clear();
        let t = self.table.to_string();
        sh_quiet(&[
            "ip",
            "rule",
            "del",
            "iif",
            &self.bridge,
            "table",
            &t,
            "priority",
            "1000",
        ]);
        sh_quiet(&["ip", "route", "flush", "table", &t]);
        sh_quiet(&["ip", "link", "del", &self.host_veth]);
        sh_quiet(&["ip", "netns", "del", &self.ns]);
        self.ns.clear();
    }
}

/// Greets with `peer=<address the server sees>` then echoes lines.
pub fn greet(mut s: TcpStream) {
    let peer = s.peer_addr().unwrap();
    if writeln!(s, "peer={peer}").is_err() {
        return;
    }
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
        if s.write_all(line.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

/// Answers `orig=<SO_ORIGINAL_DST>` (a transparent proxy's first step).
pub fn tell_original_dst(mut s: TcpStream) {
    let answer = match original_dst(&s) {
        Ok(a) => format!("orig={a}"),
        Err(e) => format!("error={e}"),
    };
    let _ = writeln!(s, "{answer}");
}

/// A TCP server on its own thread, optionally bound inside a namespace; stops on drop.
pub struct TcpServer {
    pub addr: SocketAddrV4,
    fd: RawFd,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    pub fn start(ns: Option<&Path>, bind: SocketAddrV4, handler: fn(TcpStream)) -> TcpServer {
        let bind_it = move || TcpListener::bind(bind);
        let listener = match ns {
            Some(ns) => in_netns(ns, bind_it),
            None => bind_it(),
        }
        .unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let fd = listener.as_raw_fd();
        let thread = thread::spawn(move || {
            // `shutdown` from `drop` makes accept fail and ends the loop.
            while let Ok((s, _)) = listener.accept() {
                thread::spawn(move || handler(s));
            }
        });
        TcpServer {
            addr,
            fd,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        // SAFETY: the fd is owned by the listener that the server thread keeps alive until
        // `join` below returns; shutdown does not close it.
        let _ = unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP server that echoes `from=<peer> <payload>` and reports every datagram it gets.
pub struct UdpServer {
    pub addr: SocketAddrV4,
    pub received: mpsc::Receiver<(SocketAddr, String)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    pub fn start(ns: Option<&Path>, bind: SocketAddrV4) -> UdpServer {
        let bind_it = move || UdpSocket::bind(bind);
        let sock = match ns {
            Some(ns) => in_netns(ns, bind_it),
            None => bind_it(),
        }
        .unwrap_or_else(|e| panic!("bind udp {bind}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let SocketAddr::V4(addr) = sock.local_addr().unwrap() else {
            unreachable!()
        };
        let (tx, received) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let payload = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let _ = sock.send_to(format!("from={peer} {payload}").as_bytes(), peer);
                    let _ = tx.send((peer, payload));
                }
            }
        });
        UdpServer {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` and returns the server's first line.
pub fn tcp_talk(ns: &Path, dst: SocketAddrV4) -> io::Result<String> {
    let stream = in_netns(ns, || TcpStream::connect_timeout(&dst.into(), TIMEOUT))?;
    first_line(stream)
}

/// Connects from the host's own namespace (controls: "the listener is up").
pub fn tcp_talk_host(dst: SocketAddrV4) -> io::Result<String> {
    first_line(TcpStream::connect_timeout(&dst.into(), TIMEOUT)?)
}

fn first_line(stream: TcpStream) -> io::Result<String> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without a reply",
        ));
    }
    Ok(line.trim_end().to_owned())
}

/// Sends one datagram from inside `ns` (from `bind`, default any) and waits for the answer.
pub fn udp_talk(
    ns: &Path,
    bind: Option<SocketAddrV4>,
    dst: SocketAddrV4,
    payload: &str,
) -> io::Result<String> {
    let bind = bind.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let sock = in_netns(ns, || UdpSocket::bind(bind))?;
    sock.set_read_timeout(Some(TIMEOUT))?;
    sock.send_to(payload.as_bytes(), dst)?;
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[track_caller]
pub fn assert_reaches(ns: &Path, dst: SocketAddrV4) -> String {
    tcp_talk(ns, dst).unwrap_or_else(|e| panic!("{} should reach {dst}: {e}", ns.display()))
}

/// Every destination must fail to connect (checked in parallel, each bounded by TIMEOUT).
#[track_caller]
pub fn assert_blocked(ns: &Path, dsts: &[SocketAddrV4]) {
    let results: Vec<(SocketAddrV4, io::Result<String>)> = thread::scope(|s| {
        let handles: Vec<_> = dsts
            .iter()
            .map(|d| (*d, s.spawn(move || tcp_talk(ns, *d))))
            .collect();
        handles.into_iter().map(|(d, h)| (d, h.join().unwrap())).collect()
    });
    for (dst, r) in results {
        if let Ok(reply) = r {
            panic!("{} reached {dst} but must not (reply {reply:?})", ns.display());
        }
    }
}

/// A connection kept open for checking whether later traffic on it still flows.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn open(ns: &Path, dst: SocketAddrV4) -> Conn {
        let stream = in_netns(ns, || TcpStream::connect_timeout(&dst.into(), TIMEOUT)).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut conn = Conn {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        };
        let mut greeting = String::new();
        conn.reader.read_line(&mut greeting).expect("greeting");
        conn
    }

    /// Sends a line and waits (bounded) for its echo.
    pub fn echo(&mut self, line: &str) -> io::Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut got = String::new();
        self.reader.read_line(&mut got)?;
        Ok(got.trim_end().to_owned())
    }
}
