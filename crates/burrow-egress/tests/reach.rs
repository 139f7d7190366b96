//! The host's own addresses, as the proxy and the resolver see them: read from the kernel and
//! kept current. Needs root (it adds a veth pair of its own, with a TEST-NET-3 address,
//! and removes it); sends no packet anywhere.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use burrow_egress::reach::HostAddrs;
use burrow_egress::{Reach, Unreachable};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair of this test's, removed on drop.
struct Dummy(String);

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// Polls `f` until it holds, for at most 10 s.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_address_added_to_the_host_is_refused_at_once_and_forgotten_when_removed() {
    let n = std::process::id() % 200 + 20;
    let addr = Ipv4Addr::new(203, 0, 113, n as u8);
    let dev = format!("bwreach{n}");
    let _ = Command::new("ip").args(["link", "del", &dev]).output();
    let addrs = HostAddrs::watch().unwrap();
    let reach = Reach::kernel(None).unwrap();
    // Control: before it is the host's, the address is reachable.
    assert!(!addrs.contains(addr));
    assert_eq!(reach.check(addr), Ok(()));

    ip(&[
        "link",
        "add",
        &dev,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{dev}p"),
    ]);
    let dummy = Dummy(dev.clone());
    ip(&["addr", "add", &format!("{addr}/32"), "dev", &dev]);
    // The route check sees it as soon as the kernel has it (even on a link that is down).
    ip(&["link", "set", &dev, "up"]);
    assert_eq!(reach.check(addr), Err(Unreachable::HostLocal));
    // The interface list follows (netlink event).
    eventually("the address list has the new address", || addrs.contains(addr));
    // Down, the address is still the host's: still refused.
    ip(&["link", "set", &dev, "down"]);
    eventually("a down interface's address is refused", || {
        reach.check(addr) == Err(Unreachable::HostLocal)
    });

    drop(dummy);
    eventually("the address list dropped the removed address", || {
        !addrs.contains(addr)
    });
    assert_eq!(reach.check(addr), Ok(()));
}
