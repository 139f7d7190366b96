//! `HostNet`: one daemon's bridge, its sandboxes' namespaces and veths, and its nft tables.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cmd::{ip_batch, nft_apply, nft_output};
use crate::config::validate_id;
use crate::netlink::{self, Rtnl};
use crate::rules::{self, Edits, Elem, Names};
use crate::sys::{self, in_netns};
use crate::{Mode, NetConfig, NetError, Result, names};

/// The interface name of a sandbox's end of its veth, inside its namespace.
const SANDBOX_IF: &str = "eth0";
/// nft stores element timeouts in milliseconds; cap admissions at a generous 30 days.
const MAX_ADMIT: Duration = Duration::from_secs(30 * 24 * 3600);

/// One daemon's host networking. Cheap to share: every method takes `&self` and the state
/// is in the kernel, so a restarted daemon picks up where the last one left off (the one
/// thing kept here, which sources were ever admitted somewhere, starts empty with the set
/// it describes).
#[derive(Debug)]
pub struct HostNet {
    cfg: NetConfig,
    gateway: Ipv4Addr,
    bridge: String,
    table: String,
    port_group: u32,
    /// Sources that may have pairs in the `allowed` set: only [`HostNet::admit`] adds pairs,
    /// and [`HostNet::setup`] starts the set empty. A detach or a mode change of any other
    /// address has none to drop, and skips listing the set (an `nft` process).
    admitted_srcs: std::sync::Mutex<std::collections::HashSet<Ipv4Addr>>,
}

impl HostNet {
    /// Prepares the host, idempotently: both nft tables rebuilt from scratch in one
    /// transaction, the bridge (created or reused, gateway address on it, up, fixed MAC, IPv6
    /// off), and `net.ipv4.ip_forward=1`. Mode sets start empty, so the caller re-applies every sandbox's mode; the
    /// anti-spoofing port list is rebuilt here from the namespaces that exist.
    pub fn setup(cfg: NetConfig) -> Result<HostNet> {
        cfg.validate()?;
        let gateway = cfg.subnet.host(1).expect("validated subnet has hosts");
        let net = HostNet {
            gateway,
            bridge: names::bridge(&cfg.tag),
            table: names::table(&cfg.tag),
            port_group: names::port_group(&cfg.tag),
            cfg,
            admitted_srcs: Default::default(),
        };
        prepare_netns_dir(&net.cfg.tag)?;
        let own = format!("bw{}", net.cfg.tag);
        if let Some(other) = sys::interfaces_in_group(net.port_group)
            .into_iter()
            .find(|i| !is_own_veth(&own, i))
        {
            return Err(NetError::InvalidConfig(format!(
                "interface {other} already uses interface group {} that tag {:?} hashes to; pick another tag",
                net.port_group, net.cfg.tag
            )));
        }

        net.check_subnet_is_free()?;

        // Rules first: the bridge never forwards a packet that the current rules did not see.
        let mut ports = Vec::new();
        for id in net.attached()? {
            let veth = names::veth(&net.cfg.tag, &id);
            for addr in net.sandbox_addrs(&id) {
                ports.push((veth.clone(), addr));
            }
        }
        nft_apply(&net.ruleset(&ports))?;

        let br = &net.bridge;
        let prefix = net.cfg.subnet.prefix;
        let mut lines = Vec::new();
        if sys::interface_exists(br) {
            // A changed subnet must not leave the old gateway address behind.
            for (addr, p) in
                sys::ipv4_addrs(br).map_err(NetError::io(format!("reading addresses of {br}")))?
            {
                if (addr, p) != (gateway, prefix) {
                    lines.push(format!("addr del {addr}/{p} dev {br}"));
                }
            }
        } else {
            lines.push(format!("link add {br} type bridge"));
        }
        lines.push(format!(
            "link set {br} address {}",
            names::bridge_mac(&net.cfg.tag)
        ));
        lines.push(format!("addr replace {gateway}/{prefix} dev {br}"));
        lines.push(format!("link set {br} up"));
        ip_batch(None, &lines)?;
        sys::write_sysctl(&format!("net/ipv6/conf/{br}/disable_ipv6"), "1")
            .map_err(NetError::io(format!("disabling IPv6 on {br}")))?;
        sys::write_sysctl("net/ipv4/ip_forward", "1")
            .map_err(NetError::io("enabling net.ipv4.ip_forward"))?;
        Ok(net)
    }

    /// The subnet must be this daemon's alone: an address inside it on any other interface
    /// (another daemon's bridge, a VPN, a leftover of a killed run) would take the replies
    /// to the sandboxes, which then time out with nothing said. Refused with the interface
    /// named instead.
    fn check_subnet_is_free(&self) -> Result<()> {
        let subnet = self.cfg.subnet;
        let addrs = sys::all_ipv4_addrs().map_err(NetError::io("listing the host's addresses"))?;
        match addrs
            .iter()
            .find(|(name, addr, _)| *name != self.bridge && subnet.contains(*addr))
        {
            Some((name, addr, prefix)) => Err(NetError::InvalidConfig(format!(
                "subnet {subnet} is already in use on this host: interface {name} has {addr}/{prefix} \
                 (another burrowd, or a network of this host); pick another --subnet"
            ))),
            None => Ok(()),
        }
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The nft table name, in both the `inet` and the `bridge` family.
    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn netns_name(&self, id: &str) -> String {
        names::netns(&self.cfg.tag, id)
    }

    /// `/run/netns/<name>`: what an OCI spec's network namespace path points at.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        names::netns_path(&self.cfg.tag, id)
    }

    /// The host end of the sandbox's veth (at most 15 bytes).
    pub fn veth_name(&self, id: &str) -> String {
        names::veth(&self.cfg.tag, id)
    }

    /// Gives sandbox `id` its namespace and its place on the bridge, idempotently (again after
    /// a daemon restart or a host reboot, with running processes inside): named netns, `lo`
    /// up, a veth whose host end is an isolated bridge port and whose other end is `eth0`
    /// with `addr`, default route via the gateway, IPv6 off inside. Returns the netns path.
    /// Two process spawns: `ip` on the host and `nft` (inside, rtnetlink in-process).
    pub fn attach(&self, id: &str, addr: Ipv4Addr) -> Result<PathBuf> {
        self.attach_inner(id, addr, None)
    }

    /// Only the named namespace of sandbox `id` (made if missing), so the sandbox can be
    /// started in it while [`HostNet::attach_in_mode`] wires it up at the same time.
    pub fn ensure_netns(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        let path = self.netns_path(id);
        if !path.exists() {
            let name = self.netns_name(id);
            sys::netns_add(&name).map_err(NetError::io(format!("adding namespace {name}")))?;
        }
        Ok(path)
    }

    /// [`HostNet::attach`] and [`HostNet::set_mode`] in one go, with the mode's set elements
    /// in the same nft transaction as the bridge port's (one process fewer, and no listing of
    /// admissions: an address being attached has none, since `detach` and `setup` drop them).
    pub fn attach_in_mode(&self, id: &str, addr: Ipv4Addr, mode: Mode, transparent: bool) -> Result<PathBuf> {
        self.attach_inner(id, addr, Some((mode, transparent)))
    }

    fn attach_inner(&self, id: &str, addr: Ipv4Addr, mode: Option<(Mode, bool)>) -> Result<PathBuf> {
        validate_id(id)?;
        self.check_sandbox_addr(addr)?;
        let name = self.netns_name(id);
        let path = self.netns_path(id);
        let veth = self.veth_name(id);
        let ns_exists = path.exists();
        let veth_exists = sys::interface_exists(&veth);
        if veth_exists && !ns_exists {
            return Err(NetError::VethInUse {
                id: id.to_owned(),
                veth,
                netns: name,
            });
        }

        // On the host, in-process (rtnetlink): the namespace, the veth pair with its peer in
        // it as `eth0`, the host end an isolated port of the bridge in the tag's group, up.
        let wired = (|| -> std::io::Result<()> {
            if !ns_exists {
                sys::netns_add(&name)?;
            }
            let mut rtnl = Rtnl::open()?;
            if !veth_exists {
                let ns = std::fs::File::open(&path)?;
                rtnl.veth_pair(&veth, SANDBOX_IF, std::os::fd::AsFd::as_fd(&ns))?;
            }
            let port = netlink::ifindex(&veth)?;
            rtnl.link_group_master(port, self.port_group, netlink::ifindex(&self.bridge)?)?;
            std::fs::write(format!("/sys/class/net/{veth}/brport/isolated"), "1")?;
            rtnl.link_up(port)
        })();
        wired.map_err(NetError::io(format!(
            "wiring {veth} to {} and namespace {name}",
            self.bridge
        )))?;
        // A bridge port needs no address; without this it would get an IPv6 link-local one.
        sys::write_sysctl(&format!("net/ipv6/conf/{veth}/disable_ipv6"), "1")
            .map_err(NetError::io(format!("disabling IPv6 on {veth}")))?;

        // IPv6 off before eth0 comes up, so it never gets even a link-local address; and
        // whatever IPv4 address eth0 has now, in case a re-attach changes it.
        let old = in_netns(&path, || {
            for conf in ["all", "default", SANDBOX_IF] {
                sys::write_sysctl(&format!("net/ipv6/conf/{conf}/disable_ipv6"), "1")?;
            }
            sys::ipv4_addrs(SANDBOX_IF)
        })
        .map_err(NetError::io(format!("configuring namespace {name}")))?;
        let stale: Vec<_> = old.into_iter().filter(|(a, _)| *a != addr).collect();
        let stale_addrs: Vec<Ipv4Addr> = stale.iter().map(|(a, _)| *a).collect();
        let stale_allowed = self.allowed_pairs_of(&stale_addrs)?;

        // The port's address before the link is up, so the first frames are not dropped. An
        // address the namespace no longer has leaves the port and every mode set (a
        // namespace handed to another sandbox, with that sandbox's address), in the same
        // transaction.
        let mut edits = Edits::default();
        for (a, _) in &stale {
            edits.ensure(
                "bridge",
                &self.table,
                "ports",
                &Elem::Port(veth.clone(), *a),
                false,
            );
            self.mode_edits(&mut edits, &stale_allowed, *a, Mode::None, false);
        }
        edits.ensure(
            "bridge",
            &self.table,
            "ports",
            &Elem::Port(veth.clone(), addr),
            true,
        );
        if let Some((mode, transparent)) = mode {
            self.mode_edits(&mut edits, &[], addr, mode, transparent);
        }
        apply(&edits)?;
        self.forget_admitted(&stale_addrs);

        // Inside: `lo` and `eth0` up, the stale addresses off, this one on, the default
        // route; in-process (rtnetlink), not an `ip` spawn.
        let prefix = self.cfg.subnet.prefix;
        let gateway = self.gateway;
        in_netns(&path, || {
            let mut rtnl = Rtnl::open()?;
            rtnl.link_up(netlink::ifindex("lo")?)?;
            let eth0 = netlink::ifindex(SANDBOX_IF)?;
            rtnl.link_up(eth0)?;
            for (a, p) in &stale {
                rtnl.addr(eth0, *a, *p, false)?;
            }
            rtnl.addr(eth0, addr, prefix, true)?;
            rtnl.default_route(gateway, eth0)
        })
        .map_err(NetError::io(format!(
            "configuring {SANDBOX_IF} in namespace {name}"
        )))?;
        Ok(path)
    }

    /// Removes sandbox `id`'s veth and namespace, idempotently, and drops its address from
    /// every set (modes, admissions, bridge port). The veth is deleted explicitly: a
    /// namespace still held by a process would otherwise keep it alive.
    pub fn detach(&self, id: &str) -> Result<()> {
        validate_id(id)?;
        let veth = self.veth_name(id);
        let addrs: Vec<Ipv4Addr> = self.sandbox_addrs(id);

        let name = self.netns_name(id);
        let unwired = (|| -> std::io::Result<()> {
            if sys::interface_exists(&veth) {
                Rtnl::open()?.link_del(netlink::ifindex(&veth)?)?;
            }
            sys::netns_del(&name)
        })();
        unwired.map_err(NetError::io(format!("removing {veth} and namespace {name}")))?;

        if !addrs.is_empty() {
            let allowed = self.allowed_pairs_of(&addrs)?;
            let mut edits = Edits::default();
            for &addr in &addrs {
                self.mode_edits(&mut edits, &allowed, addr, Mode::None, false);
                edits.ensure(
                    "bridge",
                    &self.table,
                    "ports",
                    &Elem::Port(veth.clone(), addr),
                    false,
                );
            }
            apply(&edits)?;
            self.forget_admitted(&addrs);
        }
        Ok(())
    }

    /// Ids that have a namespace of this tag, sorted (for orphan cleanup).
    pub fn attached(&self) -> Result<Vec<String>> {
        let prefix = names::netns_prefix(&self.cfg.tag);
        let names = sys::netns_names(&prefix)?;
        Ok(names.into_iter().map(|n| n[prefix.len()..].to_owned()).collect())
    }

    /// Puts `addr` in `mode` (and in or out of the transparent redirect), at once for a
    /// running sandbox: established connections from a sandbox switched to `None` stop too.
    /// Leaving `Policy` forgets the address's admitted destinations. `transparent` applies in
    /// every mode (the proxy it redirects to enforces the mode itself). One nft transaction (plus
    /// one listing when an address that was admitted somewhere leaves `Policy`).
    pub fn set_mode(&self, addr: Ipv4Addr, mode: Mode, transparent: bool) -> Result<()> {
        self.check_sandbox_addr(addr)?;
        let allowed = if mode == Mode::Policy {
            Vec::new()
        } else {
            self.allowed_pairs_of(&[addr])?
        };
        let mut edits = Edits::default();
        self.mode_edits(&mut edits, &allowed, addr, mode, transparent);
        apply(&edits)?;
        if mode != Mode::Policy {
            self.forget_admitted(&[addr]);
        }
        Ok(())
    }

    /// Policy mode: allows new connections `src → dst` for `ttl` (at least 1 ms, at most 30
    /// days); admitting again restarts the timeout. Has no effect while `src` is not in
    /// policy mode. Connections opened in time outlive the admission.
    pub fn admit(&self, src: Ipv4Addr, dst: Ipv4Addr, ttl: Duration) -> Result<()> {
        self.check_sandbox_addr(src)?;
        let ms = ttl.min(MAX_ADMIT).as_millis().max(1) as u64;
        let mut edits = Edits::default();
        edits.refresh("inet", &self.table, "allowed", &Elem::Pair(src, dst), ms);
        self.admitted_srcs().insert(src);
        apply(&edits)
    }

    /// The destinations currently admitted for `src` (unexpired), sorted.
    pub fn admitted(&self, src: Ipv4Addr) -> Result<Vec<Ipv4Addr>> {
        let mut dsts: Vec<Ipv4Addr> = self
            .allowed_pairs()?
            .into_iter()
            .filter(|(s, _)| *s == src)
            .map(|(_, d)| d)
            .collect();
        dsts.sort();
        Ok(dsts)
    }

    /// Removes everything of this tag: both nft tables, every namespace and veth, and the
    /// bridge. Idempotent. For ephemeral daemons and tests.
    pub fn teardown(&self) -> Result<()> {
        let mut lines = Vec::new();
        let mut veths = Vec::new();
        for id in self.attached()? {
            veths.push(self.veth_name(&id));
            lines.push(format!("netns del {}", self.netns_name(&id)));
        }
        // Also ports whose namespace file is already gone.
        veths.extend(sys::interfaces_in_group(self.port_group));
        veths.sort();
        veths.dedup();
        let own = format!("bw{}", self.cfg.tag);
        let mut ip = veths
            .iter()
            .filter(|v| is_own_veth(&own, v) && sys::interface_exists(v))
            .map(|v| format!("link del {v}"))
            .collect::<Vec<_>>();
        ip.append(&mut lines);
        if sys::interface_exists(&self.bridge) {
            ip.push(format!("link del {}", self.bridge));
        }
        // Interfaces before rules, so no sandbox ever runs without them.
        ip_batch(None, &ip)?;
        let t = &self.table;
        nft_apply(&format!(
            "add table inet {t}\ndelete table inet {t}\nadd table bridge {t}\ndelete table bridge {t}\n"
        ))
    }

    /// The nft script `setup` applies, with `ports` as the attached (veth, address) pairs.
    pub fn ruleset(&self, ports: &[(String, Ipv4Addr)]) -> String {
        let names = Names {
            table: &self.table,
            bridge: &self.bridge,
            gateway: self.gateway,
            port_group: self.port_group,
        };
        rules::ruleset(&self.cfg, &names, ports)
    }

    fn check_sandbox_addr(&self, addr: Ipv4Addr) -> Result<()> {
        if self.cfg.subnet.is_host(addr) && addr != self.gateway {
            Ok(())
        } else {
            Err(NetError::NotSandboxAddr {
                addr,
                subnet: self.cfg.subnet,
                gateway: self.gateway,
            })
        }
    }

    /// The sandbox's current addresses in the subnet, read from its `eth0`; empty if the
    /// namespace is gone or unreadable.
    fn sandbox_addrs(&self, id: &str) -> Vec<Ipv4Addr> {
        let path = self.netns_path(id);
        if !path.exists() {
            return Vec::new();
        }
        in_netns(&path, || sys::ipv4_addrs(SANDBOX_IF))
            .unwrap_or_default()
            .into_iter()
            .map(|(a, _)| a)
            .filter(|a| self.cfg.subnet.contains(*a))
            .collect()
    }

    fn admitted_srcs(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Ipv4Addr>> {
        self.admitted_srcs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pairs in `allowed` whose source is one of `addrs`; nothing is listed when none of
    /// them was ever admitted (see `admitted_srcs`).
    fn allowed_pairs_of(&self, addrs: &[Ipv4Addr]) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
        let any = {
            let srcs = self.admitted_srcs();
            addrs.iter().any(|a| srcs.contains(a))
        };
        if !any {
            return Ok(Vec::new());
        }
        Ok(self
            .allowed_pairs()?
            .into_iter()
            .filter(|(src, _)| addrs.contains(src))
            .collect())
    }

    /// `addrs` have no pairs in `allowed` any more (their pairs were just deleted).
    fn forget_admitted(&self, addrs: &[Ipv4Addr]) {
        let mut srcs = self.admitted_srcs();
        for a in addrs {
            srcs.remove(a);
        }
    }

    fn allowed_pairs(&self) -> Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
        let args = ["-j", "list", "set", "inet", &self.table, "allowed"];
        let out = nft_output(&args)?;
        let json: serde_json::Value = serde_json::from_str(&out).map_err(|e| NetError::Parse {
            command: format!("nft {}", args.join(" ")),
            reason: e.to_string(),
        })?;
        let mut pairs = Vec::new();
        rules::parse_pairs(&json, &mut pairs);
        Ok(pairs)
    }

    fn mode_edits(
        &self,
        edits: &mut Edits,
        allowed: &[(Ipv4Addr, Ipv4Addr)],
        addr: Ipv4Addr,
        mode: Mode,
        transparent: bool,
    ) {
        let a = Elem::Addr(addr);
        edits.ensure("inet", &self.table, "open", &a, mode == Mode::Open);
        edits.ensure("inet", &self.table, "policy_mode", &a, mode == Mode::Policy);
        edits.ensure("inet", &self.table, "transparent", &a, transparent);
        if mode != Mode::Policy {
            for (_, dst) in allowed.iter().filter(|(s, _)| *s == addr) {
                edits.ensure("inet", &self.table, "allowed", &Elem::Pair(addr, *dst), false);
            }
        }
    }
}

/// Applies element edits as one nftables transaction, in-process (no `nft` spawn).
fn apply(edits: &Edits) -> Result<()> {
    netlink::apply_elems(edits.ops()).map_err(|source| NetError::Io {
        what: format!("applying nft element edits:\n{}", edits.script()),
        source,
    })
}

/// Whether `name` has the shape of a host veth of the tag whose prefix is `own` (`bw<tag>`).
fn is_own_veth(own: &str, name: &str) -> bool {
    name.strip_prefix(own)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase()))
}

/// Makes sure `/run/netns` is a mount point before any `ip netns add` of ours runs, under a
/// host-wide lock, so concurrent first calls cannot race (see `sys::netns_dir_is_mounted`).
fn prepare_netns_dir(tag: &str) -> Result<()> {
    if sys::netns_dir_is_mounted()? {
        return Ok(());
    }
    let _lock = sys::lock_netns_setup()?;
    if sys::netns_dir_is_mounted()? {
        return Ok(());
    }
    // No dash: never mistaken for a sandbox of this or another tag.
    let probe = format!("bw{tag}probe");
    ip_batch(
        None,
        &[format!("netns add {probe}"), format!("netns del {probe}")],
    )
}
