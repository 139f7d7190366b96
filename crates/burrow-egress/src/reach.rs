//! Which addresses the daemon may connect to on a sandbox's behalf (the credential proxy) or
//! let a sandbox reach (the resolver's admissions): the same limits the packet rules set.
//!
//! An address is refused when it is
//! - blocked ([`crate::is_blocked`]: private, loopback, link-local, CGNAT, multicast, reserved);
//! - local to the host: an address of any of its interfaces, or one the kernel would deliver
//!   locally. nftables drops a sandbox's packets to the host, but a connection the daemon
//!   makes from the host to one of its own addresses reaches every service listening on
//!   `0.0.0.0`, whatever the address's range;
//! - outside `--uplink-only`, when the daemon was given that list.
//!
//! Host addresses are read from the kernel (`getifaddrs`) and kept current: a thread re-reads
//! them on every netlink address event (`RTMGRP_IPV4_IFADDR`), and every few seconds in case
//! an event was lost. On top of that, each check asks the kernel's routing table whether the
//! address is delivered locally (the route it picks is of type `local`, asked with
//! `RTM_GETROUTE`), which also covers local routes that are no interface's address.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use burrow_net::Cidr;

/// How often the host's addresses are re-read even without a netlink event.
const REFRESH: Duration = Duration::from_secs(5);

/// Why an address may not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// Private, loopback, link-local, CGNAT, multicast or reserved.
    Blocked,
    /// One of the host's own addresses.
    HostLocal,
    /// Outside the daemon's `--uplink-only` ranges.
    OutsideUplink,
}

impl Unreachable {
    /// The reason as the `egress.denied` event and the proxy's 403 give it.
    pub fn reason(self) -> &'static str {
        match self {
            Unreachable::Blocked => "the address is private or reserved",
            Unreachable::HostLocal => "the address is one of the host's own",
            Unreachable::OutsideUplink => "the address is outside the daemon's uplink ranges (--uplink-only)",
        }
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// Where the host's own addresses come from.
enum Local {
    /// The kernel: interface addresses (kept current) and a route lookup per check.
    Kernel(Arc<HostAddrs>),
    /// A fixed list (tests).
    Fixed(HashSet<Ipv4Addr>),
}

/// The destinations daemon-side connectors may use. Cheap to share (`Arc`).
pub struct Reach {
    allow_private: bool,
    uplink_only: Option<Vec<Cidr>>,
    local: Local,
}

impl Reach {
    /// The daemon's: the host's addresses from the kernel, kept current, and `uplink_only`.
    pub fn kernel(uplink_only: Option<Vec<Cidr>>) -> io::Result<Arc<Reach>> {
        Ok(Arc::new(Reach {
            allow_private: false,
            uplink_only,
            local: Local::Kernel(HostAddrs::watch()?),
        }))
    }

    /// Tests: `local` stands for the host's addresses; `allow_private` lets blocked ranges
    /// (loopback test servers) through.
    pub fn fixed(
        local: impl IntoIterator<Item = Ipv4Addr>,
        uplink_only: Option<Vec<Cidr>>,
        allow_private: bool,
    ) -> Arc<Reach> {
        Arc::new(Reach {
            allow_private,
            uplink_only,
            local: Local::Fixed(local.into_iter().collect()),
        })
    }

    /// Whether `ip` may be reached; the first reason it may not.
    pub fn check(&self, ip: Ipv4Addr) -> Result<(), Unreachable> {
        if !self.allow_private && crate::is_blocked(ip) {
            return Err(Unreachable::Blocked);
        }
        let local = match &self.local {
            Local::Kernel(addrs) => addrs.contains(ip) || routed_locally(ip),
            Local::Fixed(set) => set.contains(&ip),
        };
        if local {
            return Err(Unreachable::HostLocal);
        }
        if let Some(list) = &self.uplink_only
            && !list.iter().any(|c| c.contains(ip))
        {
            return Err(Unreachable::OutsideUplink);
        }
        Ok(())
    }
}

/// Whether the kernel's routing table delivers packets for `ip` to this host (a route of type
/// `local`: an interface address, all of 127/8, or a range routed `local` on purpose), asked
/// with one `RTM_GETROUTE`. If the kernel cannot be asked, the interface list alone decides.
fn routed_locally(ip: Ipv4Addr) -> bool {
    match route_type(ip) {
        Ok(kind) => kind == Some(libc::RTN_LOCAL),
        Err(e) => {
            tracing::warn!(%ip, "asking the kernel for a route: {e}");
            false
        }
    }
}

/// The type of the route the kernel picks for `ip` (`RTN_*`); `None` when it has none.
fn route_type(ip: Ipv4Addr) -> io::Result<Option<u8>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // nlmsghdr (16) + rtmsg (12) + rtattr RTA_DST (4 + 4).
    const LEN: usize = 36;
    let mut req = [0u8; LEN];
    req[0..4].copy_from_slice(&(LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETROUTE.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_INET as u8; // rtm_family
    req[17] = 32; // rtm_dst_len
    req[28..30].copy_from_slice(&8u16.to_ne_bytes());
    req[30..32].copy_from_slice(&libc::RTA_DST.to_ne_bytes());
    req[32..36].copy_from_slice(&ip.octets());
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_recv_timeout(fd.as_raw_fd(), Duration::from_secs(1))?;
    // SAFETY: an all-zero sockaddr_nl (pid 0: the kernel) is valid once the family is set.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: sendto with a buffer and an address of the sizes given.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr().cast(),
            LEN,
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: recv into a buffer of the size given.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = &buf[..n as usize];
    if reply.len() < 16 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"));
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    if kind == libc::NLMSG_ERROR as u16 {
        // No route (ENETUNREACH and the like): nothing here answers a connection to it.
        return Ok(None);
    }
    if kind != libc::RTM_NEWROUTE || reply.len() < 28 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("netlink reply of type {kind}"),
        ));
    }
    Ok(Some(reply[16 + 7])) // rtm_type
}

fn set_recv_timeout(fd: std::os::fd::RawFd, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The host's interface addresses, re-read on netlink events and on a timer.
pub struct HostAddrs {
    addrs: RwLock<HashSet<Ipv4Addr>>,
}

impl HostAddrs {
    /// Reads the addresses now and starts the thread that keeps them current (it ends soon
    /// after the last reference is dropped).
    pub fn watch() -> io::Result<Arc<HostAddrs>> {
        let this = Arc::new(HostAddrs {
            addrs: RwLock::new(interface_addrs()?),
        });
        let events = AddrEvents::open()?;
        let weak = Arc::downgrade(&this);
        std::thread::Builder::new()
            .name("burrow-host-addrs".into())
            .spawn(move || watch_loop(&weak, &events))?;
        Ok(this)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.addrs.read().unwrap_or_else(|p| p.into_inner()).contains(&ip)
    }

    fn refresh(&self) {
        match interface_addrs() {
            Ok(now) => *self.addrs.write().unwrap_or_else(|p| p.into_inner()) = now,
            Err(e) => tracing::warn!("reading the host's addresses: {e}"),
        }
    }
}

fn watch_loop(weak: &Weak<HostAddrs>, events: &AddrEvents) {
    loop {
        // An event, a timeout or an error (e.g. ENOBUFS after lost events): re-read anyway.
        events.wait();
        let Some(addrs) = weak.upgrade() else {
            return;
        };
        addrs.refresh();
    }
}

/// Every IPv4 address on any interface of the host (whatever its state).
fn interface_addrs() -> io::Result<HashSet<Ipv4Addr>> {
    let mut out = HashSet::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says what it is.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.insert(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// A netlink socket subscribed to IPv4 address changes.
struct AddrEvents(std::os::fd::OwnedFd);

impl AddrEvents {
    fn open() -> io::Result<AddrEvents> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_nl is valid; family and groups are set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = libc::RTMGRP_IPV4_IFADDR as u32;
        // SAFETY: `sa` is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        set_recv_timeout(fd, REFRESH)?;
        Ok(AddrEvents(owned))
    }

    /// Returns after an address event (draining what else is queued), or after [`REFRESH`].
    fn wait(&self) {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 8192];
        let fd = self.0.as_raw_fd();
        // SAFETY: recv into a buffer of the size given.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                // Not a timeout (e.g. ENOBUFS): do not spin on it.
                std::thread::sleep(Duration::from_millis(100));
            }
            return;
        }
        // Drain a burst of events so it costs one re-read.
        // SAFETY: as above, non-blocking.
        while unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) } > 0 {}
    }
}

/// Whether a connection to `addr` may be made (the last check before every upstream connect).
pub(crate) fn check_addr(reach: &Reach, addr: &SocketAddr) -> io::Result<()> {
    match addr {
        SocketAddr::V4(v4) => reach
            .check(*v4.ip())
            .map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, format!("{}: {why}", v4.ip()))),
        SocketAddr::V6(_) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "IPv6 destinations are not supported",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_in_order() {
        let uplink = Some(vec!["198.18.0.0/15".parse().unwrap()]);
        let r = Reach::fixed([Ipv4Addr::new(198, 18, 5, 1)], uplink, false);
        assert_eq!(r.check(Ipv4Addr::new(198, 18, 5, 2)), Ok(()));
        assert_eq!(r.check(Ipv4Addr::new(198, 18, 5, 1)), Err(Unreachable::HostLocal));
        assert_eq!(r.check(Ipv4Addr::new(10, 0, 0, 1)), Err(Unreachable::Blocked));
        assert_eq!(
            r.check(Ipv4Addr::new(198, 51, 100, 1)),
            Err(Unreachable::OutsideUplink)
        );
        let open = Reach::fixed([], None, true);
        assert_eq!(open.check(Ipv4Addr::LOCALHOST), Ok(()));
        assert_eq!(open.check(Ipv4Addr::new(198, 51, 100, 1)), Ok(()));
    }

    #[test]
    fn the_kernel_knows_the_hosts_addresses() {
        let r = Reach::kernel(None).unwrap();
        let Local::Kernel(addrs) = &r.local else {
            unreachable!()
        };
        // Loopback is on every host, and is delivered locally.
        assert!(addrs.contains(Ipv4Addr::LOCALHOST));
        assert!(routed_locally(Ipv4Addr::LOCALHOST));
        assert!(
            routed_locally(Ipv4Addr::new(127, 3, 4, 5)),
            "all of 127/8 is local"
        );
        // Every interface address is refused (blocked, or local).
        for ip in interface_addrs().unwrap() {
            assert!(r.check(ip).is_err(), "{ip}");
        }
        // TEST-NET-3 is no address of a test host.
        assert!(!addrs.contains(Ipv4Addr::new(203, 0, 113, 77)));
        assert!(!routed_locally(Ipv4Addr::new(203, 0, 113, 77)));
        assert_eq!(
            route_type(Ipv4Addr::new(203, 0, 113, 77)).unwrap(),
            Some(libc::RTN_UNICAST)
        );
    }
}
