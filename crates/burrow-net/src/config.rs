//! What the daemon tells this crate: its tag, its subnet, the gateway ports, and the modes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Cidr, NetError, Result};

/// A sandbox's egress mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No forwarded traffic at all (the gateway's DNS and proxy ports stay reachable).
    #[default]
    None,
    /// Only destinations admitted with [`crate::HostNet::admit`] (burrowd's resolver admits
    /// the addresses it hands out).
    Policy,
    /// Anything except the blocked ranges (and, if set, outside `uplink_only`).
    Open,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Policy => "policy",
            Mode::Open => "open",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Mode> {
        match s {
            "none" => Ok(Mode::None),
            "policy" => Ok(Mode::Policy),
            "open" => Ok(Mode::Open),
            _ => Err(NetError::InvalidMode(s.to_owned())),
        }
    }
}

/// One daemon's network: everything it creates on the host is named after `tag`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// `[a-z0-9]{1,6}`, unique among the daemons on this host.
    pub tag: String,
    /// Sandbox addresses; the first host is the gateway, on the bridge. At most a /30.
    pub subnet: Cidr,
    /// burrowd's DNS resolver on the gateway address (udp and tcp).
    pub dns_port: u16,
    /// The explicit HTTP(S) proxy on the gateway address.
    pub proxy_port: u16,
    /// Where tcp/80 of a sandbox in transparent mode is redirected (on the gateway).
    pub transparent_http_port: u16,
    /// Where tcp/443 of a sandbox in transparent mode is redirected (on the gateway).
    pub transparent_tls_port: u16,
    /// If set, forwarded traffic may only go to these ranges (checked after the blocked list).
    pub uplink_only: Option<Vec<Cidr>>,
}

pub(crate) fn validate_tag(tag: &str) -> Result<()> {
    let ok =
        (1..=6).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidTag(tag.to_owned()))
    }
}

pub(crate) fn validate_id(id: &str) -> Result<()> {
    let ok = (1..=64).contains(&id.len())
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetError::InvalidId(id.to_owned()))
    }
}

impl NetConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        validate_tag(&self.tag)?;
        Cidr::new(self.subnet.addr, self.subnet.prefix)?;
        if self.subnet.prefix > 30 {
            return Err(NetError::InvalidConfig(format!(
                "subnet {} is too small: it needs a gateway and sandbox addresses (at most a /30)",
                self.subnet
            )));
        }
        let ports = [
            ("dns_port", self.dns_port),
            ("proxy_port", self.proxy_port),
            ("transparent_http_port", self.transparent_http_port),
            ("transparent_tls_port", self.transparent_tls_port),
        ];
        if let Some((name, _)) = ports.iter().find(|(_, p)| *p == 0) {
            return Err(NetError::InvalidConfig(format!("{name} must not be 0")));
        }
        for c in self.uplink_only.iter().flatten() {
            Cidr::new(c.addr, c.prefix)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_text_forms() {
        for m in [Mode::None, Mode::Policy, Mode::Open] {
            assert_eq!(m.to_string().parse::<Mode>().unwrap(), m);
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        assert!("Open".parse::<Mode>().is_err());
    }

    #[test]
    fn tags_and_ids() {
        for ok in ["a", "abc123", "zzzzzz"] {
            validate_tag(ok).unwrap();
        }
        for bad in ["", "abcdefg", "A", "a-b", "a b"] {
            assert!(validate_tag(bad).is_err(), "{bad:?}");
        }
        for ok in ["a", "sb_1.x-2", "0123456789abcdef"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", "-a", ".a", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
