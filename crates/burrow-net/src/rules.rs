//! The nftables text: the whole ruleset (rebuilt on every `setup`) and the single-element
//! edits behind `set_mode`, `admit` and `attach`.
//!
//! Two tables per daemon, both named `burrow_<tag>`:
//! - `inet`: the egress policy. Per-sandbox state lives only in sets (`open`, `policy_mode`,
//!   `transparent`, `allowed`), so a mode change is an element update, never a rule change.
//!   (`policy` is an nft keyword, hence `policy_mode`.)
//! - `bridge`: anti-spoofing on the bridge ports. A frame from a sandbox's port must carry
//!   that sandbox's IPv4 address (IP and ARP); everything else (IPv6, VLAN, other
//!   ethertypes) is dropped. Without it a sandbox could send as a neighbour's address to use
//!   the neighbour's admitted destinations, or poison the host's ARP entry and receive the
//!   neighbour's traffic.
//!
//! nft 1.0.6 has no `destroy element` and `add element` does not refresh a timeout, so
//! removals are written `add` + `delete` in one transaction (which cannot fail on a missing
//! element) and a refresh is `add` + `delete` + `add`.

use std::fmt::Write;
use std::net::Ipv4Addr;

use crate::cidr::minimal;
use crate::{Cidr, NetConfig};

/// Ranges no sandbox may reach in any mode (the daemon's own subnet is added to these).
pub const BLOCKED: [Cidr; 9] = [
    cidr(0, 0, 0, 0, 8),      // "this" network
    cidr(10, 0, 0, 0, 8),     // private
    cidr(100, 64, 0, 0, 10),  // carrier-grade NAT
    cidr(127, 0, 0, 0, 8),    // loopback
    cidr(169, 254, 0, 0, 16), // link-local, including 169.254.169.254 (cloud metadata)
    cidr(172, 16, 0, 0, 12),  // private
    cidr(192, 168, 0, 0, 16), // private
    cidr(224, 0, 0, 0, 4),    // multicast
    cidr(240, 0, 0, 0, 4),    // reserved and broadcast
];

const fn cidr(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
    Cidr {
        addr: Ipv4Addr::new(a, b, c, d),
        prefix,
    }
}

/// What the ruleset needs besides the configuration.
pub(crate) struct Names<'a> {
    pub table: &'a str,
    pub bridge: &'a str,
    pub gateway: Ipv4Addr,
    pub port_group: u32,
}

/// The whole ruleset, replacing any previous one of this tag in one transaction: the
/// `add`/`delete` pair first makes the delete valid whether or not the table exists.
/// `ports` are the (host veth, sandbox address) pairs already attached.
pub(crate) fn ruleset(cfg: &NetConfig, n: &Names<'_>, ports: &[(String, Ipv4Addr)]) -> String {
    let Names {
        table,
        bridge,
        gateway,
        port_group,
    } = *n;
    let subnet = cfg.subnet;
    let mut blocked = BLOCKED.to_vec();
    blocked.push(subnet);
    let blocked = elements(minimal(&blocked));
    let mut tcp_ports = vec![
        cfg.dns_port,
        cfg.proxy_port,
        cfg.transparent_http_port,
        cfg.transparent_tls_port,
    ];
    tcp_ports.sort_unstable();
    tcp_ports.dedup();
    let tcp_ports = tcp_ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let (uplink_set, uplink_rule) = match &cfg.uplink_only {
        None => (String::new(), String::new()),
        Some(list) => (
            format!(
                "\tset uplink {{\n\t\ttype ipv4_addr; flags interval;{}\n\t}}\n",
                match minimal(list) {
                    l if l.is_empty() => String::new(),
                    l => format!("\n\t\telements = {{ {} }}", elements(l)),
                }
            ),
            "\t\tip daddr != @uplink drop\n".to_owned(),
        ),
    };
    let ports = match ports {
        [] => String::new(),
        p => format!(
            "\n\t\telements = {{ {} }}",
            p.iter()
                .map(|(veth, a)| port_elem(veth, *a))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let http = cfg.transparent_http_port;
    let tls = cfg.transparent_tls_port;
    let dns = cfg.dns_port;
    format!(
        "\
add table inet {table}
delete table inet {table}
table inet {table} {{
	set open {{ type ipv4_addr; }}
	set policy_mode {{ type ipv4_addr; }}
	set transparent {{ type ipv4_addr; }}
	set allowed {{ type ipv4_addr . ipv4_addr; flags timeout; }}
	set blocked {{
		type ipv4_addr; flags interval;
		elements = {{ {blocked} }}
	}}
{uplink_set}
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		iifname \"{bridge}\" ip saddr @transparent ip daddr != {gateway} tcp dport 80 dnat ip to {gateway}:{http}
		iifname \"{bridge}\" ip saddr @transparent ip daddr != {gateway} tcp dport 443 dnat ip to {gateway}:{tls}
	}}

	chain input {{
		type filter hook input priority filter; policy accept;
		iifname \"{bridge}\" jump input_from_sandbox
	}}

	chain input_from_sandbox {{
		meta nfproto ipv6 drop
		ip saddr != {subnet} drop
		ct state established,related accept
		ip daddr {gateway} udp dport {dns} accept
		ip daddr {gateway} tcp dport {{ {tcp_ports} }} accept
		drop
	}}

	chain forward {{
		type filter hook forward priority filter; policy accept;
		oifname \"{bridge}\" jump forward_to_sandbox
		iifname \"{bridge}\" jump forward_from_sandbox
	}}

	chain forward_to_sandbox {{
		ct state established,related accept
		drop
	}}

	chain forward_from_sandbox {{
		meta nfproto ipv6 drop
		ip saddr != {subnet} drop
		ip daddr @blocked drop
{uplink_rule}\t\tip saddr @open accept
		ip saddr @policy_mode ct state established,related accept
		ip saddr @policy_mode ip saddr . ip daddr @allowed accept
		drop
	}}

	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr {subnet} oifname != \"{bridge}\" masquerade
	}}
}}
add table bridge {table}
delete table bridge {table}
table bridge {table} {{
	set ports {{
		type ifname . ipv4_addr;{ports}
	}}

	chain prerouting {{
		type filter hook prerouting priority filter; policy accept;
		iifgroup {port_group} jump from_sandbox
	}}

	chain from_sandbox {{
		iifname . ip saddr @ports accept
		iifname . arp saddr ip @ports accept
		drop
	}}
}}
"
    )
}

fn elements(cidrs: Vec<Cidr>) -> String {
    cidrs.iter().map(Cidr::to_string).collect::<Vec<_>>().join(", ")
}

pub(crate) fn port_elem(veth: &str, addr: Ipv4Addr) -> String {
    format!("\"{veth}\" . {addr}")
}

/// An element of one of the sets element edits touch.
#[derive(Debug, Clone)]
pub(crate) enum Elem {
    /// `ipv4_addr` (the mode sets).
    Addr(Ipv4Addr),
    /// `ifname . ipv4_addr` (the bridge's `ports`).
    Port(String, Ipv4Addr),
    /// `ipv4_addr . ipv4_addr` (`allowed`).
    Pair(Ipv4Addr, Ipv4Addr),
}

impl Elem {
    /// The element as nft writes it.
    pub fn text(&self) -> String {
        match self {
            Elem::Addr(a) => a.to_string(),
            Elem::Port(veth, a) => port_elem(veth, *a),
            Elem::Pair(a, b) => format!("{a} . {b}"),
        }
    }

    /// The element's key as the kernel stores it: each field in network order, padded to
    /// 4 bytes (an `ifname` is 16 bytes, NUL-padded).
    pub fn key(&self) -> Vec<u8> {
        match self {
            Elem::Addr(a) => a.octets().to_vec(),
            Elem::Port(veth, a) => {
                let mut key = vec![0u8; 16];
                let name = veth.as_bytes();
                key[..name.len().min(15)].copy_from_slice(&name[..name.len().min(15)]);
                key.extend_from_slice(&a.octets());
                key
            }
            Elem::Pair(a, b) => [a.octets(), b.octets()].concat(),
        }
    }
}

/// One element edit: added (with a timeout, if any) or deleted.
#[derive(Debug, Clone)]
pub(crate) struct ElemOp {
    /// `inet` or `bridge`.
    pub family: &'static str,
    pub table: String,
    pub set: &'static str,
    pub elem: Elem,
    pub add: bool,
    pub timeout_ms: Option<u64>,
}

/// Element edits, applied as one transaction (see `netlink::apply_elems`); `script` is the
/// same edits as an nft script, for messages.
#[derive(Default)]
pub(crate) struct Edits {
    script: String,
    ops: Vec<ElemOp>,
}

impl Edits {
    pub fn script(&self) -> &str {
        &self.script
    }

    pub fn ops(&self) -> &[ElemOp] {
        &self.ops
    }

    fn push(
        &mut self,
        family: &'static str,
        table: &str,
        set: &'static str,
        elem: &Elem,
        add: bool,
        timeout_ms: Option<u64>,
    ) {
        let verb = if add { "add" } else { "delete" };
        let timeout = timeout_ms
            .map(|ms| format!(" timeout {ms}ms"))
            .unwrap_or_default();
        let _ = writeln!(
            self.script,
            "{verb} element {family} {table} {set} {{ {}{timeout} }}",
            elem.text()
        );
        self.ops.push(ElemOp {
            family,
            table: table.to_owned(),
            set,
            elem: elem.clone(),
            add,
            timeout_ms,
        });
    }

    /// Makes `elem` present in (or absent from) `family table set`, whatever its state was
    /// (an add first: deleting an element that is not there would fail the transaction).
    pub fn ensure(
        &mut self,
        family: &'static str,
        table: &str,
        set: &'static str,
        elem: &Elem,
        present: bool,
    ) {
        self.push(family, table, set, elem, true, None);
        if !present {
            self.push(family, table, set, elem, false, None);
        }
    }

    /// Adds `elem` with a fresh timeout, replacing any existing element and its timeout.
    pub fn refresh(
        &mut self,
        family: &'static str,
        table: &str,
        set: &'static str,
        elem: &Elem,
        timeout_ms: u64,
    ) {
        self.ensure(family, table, set, elem, false);
        self.push(family, table, set, elem, true, Some(timeout_ms));
    }
}

/// The `(src, dst)` pairs in an `nft -j list set` answer for the `allowed` set. Elements come
/// either bare (`{"concat": [..]}`) or wrapped with their timeout (`{"elem": {"val": ..}}`);
/// any object holding a two-address `concat` is taken.
pub(crate) fn parse_pairs(json: &serde_json::Value, out: &mut Vec<(Ipv4Addr, Ipv4Addr)>) {
    match json {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(parts)) = map.get("concat") {
                let ips: Vec<Ipv4Addr> = parts.iter().filter_map(|p| p.as_str()?.parse().ok()).collect();
                if let [a, b] = ips[..] {
                    out.push((a, b));
                }
                return;
            }
            map.values().for_each(|v| parse_pairs(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| parse_pairs(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn example_config() -> NetConfig {
        NetConfig {
            tag: "ex1".to_owned(),
            subnet: "10.88.0.0/16".parse().unwrap(),
            dns_port: 53,
            proxy_port: 3128,
            transparent_http_port: 3080,
            transparent_tls_port: 3443,
            uplink_only: Some(vec!["198.18.0.0/15".parse().unwrap()]),
        }
    }

    fn example() -> String {
        let cfg = example_config();
        let names = Names {
            table: "burrow_ex1",
            bridge: "bwex1br",
            gateway: Ipv4Addr::new(10, 88, 0, 1),
            port_group: crate::names::port_group("ex1"),
        };
        ruleset(
            &cfg,
            &names,
            &[("bwex1ABCDEFGHIJ".to_owned(), Ipv4Addr::new(10, 88, 0, 2))],
        )
    }

    /// `cargo test -p burrow-net ruleset_example -- --nocapture` prints the generated text.
    #[test]
    fn ruleset_example() {
        let text = example();
        println!("{text}");
        // The daemon's own 10.x subnet is covered by 10/8 and must not be listed twice.
        assert!(text.contains("elements = { 0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10,"));
        assert!(!text.contains("10.88.0.0/16,"));
        let fwd = text.split("chain forward_from_sandbox").nth(1).unwrap();
        let pos = |s: &str| fwd.find(s).unwrap_or_else(|| panic!("{s} missing"));
        assert!(pos("@blocked drop") < pos("@uplink drop"));
        assert!(pos("@uplink drop") < pos("@open accept"));
        assert!(pos("@open accept") < pos("@allowed accept"));
        assert!(text.contains("elements = { \"bwex1ABCDEFGHIJ\" . 10.88.0.2 }"));
        assert!(
            text.lines()
                .filter(|l| !l.is_empty())
                .all(|l| l.starts_with(['\t', 'a', 'd', 't', '}']))
        );
    }

    #[test]
    fn ruleset_without_uplink_or_ports() {
        let mut cfg = example_config();
        cfg.uplink_only = None;
        cfg.proxy_port = 53;
        let names = Names {
            table: "t",
            bridge: "b",
            gateway: Ipv4Addr::new(10, 88, 0, 1),
            port_group: 7,
        };
        let text = ruleset(&cfg, &names, &[]);
        assert!(!text.contains("uplink"));
        assert!(text.contains("tcp dport { 53, 3080, 3443 }"));
        assert!(text.contains("type ifname . ipv4_addr;\n\t}"));
    }

    #[test]
    fn parse_listing() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet",
            "name": "allowed", "table": "burrow_x", "type": ["ipv4_addr", "ipv4_addr"], "flags": ["timeout"],
            "elem": [{"elem": {"val": {"concat": ["10.0.0.2", "1.2.3.4"]}, "timeout": 100, "expires": 99}},
                     {"concat": ["10.0.0.3", "5.6.7.8"]}]}}]}"#;
        let mut out = Vec::new();
        parse_pairs(&serde_json::from_str(json).unwrap(), &mut out);
        assert_eq!(
            out,
            vec![
                (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(1, 2, 3, 4)),
                (Ipv4Addr::new(10, 0, 0, 3), Ipv4Addr::new(5, 6, 7, 8))
            ]
        );
    }
}
