//! IPv4 prefixes as written in configuration (`10.88.0.0/16`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::NetError;

/// An IPv4 network: an address whose host bits are zero and a prefix length.
///
/// Parsing rejects host bits (`10.88.0.1/16`) so a typo cannot silently name another network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// A checked constructor: `prefix <= 32` and no host bits set.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Cidr, NetError> {
        let cidr = Cidr { addr, prefix };
        if prefix > 32 {
            return Err(invalid(&cidr.to_string(), "the prefix length must be at most 32"));
        }
        if cidr.network() != addr {
            return Err(invalid(
                &cidr.to_string(),
                "host bits are set (use the network address)",
            ));
        }
        Ok(cidr)
    }

    pub fn mask(&self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p.min(32))),
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// Whether `other` lies entirely inside `self`.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }

    /// The `n`th host address, counting from 1 (the first host, `.1` in a /24); `None` for 0
    /// and past the last host. Only prefixes up to /30 have hosts in this sense.
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        if self.prefix > 30 || n == 0 || n > (!self.mask()) - 1 {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.network()) + n))
    }

    /// Whether `ip` is in the network and is neither its network nor its broadcast address.
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.prefix <= 30 && self.contains(ip) && ip != self.network() && ip != self.broadcast()
    }
}

fn invalid(input: &str, reason: &'static str) -> NetError {
    NetError::InvalidCidr {
        input: input.to_owned(),
        reason,
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Cidr, NetError> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| invalid(s, "expected ADDRESS/PREFIX"))?;
        let addr = addr.parse().map_err(|_| invalid(s, "not an IPv4 address"))?;
        let prefix = (!prefix.starts_with('+'))
            .then(|| prefix.parse::<u8>().ok())
            .flatten()
            .ok_or_else(|| invalid(s, "the prefix length is not a number from 0 to 32"))?;
        Cidr::new(addr, prefix).map_err(|_| {
            if prefix > 32 {
                invalid(s, "the prefix length is not a number from 0 to 32")
            } else {
                invalid(s, "host bits are set (use the network address)")
            }
        })
    }
}

impl TryFrom<String> for Cidr {
    type Error = NetError;

    fn try_from(s: String) -> Result<Cidr, NetError> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

/// Drops every prefix that another one in the list already covers (and duplicates), so the
/// list can go into an nftables interval set, which refuses overlapping elements.
pub(crate) fn minimal(cidrs: &[Cidr]) -> Vec<Cidr> {
    let mut out: Vec<Cidr> = Vec::new();
    let mut sorted = cidrs.to_vec();
    // Widest first, so a covering prefix is always kept before the ones it covers.
    sorted.sort_by_key(|c| (c.prefix, u32::from(c.addr)));
    for c in sorted {
        if !out.iter().any(|o| o.covers(&c)) {
            out.push(c);
        }
    }
    out.sort_by_key(|c| u32::from(c.addr));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_display_roundtrip() {
        let x = c("10.88.0.0/16");
        assert_eq!(
            x,
            Cidr {
                addr: Ipv4Addr::new(10, 88, 0, 0),
                prefix: 16
            }
        );
        assert_eq!(x.to_string(), "10.88.0.0/16");
        assert_eq!(c("0.0.0.0/0").mask(), 0);
        assert_eq!(c("1.2.3.4/32").mask(), u32::MAX);
        for bad in [
            "10.88.0.1/16",
            "10.88.0.0",
            "10.88.0.0/33",
            "10.88.0.0/+8",
            "x/8",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad} parsed");
        }
        let json = serde_json::to_string(&x).unwrap();
        assert_eq!(json, "\"10.88.0.0/16\"");
        assert_eq!(serde_json::from_str::<Cidr>(&json).unwrap(), x);
    }

    #[test]
    fn hosts_and_membership() {
        let x = c("10.88.0.0/24");
        assert_eq!(x.host(1), Some(Ipv4Addr::new(10, 88, 0, 1)));
        assert_eq!(x.host(254), Some(Ipv4Addr::new(10, 88, 0, 254)));
        assert_eq!(x.host(255), None);
        assert_eq!(x.host(0), None);
        assert!(x.contains(Ipv4Addr::new(10, 88, 0, 255)));
        assert!(!x.contains(Ipv4Addr::new(10, 88, 1, 0)));
        assert!(x.is_host(Ipv4Addr::new(10, 88, 0, 2)));
        assert!(!x.is_host(Ipv4Addr::new(10, 88, 0, 0)));
        assert!(!x.is_host(Ipv4Addr::new(10, 88, 0, 255)));
        assert_eq!(c("10.0.0.0/30").host(2), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(c("10.0.0.0/30").host(3), None);
        assert_eq!(c("10.0.0.0/31").host(1), None);
    }

    #[test]
    fn minimal_drops_covered() {
        let got = minimal(&[
            c("10.201.3.0/24"),
            c("10.0.0.0/8"),
            c("127.0.0.0/8"),
            c("10.0.0.0/8"),
        ]);
        assert_eq!(got, vec![c("10.0.0.0/8"), c("127.0.0.0/8")]);
    }
}
