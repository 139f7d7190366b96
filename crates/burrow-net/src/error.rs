//! The crate's one error type: every failure names what was being done, and a failed command
//! carries its stderr.

use std::io;
use std::net::Ipv4Addr;
use std::process::ExitStatus;

use crate::Cidr;

pub type Result<T, E = NetError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid network tag {0:?}: expected 1 to 6 characters of [a-z0-9]")]
    InvalidTag(String),
    #[error(
        "invalid sandbox id {0:?}: expected 1 to 64 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"
    )]
    InvalidId(String),
    #[error("invalid CIDR {input:?}: {reason}")]
    InvalidCidr { input: String, reason: &'static str },
    #[error("invalid network mode {0:?}: expected none, policy or open")]
    InvalidMode(String),
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    #[error(
        "{addr} is not a sandbox address in {subnet} (the network, broadcast and gateway {gateway} addresses are reserved)"
    )]
    NotSandboxAddr {
        addr: Ipv4Addr,
        subnet: Cidr,
        gateway: Ipv4Addr,
    },
    #[error(
        "host interface {veth} for sandbox {id:?} already exists but network namespace {netns} does not \
         (a veth name collision or a leftover interface; detach the sandbox to remove it)"
    )]
    VethInUse { id: String, veth: String, netns: String },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("unexpected output from `{command}`: {reason}")]
    Parse { command: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl NetError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
        let what = what.into();
        move |source| NetError::Io { what, source }
    }
}
