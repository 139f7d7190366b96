//! Ingress end to end against a real daemon and real sandboxes: HTTP by API path (unix socket
//! and TCP) and by Host header, private and public URLs, the token link that becomes a
//! cookie, waking sleeping sandboxes, WebSocket upgrades, raw TCP relays over WebSocket,
//! open connections keeping a sandbox awake, and the error pages. Traffic goes only to the
//! daemon on loopback and, through it, into sandboxes these tests made.

use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, PatchSandbox, SandboxName, SandboxStatus, UrlAuth};
use burrow_testkit::burrow_client::{Client, Method, WriteFileOptions};
use burrow_testkit::fixtures::{vm_available, wait_status};
use burrow_testkit::{Daemon, raw_tcp, raw_unix, shared, unique_name};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Upper bound of every wait-for-condition (loops exit as soon as it holds).
const PATIENCE: Duration = Duration::from_secs(60);

/// An HTTP/1.1 app: answers every request with JSON of what it got (method, path, headers,
/// body), and speaks just enough WebSocket on `Upgrade: websocket` to echo messages.
const APP: &str = r#"
import base64, hashlib, json, struct, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        self.answer()
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        out = json.dumps({"method": self.command, "path": self.path, "body": body.decode("latin-1"),
                          "peer": self.client_address[1],
                          "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-App", "echo")
        if self.path.startswith("/close"):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(out)
    do_POST = do_PUT = do_PATCH = do_DELETE = answer
    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        r, w = self.rfile, self.wfile
        while True:
            h = r.read(2)
            if len(h) < 2: return
            op, n = h[0] & 15, h[1] & 127
            if n == 126: n = struct.unpack(">H", r.read(2))[0]
            elif n == 127: n = struct.unpack(">Q", r.read(8))[0]
            mask = r.read(4) if h[1] & 128 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(r.read(n)))
            if op == 8:
                w.write(b"\x88\x00"); w.flush(); return
            if n < 126: hdr = bytes([0x80 | op, n])
            elif n < 65536: hdr = bytes([0x80 | op, 126]) + struct.pack(">H", n)
            else: hdr = bytes([0x80 | op, 127]) + struct.pack(">Q", n)
            w.write(hdr + data); w.flush()

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;

/// A TCP echo server: echoes until the peer's EOF, then half-closes in turn.
const ECHO: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Creates `name` on the engine `BURROW_TEST_ENGINE` names (default: the daemon's), so the
/// whole suite can be run against VMs by hand.
async fn create(c: &Client, name: &str, url_auth: UrlAuth, idle_s: u64) {
    let engine = std::env::var("BURROW_TEST_ENGINE").ok().map(|e| {
        serde_json::from_value(serde_json::Value::String(e)).expect("BURROW_TEST_ENGINE: container or vm")
    });
    create_on(c, name, url_auth, idle_s, engine).await
}

async fn create_on(
    c: &Client,
    name: &str,
    url_auth: UrlAuth,
    idle_s: u64,
    engine: Option<burrow_api::EngineKind>,
) {
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(name).unwrap(),
        engine,
        url_auth: Some(url_auth),
        idle_timeout_s: Some(idle_s),
        cold_after_s: Some(0),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// Installs `script` and runs it as service `svc` with `args`.
async fn service(c: &Client, name: &str, svc: &str, script: &str, port: u16, http: bool) {
    let path = format!("/srv/{svc}.py");
    c.write_file_bytes(
        name,
        &path,
        WriteFileOptions {
            mkdir: true,
            ..Default::default()
        },
        script.as_bytes().to_vec(),
    )
    .await
    .unwrap();
    let mut spec = json!({"cmd": ["python3", path, port.to_string()]});
    if http {
        spec["http_port"] = json!(port);
    }
    c.request_json::<Value, _>(
        Method::PUT,
        &format!("/v1/sandboxes/{name}/services/{svc}"),
        Some(&spec),
    )
    .await
    .unwrap();
}

/// A sandbox with the echo app as its HTTP service on `port`.
async fn web_sandbox(c: &Client, prefix: &str, url_auth: UrlAuth, port: u16) -> String {
    web_sandbox_on(c, prefix, url_auth, port, None).await
}

/// [`web_sandbox`] on `engine` (None: as `create` picks).
async fn web_sandbox_on(
    c: &Client,
    prefix: &str,
    url_auth: UrlAuth,
    port: u16,
    engine: Option<burrow_api::EngineKind>,
) -> String {
    let name = unique_name(prefix);
    match engine {
        Some(e) => create_on(c, &name, url_auth, 3600, Some(e)).await,
        None => create(c, &name, url_auth, 3600).await,
    }
    service(c, &name, "web", APP, port, true).await;
    name
}

/// A response read to its end.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn header(&self, h: &str) -> String {
        self.headers
            .get(h)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

/// One request over TCP with exactly the given headers (Host included).
async fn tcp_request(d: &Daemon, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let stream = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send_on(&mut send, method, path, headers, body).await
}

async fn send_on(
    send: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    use http_body_util::BodyExt;
    let mut req = hyper::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(hyper::body::Bytes::from(
            body.to_owned(),
        )))
        .unwrap();
    // The previous answer may still be finishing on a kept-alive connection.
    send.ready()
        .await
        .expect("the connection stays open between requests");
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .expect("answer in time")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

fn host_of(name: &str, d: &Daemon) -> String {
    format!("{name}.localhost:{}", d.addr().port())
}

#[tokio::test(flavor = "multi_thread")]
async fn http_by_api_path_and_by_host_header() {
    http_by_api_path_and_by_host_header_on(None).await
}

/// The same ingress checks against a VM's web app.
#[tokio::test(flavor = "multi_thread")]
async fn a_vms_web_app_is_served_the_same_way() {
    if vm_available(&shared().client()).await {
        http_by_api_path_and_by_host_header_on(Some(burrow_api::EngineKind::Vm)).await
    }
}

async fn http_by_api_path_and_by_host_header_on(engine: Option<burrow_api::EngineKind>) {
    let d = shared();
    let c = d.client();
    let name = web_sandbox_on(&c, "ingr", UrlAuth::Private, 8080, engine).await;
    let token = d.token();
    let bearer = format!("Bearer {token}");

    // Unix socket, API path (the first request also waits for the service to listen).
    let r = raw_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{name}/http/hello/w%20rld?x=1&y"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(
        (v["method"].as_str(), v["path"].as_str()),
        (Some("GET"), Some("/hello/w%20rld?x=1&y"))
    );
    assert_eq!(v["headers"]["x-forwarded-proto"], "http");
    assert_eq!(r.headers["x-app"], "echo");
    for root in ["http", "http/"] {
        let r = raw_unix(
            &d.socket,
            "GET",
            &format!("/v1/sandboxes/{name}/{root}"),
            &[],
            vec![],
        )
        .await;
        assert_eq!(
            (r.status, r.json()["path"].as_str().map(str::to_owned)),
            (200, Some("/".into()))
        );
    }
    let r = raw_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{name}/http/form"),
        &[("content-type", "text/plain")],
        b"a body".to_vec(),
    )
    .await;
    assert_eq!(r.json()["body"], "a body");
    assert_eq!(r.json()["method"], "POST");
    // Megabytes both ways (streamed, not buffered by burrowd).
    let big: String = (0..3_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let r = raw_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{name}/http/big"),
        &[("content-type", "text/plain")],
        big.clone().into_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.json()["body"].as_str() == Some(big.as_str()),
        "the big body came back changed"
    );

    // TCP, API path, with the token: the app never sees Burrow's credentials.
    let r = raw_tcp(
        d.addr(),
        "PUT",
        &format!("/v1/sandboxes/{name}/http/t"),
        &[("authorization", &bearer), ("cookie", "app=1; burrow_token=x")],
        b"put".to_vec(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["method"], "PUT");
    assert!(v["headers"].get("authorization").is_none(), "{v}");
    assert_eq!(v["headers"]["cookie"], "app=1");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");

    // TCP, Host header: the whole path goes to the app, on one kept-alive connection.
    let host = host_of(&name, d);
    let stream = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for path in ["/", "/v1/sandboxes", "/healthz?q=1"] {
        let r = send_on(
            &mut send,
            "GET",
            path,
            &[("host", &host), ("authorization", &bearer)],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let v = r.json();
        assert_eq!(v["path"], path);
        assert_eq!(v["headers"]["x-forwarded-host"], host);
        assert_eq!(v["headers"]["host"], host);
        assert!(v["headers"].get("authorization").is_none());
    }
    // Any case, no port: still the sandbox.
    let upper = format!("{}.LOCALHOST", name.to_uppercase());
    let r = tcp_request(
        d,
        "GET",
        "/x",
        &[("host", &upper), ("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!((r.status, r.json()["path"].as_str()), (200, Some("/x")));
    // The API itself is untouched on the daemon's own host name.
    let r = tcp_request(
        d,
        "GET",
        "/healthz",
        &[("host", &format!("localhost:{}", d.addr().port()))],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn private_and_public_urls() {
    let d = shared();
    let c = d.client();
    let name = web_sandbox(&c, "auth", UrlAuth::Private, 8080).await;
    let token = d.token();
    let host = host_of(&name, d);
    // Waits for the service (through the unix socket, which needs no token).
    let r = raw_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{name}/http/"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200);

    let r = tcp_request(d, "GET", "/p", &[("host", &host)], "").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("burrow_token"), "{}", r.text());
    let r = tcp_request(
        d,
        "GET",
        "/p",
        &[("host", &host), ("authorization", "Bearer nonsense")],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    let r = raw_tcp(
        d.addr(),
        "GET",
        &format!("/v1/sandboxes/{name}/http/p"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = tcp_request(
        d,
        "GET",
        "/p",
        &[("host", &host), ("authorization", &format!("Bearer {token}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 200);

    // A link with the token: verified, then a redirect without it that sets the cookie.
    let r = tcp_request(
        d,
        "GET",
        &format!("/p?a=1&burrow_token={token}&b=2"),
        &[("host", &host)],
        "",
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), "/p?a=1&b=2");
    let cookie = r.header("set-cookie");
    assert!(cookie.starts_with(&format!("burrow_token={token};")), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let jar = format!("theme=dark; burrow_token={token}");
    let r = tcp_request(d, "GET", "/p?a=1&b=2", &[("host", &host), ("cookie", &jar)], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["cookie"],
        "theme=dark",
        "the app never sees the token"
    );
    assert_eq!(r.json()["path"], "/p?a=1&b=2");
    let r = tcp_request(d, "GET", "/p?burrow_token=bm1_forged", &[("host", &host)], "").await;
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_empty());
    // On the API path the link sets no cookie (the API's origin never gets one): it sends
    // the browser to the sandbox's own host, where the link signs in.
    let r = raw_tcp(
        d.addr(),
        "GET",
        &format!("/v1/sandboxes/{name}/http/q?burrow_token={token}"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 303);
    assert_eq!(
        r.headers["location"],
        format!("http://{host}/q?burrow_token={token}").as_str()
    );
    assert!(r.headers.get("set-cookie").is_none());

    // Public: no token needed, by Host and by API path.
    c.patch_sandbox(
        &name,
        &PatchSandbox {
            url_auth: Some(UrlAuth::Public),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let r = tcp_request(d, "GET", "/open", &[("host", &host)], "").await;
    assert_eq!((r.status, r.json()["path"].as_str()), (200, Some("/open")));
    let r = raw_tcp(
        d.addr(),
        "GET",
        &format!("/v1/sandboxes/{name}/http/open"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200);
    // ... but only its URL: the rest of its API still needs a token.
    let r = raw_tcp(d.addr(), "GET", &format!("/v1/sandboxes/{name}"), &[], vec![]).await;
    assert_eq!(r.status, 401);
    let r = raw_tcp(
        d.addr(),
        "GET",
        &format!("/v1/sandboxes/{name}/proxy/8080"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 401);
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn ingress_wakes_sleeping_sandboxes_warm_and_cold() {
    let d = shared();
    let c = d.client();
    let name = web_sandbox(&c, "wake", UrlAuth::Public, 8080).await;
    let host = host_of(&name, d);
    let r = tcp_request(d, "GET", "/first", &[("host", &host)], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    for mode in ["warm", "cold"] {
        c.request_json::<Value, ()>(
            Method::POST,
            &format!("/v1/sandboxes/{name}/sleep?mode={mode}"),
            None,
        )
        .await
        .unwrap();
        let sb = c.get_sandbox(&name).await.unwrap();
        // A VM's warm sleep keeps its memory on disk, not in RAM.
        let expected = match (sb.engine, mode) {
            (burrow_api::EngineKind::Vm, "warm") => "memory",
            _ => mode,
        };
        assert_eq!(
            (sb.status, sb.sleep.as_deref()),
            (SandboxStatus::Sleeping, Some(expected))
        );
        let r = tcp_request(d, "GET", &format!("/after-{mode}"), &[("host", &host)], "").await;
        assert_eq!(r.status, 200, "{mode}: {}", r.text());
        assert_eq!(r.json()["path"], format!("/after-{mode}"));
        let sb = c.get_sandbox(&name).await.unwrap();
        assert_eq!((sb.status, sb.sleep), (SandboxStatus::Running, None), "{mode}");
    }
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_through_ingress() {
    let d = shared();
    let c = d.client();
    let name = web_sandbox(&c, "wsup", UrlAuth::Private, 8080).await;
    let r = raw_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{name}/http/"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200);
    for url in [
        format!("ws://{}/ws", host_of(&name, d)),
        format!("ws://{}/v1/sandboxes/{name}/http/ws", d.addr()),
    ] {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {}", d.token()).parse().unwrap());
        let stream = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(req, stream)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(resp.status(), 101);
        ws.send(Message::Text("hello through ingress".into()))
            .await
            .unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        ws.send(Message::Binary(big.clone().into())).await.unwrap();
        let got = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::Text("hello through ingress".into()));
        let got = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::Binary(big.into()));
        ws.close(None).await.unwrap();
    }
    c.delete_sandbox(&name).await.unwrap();
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens `GET …/proxy/{port}` over TCP with the token; the HTTP status when refused.
async fn open_relay(d: &Daemon, name: &str, port: &str) -> Result<Ws, (u16, String)> {
    let url = format!("ws://{}/v1/sandboxes/{name}/proxy/{port}", d.addr());
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {}", d.token()).parse().unwrap());
    let stream = tokio::net::TcpStream::connect(d.addr()).await.unwrap();
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("relay handshake: {e}"),
    }
}

/// Retries while nothing listens yet (the service is starting).
async fn relay_when_listening(d: &Daemon, name: &str, port: u16) -> Ws {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match open_relay(d, name, &port.to_string()).await {
            Ok(ws) => return ws,
            Err((502, _)) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("relay to port {port}: {e:?}"),
        }
    }
}

async fn next_binary(ws: &mut Ws) -> Vec<u8> {
    loop {
        match tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("relay answers in time")
        {
            Some(Ok(Message::Binary(b))) => return b.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_relays_raw_tcp_both_ways() {
    proxy_relays_raw_tcp_both_ways_on(None).await
}

/// The same raw TCP relay into a VM.
#[tokio::test(flavor = "multi_thread")]
async fn a_vms_ports_are_relayed_the_same_way() {
    if vm_available(&shared().client()).await {
        proxy_relays_raw_tcp_both_ways_on(Some(burrow_api::EngineKind::Vm)).await
    }
}

async fn proxy_relays_raw_tcp_both_ways_on(engine: Option<burrow_api::EngineKind>) {
    let d = shared();
    let c = d.client();
    let name = unique_name("relay");
    match engine {
        Some(e) => create_on(&c, &name, UrlAuth::Private, 3600, Some(e)).await,
        None => create(&c, &name, UrlAuth::Private, 3600).await,
    }
    service(&c, &name, "echo", ECHO, 7000, false).await;
    let mut ws = relay_when_listening(d, &name, 7000).await;
    ws.send(Message::Binary(b"ping".to_vec().into())).await.unwrap();
    assert_eq!(next_binary(&mut ws).await, b"ping");
    // Much more than one chunk, then our EOF: the echo sends the rest, then its EOF.
    let big: Vec<u8> = (0..1_500_000u32).map(|i| (i % 241) as u8).collect();
    for chunk in big.chunks(100_000) {
        ws.send(Message::Binary(chunk.to_vec().into())).await.unwrap();
    }
    ws.send(Message::Binary(Vec::new().into())).await.unwrap();
    let mut got = Vec::new();
    loop {
        let b = next_binary(&mut ws).await;
        if b.is_empty() {
            break;
        }
        assert!(b.len() <= 64 * 1024);
        got.extend_from_slice(&b);
    }
    assert_eq!(got.len(), big.len());
    assert!(got == big, "echo differs");
    ws.close(None).await.unwrap();

    // Bad ports, unknown sandboxes, closed ports.
    for bad in ["0", "65536", "99999", "http", "-1"] {
        let (status, body) = open_relay(d, &name, bad).await.map(|_| ()).unwrap_err();
        assert_eq!(status, 400, "port {bad}: {body}");
    }
    let (status, _) = open_relay(d, "no-such-sandbox-q", "7000")
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status, 404);
    let (status, body) = open_relay(d, &name, "7001").await.map(|_| ()).unwrap_err();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("7001") && body.contains("not_listening"), "{body}");
    c.delete_sandbox(&name).await.unwrap();
}

/// Ingress keeps the app's connection for the next request (HTTP/1.1 keep-alive, as a
/// reverse proxy pools it): requests in a row reach the app over fewer TCP connections than
/// requests (the app tells each request's client port). The control: when the app closes
/// its connection after every answer, each request comes on a new one. Idle kept
/// connections do not keep the sandbox awake: it still goes to sleep.
#[tokio::test(flavor = "multi_thread")]
async fn ingress_reuses_the_apps_connection_and_still_lets_it_sleep() {
    let d = shared();
    let c = d.client();
    let name = web_sandbox(&c, "keep", UrlAuth::Public, 8080).await;
    let host = host_of(&name, d);
    let peers = |prefix: &'static str| {
        let host = host.clone();
        async move {
            let mut seen = std::collections::BTreeSet::new();
            for i in 0..6 {
                let r = tcp_request(d, "GET", &format!("{prefix}{i}"), &[("host", &host)], "").await;
                assert_eq!(r.status, 200, "{}", r.text());
                seen.insert(r.json()["peer"].as_u64().expect("the app tells the client port"));
            }
            seen.len()
        }
    };
    let kept = peers("/keep").await;
    assert!(kept < 6, "six requests came on six connections: none was reused");
    assert_eq!(
        peers("/close").await,
        6,
        "the probe does not tell connections apart"
    );
    let kept = peers("/again").await;
    assert!(kept < 6, "after closed ones, no connection was reused again");

    // With one-second idle timeouts it falls asleep once the kept connections are closed.
    c.patch_sandbox(
        &name,
        &PatchSandbox {
            idle_timeout_s: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let r = tcp_request(d, "GET", "/last", &[("host", &host)], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_status(&c, &name, SandboxStatus::Sleeping).await;
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_connection_keeps_the_sandbox_awake() {
    let d = shared();
    let c = d.client();
    let name = unique_name("busy");
    create(&c, &name, UrlAuth::Private, 1).await;
    service(&c, &name, "echo", ECHO, 7000, false).await;
    let mut ws = relay_when_listening(d, &name, 7000).await;
    // Three idle timeouts with the connection open and silent: still running.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(c.get_sandbox(&name).await.unwrap().status, SandboxStatus::Running);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ws.send(Message::Binary(b"still there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(next_binary(&mut ws).await, b"still there");
    ws.close(None).await.unwrap();
    drop(ws);
    // Closed: it idles as usual.
    wait_status(&c, &name, SandboxStatus::Sleeping).await;
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn error_pages_say_what_is_wrong() {
    let d = shared();
    let c = d.client();
    // No HTTP service: 502 naming the port tried and how to add a service.
    let name = unique_name("nosvc");
    create(&c, &name, UrlAuth::Public, 3600).await;
    let r = raw_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{name}/http/"),
        &[],
        vec![],
    )
    .await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 502, "{text}");
    assert!(text.contains("port 8080"), "{text}");
    assert!(
        text.contains(&format!("burrow service add {name} web --http-port 8080 --")),
        "{text}"
    );
    let r = tcp_request(
        d,
        "GET",
        "/",
        &[("host", &host_of(&name, d)), ("accept", "text/html")],
        "",
    )
    .await;
    assert_eq!(r.status, 502);
    assert!(
        r.header("content-type").starts_with("text/html"),
        "{:?}",
        r.headers
    );
    // A declared http_port is the one tried (the service ended: no waiting for it).
    c.request_json::<Value, _>(
        Method::PUT,
        &format!("/v1/sandboxes/{name}/services/web"),
        Some(&json!({"cmd": ["true"], "http_port": 9090, "restart": "never"})),
    )
    .await
    .unwrap();
    let r = raw_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{name}/http/"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 502);
    assert!(String::from_utf8_lossy(&r.body).contains("port 9090"));
    // A stopped sandbox: 503 that says so.
    c.sandbox_action(&name, "stop").await.unwrap();
    let r = raw_unix(
        &d.socket,
        "GET",
        &format!("/v1/sandboxes/{name}/http/"),
        &[],
        vec![],
    )
    .await;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 503, "{text}");
    assert!(text.contains("stopped"), "{text}");
    c.delete_sandbox(&name).await.unwrap();

    // Unknown sandboxes: 404 by path and by host.
    let r = raw_unix(
        &d.socket,
        "GET",
        "/v1/sandboxes/no-such-sandbox-q/http/x",
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 404);
    let r = tcp_request(d, "GET", "/", &[("host", &host_of("no-such-sandbox-q", d))], "").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no-such-sandbox-q"), "{}", r.text());
}
