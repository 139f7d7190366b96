//! Egress for sandboxes: what leaves a sandbox goes through burrowd.
//!
//! - [`dns`]: the resolver every sandbox uses (its `/etc/resolv.conf` names the gateway).
//!   In `policy` mode it answers only names the rules allow, and admits the addresses it
//!   hands out for that sandbox alone ([`Directory::admit`]); denied names get REFUSED.
//! - [`proxy`]: the credential proxy, explicit (`HTTP(S)_PROXY`) and transparent (tcp/80 and
//!   443 redirected by nftables). It checks the domain policy, and where a request carries a
//!   secret placeholder (a macaroon) it verifies the caveats and swaps in the real value,
//!   intercepting TLS with the sandbox's own CA ([`ca`]).
//!
//! - [`reach`]: which addresses either may use on a sandbox's behalf: never a blocked range,
//!   never one of the host's own addresses, never outside `--uplink-only`.
//!
//! The crate knows nothing about the daemon's store: it asks a [`Directory`].

pub mod ca;
pub mod dns;
pub mod policy;
pub mod proxy;
pub mod reach;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use burrow_api::{NetworkMode, NetworkRule};

pub use reach::{Reach, Unreachable};

/// What the egress side knows about one sandbox, looked up by its source address.
#[derive(Clone)]
pub struct SandboxView {
    pub id: String,
    pub name: String,
    pub mode: NetworkMode,
    pub rules: Vec<NetworkRule>,
    /// The sandbox's interception CA (certificate installed in its trust store).
    pub ca: Arc<ca::SandboxCa>,
}

/// A secret, unsealed, as the proxy needs it. Never logged, never sent to a sandbox.
#[derive(Clone)]
pub struct SecretValue {
    pub name: String,
    pub value: String,
    /// Header to inject (e.g. `Authorization`) and its format (`token %s`).
    pub header: String,
    pub format: String,
    /// Host patterns the secret may be sent to.
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("header", &self.header)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// The daemon's side of egress. Implemented by burrowd over its store and `burrow-net`.
pub trait Directory: Send + Sync + 'static {
    /// The sandbox that owns `src` (its veth address), if any.
    fn sandbox(&self, src: Ipv4Addr) -> Option<SandboxView>;
    /// The macaroon root key placeholders are verified with.
    fn placeholder_key(&self) -> Vec<u8>;
    /// A secret by name, unsealed.
    fn secret(&self, name: &str) -> Option<SecretValue>;
    /// Names of the secrets attached to a sandbox: TLS to a host one of them may be sent to is
    /// intercepted; everything else is relayed end to end after the policy check.
    fn attached_secrets(&self, sandbox_id: &str) -> Vec<String>;
    /// Policy mode: let `src` connect to `dst` for `ttl` (the resolver handed it out).
    fn admit(&self, src: Ipv4Addr, dst: Ipv4Addr, ttl: Duration);
    /// Something the owner should see in the sandbox's event stream (e.g. `secret.used`,
    /// `egress.denied`), never containing a secret value.
    fn event(&self, sandbox_id: &str, kind: &str, data: serde_json::Value);
}

/// Name resolution as the proxy needs it. [`dns::Resolver`] is the real one.
pub trait Lookup: Send + Sync + 'static {
    /// IPv4 addresses of `name` from the upstream resolvers.
    fn lookup_v4(
        &self,
        name: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<Ipv4Addr>>> + Send + '_>>;
    /// Names that burrowd's DNS answered with `dst` to the sandbox at `src` (unexpired).
    fn handed_out(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<String>;
}

/// Addresses no sandbox traffic may reach, whatever the mode: private, loopback, link-local
/// (with the 169.254.169.254 metadata service), carrier-grade NAT, multicast, reserved.
pub fn is_blocked(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || o[0] == 0
        || o[0] >= 240
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
}
