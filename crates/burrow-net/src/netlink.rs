//! The rtnetlink requests a sandbox's attach and detach make in-process instead of through
//! `ip`: a veth pair with its peer in a namespace, a link's group, master and state, a link
//! deleted, an IPv4 address added or removed, the default route. Each is one request on a
//! `NETLINK_ROUTE` socket of the calling thread's network namespace, answered by an
//! acknowledgement; no process is spawned (an `ip` spawn costs more CPU than the requests).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, send, socket};

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;
const NLA_F_NESTED: u16 = 0x8000;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_GROUP: u16 = 27;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;

/// A route socket of the calling thread's network namespace.
pub(crate) struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    pub(crate) fn open() -> io::Result<Rtnl> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bounded(&fd)?;
        Ok(Rtnl { fd, seq: 0 })
    }

    /// `ip link set <ifindex> up`.
    pub(crate) fn link_up(&mut self, ifindex: u32) -> io::Result<()> {
        let body = ifinfomsg(ifindex, IFF_UP);
        self.request(RTM_NEWLINK, 0, &body, "setting a link up")
    }

    /// `ip link set <ifindex> group <group> master <master>`.
    pub(crate) fn link_group_master(&mut self, ifindex: u32, group: u32, master: u32) -> io::Result<()> {
        let mut body = ifinfomsg(ifindex, 0);
        attr(&mut body, IFLA_GROUP, &group.to_ne_bytes());
        attr(&mut body, IFLA_MASTER, &master.to_ne_bytes());
        self.request(RTM_NEWLINK, 0, &body, "putting a link on the bridge")
    }

    /// `ip link add <name> type veth peer name <peer> netns <netns>`: fails if `name`
    /// exists.
    pub(crate) fn veth_pair(&mut self, name: &str, peer: &str, netns: BorrowedFd<'_>) -> io::Result<()> {
        let mut peer_msg = ifinfomsg(0, 0);
        attr(&mut peer_msg, IFLA_IFNAME, &c_name(peer));
        attr(
            &mut peer_msg,
            IFLA_NET_NS_FD,
            &(netns.as_raw_fd() as u32).to_ne_bytes(),
        );
        let mut data = Vec::new();
        attr(&mut data, VETH_INFO_PEER | NLA_F_NESTED, &peer_msg);
        let mut info = Vec::new();
        attr(&mut info, IFLA_INFO_KIND, b"veth");
        attr(&mut info, IFLA_INFO_DATA | NLA_F_NESTED, &data);
        let mut body = ifinfomsg(0, 0);
        attr(&mut body, IFLA_IFNAME, &c_name(name));
        attr(&mut body, IFLA_LINKINFO | NLA_F_NESTED, &info);
        self.request(
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            &body,
            "adding a veth pair",
        )
    }

    /// `ip link del <ifindex>`.
    pub(crate) fn link_del(&mut self, ifindex: u32) -> io::Result<()> {
        let body = ifinfomsg(ifindex, 0);
        self.request(RTM_DELLINK, 0, &body, "deleting a link")
    }

    /// `ip addr replace <addr>/<prefix> dev <ifindex>` (`replace`), or `ip addr del`.
    pub(crate) fn addr(&mut self, ifindex: u32, addr: Ipv4Addr, prefix: u8, replace: bool) -> io::Result<()> {
        // struct ifaddrmsg: family, prefixlen, flags, scope (u8), index (u32).
        let mut body = vec![libc::AF_INET as u8, prefix, 0, RT_SCOPE_UNIVERSE];
        body.extend_from_slice(&ifindex.to_ne_bytes());
        attr(&mut body, IFA_LOCAL, &addr.octets());
        attr(&mut body, IFA_ADDRESS, &addr.octets());
        if replace {
            self.request(
                RTM_NEWADDR,
                NLM_F_CREATE | NLM_F_REPLACE,
                &body,
                "setting an address",
            )
        } else {
            self.request(RTM_DELADDR, 0, &body, "removing an address")
        }
    }

    /// `ip route replace default via <gateway> dev <ifindex>`.
    pub(crate) fn default_route(&mut self, gateway: Ipv4Addr, ifindex: u32) -> io::Result<()> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type (u8),
        // flags (u32).
        let mut body = vec![
            libc::AF_INET as u8,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
        ];
        body.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut body, RTA_GATEWAY, &gateway.octets());
        attr(&mut body, RTA_OIF, &ifindex.to_ne_bytes());
        self.request(
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
            &body,
            "setting the default route",
        )
    }

    /// Sends one request and waits for its acknowledgement; a refusal becomes the error,
    /// with `what` said.
    fn request(&mut self, ty: u16, flags: u16, body: &[u8], what: &str) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(16 + body.len());
        put_header(&mut msg, ty, NLM_F_ACK | flags, self.seq, body.len());
        msg.extend_from_slice(body);
        send(self.fd.as_raw_fd(), &msg, MsgFlags::empty())?;
        let mut buf = [0u8; 8192];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut answer = None;
            for_each_answer(&buf[..n], |seq, errno| {
                if seq == self.seq {
                    answer = Some(errno);
                }
            });
            match answer {
                Some(0) => return Ok(()),
                Some(errno) => {
                    let e = io::Error::from_raw_os_error(-errno);
                    return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
                }
                None => {}
            }
        }
    }
}

/// Appends a `struct nlmsghdr` (length, type, flags with `NLM_F_REQUEST`, sequence number,
/// port 0) for a message whose body is `body_len` bytes.
fn put_header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, body_len: usize) {
    buf.extend_from_slice(&((16 + body_len) as u32).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
}

/// Calls `f(seq, errno)` for every acknowledgement in `buf` (what one `recv` read): the
/// sequence number of the message it answers and 0 or the negated errno of its refusal.
fn for_each_answer(buf: &[u8], mut f: impl FnMut(u32, i32)) {
    let u32_at = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap_or_default());
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32_at(at) as usize;
        let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < 16 || at + len > buf.len() {
            break;
        }
        // struct nlmsgerr: error (i32), then the header of the message it answers.
        if ty == NLMSG_ERROR && len >= 36 {
            f(u32_at(at + 20 + 8), u32_at(at + 16) as i32);
        }
        at += len.next_multiple_of(4);
    }
}

/// `struct ifinfomsg`: family (u8), pad (u8), type (u16), index (i32), flags, change (u32);
/// `up` the flags to set (and change).
fn ifinfomsg(ifindex: u32, up: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&up.to_ne_bytes());
    body.extend_from_slice(&up.to_ne_bytes());
    body
}

/// An interface name as the kernel takes it: NUL-terminated.
fn c_name(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

/// Appends a route attribute (`struct rtattr`: len, type (u16), payload, padded to 4).
fn attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The index of interface `name` in the calling thread's namespace.
pub(crate) fn ifindex(name: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(name)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("interface {name}: {e}")))
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;

/// Applies set element edits as one nftables transaction (a netlink batch: all or nothing,
/// as `nft -f` would), in-process. Each edit is acknowledged; the first refusal is the error.
pub(crate) fn apply_elems(ops: &[crate::rules::ElemOp]) -> io::Result<()> {
    if ops.is_empty() {
        return Ok(());
    }
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    bounded(&fd)?;
    let mut batch = Vec::new();
    let mut seq = 0u32;
    let mut message = |batch: &mut Vec<u8>, ty: u16, flags: u16, family: u8, res_id: u16, attrs: &[u8]| {
        seq += 1;
        // Then struct nfgenmsg: family, version (0), res_id (big-endian).
        put_header(batch, ty, flags, seq, 4 + attrs.len());
        batch.extend_from_slice(&[family, 0]);
        batch.extend_from_slice(&res_id.to_be_bytes());
        batch.extend_from_slice(attrs);
        seq
    };
    message(
        &mut batch,
        NFNL_MSG_BATCH_BEGIN,
        0,
        libc::AF_UNSPEC as u8,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let mut waiting = Vec::with_capacity(ops.len());
    for op in ops {
        let family = match op.family {
            "bridge" => NFPROTO_BRIDGE,
            _ => NFPROTO_INET,
        };
        let mut key = Vec::new();
        attr(&mut key, NFTA_DATA_VALUE, &op.elem.key());
        let mut elem = Vec::new();
        attr(&mut elem, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &key);
        if let Some(ms) = op.timeout_ms {
            attr(&mut elem, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        let mut list = Vec::new();
        attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
        let mut attrs = Vec::new();
        attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &c_name(&op.table));
        attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &c_name(op.set));
        attr(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
        let (ty, flags) = if op.add {
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_ACK)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_ACK)
        };
        waiting.push(message(
            &mut batch,
            (NFNL_SUBSYS_NFTABLES << 8) | ty,
            flags,
            family,
            0,
            &attrs,
        ));
    }
    message(
        &mut batch,
        NFNL_MSG_BATCH_END,
        0,
        libc::AF_UNSPEC as u8,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    send(fd.as_raw_fd(), &batch, MsgFlags::empty())?;

    // One acknowledgement per edit (0, or the edit's error: the whole batch is then undone).
    let mut failed = None;
    let mut buf = vec![0u8; 64 * 1024];
    // The kernel handles the batch within `send`: every answer is queued by now. Once one
    // failed, what is left to read is read without waiting.
    while !waiting.is_empty() {
        let flags = if failed.is_some() {
            MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::empty()
        };
        let n = match recv(fd.as_raw_fd(), &mut buf, flags) {
            Err(nix::errno::Errno::EAGAIN) if failed.is_some() => break,
            r => r?,
        };
        for_each_answer(&buf[..n], |answered, errno| {
            waiting.retain(|s| *s != answered);
            if errno != 0 && failed.is_none() {
                // Edits are messages 2..: the batch's begin is 1.
                let op = answered.checked_sub(2).and_then(|i| ops.get(i as usize)).cloned();
                failed = Some((io::Error::from_raw_os_error(-errno), op));
            }
        });
        if n == 0 {
            break;
        }
    }
    match failed {
        None => Ok(()),
        Some((e, op)) => {
            let what = op.map_or_else(String::new, |op| {
                format!(
                    "{} element {} {} {} {{ {} }}: ",
                    if op.add { "add" } else { "delete" },
                    op.family,
                    op.table,
                    op.set,
                    op.elem.text()
                )
            });
            Err(io::Error::new(e.kind(), format!("{what}{e}")))
        }
    }
}

/// Answers are waited for at most 10 s: a kernel that never acknowledges is an error, not a
/// hang.
fn bounded(fd: &OwnedFd) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    use nix::sys::time::{TimeVal, TimeValLike};
    setsockopt(fd, ReceiveTimeout, &TimeVal::seconds(10))?;
    Ok(())
}
