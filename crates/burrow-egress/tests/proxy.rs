//! The credential proxy end to end, on loopback only.
//!
//! A test CA signs the upstream certificate of an HTTPS echo server that answers with the
//! request line and headers it received, so a test sees what reached the upstream. The
//! sandbox side is a rustls client that trusts either the sandbox CA (interception) or the
//! test CA (end to end), or `curl`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use burrow_api::{NetworkMode, NetworkRule, RuleAction};
use burrow_egress::ca::SandboxCa;
use burrow_egress::proxy::{self, ProxyConfig, ProxyServer};
use burrow_egress::{Directory, Lookup, Reach, SandboxView, SecretValue};
use burrow_macaroon::{Caveat, Macaroon};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const KEY: &[u8] = b"test placeholder key, 32 bytes!!";
const REAL: &str = "ghp_REALsecretVALUE0123456789";
const SANDBOX_ID: &str = "sb-dev-1";
/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(20);

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("test step timed out")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------
// The daemon side, faked.

struct Dir {
    ca: Arc<SandboxCa>,
    mode: NetworkMode,
    /// Whether the sandbox holds placeholders (then all its TLS is intercepted).
    with_secrets: bool,
    events: Mutex<Vec<(String, serde_json::Value)>>,
}

impl Dir {
    fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Directory for Dir {
    fn sandbox(&self, src: Ipv4Addr) -> Option<SandboxView> {
        (src == Ipv4Addr::LOCALHOST).then(|| SandboxView {
            id: SANDBOX_ID.into(),
            name: "dev".into(),
            mode: self.mode,
            rules: ["api.github.test", "evil.test", "plain.test", "mismatch.test"]
                .into_iter()
                .map(|d| NetworkRule {
                    domain: d.into(),
                    action: RuleAction::Allow,
                })
                .collect(),
            ca: self.ca.clone(),
        })
    }

    fn placeholder_key(&self) -> Vec<u8> {
        KEY.to_vec()
    }

    fn secret(&self, name: &str) -> Option<SecretValue> {
        let (header, format, host) = match name {
            "gh" => ("Authorization", "token %s", "api.github.test"),
            // A second secret, for evil.test (any attached secret makes all TLS intercepted).
            "evil-key" => ("X-Api-Key", "%s", "evil.test"),
            _ => return None,
        };
        Some(SecretValue {
            name: name.into(),
            value: if name == "gh" {
                REAL.into()
            } else {
                "evil-value".into()
            },
            header: header.into(),
            format: format.into(),
            hosts: vec![host.into()],
        })
    }

    fn attached_secrets(&self, sandbox_id: &str) -> Vec<String> {
        if sandbox_id == SANDBOX_ID && self.with_secrets {
            vec!["gh".into(), "evil-key".into()]
        } else {
            vec![]
        }
    }

    fn admit(&self, _: Ipv4Addr, _: Ipv4Addr, _: Duration) {}

    fn event(&self, sandbox_id: &str, kind: &str, data: serde_json::Value) {
        assert_eq!(sandbox_id, SANDBOX_ID);
        self.events.lock().unwrap().push((kind.into(), data));
    }
}

struct Names;

impl Lookup for Names {
    fn lookup_v4(
        &self,
        name: &str,
    ) -> std::pin::Pin<Box<dyn Future<Output = io::Result<Vec<Ipv4Addr>>> + Send + '_>> {
        let ips = match name {
            "api.github.test" | "evil.test" | "plain.test" => vec![Ipv4Addr::LOCALHOST],
            "mismatch.test" => vec![Ipv4Addr::new(127, 0, 0, 2)],
            _ => vec![],
        };
        Box::pin(async move { Ok(ips) })
    }

    fn handed_out(&self, _src: Ipv4Addr, dst: Ipv4Addr) -> Vec<String> {
        if dst == Ipv4Addr::LOCALHOST {
            vec!["api.github.test".into()]
        } else {
            vec![]
        }
    }
}

/// Transparent listener port → where the test pretends the connection was headed.
fn original_dsts() -> &'static Mutex<HashMap<u16, SocketAddrV4>> {
    static MAP: OnceLock<Mutex<HashMap<u16, SocketAddrV4>>> = OnceLock::new();
    MAP.get_or_init(Default::default)
}

fn fake_original_dst(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    let port = stream.local_addr()?.port();
    original_dsts()
        .lock()
        .unwrap()
        .get(&port)
        .copied()
        .ok_or_else(|| io::Error::other("no original destination registered"))
}

// ---------------------------------------------------------------------------------------
// The upstream: an echo server behind a test CA.

struct TestCa {
    cert_pem: String,
    leaf_chain: Vec<CertificateDer<'static>>,
    leaf_key_der: Vec<u8>,
}

fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "upstream test CA");
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let names = ["api.github.test", "evil.test", "plain.test", "mismatch.test"].map(String::from);
        let leaf = rcgen::CertificateParams::new(names.to_vec())
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        TestCa {
            cert_pem: ca_cert.pem(),
            leaf_chain: vec![leaf.der().clone()],
            leaf_key_der: leaf_key.serialize_der(),
        }
    })
}

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Echo {
    addr: SocketAddrV4,
    seen: Arc<Mutex<Vec<Seen>>>,
    count: Arc<AtomicUsize>,
}

impl Echo {
    async fn start(tls: bool) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicUsize::new(0));
        let acceptor = tls.then(|| {
            let ca = test_ca();
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    ca.leaf_chain.clone(),
                    PrivateKeyDer::try_from(ca.leaf_key_der.clone()).unwrap(),
                )
                .unwrap();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            TlsAcceptor::from(Arc::new(config))
        });
        let (seen2, count2) = (seen.clone(), count.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, count, acceptor) = (seen2.clone(), count2.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                serve_echo(tls, seen, count).await;
                            }
                        }
                        None => serve_echo(stream, seen, count).await,
                    }
                });
            }
        });
        Echo { addr, seen, count }
    }

    fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the echo server saw a request")
    }
}

async fn serve_echo<S>(io: S, seen: Arc<Mutex<Vec<Seen>>>, count: Arc<AtomicUsize>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let (seen, count) = (seen.clone(), count.clone());
        async move {
            let request = Seen {
                method: req.method().to_string(),
                path: req.uri().path().to_owned(),
                headers: req
                    .headers()
                    .iter()
                    .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect(),
            };
            let mut body = format!("{} {}\n", request.method, request.path);
            for (n, v) in &request.headers {
                body.push_str(&format!("{n}: {v}\n"));
            }
            let auth = request.header("authorization").unwrap_or("").to_owned();
            seen.lock().unwrap().push(request);
            count.fetch_add(1, Ordering::SeqCst);
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut()
                .insert("x-seen-authorization", auth.parse().unwrap());
            Ok::<_, Infallible>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

// ---------------------------------------------------------------------------------------
// The harness.

struct Env {
    proxy: ProxyServer,
    dir: Arc<Dir>,
    tls_echo: Echo,
    plain_echo: Echo,
    sandbox_ca: String,
}

impl Env {
    async fn start() -> Env {
        Env::with_mode(NetworkMode::Policy).await
    }

    async fn with_mode(mode: NetworkMode) -> Env {
        Env::build(mode, true).await
    }

    /// A sandbox with no secret attached: nothing is intercepted.
    async fn without_secrets() -> Env {
        Env::build(NetworkMode::Policy, false).await
    }

    async fn build(mode: NetworkMode, with_secrets: bool) -> Env {
        let tls_echo = Echo::start(true).await;
        let plain_echo = Echo::start(false).await;
        let ca = Arc::new(SandboxCa::generate("burrow sandbox dev").unwrap());
        let dir = Arc::new(Dir {
            ca: ca.clone(),
            mode,
            with_secrets,
            events: Mutex::new(Vec::new()),
        });
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(test_ca().cert_pem.as_bytes()).unwrap())
            .unwrap();
        let any = "127.0.0.1:0".parse().unwrap();
        let cfg = ProxyConfig {
            explicit: any,
            transparent_http: any,
            transparent_tls: any,
            upstream_roots: Arc::new(roots),
            reach: Reach::fixed([], None, true),
            original_dst: Some(fake_original_dst),
        };
        let proxy = proxy::serve(cfg, dir.clone(), Arc::new(Names)).await.unwrap();
        let mut dsts = original_dsts().lock().unwrap();
        dsts.insert(proxy.transparent_tls.port(), tls_echo.addr);
        dsts.insert(proxy.transparent_http.port(), plain_echo.addr);
        drop(dsts);
        Env {
            proxy,
            dir,
            tls_echo,
            plain_echo,
            sandbox_ca: ca.cert_pem(),
        }
    }

    /// `CONNECT authority`; the status, and the stream if the tunnel is open.
    async fn connect(&self, authority: &str) -> (u16, String, TcpStream) {
        let mut stream = TcpStream::connect(self.proxy.explicit).await.unwrap();
        let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let (status, body) = read_head_and_body(&mut stream).await;
        (status, body, stream)
    }

    /// An HTTPS connection to `host` on the echo server's port, through `CONNECT`.
    async fn https(&self, host: &str, trust_pem: &str) -> io::Result<SendRequest<Full<Bytes>>> {
        self.https_sni(host, host, trust_pem).await
    }

    async fn https_sni(
        &self,
        host: &str,
        sni: &str,
        trust_pem: &str,
    ) -> io::Result<SendRequest<Full<Bytes>>> {
        let (status, body, stream) = self
            .connect(&format!("{host}:{}", self.tls_echo.addr.port()))
            .await;
        assert_eq!(status, 200, "CONNECT {host}: {body}");
        handshake(stream, sni, trust_pem).await
    }

    fn placeholder(&self, extra: &[Caveat]) -> String {
        let mut caveats = vec![
            Caveat::Secret("gh".into()),
            Caveat::Hosts(vec!["api.github.test".into()]),
        ];
        caveats.extend_from_slice(extra);
        Macaroon::mint(KEY, "secret-gh-1", &caveats).encode()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let mut dsts = original_dsts().lock().unwrap();
        dsts.remove(&self.proxy.transparent_tls.port());
        dsts.remove(&self.proxy.transparent_http.port());
    }
}

/// Reads an HTTP/1.1 response head and its `Content-Length` body, byte by byte (so nothing
/// past it is consumed).
async fn read_head_and_body(stream: &mut TcpStream) -> (u16, String) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = within(stream.read(&mut b)).await.unwrap();
        assert!(
            n > 0,
            "connection closed in the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    within(stream.read_exact(&mut body)).await.unwrap();
    (status, String::from_utf8(body).unwrap())
}

fn connector(trust_pem: &str) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trust_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn handshake<S>(stream: S, sni: &str, trust_pem: &str) -> io::Result<SendRequest<Full<Bytes>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let tls = within(connector(trust_pem).connect(name, stream)).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: String,
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    host: &str,
    path: &str,
    auth: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path).header("host", host);
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let req = req.body(Full::new(Bytes::from_static(b"payload"))).unwrap();
    within(sender.ready()).await.unwrap();
    let resp = within(sender.send_request(req)).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = within(resp.into_body().collect()).await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

fn stars() -> String {
    "*".repeat(REAL.len())
}

// ---------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn injects_the_secret_and_redacts_it_from_the_response() {
    let env = Env::start().await;
    let placeholder = env.placeholder(&[]);
    let mut client = env.https("api.github.test", &env.sandbox_ca).await.unwrap();
    let auth = format!("token {placeholder}");
    for _ in 0..2 {
        // Twice on one connection: keep-alive on both sides.
        let reply = send(&mut client, "GET", "api.github.test", "/user", Some(&auth)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let upstream_saw = env.tls_echo.last();
        assert_eq!(
            upstream_saw.header("authorization"),
            Some(format!("token {REAL}").as_str())
        );
        assert_eq!(upstream_saw.path, "/user");
        assert!(!reply.body.contains(REAL), "{}", reply.body);
        assert!(
            reply.body.contains(&format!("authorization: token {}", stars())),
            "{}",
            reply.body
        );
        assert_eq!(
            reply.headers["x-seen-authorization"],
            format!("token {}", stars()).as_str()
        );
    }
    assert_eq!(env.tls_echo.requests(), 2);
    let used = env.dir.events("secret.used");
    assert_eq!(used.len(), 2);
    assert_eq!(
        used[0],
        serde_json::json!({"secret": "gh", "host": "api.github.test", "method": "GET", "path": "/user"})
    );
    let all = format!("{:?}", env.dir.events.lock().unwrap());
    assert!(!all.contains(REAL));
}

#[tokio::test]
async fn the_placeholder_is_refused_for_another_host_and_nothing_is_sent() {
    let env = Env::start().await;
    let auth = format!("token {}", env.placeholder(&[]));
    let mut client = env.https("evil.test", &env.sandbox_ca).await.unwrap();
    let reply = send(&mut client, "GET", "evil.test", "/steal", Some(&auth)).await;
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("hosts=api.github.test"), "{}", reply.body);
    assert_eq!(env.tls_echo.requests(), 0);
    let denied = env.dir.events("secret.denied");
    assert_eq!(denied[0]["secret"], "gh");
    assert_eq!(denied[0]["host"], "evil.test");
}

#[tokio::test]
async fn caveats_are_enforced() {
    let env = Env::start().await;
    let mut client = env.https("api.github.test", &env.sandbox_ca).await.unwrap();

    let expired = env.placeholder(&[Caveat::ExpiresAt(1_000_000)]);
    let reply = send(
        &mut client,
        "GET",
        "api.github.test",
        "/user",
        Some(&format!("token {expired}")),
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("expires"), "{}", reply.body);

    let get_only = env.placeholder(&[Caveat::Methods(vec!["GET".into()])]);
    let reply = send(
        &mut client,
        "POST",
        "api.github.test",
        "/user",
        Some(&format!("token {get_only}")),
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("methods=GET"), "{}", reply.body);
    let reply = send(
        &mut client,
        "GET",
        "api.github.test",
        "/user",
        Some(&format!("token {get_only}")),
    )
    .await;
    assert_eq!(reply.status, 200);

    let forged = Macaroon::mint(b"some other key", "x", &[Caveat::Secret("gh".into())]).encode();
    let reply = send(
        &mut client,
        "GET",
        "api.github.test",
        "/user",
        Some(&format!("token {forged}")),
    )
    .await;
    // A token that does not verify (or parse) is no placeholder: it holds no secret, so it
    // goes on untouched, as any other text would.
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        env.tls_echo.last().header("authorization"),
        Some(format!("token {forged}").as_str())
    );
    let garbage = "token bm1_eyJub3QiOiJ2YWxpZCJ9";
    let reply = send(&mut client, "GET", "api.github.test", "/user", Some(garbage)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(env.tls_echo.last().header("authorization"), Some(garbage));

    // The allowed GET and the two that held no placeholder reached the upstream.
    assert_eq!(env.tls_echo.requests(), 3);
    assert_eq!(env.dir.events("secret.denied").len(), 2);
}

#[tokio::test]
async fn a_denied_domain_is_refused_at_connect() {
    let env = Env::start().await;
    let (status, body, _) = env.connect("blocked.test:443").await;
    assert_eq!(status, 403);
    assert!(body.contains("blocked.test"), "{body}");
    let (status, _, _) = env.connect("127.0.0.1:443").await;
    assert_eq!(status, 403, "IP literals are refused in policy mode");
    let denied = env.dir.events("egress.denied");
    assert_eq!(denied[0]["host"], "blocked.test");
    assert_eq!(denied[0]["via"], "proxy");
}

#[tokio::test]
async fn the_server_name_must_be_the_connect_host() {
    let env = Env::start().await;
    // Intercepted host, other name.
    let err = env
        .https_sni("api.github.test", "plain.test", &env.sandbox_ca)
        .await;
    assert!(err.is_err());
    // Relayed (a sandbox without secrets), other name.
    let relayed = Env::without_secrets().await;
    let err = relayed
        .https_sni("plain.test", "api.github.test", test_ca_pem())
        .await;
    assert!(err.is_err());
    assert_eq!(env.tls_echo.requests(), 0);
    assert_eq!(relayed.tls_echo.requests(), 0);
    assert_eq!(env.dir.events("egress.denied").len(), 1);
    assert_eq!(relayed.dir.events("egress.denied").len(), 1);
}

#[tokio::test]
async fn the_host_header_must_be_the_server_name() {
    let env = Env::start().await;
    let mut client = env.https("api.github.test", &env.sandbox_ca).await.unwrap();
    let auth = format!("token {}", env.placeholder(&[]));
    let reply = send(&mut client, "GET", "evil.test", "/", Some(&auth)).await;
    assert_eq!(reply.status, 421);
    assert_eq!(env.tls_echo.requests(), 0);
}

fn test_ca_pem() -> &'static str {
    &test_ca().cert_pem
}

#[tokio::test]
async fn a_sandbox_without_secrets_is_relayed_end_to_end() {
    let env = Env::without_secrets().await;
    // Only the upstream's own CA verifies: the proxy did not terminate TLS.
    assert!(env.https("plain.test", &env.sandbox_ca).await.is_err());
    let mut client = env.https("plain.test", test_ca_pem()).await.unwrap();
    let reply = send(
        &mut client,
        "GET",
        "plain.test",
        "/relayed",
        Some("Bearer untouched"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        env.tls_echo.last().header("authorization"),
        Some("Bearer untouched")
    );
}

#[tokio::test]
async fn transparent_tls_intercepts_and_checks_the_destination() {
    let env = Env::start().await;
    let auth = format!("token {}", env.placeholder(&[]));
    let stream = TcpStream::connect(env.proxy.transparent_tls).await.unwrap();
    let mut client = handshake(stream, "api.github.test", &env.sandbox_ca)
        .await
        .unwrap();
    let reply = send(&mut client, "GET", "api.github.test", "/transparent", Some(&auth)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        env.tls_echo.last().header("authorization"),
        Some(format!("token {REAL}").as_str())
    );
    assert!(!reply.body.contains(REAL));

    // mismatch.test is allowed, but resolves elsewhere than where the connection went.
    let stream = TcpStream::connect(env.proxy.transparent_tls).await.unwrap();
    assert!(handshake(stream, "mismatch.test", test_ca_pem()).await.is_err());
    // A name the policy does not allow.
    let stream = TcpStream::connect(env.proxy.transparent_tls).await.unwrap();
    assert!(handshake(stream, "blocked.test", test_ca_pem()).await.is_err());
    assert_eq!(env.tls_echo.requests(), 1);
    let denied = env.dir.events("egress.denied");
    assert_eq!(denied[0]["host"], "mismatch.test");
    assert_eq!(denied[0]["reason"], "destination does not match SNI");
    assert_eq!(denied[1]["host"], "blocked.test");
}

#[tokio::test]
async fn plain_http_is_forwarded_without_secrets() {
    let env = Env::start().await;
    let port = env.plain_echo.addr.port();
    // Absolute form through the explicit proxy.
    let stream = TcpStream::connect(env.proxy.explicit).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let uri = format!("http://plain.test:{port}/plain");
    let reply = send(&mut sender, "GET", "plain.test", &uri, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(env.plain_echo.last().path, "/plain");
    let auth = format!("token {}", env.placeholder(&[]));
    let reply = send(&mut sender, "GET", "plain.test", &uri, Some(&auth)).await;
    assert_eq!(reply.status, 403);
    let reply = send(&mut sender, "GET", "blocked.test", "http://blocked.test/", None).await;
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("blocked.test"));
    assert_eq!(env.plain_echo.requests(), 1);

    // Redirected tcp/80: the Host header is judged, the original destination is used.
    let stream = TcpStream::connect(env.proxy.transparent_http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let reply = send(&mut sender, "GET", "api.github.test", "/redirected", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(env.plain_echo.last().path, "/redirected");
    let reply = send(&mut sender, "GET", "mismatch.test", "/", None).await;
    assert_eq!(reply.status, 403);
    let reply = send(&mut sender, "GET", "blocked.test", "/", None).await;
    assert_eq!(reply.status, 403);
    assert_eq!(env.plain_echo.requests(), 2);
}

/// A package path from Debian's mirror: the placeholder prefix `bm1_` inside a file name.
const DEB: &str = "/pool/main/m/mesa/libgbm1_22.3.6-1%2bdeb12u2_amd64.deb";

/// An HTTP/1.1 connection to one of the proxy's plain listeners.
async fn plain_sender(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// The prefix inside ordinary text (`libgbm1_…`), or a token that does not parse or verify,
/// is no placeholder: plain HTTP carrying it in the URL and a header passes, through the
/// explicit proxy and redirected tcp/80, whether or not the sandbox holds a secret. Control:
/// the same request carrying the sandbox's real placeholder is refused (`only_a_real_…`).
#[tokio::test]
async fn plain_http_with_text_that_merely_looks_like_a_placeholder_passes() {
    let forged = Macaroon::mint(b"some other key", "x", &[Caveat::Secret("gh".into())]).encode();
    let headers = [
        ("referer", format!("http://plain.test{DEB}")),
        ("x-note", "bm1_ bm1_eyJub3QiOiJ2YWxpZCJ9".to_owned()),
        ("authorization", format!("token {forged}")),
    ];
    for env in [Env::without_secrets().await, Env::start().await] {
        let port = env.plain_echo.addr.port();
        let mut explicit = plain_sender(env.proxy.explicit).await;
        let mut redirected = plain_sender(env.proxy.transparent_http).await;
        for (name, value) in &headers {
            let uri = format!("http://plain.test:{port}{DEB}");
            let reply = get_with(&mut explicit, "plain.test", &uri, (name, value)).await;
            assert_eq!(reply.status, 200, "{name}: {}", reply.body);
            let seen = env.plain_echo.last();
            assert_eq!(seen.path, DEB);
            assert_eq!(seen.header(name), Some(value.as_str()));

            let reply = get_with(&mut redirected, "api.github.test", DEB, (name, value)).await;
            assert_eq!(reply.status, 200, "{name}: {}", reply.body);
            let seen = env.plain_echo.last();
            assert_eq!(seen.path, DEB);
            assert_eq!(seen.header(name), Some(value.as_str()));
        }
        assert_eq!(env.plain_echo.requests(), 2 * headers.len());
        if env.dir.with_secrets {
            // Intercepted HTTPS too: the URL and the header go on as they came.
            let mut client = env.https("api.github.test", &env.sandbox_ca).await.unwrap();
            let (name, value) = &headers[0];
            let reply = get_with(&mut client, "api.github.test", DEB, (name, value)).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(env.tls_echo.last().path, DEB);
            assert_eq!(env.tls_echo.last().header(name), Some(value.as_str()));
        }
        assert!(env.dir.events("secret.denied").is_empty());
    }
}

/// Control for the test above, same requests: only a placeholder that parses and verifies
/// under the placeholder key is refused over plain HTTP (in a header, an HTTP Basic pair or
/// the URL), and only
/// in a sandbox holding a secret; a sandbox holding none has nothing inspected.
#[tokio::test]
async fn only_a_real_placeholder_is_refused_over_plain_http() {
    let env = Env::start().await;
    let port = env.plain_echo.addr.port();
    let real = env.placeholder(&[Caveat::Sandboxes(vec![SANDBOX_ID.into()])]);
    let auth = format!("token {real}");
    let mut explicit = plain_sender(env.proxy.explicit).await;
    let mut redirected = plain_sender(env.proxy.transparent_http).await;
    let uri = format!("http://plain.test:{port}{DEB}");
    let reply = get_with(&mut explicit, "plain.test", &uri, ("authorization", &auth)).await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.body.trim_end(),
        "burrow proxy: secret placeholders are only replaced over HTTPS"
    );
    let reply = get_with(&mut redirected, "api.github.test", DEB, ("referer", &auth)).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    let in_url = format!("{DEB}?token={real}");
    let reply = get_with(&mut redirected, "api.github.test", &in_url, ("x-note", "none")).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    // Inside an HTTP Basic pair (`http://user:PLACEHOLDER@host/`) too.
    let basic = {
        use base64::Engine as _;
        let pair = format!("x-access-token:{real}");
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    };
    let reply = get_with(&mut explicit, "plain.test", &uri, ("authorization", &basic)).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(env.plain_echo.requests(), 0);
    assert_eq!(env.dir.events("secret.denied").len(), 4);

    // Nothing is inspected for a sandbox that holds no secret (and it has none to leak).
    let none = Env::without_secrets().await;
    let port = none.plain_echo.addr.port();
    let mut explicit = plain_sender(none.proxy.explicit).await;
    let uri = format!("http://plain.test:{port}{DEB}");
    let reply = get_with(&mut explicit, "plain.test", &uri, ("authorization", &auth)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        none.plain_echo.last().header("authorization"),
        Some(auth.as_str())
    );
}

#[tokio::test]
async fn strangers_and_sandboxes_without_network_are_turned_away() {
    let env = Env::start().await;
    // 127.0.0.2 is no sandbox's address: closed without an answer.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(env.proxy.explicit).await.unwrap();
    let _ = stream
        .write_all(b"CONNECT api.github.test:443 HTTP/1.1\r\n\r\n")
        .await;
    let mut buf = [0u8; 1];
    assert_eq!(within(stream.read(&mut buf)).await.unwrap_or(0), 0);

    let none = Env::with_mode(NetworkMode::None).await;
    let (status, body, _) = none.connect("api.github.test:443").await;
    assert_eq!(status, 403);
    assert!(body.contains("none"), "{body}");
    drop(env);
}

#[tokio::test]
async fn curl_through_the_proxy() {
    burrow_testkit::require!(
        std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_ok(),
        "curl is not installed"
    );
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("sandbox-ca.pem");
    std::fs::write(&ca, &env.sandbox_ca).unwrap();
    let out = within(
        tokio::process::Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10", "--noproxy", ""])
            .arg("--proxy")
            .arg(format!("http://{}", env.proxy.explicit))
            .arg("--cacert")
            .arg(&ca)
            .arg("-H")
            .arg(format!("Authorization: token {}", env.placeholder(&[])))
            .arg(format!(
                "https://api.github.test:{}/curl",
                env.tls_echo.addr.port()
            ))
            .output(),
    )
    .await
    .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        body.contains(&format!("authorization: token {}", stars())),
        "{body}"
    );
    assert!(!body.contains(REAL));
    assert_eq!(
        env.tls_echo.last().header("authorization"),
        Some(format!("token {REAL}").as_str())
    );
}

/// `cargo test -p burrow-egress --test proxy -- --ignored --nocapture`
#[tokio::test]
#[ignore = "benchmark"]
async fn bench_intercepted_vs_direct() {
    const N: usize = 200;
    let env = Env::start().await;
    let auth = format!("token {}", env.placeholder(&[]));

    let mut direct = handshake(
        TcpStream::connect(env.tls_echo.addr).await.unwrap(),
        "api.github.test",
        test_ca_pem(),
    )
    .await
    .unwrap();
    let mut proxied = env.https("api.github.test", &env.sandbox_ca).await.unwrap();

    async fn p50(client: &mut SendRequest<Full<Bytes>>, auth: &str) -> (Duration, Duration) {
        // Warm up: connections and pools.
        for _ in 0..10 {
            send(client, "GET", "api.github.test", "/bench", Some(auth)).await;
        }
        let mut times = Vec::with_capacity(N);
        for _ in 0..N {
            let start = Instant::now();
            let reply = send(client, "GET", "api.github.test", "/bench", Some(auth)).await;
            times.push(start.elapsed());
            assert_eq!(reply.status, 200);
        }
        times.sort();
        (times[N / 2], times[N * 9 / 10])
    }

    let (direct_p50, direct_p90) = p50(&mut direct, "token plain").await;
    let (proxied_p50, proxied_p90) = p50(&mut proxied, &auth).await;
    println!("direct:      p50 {direct_p50:?}  p90 {direct_p90:?}");
    println!("intercepted: p50 {proxied_p50:?}  p90 {proxied_p90:?}");
}

/// `GET path` on `host` with one extra header; the reply.
async fn get_with(
    sender: &mut SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
    header: (&str, &str),
) -> Reply {
    let req = Request::builder()
        .method("GET")
        .uri(path)
        .header("host", host)
        .header(header.0, header.1)
        .body(Full::new(Bytes::new()))
        .unwrap();
    within(sender.ready()).await.unwrap();
    let resp = within(sender.send_request(req)).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = within(resp.into_body().collect()).await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// The secret's value as an upstream might send it back: other case, and encoded (inside
/// longer texts too, at every offset base64 can put it).
fn leaked_forms() -> Vec<(&'static str, String)> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let hex: String = REAL.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        ("as is", REAL.to_owned()),
        ("upper case", REAL.to_uppercase()),
        ("lower case", REAL.to_lowercase()),
        ("base64", STANDARD.encode(REAL)),
        ("base64 of user:value", STANDARD.encode(format!("user:{REAL}"))),
        ("base64 of x+value", STANDARD.encode(format!("x{REAL}"))),
        (
            "base64url of {\"t\":value}",
            URL_SAFE_NO_PAD.encode(format!("{{\"t\":\"{REAL}\"}}")),
        ),
        ("hex", hex.clone()),
        ("HEX", hex.to_uppercase()),
    ]
}

#[tokio::test]
async fn every_response_to_a_sandbox_holding_a_secret_is_redacted_in_any_form() {
    let env = Env::start().await;
    // No placeholder in these requests: the value comes back as if an earlier request had
    // stored it upstream (the echo server returns the request's headers in its body).
    let mut secret_host = env.https("api.github.test", &env.sandbox_ca).await.unwrap();
    let mut other_host = env.https("plain.test", &env.sandbox_ca).await.unwrap();
    let stream = TcpStream::connect(env.proxy.explicit).await.unwrap();
    let (mut plain, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let plain_uri = format!("http://plain.test:{}/stored", env.plain_echo.addr.port());
    for (form, leaked) in leaked_forms() {
        for (via, reply) in [
            (
                "intercepted, the secret's host",
                get_with(
                    &mut secret_host,
                    "api.github.test",
                    "/stored",
                    ("x-stored", &leaked),
                )
                .await,
            ),
            (
                "intercepted, another host",
                get_with(&mut other_host, "plain.test", "/stored", ("x-stored", &leaked)).await,
            ),
            (
                "plain HTTP",
                get_with(&mut plain, "plain.test", &plain_uri, ("x-stored", &leaked)).await,
            ),
        ] {
            assert_eq!(reply.status, 200, "{form}, {via}: {}", reply.body);
            assert!(
                !reply.body.contains(&leaked),
                "{form}, {via}: the value leaked: {}",
                reply.body
            );
            assert!(
                reply.body.contains("x-stored: ") && reply.body.contains("********"),
                "{form}, {via}: {}",
                reply.body
            );
        }
    }
    // What reached the upstreams is what the sandbox sent (redaction is of responses only).
    assert_eq!(
        env.tls_echo.last().header("x-stored"),
        Some(leaked_forms().last().unwrap().1.as_str())
    );
}

#[tokio::test]
async fn control_a_sandbox_without_secrets_gets_the_same_responses_unredacted() {
    // The probe above can see a leak: with nothing to redact, every form comes back whole.
    let env = Env::without_secrets().await;
    let mut client = env.https("plain.test", test_ca_pem()).await.unwrap();
    for (form, leaked) in leaked_forms() {
        let reply = get_with(&mut client, "plain.test", "/stored", ("x-stored", &leaked)).await;
        assert_eq!(reply.status, 200);
        assert!(
            reply.body.contains(&format!("x-stored: {leaked}")),
            "{form}: {}",
            reply.body
        );
    }
}
