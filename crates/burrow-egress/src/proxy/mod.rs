//! The credential proxy: every HTTP(S) connection a sandbox makes goes through here.
//!
//! Three listeners on the gateway address:
//! - [`explicit`]: `HTTP_PROXY`/`HTTPS_PROXY` (`CONNECT host:port` and absolute-form `http://`).
//! - [`transparent`]: tcp/443 and tcp/80 redirected by nftables; the original destination
//!   comes from `SO_ORIGINAL_DST`.
//!
//! Each checks the sandbox's domain policy. TLS to a host one of the sandbox's attached
//! secrets may be sent to is intercepted ([`intercept`]) with the sandbox's own CA so the
//! placeholders in it can be checked and replaced ([`inject`]) and the values of the
//! sandbox's secrets redacted from every response ([`redact`], plain HTTP too); everything
//! else is relayed end to end, untouched.
//!
//! This module must never send a placeholder or a secret anywhere the caveats and the
//! secret's own hosts do not allow, and never hand a secret value to a sandbox.

mod explicit;
mod hello;
mod inject;
mod intercept;
mod plain;
mod redact;
mod transparent;
mod upstream;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use burrow_api::NetworkMode;

use crate::{Directory, Lookup, Reach, SandboxView, Unreachable};
use redact::{Patterns, Redactor};

/// Connections open at once, over all sandboxes.
const MAX_CONNECTIONS: usize = 4096;
/// Connections open at once from one sandbox.
const MAX_PER_SANDBOX: usize = 512;
/// A connection with no bytes moving either way for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Time a client has to send its TLS ClientHello (and to finish the handshake).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to connect to an upstream (TCP, then TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an upstream has to answer a request with its response head.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);
/// Time a name lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Per sandbox id: the secret values its redaction patterns were built for, and those.
type RedactionCache = HashMap<String, (Vec<String>, Arc<Patterns>)>;

/// Sandboxes whose redaction patterns are kept built.
const MAX_REDACTION_CACHE: usize = 1024;
/// Largest request head.
const MAX_HEAD: usize = 64 * 1024;
/// Time a client has to send a whole request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the proxy listens and what it trusts upstream.
pub struct ProxyConfig {
    /// `HTTP_PROXY`/`HTTPS_PROXY` (`http://gateway:port`).
    pub explicit: SocketAddr,
    /// Where nftables redirects tcp/80.
    pub transparent_http: SocketAddr,
    /// Where nftables redirects tcp/443.
    pub transparent_tls: SocketAddr,
    /// Roots upstream certificates are verified against (see [`upstream_roots`]).
    pub upstream_roots: Arc<RootCertStore>,
    /// The addresses the proxy may connect to ([`Reach::kernel`] in the daemon: never a
    /// blocked range, an address of the host, or one outside `--uplink-only`).
    pub reach: Arc<Reach>,
    /// The original destination of a redirected connection; `None` is `SO_ORIGINAL_DST`.
    pub original_dst: Option<fn(&TcpStream) -> io::Result<SocketAddrV4>>,
}

/// The running proxy. Dropping it stops the listeners and every connection they accepted.
pub struct ProxyServer {
    pub explicit: SocketAddr,
    pub transparent_http: SocketAddr,
    pub transparent_tls: SocketAddr,
    _shutdown: watch::Sender<()>,
}

/// Binds the three listeners and serves them until the returned handle is dropped.
pub async fn serve(
    cfg: ProxyConfig,
    dir: Arc<dyn Directory>,
    lookup: Arc<dyn Lookup>,
) -> io::Result<ProxyServer> {
    let explicit = TcpListener::bind(cfg.explicit).await?;
    let http = TcpListener::bind(cfg.transparent_http).await?;
    let tls = TcpListener::bind(cfg.transparent_tls).await?;
    let (tx, rx) = watch::channel(());
    let shared = Arc::new(Shared {
        dir,
        lookup,
        reach: cfg.reach.clone(),
        original_dst: cfg.original_dst.unwrap_or(so_original_dst),
        pools: upstream::Pools::new(upstream::client_config(cfg.upstream_roots), cfg.reach),
        redaction: Mutex::new(HashMap::new()),
        limits: Arc::new(Limits {
            total: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            per_source: Mutex::new(HashMap::new()),
        }),
        shutdown: rx,
    });
    let server = ProxyServer {
        explicit: explicit.local_addr()?,
        transparent_http: http.local_addr()?,
        transparent_tls: tls.local_addr()?,
        _shutdown: tx,
    };
    shared.spawn(accept_loop(shared.clone(), explicit, Listener::Explicit));
    shared.spawn(accept_loop(shared.clone(), http, Listener::TransparentHttp));
    shared.spawn(accept_loop(shared.clone(), tls, Listener::TransparentTls));
    Ok(server)
}

/// The roots upstream servers are verified against: the Mozilla roots, the system bundle
/// if there is one, and `extra_pem_files` (each must hold at least one certificate).
pub fn upstream_roots(extra_pem_files: &[PathBuf]) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Ok(pem) = std::fs::read("/etc/ssl/certs/ca-certificates.crt") {
        // The system bundle may hold certificates webpki does not accept; skip those.
        let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
        roots.add_parsable_certificates(certs);
    }
    for path in extra_pem_files {
        let bad =
            |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()));
        let pem =
            std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            found += 1;
        }
        if found == 0 {
            return Err(bad("no PEM certificate in the file".into()));
        }
    }
    Ok(roots)
}

#[derive(Clone, Copy)]
enum Listener {
    Explicit,
    TransparentHttp,
    TransparentTls,
}

/// What every connection handler shares.
struct Shared {
    dir: Arc<dyn Directory>,
    lookup: Arc<dyn Lookup>,
    reach: Arc<Reach>,
    original_dst: fn(&TcpStream) -> io::Result<SocketAddrV4>,
    pools: upstream::Pools,
    redaction: Mutex<RedactionCache>,
    limits: Arc<Limits>,
    shutdown: watch::Receiver<()>,
}

impl Shared {
    /// Runs `fut` until it ends or the server is dropped.
    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = fut => {}
                _ = shutdown.changed() => {}
            }
        });
    }

    fn event(&self, view: &SandboxView, kind: &str, data: serde_json::Value) {
        self.dir.event(&view.id, kind, data);
    }

    /// Whether an upstream address may be connected to at all, and if not why.
    fn reachable(&self, ip: Ipv4Addr) -> Result<(), Unreachable> {
        self.reach.check(ip)
    }

    /// Whether TLS is intercepted for this sandbox: whenever it holds any placeholder, so a
    /// placeholder sent to a host its secret is not for is seen and refused, never relayed.
    /// A sandbox without secrets keeps end-to-end TLS.
    fn intercepts(&self, view: &SandboxView, _host: &str) -> bool {
        !self.dir.attached_secrets(&view.id).is_empty()
    }

    /// IPv4 addresses of `name` from the upstream resolvers, bounded in time.
    async fn lookup(&self, name: &str) -> io::Result<Vec<Ipv4Addr>> {
        tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup.lookup_v4(name))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "name lookup timed out"))?
    }

    /// Whether `dst` is an address `name` stands for: one burrowd's DNS handed to this
    /// sandbox for that name, or failing that one the upstream resolvers return now.
    async fn destination_matches(&self, src: Ipv4Addr, dst: Ipv4Addr, name: &str) -> bool {
        if self
            .lookup
            .handed_out(src, dst)
            .iter()
            .any(|n| same_host(n, name))
        {
            return true;
        }
        self.lookup(name).await.is_ok_and(|ips| ips.contains(&dst))
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, kind: Listener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!("proxy accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let src = match peer.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
                Some(ip) => ip,
                None => continue,
            },
        };
        let Some(guard) = shared.limits.admit(src) else {
            tracing::debug!("proxy: connection limit reached for {src}");
            continue;
        };
        let Some(view) = shared.dir.sandbox(src) else {
            tracing::debug!("proxy: connection from {src}, which is no sandbox");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            shared: shared.clone(),
            view: Arc::new(view),
            src,
            activity: Activity::new(),
            _guard: Arc::new(guard),
        };
        shared.spawn(async move {
            match kind {
                Listener::Explicit => explicit::serve(conn, stream).await,
                Listener::TransparentHttp => transparent::http(conn, stream).await,
                Listener::TransparentTls => transparent::tls(conn, stream).await,
            }
        });
    }
}

/// One accepted connection: whose it is, and what keeps it counted.
#[derive(Clone)]
struct Conn {
    shared: Arc<Shared>,
    view: Arc<SandboxView>,
    src: Ipv4Addr,
    activity: Arc<Activity>,
    _guard: Arc<ConnGuard>,
}

impl Conn {
    /// Records an `egress.denied` event and builds the refusal for `host`.
    fn deny(&self, host: &str, via: &str, reason: &str) -> Refusal {
        self.shared.event(
            &self.view,
            "egress.denied",
            serde_json::json!({ "host": host, "via": via, "reason": reason }),
        );
        Refusal::new(StatusCode::FORBIDDEN, format!("{host} is not allowed: {reason}"))
    }

    /// The redaction for one response to this sandbox: the values of every secret attached
    /// to it (and `also`, what this request injected), whether or not the request carried a
    /// placeholder. The patterns are built once per set of values and sandbox.
    fn redactor(&self, also: impl IntoIterator<Item = String>) -> Redactor {
        let dir = &self.shared.dir;
        let mut values: Vec<String> = dir
            .attached_secrets(&self.view.id)
            .iter()
            .filter_map(|name| dir.secret(name))
            .map(|s| s.value)
            .chain(also)
            .filter(|v| !v.is_empty())
            .collect();
        values.sort();
        values.dedup();
        let mut cache = self.shared.redaction.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, patterns)) = cache.get(&self.view.id)
            && *cached == values
        {
            return Redactor::new(patterns.clone());
        }
        let patterns = Arc::new(Patterns::new(values.iter().map(String::as_str)));
        if cache.len() >= MAX_REDACTION_CACHE {
            cache.clear();
        }
        cache.insert(self.view.id.clone(), (values, patterns.clone()));
        Redactor::new(patterns)
    }

    /// The addresses `host:port` may be reached at, after the policy check: an allowed name
    /// resolved upstream, or (outside policy mode) an IPv4 literal. Never a blocked address.
    async fn resolve(&self, host: &str, port: u16, via: &str) -> Result<Vec<SocketAddr>, Refusal> {
        let view = &self.view;
        if let Ok(ip) = host.parse::<IpAddr>() {
            let IpAddr::V4(ip) = ip else {
                return Err(self.deny(host, via, "IPv6 destinations are not supported"));
            };
            if view.mode == NetworkMode::Policy {
                return Err(self.deny(host, via, "policy mode allows names, not IP addresses"));
            }
            if let Err(why) = self.shared.reachable(ip) {
                return Err(self.deny(host, via, why.reason()));
            }
            return Ok(vec![SocketAddr::from((ip, port))]);
        }
        if !crate::policy::allows(view.mode, &view.rules, host) {
            let reason = format!("the network policy of sandbox '{}' does not allow it", view.name);
            return Err(self.deny(host, via, &reason));
        }
        let ips = self
            .shared
            .lookup(host)
            .await
            .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, format!("cannot resolve {host}: {e}")))?;
        let mut refused = None;
        let addrs: Vec<SocketAddr> = ips
            .iter()
            .filter(|ip| match self.shared.reachable(**ip) {
                Ok(()) => true,
                Err(why) => {
                    refused.get_or_insert((**ip, why));
                    false
                }
            })
            .map(|ip| SocketAddr::from((*ip, port)))
            .collect();
        if addrs.is_empty() {
            let Some((ip, why)) = refused else {
                return Err(Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    format!("{host} has no IPv4 address"),
                ));
            };
            let reason = format!("it resolves only to addresses it may not reach ({ip}: {why})");
            return Err(self.deny(host, via, &reason));
        }
        Ok(addrs)
    }
}

struct Limits {
    total: Arc<Semaphore>,
    per_source: Mutex<HashMap<Ipv4Addr, usize>>,
}

impl Limits {
    fn admit(self: &Arc<Self>, src: Ipv4Addr) -> Option<ConnGuard> {
        let permit = self.total.clone().try_acquire_owned().ok()?;
        let mut per = self.per_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = per.entry(src).or_insert(0);
        if *n >= MAX_PER_SANDBOX {
            return None;
        }
        *n += 1;
        Some(ConnGuard {
            _permit: permit,
            src,
            limits: self.clone(),
        })
    }
}

struct ConnGuard {
    _permit: OwnedSemaphorePermit,
    src: Ipv4Addr,
    limits: Arc<Limits>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut per = self.limits.per_source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.src) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.src);
            }
        }
    }
}

/// When bytes last moved on a connection, for the idle timeout.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let since = last.elapsed();
            if since >= limit {
                return;
            }
            tokio::time::sleep(limit - since).await;
        }
    }
}

/// A stream that records activity on every read and write.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    fn new(inner: S, activity: Arc<Activity>) -> Self {
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways until both sides close or the connection idles out.
async fn relay<A, B>(a: A, b: B, activity: Arc<Activity>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = Tracked::new(a, activity.clone());
    let mut b = Tracked::new(b, activity.clone());
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
        () = activity.idle(IDLE_TIMEOUT) => {}
    }
}

/// Bodies the proxy sends either way.
type Body = BoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A response from the proxy itself: plain text, saying why.
fn text(status: StatusCode, message: &str) -> Response<Body> {
    let body = format!("burrow proxy: {message}\n");
    let mut resp = Response::new(
        http_body_util::Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A request the proxy refuses, and what it answers.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    fn response(&self) -> Response<Body> {
        text(self.status, &self.message)
    }
}

/// Headers that describe one hop, not the message: never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers, and those `Connection` names, before a message is
/// forwarded (the credential proxy here, burrowd's ingress too).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    for name in HOP_BY_HOP.iter().copied().chain(named.iter().map(String::as_str)) {
        headers.remove(name);
    }
}

/// `Host` or an authority without its port, for comparing with a name.
fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split(']').next().map_or(authority, |h| &h[1..]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            authority
        }
    })
}

/// Host names compare case-insensitively, ignoring a trailing dot.
fn same_host(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// `SO_ORIGINAL_DST` of a redirected connection (the kernel's record, via `burrow-net`).
fn so_original_dst(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    burrow_net::original_dst(stream)
}

/// The placeholders in `bytes`: candidates of a macaroon's shape that parse and verify under
/// the placeholder `key` (only burrowd mints under it), with their verified caveats. Text that
/// merely contains the prefix (`libgbm1_22.3.6-1.deb`) or a token that does not parse or verify
/// is no placeholder: it holds no secret and is forwarded like any other byte.
fn placeholders<'a>(
    key: &'a [u8],
    bytes: &'a [u8],
) -> impl Iterator<Item = (&'a str, burrow_macaroon::Caveats)> + 'a {
    burrow_macaroon::Macaroon::find_in(bytes).filter_map(move |token| {
        let caveats = burrow_macaroon::Macaroon::decode(token).ok()?.verify(key).ok()?;
        Some((token, caveats))
    })
}

/// The `user:password` pair of an HTTP Basic credential (`Basic base64(user:password)`): where
/// tools put a token given in a URL (`https://x-access-token:TOKEN@host/`) or handed over by a
/// credential helper, so a placeholder there is encoded.
fn basic_pair(value: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()
}

/// Whether `field` holds a placeholder, as it is or inside an HTTP Basic pair.
fn holds_placeholder(key: &[u8], field: &[u8]) -> bool {
    placeholders(key, field).next().is_some()
        || basic_pair(field).is_some_and(|pair| placeholders(key, &pair).next().is_some())
}

/// Whether any of `fields` (a URL, header values) from `view` holds a placeholder: never for
/// a sandbox holding no secret (its requests are not inspected at all), otherwise whether one
/// holds a well-formed placeholder ([`placeholders`]), also inside an HTTP Basic pair.
fn has_placeholder<'a>(
    dir: &dyn Directory,
    view: &SandboxView,
    fields: impl IntoIterator<Item = &'a [u8]>,
) -> bool {
    if dir.attached_secrets(&view.id).is_empty() {
        return false;
    }
    let key = dir.placeholder_key();
    fields.into_iter().any(|f| holds_placeholder(&key, f))
}

/// Unix time in seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The HTTP/1.1 server settings every listener uses.
fn http1_server() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD);
    builder
}

/// The whole `source()` chain of an error, for a 502 body or a log line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(host_without_port("api.github.com:443"), "api.github.com");
        assert_eq!(host_without_port("api.github.com"), "api.github.com");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert!(same_host("API.github.com.", "api.github.com"));
        assert!(!same_host("api.github.com", "github.com"));
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("proxy-authorization", HeaderValue::from_static("basic x"));
        h.insert("authorization", HeaderValue::from_static("token y"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("authorization"));
    }

    #[test]
    fn extra_roots_must_parse() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        assert!(upstream_roots(std::slice::from_ref(&junk)).is_err());
        let ca = crate::ca::SandboxCa::generate("extra").unwrap();
        let good = dir.path().join("good.pem");
        std::fs::write(&good, ca.cert_pem()).unwrap();
        let base = upstream_roots(&[]).unwrap().len();
        assert_eq!(upstream_roots(&[good]).unwrap().len(), base + 1);
    }
}
