//! `burrow url` and `burrow proxy` end to end against a real daemon: the URL the server
//! reports, and a local port forwarded through burrowd to an echo server in a sandbox
//! (bytes both ways, half-close passed on). Traffic stays on loopback and in the sandbox.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

use burrow_testkit::cli::{burrow, ok, run};
use burrow_testkit::{shared, unique_name};

/// Bound of every blocking read below (a hang fails the test instead of stalling it).
const PATIENCE: Duration = Duration::from_secs(60);

/// Echoes until the peer's EOF, then half-closes in turn.
const ECHO: &str = "import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))
s.listen(16)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
";

/// Kills the proxy when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn url_prints_the_sandbox_address() {
    let d = shared();
    let name = unique_name("url");
    ok(&["create", &name]);
    let port = d.addr().port();
    assert_eq!(ok(&["url", &name]), format!("http://{name}.localhost:{port}/\n"));
    let v: serde_json::Value = serde_json::from_str(&ok(&["--json", "url", &name])).unwrap();
    assert_eq!(v["name"], name);
    assert_eq!(v["url"], format!("http://{name}.localhost:{port}/"));
    let o = run(&["url", "no-such-sandbox-u"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-sandbox-u"));
    ok(&["rm", &name]);
}

#[test]
fn proxy_forwards_a_local_port_into_the_sandbox() {
    let name = unique_name("fwd");
    ok(&["create", &name]);
    // Declaring the port makes the first connection wait until the echo server listens.
    ok(&[
        "service",
        "add",
        &name,
        "echo",
        "--http-port",
        "7000",
        "--",
        "python3",
        "-c",
        ECHO,
        "7000",
    ]);
    let mut child = burrow(&["proxy", &name, "0:7000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn burrow proxy");
    let stdout = child.stdout.take().unwrap();
    let proxy = Killed(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("listening on ")
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    assert!(line.contains(&format!("port 7000 in sandbox '{name}'")), "{line}");

    // Two connections at once, each its own stream.
    let mut a = TcpStream::connect(&addr).unwrap();
    let mut b = TcpStream::connect(&addr).unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(PATIENCE)).unwrap();
    }
    a.write_all(b"hello from a").unwrap();
    b.write_all(b"hello from b").unwrap();
    let mut buf = [0u8; 12];
    a.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello from a");
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello from b");
    // A megabyte, then our half-close: everything comes back, then the echo's EOF.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 239) as u8).collect();
    let writer = {
        let mut a = a.try_clone().unwrap();
        let big = big.clone();
        std::thread::spawn(move || {
            a.write_all(&big).unwrap();
            a.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    a.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big, "echo differs");
    drop(b);
    drop(proxy);
    ok(&["rm", &name]);
}

#[test]
fn proxy_refuses_unknown_sandboxes_and_bad_ports() {
    let o = run(&["proxy", "no-such-sandbox-p", "0:7000"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no-such-sandbox-p"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for bad in ["0", "1:0", "x", "70000"] {
        let o = run(&["proxy", "whatever", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: usage error expected");
    }
}
