//! Sandbox networking as the manager sees it: an address and a policy per sandbox (in the
//! store), the host side (`burrow-net`: netns, veth, bridge, nftables), the per-sandbox
//! interception CA, and secrets with their placeholders.
//!
//! Secrets are sealed to the host key on arrival ([`crate::keys`]) and never leave burrowd:
//! a sandbox gets, in the variable it was attached under, a macaroon placeholder whose
//! caveats bind it to that sandbox, that secret and the secret's hosts. The credential
//! proxy (`burrow-egress`) swaps it for the real value on the way out.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burrow_api::{NetworkMode, NetworkPolicy, SandboxStatus, Secret, SecretAttachment, SecretInject};
use burrow_egress::ca::SandboxCa;
use burrow_egress::{SandboxView, SecretValue};
use burrow_macaroon::{Caveat, Macaroon};
use burrow_net::{Cidr, HostNet, Mode, NetConfig};

use crate::CoreError;
use crate::manager::Manager;
use crate::store::{SandboxRecord, SecretRecord, StoreError};
use crate::time_util::now_rfc3339;

/// In `/.burrow/host/` (daemon-owned): written once burrowd's CA is in the image's system
/// store, holding that store's path.
const SYSTEM_BUNDLE_MARKER: &str = "system-bundle";

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Network settings of the daemon (`burrowd --subnet …`).
#[derive(Debug, Clone)]
pub struct NetSettings {
    pub subnet: Cidr,
    /// Upstream resolvers of burrowd's DNS.
    pub dns_upstreams: Vec<SocketAddr>,
    /// If set, sandbox traffic may only be forwarded to these ranges (tests: the fake internet).
    pub uplink_only: Option<Vec<Cidr>>,
    /// Mode of a new sandbox.
    pub default_mode: NetworkMode,
    /// Extra PEM files of roots the proxy trusts upstream (tests: their own CA).
    pub extra_roots: Vec<PathBuf>,
    pub dns_port: u16,
    pub proxy_port: u16,
    pub transparent_http_port: u16,
    pub transparent_tls_port: u16,
}

impl NetSettings {
    pub fn new(subnet: Cidr) -> NetSettings {
        NetSettings {
            subnet,
            dns_upstreams: Vec::new(),
            uplink_only: None,
            default_mode: NetworkMode::Open,
            extra_roots: Vec::new(),
            dns_port: 53,
            proxy_port: 3128,
            transparent_http_port: 3129,
            transparent_tls_port: 3130,
        }
    }
}

/// The live network side of a manager.
pub struct Net {
    pub host: HostNet,
    pub settings: NetSettings,
    cas: Mutex<BTreeMap<String, Arc<SandboxCa>>>,
    /// Unsealed secrets, by name (opened once, on first use).
    opened: Mutex<BTreeMap<String, SecretValue>>,
    /// Where the next address search starts: addresses are handed out round the subnet, so a
    /// deleted sandbox's address (and anything keyed on it) is not reused at once.
    next_host: std::sync::atomic::AtomicU32,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn mode_of(m: NetworkMode) -> Mode {
    match m {
        NetworkMode::None => Mode::None,
        NetworkMode::Policy => Mode::Policy,
        NetworkMode::Open => Mode::Open,
    }
}

fn net_err(e: impl std::fmt::Display) -> CoreError {
    CoreError::Internal(format!("network: {e}"))
}

impl Net {
    /// Sets up the bridge and the nftables table of this daemon (`tag` is unique per data dir).
    pub fn setup(tag: &str, settings: NetSettings) -> Result<Net> {
        let host = HostNet::setup(NetConfig {
            tag: tag.to_owned(),
            subnet: settings.subnet,
            dns_port: settings.dns_port,
            proxy_port: settings.proxy_port,
            transparent_http_port: settings.transparent_http_port,
            transparent_tls_port: settings.transparent_tls_port,
            uplink_only: settings.uplink_only.clone(),
        })
        .map_err(net_err)?;
        Ok(Net {
            host,
            settings,
            cas: Mutex::default(),
            opened: Mutex::default(),
            next_host: std::sync::atomic::AtomicU32::new(2),
        })
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.host.gateway()
    }
}

/// What a secret needs to be valid.
fn validate_secret(req: &burrow_api::CreateSecret) -> Result<()> {
    burrow_api::SandboxName::parse(&req.name).map_err(|e| CoreError::Invalid(format!("secret name: {e}")))?;
    if req.value.is_empty() {
        return Err(CoreError::Invalid("secret value is empty".into()));
    }
    if req.value.len() > 64 * 1024 {
        return Err(CoreError::Invalid("secret value is larger than 64 KiB".into()));
    }
    if req.hosts.is_empty() {
        return Err(CoreError::Invalid(format!(
            "secret '{}' names no host: give at least one host it may be sent to (e.g. api.github.com)",
            req.name
        )));
    }
    let rules: Vec<burrow_api::NetworkRule> = req
        .hosts
        .iter()
        .map(|h| burrow_api::NetworkRule {
            domain: h.clone(),
            action: burrow_api::RuleAction::Allow,
        })
        .collect();
    burrow_egress::policy::validate(&rules).map_err(|e| CoreError::Invalid(format!("secret hosts: {e}")))?;
    if req.hosts.iter().any(|h| h == "*") {
        return Err(CoreError::Invalid(
            "secret hosts: '*' would send the secret anywhere; name the hosts".into(),
        ));
    }
    let header_ok = !req.inject.header.is_empty()
        && req
            .inject
            .header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !header_ok {
        return Err(CoreError::Invalid(format!(
            "inject.header '{}' is not a header name",
            req.inject.header
        )));
    }
    if req.inject.format.matches("%s").count() != 1 {
        return Err(CoreError::Invalid(format!(
            "inject.format '{}' must contain %s exactly once",
            req.inject.format
        )));
    }
    if req.inject.format.contains(['\r', '\n']) || req.value.contains(['\r', '\n']) {
        return Err(CoreError::Invalid(
            "secret value and format cannot contain line breaks".into(),
        ));
    }
    Ok(())
}

fn validate_env_name(env: &str) -> Result<()> {
    let ok = !env.is_empty()
        && !env.as_bytes()[0].is_ascii_digit()
        && env.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!(
            "'{env}' is not an environment variable name"
        )))
    }
}

impl Manager {
    pub fn net(&self) -> Option<&Net> {
        self.net.as_ref()
    }

    /// Root key of API tokens.
    pub fn token_key(&self) -> &[u8] {
        &self.keys.token
    }

    /// Root key of secret placeholders.
    pub fn placeholder_key(&self) -> &[u8] {
        &self.keys.placeholder
    }

    /// The id of the sandbox called `name`, if it exists.
    pub fn sandbox_id(&self, name: &str) -> Option<String> {
        self.store.sandbox_by_name(name).ok().flatten().map(|r| r.id)
    }

    fn policy_of(&self, id: &str) -> Result<Option<(Ipv4Addr, NetworkPolicy)>> {
        let Some((addr, policy)) = self.store.net_of(id)? else {
            return Ok(None);
        };
        let addr = addr
            .parse()
            .map_err(|_| CoreError::Internal(format!("bad address {addr} of {id}")))?;
        let policy =
            serde_json::from_str(&policy).map_err(|e| CoreError::Internal(format!("policy of {id}: {e}")))?;
        Ok(Some((addr, policy)))
    }

    /// The network namespace the sandbox is to join (made now if missing, not yet wired), or
    /// None with networking off. [`Manager::net_attach`] wires it while the engine starts.
    pub(crate) async fn net_namespace(&self, rec: &SandboxRecord) -> Result<Option<PathBuf>> {
        if self.net.is_none() {
            return Ok(None);
        }
        let (id, eid) = (rec.id.clone(), rec.eid().to_owned());
        self.off_runtime(move |m| {
            let net = m.net.as_ref().expect("networking is on");
            // resolv.conf and the CA bundle are bound into the sandbox at start: they must
            // exist.
            m.ensure_ca_files(&id)?;
            Ok(Some(net.host.ensure_netns(&eid).map_err(net_err)?))
        })
        .await
    }

    /// Gives the sandbox an address (once) and a network namespace wired to the bridge with
    /// its policy applied. Returns the namespace to join, or None with networking off.
    pub(crate) async fn net_attach(&self, rec: &SandboxRecord) -> Result<Option<PathBuf>> {
        let Some(net) = &self.net else {
            return Ok(None);
        };
        let (addr, policy) = match self.policy_of(&rec.id)? {
            Some(x) => x,
            None => {
                let policy = NetworkPolicy {
                    mode: net.settings.default_mode,
                    rules: Vec::new(),
                };
                let addr = self.allocate_addr(&rec.id, &policy)?;
                (addr, policy)
            }
        };
        let (id, mode, transparent) = (
            rec.eid().to_owned(),
            mode_of(policy.mode),
            policy.mode != NetworkMode::None,
        );
        let path = self
            .off_runtime(move |m| {
                let net = m.net.as_ref().expect("networking is on");
                net.host
                    .attach_in_mode(&id, addr, mode, transparent)
                    .map_err(net_err)
            })
            .await?;
        Ok(Some(path))
    }

    /// Moves sandbox `rec` (cold, about to run in `donor`'s runtime) onto `donor`'s
    /// namespace, which keeps its address: `rec`'s old namespace goes if it is still there
    /// (a cold sleep removed it, unless a daemon restart came between), `rec`'s host files
    /// (CA bundle, resolv.conf) are made if missing, and the address is put in `rec`'s mode
    /// where that is not the donor's. Returns the address, which becomes `rec`'s when the
    /// take-over commits (`Store::take_over_runtime`); `None` with networking off.
    ///
    /// Taking the donor's address rather than moving `rec`'s own onto the namespace spares
    /// the wake an nftables commit that removes elements (7–20 ms here); a cold wake is a
    /// boot, and a boot may change a sandbox's address.
    pub(crate) async fn net_take_over(
        &self,
        donor: &SandboxRecord,
        rec: &SandboxRecord,
    ) -> Result<Option<String>> {
        let Some(net) = &self.net else {
            return Ok(None);
        };
        let default = || NetworkPolicy {
            mode: net.settings.default_mode,
            rules: Vec::new(),
        };
        let policy = self.policy_of(&rec.id)?.map_or_else(default, |(_, p)| p);
        let Some((addr, donor_policy)) = self.policy_of(&donor.id)? else {
            return Err(CoreError::Internal(format!(
                "pre-started sandbox {} has no address",
                donor.id
            )));
        };
        if rec.eid() != donor.eid() {
            self.net_unwire(rec.eid()).await;
        }
        let id = rec.id.clone();
        let change = policy.mode != donor_policy.mode;
        let (mode, transparent) = (mode_of(policy.mode), policy.mode != NetworkMode::None);
        self.off_runtime(move |m| {
            let net = m.net.as_ref().expect("networking is on");
            m.ensure_ca_files(&id)?;
            if change {
                net.host.set_mode(addr, mode, transparent).map_err(net_err)?;
            }
            Ok(())
        })
        .await?;
        Ok(Some(addr.to_string()))
    }

    fn allocate_addr(&self, id: &str, policy: &NetworkPolicy) -> Result<Ipv4Addr> {
        let net = self.net.as_ref().expect("called with networking on");
        let taken: std::collections::HashSet<String> =
            self.store.all_net()?.into_iter().map(|(_, a, _)| a).collect();
        let subnet = net.settings.subnet;
        let gw = net.gateway();
        let json = serde_json::to_string(policy).expect("policy serializes");
        // Hosts 2..=last (1 is the gateway), starting at the cursor and wrapping once.
        let last = if subnet.prefix <= 30 {
            (1u32 << (32 - subnet.prefix)) - 2
        } else {
            1
        };
        let start = net
            .next_host
            .load(std::sync::atomic::Ordering::Relaxed)
            .clamp(2, last.max(2));
        for n in (start..=last).chain(2..start) {
            let Some(addr) = subnet.host(n) else { continue };
            if addr == gw || taken.contains(&addr.to_string()) {
                continue;
            }
            match self.store.put_net(id, &addr.to_string(), &json) {
                Ok(()) => {
                    let next = if n >= last { 2 } else { n + 1 };
                    net.next_host.store(next, std::sync::atomic::Ordering::Relaxed);
                    return Ok(addr);
                }
                Err(StoreError::Unique(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::Unavailable(format!(
            "no free address left in {subnet}"
        )))
    }

    /// Removes the sandbox's namespace and veth (its row goes with the sandbox's).
    pub(crate) async fn net_detach(&self, rec: &SandboxRecord) {
        self.net_unwire(rec.eid()).await;
        if let Some(net) = &self.net {
            net.cas.lock().unwrap_or_else(|p| p.into_inner()).remove(&rec.id);
        }
    }

    /// Drops sandbox `id`'s CA from the cache (its runtime went to another sandbox).
    pub(crate) fn forget_ca(&self, id: &str) {
        if let Some(net) = &self.net {
            net.cas.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        }
    }

    /// Removes runtime `eid`'s namespace and veth, and every set element of the addresses it
    /// had; logged, never fatal.
    pub(crate) async fn net_unwire(&self, eid: &str) {
        if self.net.is_none() {
            return;
        }
        let owned = eid.to_owned();
        let detached = self
            .off_runtime(move |m| {
                let net = m.net.as_ref().expect("networking is on");
                net.host.detach(&owned).map_err(net_err)
            })
            .await;
        if let Err(e) = detached {
            tracing::warn!(eid, error = %e, "removing a sandbox's network");
        }
    }

    /// After a daemon start: rules for every known sandbox again, and namespaces of
    /// sandboxes that no longer exist removed.
    pub(crate) fn net_reconcile(&self, known: &[SandboxRecord]) -> Result<()> {
        let Some(net) = &self.net else {
            return Ok(());
        };
        let ids: std::collections::HashSet<&str> = known.iter().map(|r| r.id.as_str()).collect();
        let eids: std::collections::HashSet<&str> = known.iter().map(|r| r.eid()).collect();
        for id in net.host.attached().map_err(net_err)? {
            if !eids.contains(id.as_str()) {
                tracing::info!(id, "removing the network of a sandbox that no longer exists");
                let _ = net.host.detach(&id);
            }
        }
        for (id, addr, policy) in self.store.all_net()? {
            if !ids.contains(id.as_str()) {
                continue;
            }
            let (Ok(addr), Ok(policy)) = (
                addr.parse::<Ipv4Addr>(),
                serde_json::from_str::<NetworkPolicy>(&policy),
            ) else {
                continue;
            };
            net.host
                .set_mode(addr, mode_of(policy.mode), policy.mode != NetworkMode::None)
                .map_err(net_err)?;
        }
        Ok(())
    }

    // ----- policy ----------------------------------------------------------------------

    pub fn network_policy(&self, name: &str) -> Result<NetworkPolicy> {
        let rec = self.record(name)?;
        Ok(match self.policy_of(&rec.id)? {
            Some((_, p)) => p,
            None => NetworkPolicy {
                mode: self
                    .net
                    .as_ref()
                    .map_or(NetworkMode::None, |n| n.settings.default_mode),
                rules: Vec::new(),
            },
        })
    }

    /// Replaces the policy; a running sandbox is under the new one at once.
    pub async fn set_network_policy(&self, name: &str, policy: NetworkPolicy) -> Result<NetworkPolicy> {
        burrow_egress::policy::validate(&policy.rules).map_err(|e| CoreError::Invalid(e.to_string()))?;
        let rec = self.record(name)?;
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        let Some(net) = &self.net else {
            return Err(CoreError::Unavailable(
                "networking is off in this daemon (--network off)".into(),
            ));
        };
        let json = serde_json::to_string(&policy).expect("policy serializes");
        let addr = match self.policy_of(&rec.id)? {
            Some((addr, _)) => {
                self.store.put_net(&rec.id, &addr.to_string(), &json)?;
                addr
            }
            None => self.allocate_addr(&rec.id, &policy)?,
        };
        net.host
            .set_mode(addr, mode_of(policy.mode), policy.mode != NetworkMode::None)
            .map_err(net_err)?;
        self.events.emit(
            &rec.name,
            "policy.changed",
            serde_json::json!({"mode": policy.mode.as_str(), "rules": policy.rules.len()}),
        );
        Ok(policy)
    }

    /// What the egress side needs about the sandbox at `addr`.
    pub fn egress_view(&self, addr: Ipv4Addr) -> Option<SandboxView> {
        let (id, _, policy) = self
            .store
            .all_net()
            .ok()?
            .into_iter()
            .find(|(_, a, _)| *a == addr.to_string())?;
        let rec = self
            .store
            .all_sandboxes()
            .ok()?
            .into_iter()
            .find(|r| r.id == id)?;
        let policy: NetworkPolicy = serde_json::from_str(&policy).ok()?;
        let ca = self.ca(&id).ok()?;
        Some(SandboxView {
            id,
            name: rec.name,
            mode: policy.mode,
            rules: policy.rules,
            ca,
        })
    }

    // ----- the interception CA ---------------------------------------------------------

    /// The sandbox's CA: made on first use, key kept in its run dir (never shared with it).
    pub fn ca(&self, id: &str) -> Result<Arc<SandboxCa>> {
        let net = self
            .net
            .as_ref()
            .ok_or_else(|| CoreError::Unavailable("networking is off".into()))?;
        if let Some(ca) = net.cas.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(ca.clone());
        }
        let dir = self.run_dir(id);
        let io = |e: std::io::Error| CoreError::Internal(format!("sandbox CA in {}: {e}", dir.display()));
        let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let ca = match (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
            (Ok(c), Ok(k)) => SandboxCa::from_pem(&c, &k).map_err(net_err)?,
            _ => {
                let ca = SandboxCa::generate(&format!("Burrow egress CA for {id}")).map_err(net_err)?;
                std::fs::create_dir_all(&dir).map_err(io)?;
                write_file(&key, ca.key_pem().as_bytes(), 0o600).map_err(io)?;
                write_file(&crt, ca.cert_pem().as_bytes(), 0o644).map_err(io)?;
                ca
            }
        };
        let ca = Arc::new(ca);
        net.cas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), ca.clone());
        Ok(ca)
    }

    /// Files the sandbox sees read-only under `/.burrow/host/`: the CA certificate, a bundle
    /// of the host's roots plus it, and a resolv.conf naming burrowd's resolver.
    fn ensure_ca_files(&self, id: &str) -> Result<()> {
        let net = self.net.as_ref().expect("called with networking on");
        let ca = self.ca(id)?;
        let dir = self.host_api_dir(id);
        let io = |e: std::io::Error| CoreError::Internal(format!("writing {}: {e}", dir.display()));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(ca.cert_pem().as_bytes());
        write_derived_file(&dir.join("ca.crt"), ca.cert_pem().as_bytes(), 0o644).map_err(io)?;
        write_derived_file(&dir.join("ca-bundle.crt"), &bundle, 0o644).map_err(io)?;
        let resolv = format!("nameserver {}\noptions edns0\n", net.gateway());
        write_derived_file(&dir.join("resolv.conf"), resolv.as_bytes(), 0o644).map_err(io)?;
        Ok(())
    }

    /// Inside a freshly made sandbox: the CA in the system trust store (resolv.conf is bound
    /// from `/.burrow/host/resolv.conf` at boot). Written through the agent, so a hostile image's symlinks
    /// resolve inside the sandbox only. Failures are logged: the env vars still point
    /// at the shared bundle.
    pub(crate) async fn install_net_files(&self, rec: &SandboxRecord) {
        if self.net.is_none() {
            return;
        }
        let Ok(ca) = self.ca(&rec.id) else { return };
        let mut files: Vec<(&str, Vec<u8>)> = vec![(
            "/usr/local/share/ca-certificates/burrow-egress.crt",
            ca.cert_pem().into_bytes(),
        )];
        let bundle_path = "/etc/ssl/certs/ca-certificates.crt";
        let mut has_system_bundle = false;
        if let Ok(mut current) = self.read_small_file(&rec.name, bundle_path, 4 << 20).await {
            has_system_bundle = true;
            let pem = ca.cert_pem();
            if !String::from_utf8_lossy(&current).contains(pem.trim()) {
                if !current.is_empty() && !current.ends_with(b"\n") {
                    current.push(b'\n');
                }
                current.extend_from_slice(pem.as_bytes());
                files.push((bundle_path, current));
            }
        }
        crate::fault::pause("net_files.before_write").await;
        let mut ok = true;
        for (path, data) in files {
            if let Err(e) = self.write_small_file(&rec.name, path, data).await {
                // Deleted right after its create: nothing to install into, and nothing wrong.
                let gone = !self.record(&rec.name).is_ok_and(|now| now.id == rec.id);
                if gone {
                    tracing::debug!(sandbox = %rec.name, path, "sandbox deleted; network files not installed");
                    return;
                }
                // Put to sleep or stopped meanwhile: it is not woken for this (processes
                // find the CA through SSL_CERT_FILE and friends all the same).
                if !self
                    .record(&rec.name)
                    .is_ok_and(|now| now.status == SandboxStatus::Running)
                {
                    tracing::debug!(sandbox = %rec.name, path, "sandbox no longer running; network files not installed");
                    return;
                }
                tracing::warn!(sandbox = %rec.name, path, error = %crate::error::chain(&e), "installing network files");
                ok = false;
            }
        }
        // From now on the CA variables point at the image's own store, which holds this CA
        // (its file in /usr/local/share/ca-certificates survives update-ca-certificates) and
        // whatever CA the image or the user adds to it.
        if ok && has_system_bundle {
            let marker = self.host_api_dir(&rec.id).join(SYSTEM_BUNDLE_MARKER);
            if let Err(e) = write_derived_file(&marker, bundle_path.as_bytes(), 0o644) {
                tracing::warn!(sandbox = %rec.name, error = %e, "recording the system CA store");
            }
        }
    }

    /// Environment for processes: proxy variables and CA bundle locations (when the
    /// sandbox has network), and each attached secret's placeholder.
    pub(crate) fn net_env(&self, rec: &SandboxRecord, env: &mut BTreeMap<String, String>) {
        let Some(net) = &self.net else { return };
        let mode = self
            .policy_of(&rec.id)
            .ok()
            .flatten()
            .map_or(net.settings.default_mode, |(_, p)| p.mode);
        if mode != NetworkMode::None {
            let proxy = format!("http://{}:{}", net.gateway(), net.settings.proxy_port);
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.insert(k.into(), proxy.clone());
            }
            for k in ["NO_PROXY", "no_proxy"] {
                env.insert(k.into(), "localhost,127.0.0.1,::1".into());
            }
            // The image's system store once burrowd's CA is in it (so CAs added there count,
            // as on any machine); until then, and for images without a Debian-style store, the
            // host's roots plus the CA.
            let bundle = std::fs::read_to_string(self.host_api_dir(&rec.id).join(SYSTEM_BUNDLE_MARKER))
                .unwrap_or_else(|_| "/.burrow/host/ca-bundle.crt".to_owned());
            for k in [
                "SSL_CERT_FILE",
                "REQUESTS_CA_BUNDLE",
                "CURL_CA_BUNDLE",
                "GIT_SSL_CAINFO",
            ] {
                env.insert(k.into(), bundle.clone());
            }
            env.insert("NODE_EXTRA_CA_CERTS".into(), "/.burrow/host/ca.crt".into());
        }
        if let Ok(attached) = self.store.attachments() {
            for (sid, secret, var) in attached {
                if sid == rec.id {
                    env.insert(var, self.placeholder(&rec.id, &secret));
                }
            }
        }
    }

    /// The placeholder a sandbox holds for a secret: a macaroon bound to the sandbox, the
    /// secret and its hosts. Deterministic, so every process sees the same value.
    fn placeholder(&self, sandbox_id: &str, secret: &str) -> String {
        let hosts = self
            .store
            .secrets()
            .ok()
            .and_then(|all| all.into_iter().find(|s| s.name == secret))
            .map(|s| s.hosts)
            .unwrap_or_default();
        Macaroon::mint(
            &self.keys.placeholder,
            &format!("secret-{sandbox_id}-{secret}"),
            &[
                Caveat::Sandboxes(vec![sandbox_id.to_owned()]),
                Caveat::Secret(secret.to_owned()),
                Caveat::Hosts(hosts),
            ],
        )
        .encode()
    }

    // ----- secrets ---------------------------------------------------------------------

    pub fn create_secret(&self, req: burrow_api::CreateSecret) -> Result<Secret> {
        validate_secret(&req)?;
        let rec = SecretRecord {
            name: req.name.clone(),
            sealed: self.keys.seal(req.value.as_bytes())?,
            header: req.inject.header.clone(),
            format: req.inject.format.clone(),
            hosts: req
                .hosts
                .iter()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            created_at: now_rfc3339(),
        };
        self.store.insert_secret(&rec).map_err(|e| match e {
            StoreError::Unique(_) => CoreError::Conflict(format!("secret '{}' already exists", req.name)),
            e => e.into(),
        })?;
        tracing::info!(secret = %rec.name, hosts = ?rec.hosts, "secret added");
        Ok(self.secret_view(rec, &[]))
    }

    fn secret_view(&self, r: SecretRecord, attachments: &[(String, String, String)]) -> Secret {
        let names: BTreeMap<String, String> = self
            .store
            .all_sandboxes()
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.id, s.name))
            .collect();
        Secret {
            attached: attachments
                .iter()
                .filter(|(_, s, _)| *s == r.name)
                .filter_map(|(id, _, env)| {
                    names.get(id).map(|n| SecretAttachment {
                        sandbox: n.clone(),
                        env: env.clone(),
                    })
                })
                .collect(),
            name: r.name,
            inject: SecretInject {
                header: r.header,
                format: r.format,
            },
            hosts: r.hosts,
            created_at: r.created_at,
        }
    }

    pub fn secrets(&self) -> Result<Vec<Secret>> {
        let attachments = self.store.attachments()?;
        Ok(self
            .store
            .secrets()?
            .into_iter()
            .map(|r| self.secret_view(r, &attachments))
            .collect())
    }

    pub fn secret(&self, name: &str) -> Result<Secret> {
        self.secrets()?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| CoreError::not_found("secret", name))
    }

    pub fn delete_secret(&self, name: &str) -> Result<()> {
        if !self.store.delete_secret(name)? {
            return Err(CoreError::not_found("secret", name));
        }
        if let Some(net) = &self.net {
            net.opened.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        }
        Ok(())
    }

    /// Attaches a secret to a sandbox under `env`; new processes see the placeholder.
    pub fn attach_secret(&self, sandbox: &str, secret: &str, env: &str) -> Result<Secret> {
        validate_env_name(env)?;
        let rec = self.record(sandbox)?;
        self.secret(secret)?;
        self.store
            .attach_secret(&rec.id, secret, env)
            .map_err(|e| match e {
                StoreError::Unique(_) => CoreError::Conflict(format!(
                    "sandbox '{sandbox}' already has a secret in variable {env}"
                )),
                e => e.into(),
            })?;
        self.events.emit(
            &rec.name,
            "secret.attached",
            serde_json::json!({"secret": secret, "env": env}),
        );
        self.secret(secret)
    }

    pub fn detach_secret(&self, sandbox: &str, secret: &str) -> Result<()> {
        let rec = self.record(sandbox)?;
        if !self.store.detach_secret(&rec.id, secret)? {
            return Err(CoreError::not_found(
                "secret attachment",
                format!("{sandbox}/{secret}"),
            ));
        }
        Ok(())
    }

    /// Names of the secrets attached to sandbox `id`.
    pub fn attached_secrets(&self, id: &str) -> Vec<String> {
        self.store
            .attachments()
            .unwrap_or_default()
            .into_iter()
            .filter(|(sid, _, _)| sid == id)
            .map(|(_, s, _)| s)
            .collect()
    }

    /// A secret opened for the proxy (cached in memory; never logged, never returned by
    /// the API).
    pub fn secret_value(&self, name: &str) -> Option<SecretValue> {
        let net = self.net.as_ref()?;
        if let Some(v) = net.opened.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Some(v.clone());
        }
        let r = self.store.secrets().ok()?.into_iter().find(|s| s.name == name)?;
        let value = String::from_utf8(self.keys.unseal(&r.sealed).ok()?).ok()?;
        let v = SecretValue {
            name: r.name,
            value,
            header: r.header,
            format: r.format,
            hosts: r.hosts,
        };
        net.opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), v.clone());
        Some(v)
    }

    async fn read_small_file(&self, name: &str, path: &str, max: usize) -> Result<Vec<u8>> {
        use futures::StreamExt;
        let mut stream = self.read_file(name, path).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
            if out.len() > max {
                return Err(CoreError::TooLarge(format!("{path} is larger than {max} bytes")));
            }
        }
        Ok(out)
    }

    async fn write_small_file(&self, name: &str, path: &str, data: Vec<u8>) -> Result<u64> {
        let body = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(data) });
        self.write_file(
            name,
            path,
            crate::WriteOptions {
                mode: Some(0o644),
                mkdir: true,
            },
            body,
        )
        .await
    }

    /// Lets `src` reach `dst` (policy mode), as the resolver handed it out.
    pub fn admit(&self, src: Ipv4Addr, dst: Ipv4Addr, ttl: Duration) {
        if let Some(net) = &self.net
            && let Err(e) = net.host.admit(src, dst, ttl)
        {
            tracing::warn!(%src, %dst, error = %e, "admitting a resolved address");
        }
    }
}

/// Replaces `path` with `data` (through a temporary file and a rename), synced to disk: for
/// what cannot be made again (the CA's key and certificate, which the sandbox's trust store
/// holds).
fn write_file(path: &std::path::Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    replace_file(path, data, mode, true)
}

/// [`write_file`] without the sync, for what is made again or lost without harm: the files
/// under `/.burrow/host/` (every boot writes them again from the CA) and the marker of the
/// system store (without it, processes get the shared bundle). No fsync on every create.
fn write_derived_file(path: &std::path::Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    replace_file(path, data, mode, false)
}

fn replace_file(path: &std::path::Path, data: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    use std::io::Write;
    // Most boots find the files as they were: skip the write (and its fsync).
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    if durable {
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(hosts: &[&str]) -> burrow_api::CreateSecret {
        burrow_api::CreateSecret {
            name: "gh".into(),
            value: "v".into(),
            inject: SecretInject::default(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn secrets_need_hosts_and_a_sane_format() {
        assert!(validate_secret(&req(&["api.github.com"])).is_ok());
        let e = validate_secret(&req(&[])).unwrap_err().to_string();
        assert!(e.contains("names no host"), "{e}");
        assert!(validate_secret(&req(&["*"])).is_err());
        assert!(validate_secret(&req(&["http://x"])).is_err());
        let mut r = req(&["a.b"]);
        r.inject.format = "token".into();
        assert!(validate_secret(&r).is_err());
        let mut r = req(&["a.b"]);
        r.inject.header = "Bad Header".into();
        assert!(validate_secret(&r).is_err());
        assert!(validate_env_name("GITHUB_TOKEN").is_ok());
        assert!(validate_env_name("1X").is_err());
        assert!(validate_env_name("A=B").is_err());
    }
}
