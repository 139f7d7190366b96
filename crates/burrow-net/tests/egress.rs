//! Traffic from real sandbox namespaces through the real ruleset, to a fake internet made by
//! the test (see `common`). Needs root, iproute2 and nft.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use burrow_net::{Cidr, Mode};
use common::*;

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

#[test]
fn none_is_cut_off_and_open_is_masqueraded() {
    let env = Env::new();
    let a = env.sandbox();
    assert_blocked(&a.path, &[env.site(WEB_PORT)]);
    env.net.set_mode(a.addr, Mode::None, false).unwrap();
    assert_blocked(&a.path, &[env.site(WEB_PORT)]);

    env.net.set_mode(a.addr, Mode::Open, false).unwrap();
    let reply = assert_reaches(&a.path, env.site(WEB_PORT));
    assert!(
        reply.starts_with(&format!("peer={}:", env.fake.host_ip)),
        "not masqueraded: {reply}"
    );

    env.net.set_mode(a.addr, Mode::None, false).unwrap();
    assert_blocked(&a.path, &[env.site(WEB_PORT)]);
}

#[test]
fn a_mode_change_applies_to_open_connections() {
    let env = Env::new();
    let a = env.sandbox();
    env.net.set_mode(a.addr, Mode::Open, false).unwrap();
    let mut conn = Conn::open(&a.path, env.site(WEB_PORT));
    assert_eq!(conn.echo("one").unwrap(), "one");
    env.net.set_mode(a.addr, Mode::None, false).unwrap();
    assert!(
        conn.echo("two").is_err(),
        "an established connection outlived mode none"
    );
}

#[test]
fn policy_allows_only_admitted_destinations() {
    let env = Env::new();
    let a = env.sandbox();
    let b = env.sandbox();
    let site = env.site(WEB_PORT);
    let site2 = at(SITE2, WEB_PORT);
    env.net.set_mode(a.addr, Mode::Policy, false).unwrap();
    env.net.set_mode(b.addr, Mode::Policy, false).unwrap();
    assert_blocked(&a.path, &[site, site2]);

    env.net
        .admit(a.addr, env.fake.ns_ip, Duration::from_secs(60))
        .unwrap();
    let reply = assert_reaches(&a.path, site);
    assert!(
        reply.starts_with(&format!("peer={}:", env.fake.host_ip)),
        "{reply}"
    );
    // Only that destination, and only for that sandbox.
    assert_blocked(&a.path, &[site2]);
    assert_blocked(&b.path, &[site]);
    assert_eq!(env.net.admitted(a.addr).unwrap(), vec![env.fake.ns_ip]);
    assert!(env.net.admitted(b.addr).unwrap().is_empty());

    // Re-admitting refreshes instead of duplicating; an admission expires on its own.
    env.net
        .admit(a.addr, env.fake.ns_ip, Duration::from_secs(120))
        .unwrap();
    env.net.admit(a.addr, SITE2, Duration::from_millis(300)).unwrap();
    assert_eq!(env.net.admitted(a.addr).unwrap(), vec![env.fake.ns_ip, SITE2]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.net.admitted(a.addr).unwrap().contains(&SITE2) {
        assert!(Instant::now() < deadline, "admission did not expire");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_blocked(&a.path, &[site2]);
    assert_reaches(&a.path, site);

    // Leaving policy forgets the admissions.
    env.net.set_mode(a.addr, Mode::Open, false).unwrap();
    assert!(env.net.admitted(a.addr).unwrap().is_empty());
    env.net.set_mode(a.addr, Mode::Policy, false).unwrap();
    assert_blocked(&a.path, &[site]);
}

/// A sandbox's admissions go with it: after its detach, a sandbox given the same address
/// in policy mode starts with none and reaches nothing (the control: before the detach the
/// admission is listed and used). A detach of a sandbox never admitted anywhere leaves the
/// other's admission alone.
#[test]
fn a_detach_drops_the_admissions_of_its_address() {
    let env = Env::new();
    let a = env.sandbox();
    let b = env.sandbox();
    let site = env.site(WEB_PORT);
    env.net.set_mode(a.addr, Mode::Policy, false).unwrap();
    env.net.set_mode(b.addr, Mode::Policy, false).unwrap();
    env.net
        .admit(a.addr, env.fake.ns_ip, Duration::from_secs(600))
        .unwrap();
    env.net
        .admit(b.addr, env.fake.ns_ip, Duration::from_secs(600))
        .unwrap();
    assert_reaches(&a.path, site);
    assert_eq!(env.net.admitted(a.addr).unwrap(), vec![env.fake.ns_ip]);

    let c = env.sandbox();
    env.net.detach(&c.id).unwrap();
    assert_eq!(
        env.net.admitted(b.addr).unwrap(),
        vec![env.fake.ns_ip],
        "a detach of another address kept b's"
    );
    env.net.detach(&a.id).unwrap();
    assert!(env.net.admitted(a.addr).unwrap().is_empty());
    let again = env.net.attach("again", a.addr).unwrap();
    env.net.set_mode(a.addr, Mode::Policy, false).unwrap();
    assert_blocked(&again, &[site]);
    env.net.detach("again").unwrap();
}

#[test]
fn blocked_ranges_and_host_services_are_unreachable_even_when_open() {
    // The private targets are on the uplink list, so only the blocked list can stop them.
    let extra = PRIVATE_TARGETS
        .iter()
        .map(|ip| Cidr::new(*ip, 32).unwrap())
        .collect();
    let env = Env::with_uplink(Some(extra));
    let a = env.sandbox();
    env.net.set_mode(a.addr, Mode::Open, true).unwrap();
    assert_reaches(&a.path, env.site(WEB_PORT));
    for ip in PRIVATE_TARGETS {
        // Control: there is a route, so only the firewall stands in the way.
        let route = sh(&[
            "ip",
            "route",
            "get",
            &ip.to_string(),
            "from",
            &a.addr.to_string(),
            "iif",
            env.net.bridge(),
        ]);
        assert!(route.contains(&format!("via {}", env.fake.ns_ip)), "{route}");
    }
    let targets: Vec<_> = PRIVATE_TARGETS.iter().map(|ip| at(*ip, WEB_PORT)).collect();
    assert_blocked(&a.path, &targets);

    // Host services: on the gateway (another port), on another host address, on 0.0.0.0.
    let on_gateway = TcpServer::start(None, env.gw(0), greet);
    let on_fake_side = TcpServer::start(None, at(env.fake.host_ip, 0), greet);
    let on_any = TcpServer::start(None, at(Ipv4Addr::UNSPECIFIED, 0), greet);
    for control in [
        on_gateway.addr,
        on_fake_side.addr,
        at(Ipv4Addr::LOCALHOST, on_any.addr.port()),
    ] {
        tcp_talk_host(control).unwrap_or_else(|e| panic!("control {control}: {e}"));
    }
    assert_blocked(
        &a.path,
        &[on_gateway.addr, on_fake_side.addr, env.gw(on_any.addr.port())],
    );
    assert!(udp_talk(&a.path, None, env.gw(on_any.addr.port()), "x").is_err());
}

#[test]
fn sandboxes_cannot_reach_or_impersonate_each_other() {
    let env = Env::new();
    let a = env.sandbox();
    let b = env.sandbox();
    env.net.set_mode(a.addr, Mode::Open, false).unwrap();
    env.net.set_mode(b.addr, Mode::Open, false).unwrap();
    let in_b = TcpServer::start(Some(&b.path), at(Ipv4Addr::UNSPECIFIED, 7000), greet);
    let in_a = TcpServer::start(Some(&a.path), at(Ipv4Addr::UNSPECIFIED, 7000), greet);
    tcp_talk_host(at(b.addr, in_b.addr.port())).expect("control: host reaches b");
    tcp_talk_host(at(a.addr, in_a.addr.port())).expect("control: host reaches a");
    assert_blocked(&a.path, &[at(b.addr, 7000)]);
    assert_blocked(&b.path, &[at(a.addr, 7000)]);
    let arp = sh(&[
        "ip",
        "-n",
        &env.net.netns_name(&a.id),
        "neigh",
        "show",
        &b.addr.to_string(),
    ]);
    assert!(!arp.contains("lladdr"), "a learned b's MAC: {arp}");

    // a (mode none) sends as b (mode open): the datagram must never arrive.
    env.net.set_mode(a.addr, Mode::None, false).unwrap();
    let udp = UdpServer::start(Some(&env.fake.path), at(Ipv4Addr::UNSPECIFIED, 9000));
    let site = env.site(9000);
    let reply = udp_talk(&b.path, None, site, "from-b").expect("control: b reaches the site");
    assert!(reply.ends_with("from-b"));
    assert_eq!(udp.received.recv_timeout(TIMEOUT).unwrap().1, "from-b");
    let a_ns = env.net.netns_name(&a.id);
    sh(&[
        "ip",
        "-n",
        &a_ns,
        "addr",
        "add",
        &format!("{}/32", b.addr),
        "dev",
        "eth0",
        "noprefixroute",
    ]);
    assert!(udp_talk(&a.path, Some(at(b.addr, 0)), site, "spoofed").is_err());
    if let Ok((peer, payload)) = udp.received.recv_timeout(Duration::from_millis(500)) {
        panic!("the site received {payload:?} from {peer}");
    }
}

#[test]
fn gateway_dns_and_proxy_ports_are_reachable_in_every_mode() {
    let env = Env::new();
    let a = env.sandbox();
    let servers: Vec<_> = [DNS_PORT, PROXY_PORT, THTTP_PORT, TTLS_PORT]
        .map(|p| TcpServer::start(None, env.gw(p), greet))
        .into();
    let dns = UdpServer::start(None, env.gw(DNS_PORT));
    for mode in [Mode::None, Mode::Policy, Mode::Open] {
        env.net.set_mode(a.addr, mode, false).unwrap();
        for s in &servers {
            let reply = assert_reaches(&a.path, s.addr);
            assert!(reply.starts_with(&format!("peer={}:", a.addr)), "{reply}");
        }
        let reply = udp_talk(&a.path, None, env.gw(DNS_PORT), "query").expect("dns over udp");
        assert!(
            reply.starts_with(&format!("from={}:", a.addr)) && reply.ends_with("query"),
            "{reply}"
        );
    }
    drop(dns);
}

#[test]
fn transparent_mode_redirects_web_ports_and_keeps_the_original_destination() {
    let env = Env::new();
    let a = env.sandbox();
    let b = env.sandbox();
    let _http = TcpServer::start(None, env.gw(THTTP_PORT), tell_original_dst);
    let _tls = TcpServer::start(None, env.gw(TTLS_PORT), tell_original_dst);
    env.net.set_mode(a.addr, Mode::Open, true).unwrap();
    env.net.set_mode(b.addr, Mode::Open, false).unwrap();

    assert_eq!(
        tcp_talk(&a.path, env.site(80)).unwrap(),
        format!("orig={}", env.site(80))
    );
    assert_eq!(
        tcp_talk(&a.path, env.site(443)).unwrap(),
        format!("orig={}", env.site(443))
    );
    // Other ports, and sandboxes not in transparent mode, go straight out.
    assert!(assert_reaches(&a.path, env.site(WEB_PORT)).starts_with("peer="));
    assert!(assert_reaches(&b.path, env.site(80)).starts_with("peer="));
    // Connecting to the proxy port directly is not a redirect: the original is the gateway.
    assert_eq!(
        tcp_talk(&b.path, env.gw(THTTP_PORT)).unwrap(),
        format!("orig={}", env.gw(THTTP_PORT))
    );

    env.net.set_mode(a.addr, Mode::Open, false).unwrap();
    assert!(assert_reaches(&a.path, env.site(80)).starts_with("peer="));
}

#[test]
fn uplink_only_drops_destinations_outside_the_list() {
    let env = Env::new();
    let a = env.sandbox();
    env.net.set_mode(a.addr, Mode::Open, false).unwrap();
    assert_reaches(&a.path, env.site(WEB_PORT));
    assert_reaches(&a.path, at(SITE2, WEB_PORT)); // 198.19/16 is inside 198.18.0.0/15
    assert_blocked(&a.path, &[at(OUTSIDE_UPLINK, WEB_PORT)]);

    // Control: without the restriction the same destination is reachable (through the fake
    // internet, where the test's routing rule sends everything).
    let mut cfg = env.cfg.clone();
    cfg.uplink_only = None;
    let unrestricted = burrow_net::HostNet::setup(cfg).unwrap();
    unrestricted.set_mode(a.addr, Mode::Open, false).unwrap();
    assert_reaches(&a.path, at(OUTSIDE_UPLINK, WEB_PORT));
}
