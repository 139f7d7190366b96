//! Host-side networking for sandboxes: each sandbox gets a network namespace, a veth to the
//! daemon's bridge, an address from the daemon's subnet, and the nftables rules that decide
//! where its traffic may go (modes `none`, `policy`, `open`; see `rules` for the ruleset).
//!
//! Everything created on the host is named after the daemon's tag, so several daemons (and
//! many test daemons) share a host without touching each other's interfaces, namespaces or
//! tables. The crate drives `ip` and `nft` (a few spawns per operation; what it does inside a
//! sandbox's namespace goes over rtnetlink in-process) and keeps little state of its own: the
//! kernel is the source of truth, so a restarted daemon simply calls [`HostNet::setup`] and
//! re-applies each sandbox's mode.
//!
//! It must never touch anything outside its tag, and never let a sandbox reach the host's
//! services (beyond the gateway's DNS and proxy ports), another sandbox, private, loopback,
//! link-local (cloud metadata) or multicast ranges, whatever the mode.

mod cidr;
mod cmd;
mod config;
mod error;
mod host;
mod names;
mod netlink;
mod original_dst;
mod rules;
mod sys;

pub use cidr::Cidr;
pub use config::{Mode, NetConfig};
pub use error::{NetError, Result};
pub use host::HostNet;
pub use original_dst::original_dst;
pub use rules::BLOCKED;
pub use sys::in_netns;
