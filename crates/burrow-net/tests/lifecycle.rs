//! Setup, attach, detach and teardown against the real kernel: what exists afterwards.
//! Needs root, iproute2 and nft.

mod common;

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use burrow_net::{HostNet, Mode, in_netns};
use common::*;

fn eth0_addrs(ns: &Path) -> Vec<(Ipv4Addr, u8)> {
    in_netns(ns, || {
        Ok(nix::ifaddrs::getifaddrs()?
            .filter(|i| i.interface_name == "eth0")
            .filter_map(|i| {
                let a = i.address?.as_sockaddr_in()?.ip();
                let m = i.netmask?.as_sockaddr_in()?.ip();
                Some((a, u32::from(m).count_ones() as u8))
            })
            .collect())
    })
    .unwrap()
}

fn nft_set(env: &Env, family: &str, set: &str) -> String {
    sh(&["nft", "list", "set", family, env.net.table(), set])
}

/// Whether `addr` is one of the addresses in an `nft list set` output (whole words: .2 is
/// not .200).
fn lists(elems: &str, addr: Ipv4Addr) -> bool {
    elems
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|w| w == addr.to_string())
}

#[test]
fn attach_is_idempotent_and_detach_leaves_nothing() {
    let env = Env::new();
    let a = env.sandbox();
    let veth = env.net.veth_name(&a.id);
    assert!(veth.len() <= 15);
    assert_eq!(a.path, Path::new("/run/netns").join(env.net.netns_name(&a.id)));
    assert_eq!(env.net.attach(&a.id, a.addr).unwrap(), a.path, "second attach");
    assert_eq!(env.net.attached().unwrap(), vec![a.id.clone()]);

    // Inside: lo up, one address on eth0, default route via the gateway, no IPv6.
    let ns = env.net.netns_name(&a.id);
    assert!(sh(&["ip", "-n", &ns, "-o", "link", "show", "lo"]).contains(",UP"));
    assert_eq!(eth0_addrs(&a.path), vec![(a.addr, 24)]);
    let route = sh(&["ip", "-n", &ns, "route", "show", "default"]);
    assert!(
        route.contains(&format!("via {} dev eth0", env.net.gateway())),
        "{route}"
    );
    let v6 = in_netns(&a.path, || {
        fs::read_to_string("/proc/sys/net/ipv6/conf/eth0/disable_ipv6")
    })
    .unwrap();
    assert_eq!(v6.trim(), "1");
    assert!(sh(&["ip", "-n", &ns, "-6", "addr", "show"]).trim().is_empty());
    // Outside: an isolated port of the bridge.
    let link = sh(&["ip", "-d", "link", "show", &veth]);
    assert!(link.contains(&format!("master {}", env.net.bridge())), "{link}");
    assert!(link.contains("isolated on"), "{link}");
    assert!(link.contains("state UP"), "{link}");
    assert!(nft_set(&env, "bridge", "ports").contains(&format!("\"{veth}\" . {}", a.addr)));

    // Re-attaching with another address replaces the old one everywhere: on eth0, in the
    // bridge port's element and in every mode set (the namespace now serves another
    // address, as when a cold sandbox is woken in a pre-started one's namespace). The
    // control: before, the old address is in its sets, as the probe sees.
    env.net.set_mode(a.addr, Mode::Policy, true).unwrap();
    env.net
        .admit(a.addr, env.fake.ns_ip, Duration::from_secs(60))
        .unwrap();
    for set in ["policy_mode", "transparent", "allowed"] {
        assert!(
            nft_set(&env, "inet", set).contains(&a.addr.to_string()),
            "control: {set}"
        );
    }
    let moved = env.cfg.subnet.host(200).unwrap();
    env.net.attach_in_mode(&a.id, moved, Mode::Open, true).unwrap();
    assert_eq!(eth0_addrs(&a.path), vec![(moved, 24)]);
    let ports = nft_set(&env, "bridge", "ports");
    assert!(
        ports.contains(&moved.to_string()) && !ports.contains(&format!("{} ", a.addr)),
        "{ports}"
    );
    for set in ["open", "policy_mode", "transparent", "allowed"] {
        let elems = nft_set(&env, "inet", set);
        assert!(!lists(&elems, a.addr), "{set} still has {}: {elems}", a.addr);
    }
    for set in ["open", "transparent"] {
        assert!(lists(&nft_set(&env, "inet", set), moved), "{set} lacks {moved}");
    }

    env.net.set_mode(moved, Mode::Open, true).unwrap();
    env.net
        .admit(moved, env.fake.ns_ip, Duration::from_secs(60))
        .unwrap();
    assert_eq!(env.net.admitted(moved).unwrap(), vec![env.fake.ns_ip]);

    env.net.detach(&a.id).unwrap();
    env.net.detach(&a.id).unwrap();
    assert!(!a.path.exists());
    assert!(!Path::new("/sys/class/net").join(&veth).exists());
    assert!(!sh(&["ip", "netns", "list"]).contains(&ns));
    assert!(env.net.attached().unwrap().is_empty());
    for set in ["open", "policy_mode", "transparent", "allowed"] {
        assert!(
            !nft_set(&env, "inet", set).contains(&moved.to_string()),
            "{set} still has {moved}"
        );
    }
    assert!(!nft_set(&env, "bridge", "ports").contains(&veth));
    // Never-attached ids detach fine too.
    env.net.detach("never").unwrap();
}

#[test]
fn bad_input_is_refused() {
    let env = Env::new();
    let gw = env.net.gateway();
    assert!(env.net.attach("x", gw).is_err(), "gateway address");
    assert!(
        env.net.attach("x", Ipv4Addr::new(192, 0, 2, 1)).is_err(),
        "outside subnet"
    );
    assert!(
        env.net.attach("x", env.cfg.subnet.broadcast()).is_err(),
        "broadcast"
    );
    assert!(
        env.net.attach("../x", env.cfg.subnet.host(9).unwrap()).is_err(),
        "id"
    );
    let mut cfg = env.cfg.clone();
    cfg.tag = "Bad!".into();
    let err = HostNet::setup(cfg).unwrap_err().to_string();
    assert!(err.contains("invalid network tag"), "{err}");
    // Another daemon (another tag) on a subnet this one's bridge already has: refused, the
    // bridge named (its replies would go to the other bridge). Control: the same tag sets up
    // again on the same bridge (setup_again_rebuilds_the_rules_and_keeps_sandboxes).
    let mut cfg = env.cfg.clone();
    let (head, last) = env.cfg.tag.split_at(env.cfg.tag.len() - 1);
    cfg.tag = format!("{head}{}", if last == "y" { "z" } else { "y" });
    let err = HostNet::setup(cfg).unwrap_err().to_string();
    assert!(
        err.contains("already in use") && err.contains(env.net.bridge()),
        "{err}"
    );
    assert!(env.net.attached().unwrap().is_empty());
}

#[test]
fn setup_again_rebuilds_the_rules_and_keeps_sandboxes() {
    let env = Env::new();
    let a = env.sandbox();
    let held = TcpServer::start(Some(&a.path), "0.0.0.0:7000".parse().unwrap(), greet);
    env.net.set_mode(a.addr, Mode::Open, false).unwrap();
    assert_reaches(&a.path, env.site(WEB_PORT));

    let ifindex = || fs::read_to_string(format!("/sys/class/net/{}/ifindex", env.net.bridge())).unwrap();
    let before = ifindex();
    sh(&[
        "nft",
        "add",
        "set",
        "inet",
        env.net.table(),
        "junk",
        "{ type ipv4_addr; }",
    ]);
    sh(&[
        "nft",
        "add",
        "element",
        "inet",
        env.net.table(),
        "open",
        "{ 10.0.0.9 }",
    ]);

    // A daemon restart.
    let again = HostNet::setup(env.cfg.clone()).unwrap();
    assert_eq!(ifindex(), before, "the bridge is reused");
    let table = sh(&["nft", "list", "table", "inet", again.table()]);
    assert!(
        !table.contains("junk") && !table.contains("10.0.0.9"),
        "old state survived:\n{table}"
    );
    // Modes start empty: the sandbox is cut off until its mode is re-applied...
    assert_blocked(&a.path, &[env.site(WEB_PORT)]);
    again.set_mode(a.addr, Mode::Open, false).unwrap();
    // ...and then works, which needs the rebuilt anti-spoofing entry for its port.
    assert_reaches(&a.path, env.site(WEB_PORT));
    assert_eq!(again.attach(&a.id, a.addr).unwrap(), a.path);
    assert_eq!(again.attached().unwrap(), vec![a.id.clone()]);
    // The sandbox's own sockets survived all of it.
    assert!(tcp_talk_host(std::net::SocketAddrV4::new(a.addr, held.addr.port())).is_ok());
    assert_reaches(&a.path, env.site(WEB_PORT));
}

#[test]
fn teardown_removes_everything() {
    let env = Env::new();
    let a = env.sandbox();
    let b = env.sandbox();
    env.net.set_mode(a.addr, Mode::Open, false).unwrap();
    let table = env.net.table().to_owned();
    let veths = [env.net.veth_name(&a.id), env.net.veth_name(&b.id)];

    env.net.teardown().unwrap();
    env.net.teardown().unwrap();
    let tables = sh(&["nft", "list", "tables"]);
    assert!(!tables.contains(&table), "{tables}");
    assert!(!a.path.exists() && !b.path.exists());
    for dev in veths.iter().chain([&env.net.bridge().to_owned()]) {
        assert!(
            !Path::new("/sys/class/net").join(dev).exists(),
            "{dev} left behind"
        );
    }
    assert!(env.net.attached().unwrap().is_empty());
}

/// Set element edits are one transaction: when one is refused (here the inet table is gone),
/// none is applied (the bridge port of the same attach is not added either), and the error
/// names the edit refused. The control: with the tables rebuilt by a setup, the same attach
/// adds the port, seen by the same probe.
#[test]
fn element_edits_are_all_or_nothing_and_name_the_one_refused() {
    let env = Env::new();
    sh(&["nft", "delete", "table", "inet", env.net.table()]);
    let id = "atomic";
    let addr = env.cfg.subnet.host(77).unwrap();
    let veth = env.net.veth_name(id);
    let e = env
        .net
        .attach_in_mode(id, addr, Mode::Open, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("add element inet {} open", env.net.table())),
        "{e}"
    );
    assert!(
        !nft_set(&env, "bridge", "ports").contains(&veth),
        "a refused transaction added the port"
    );

    let net = HostNet::setup(env.cfg.clone()).unwrap();
    net.attach_in_mode(id, addr, Mode::Open, false).unwrap();
    assert!(nft_set(&env, "bridge", "ports").contains(&veth));
    assert!(nft_set(&env, "inet", "open").contains(&addr.to_string()));
    net.detach(id).unwrap();
}
