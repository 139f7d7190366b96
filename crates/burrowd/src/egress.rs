//! Starts the egress side (`burrow-egress`) on the bridge's gateway address: the DNS
//! resolver every sandbox uses and the credential proxy, both asking the manager through a
//! [`Directory`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use burrow_core::Manager;
use burrow_egress::{Directory, SandboxView, SecretValue};

/// The manager as the egress side sees it. Weak: the servers must not keep it alive.
struct ManagerDirectory(Weak<Manager>, EventBudget);

/// At most [`EVENTS_PER_SECOND`] egress events of one kind per sandbox per second: a sandbox
/// querying denied names in a loop cannot flood its event stream (the rest are counted and
/// reported in the next event that gets through).
#[derive(Default)]
struct EventBudget(std::sync::Mutex<std::collections::HashMap<(String, String), Window>>);

/// Start of the current second, events let through in it, events dropped since the last one.
type Window = (std::time::Instant, u32, u64);

const EVENTS_PER_SECOND: u32 = 20;

impl EventBudget {
    /// `Some(dropped since the last one let through)` if this event may go out.
    fn take(&self, sandbox_id: &str, kind: &str) -> Option<u64> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.clear();
        }
        let now = std::time::Instant::now();
        let e = map
            .entry((sandbox_id.to_owned(), kind.to_owned()))
            .or_insert((now, 0, 0));
        if now.duration_since(e.0) >= Duration::from_secs(1) {
            e.0 = now;
            e.1 = 0;
        }
        if e.1 >= EVENTS_PER_SECOND {
            e.2 += 1;
            return None;
        }
        e.1 += 1;
        Some(std::mem::take(&mut e.2))
    }
}

impl Directory for ManagerDirectory {
    fn sandbox(&self, src: Ipv4Addr) -> Option<SandboxView> {
        self.0.upgrade()?.egress_view(src)
    }

    fn placeholder_key(&self) -> Vec<u8> {
        self.0
            .upgrade()
            .map(|m| m.placeholder_key().to_vec())
            .unwrap_or_default()
    }

    fn secret(&self, name: &str) -> Option<SecretValue> {
        self.0.upgrade()?.secret_value(name)
    }

    fn attached_secrets(&self, sandbox_id: &str) -> Vec<String> {
        self.0
            .upgrade()
            .map(|m| m.attached_secrets(sandbox_id))
            .unwrap_or_default()
    }

    fn admit(&self, src: Ipv4Addr, dst: Ipv4Addr, ttl: Duration) {
        if let Some(m) = self.0.upgrade() {
            m.admit(src, dst, ttl);
        }
    }

    fn event(&self, sandbox_id: &str, kind: &str, mut data: serde_json::Value) {
        let Some(dropped) = self.1.take(sandbox_id, kind) else {
            return;
        };
        if dropped > 0
            && let Some(obj) = data.as_object_mut()
        {
            obj.insert("suppressed_before".into(), dropped.into());
        }
        if let Some(m) = self.0.upgrade()
            && let Ok(name) = m.name_of(sandbox_id)
        {
            tracing::info!(sandbox = %name, kind, %data, "egress");
            m.events.emit(&name, kind, data);
        }
    }
}

/// The running egress servers; dropping them stops them.
pub struct Egress {
    _dns: burrow_egress::dns::DnsServer,
    _proxy: burrow_egress::proxy::ProxyServer,
}

/// Starts DNS and the proxy when the manager has networking; `None` when it is off.
pub async fn start(mgr: &Arc<Manager>) -> anyhow::Result<Option<Egress>> {
    let Some(net) = mgr.net() else {
        return Ok(None);
    };
    let gw = net.gateway();
    let s = &net.settings;
    let dir: Arc<dyn Directory> = Arc::new(ManagerDirectory(Arc::downgrade(mgr), EventBudget::default()));
    // What the proxy may connect to and the resolver may admit: never the host's own
    // addresses (kept current from the kernel), and only the uplink ranges when given.
    let reach =
        burrow_egress::Reach::kernel(s.uplink_only.clone()).context("watching the host's addresses")?;
    let resolver = burrow_egress::dns::Resolver::new(s.dns_upstreams.clone());
    let listen = SocketAddr::from((gw, s.dns_port));
    let dns = burrow_egress::dns::serve(listen, resolver.clone(), dir.clone(), reach.clone())
        .await
        .with_context(|| format!("serving DNS on {gw}:{}", s.dns_port))?;
    let roots = burrow_egress::proxy::upstream_roots(&s.extra_roots).context("loading upstream TLS roots")?;
    let cfg = burrow_egress::proxy::ProxyConfig {
        explicit: SocketAddr::from((gw, s.proxy_port)),
        transparent_http: SocketAddr::from((gw, s.transparent_http_port)),
        transparent_tls: SocketAddr::from((gw, s.transparent_tls_port)),
        upstream_roots: Arc::new(roots),
        reach,
        original_dst: None,
    };
    let proxy = burrow_egress::proxy::serve(cfg, dir, resolver)
        .await
        .with_context(|| format!("serving the credential proxy on {gw}"))?;
    tracing::info!(gateway = %gw, dns = s.dns_port, proxy = s.proxy_port, "egress serving");
    Ok(Some(Egress {
        _dns: dns,
        _proxy: proxy,
    }))
}

/// Nameservers of the host's /etc/resolv.conf (burrowd's default upstreams).
pub fn host_resolvers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_budget_caps_a_flood_and_reports_it() {
        let b = EventBudget::default();
        let passed = (0..25)
            .filter(|_| b.take("sb-1", "egress.denied").is_some())
            .count();
        assert_eq!(passed, EVENTS_PER_SECOND as usize);
        // Another sandbox, another kind: their own budgets.
        assert_eq!(b.take("sb-2", "egress.denied"), Some(0));
        assert_eq!(b.take("sb-1", "secret.used"), Some(0));
    }
}
