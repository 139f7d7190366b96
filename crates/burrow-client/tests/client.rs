//! The client against a tiny in-process axum server on a unix socket that returns canned answers.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use burrow_client::api::SandboxStatus;
use burrow_client::api::{CreateSandbox, ExecRequest, SandboxName, WsControl, ws_stream};
use burrow_client::{Client, ClientError, ExecEvent, ExecStreamOptions};
use burrow_testkit::fakes;

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn sandbox_json(name: &str) -> serde_json::Value {
    fakes::sandbox_json(name, SandboxStatus::Running)
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(fakes::error(code, message))).into_response()
}

async fn get_sandbox(Path(name): Path<String>) -> Response {
    if name == "missing" {
        return api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "sandbox 'missing' does not exist",
        );
    }
    axum::Json(sandbox_json(&name)).into_response()
}

async fn create(State(seen): State<Seen>, headers: HeaderMap, body: String) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    seen.push(format!("create ct={ct} body={body}"));
    if ct != "application/json" {
        return api_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "need JSON",
        );
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        StatusCode::CREATED,
        axum::Json(sandbox_json(v["name"].as_str().unwrap())),
    )
        .into_response()
}

async fn list(State(seen): State<Seen>, RawQuery(q): RawQuery) -> Response {
    seen.push(format!("list {}", q.unwrap_or_default()));
    axum::Json(fakes::sandbox_list(vec![fakes::sandbox(
        "a",
        SandboxStatus::Running,
    )]))
    .into_response()
}

async fn exec_once(Path(_name): Path<String>, axum::Json(req): axum::Json<ExecRequest>) -> Response {
    axum::Json(fakes::exec_result(0, &req.cmd.join(" "))).into_response()
}

async fn exec_ws(
    State(seen): State<Seen>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    if name == "missing" {
        return api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "sandbox 'missing' does not exist",
        );
    }
    let q = q.unwrap_or_default();
    seen.push(format!("exec {q}"));
    let mode = q.split('&').next().unwrap_or("").to_owned();
    ws.on_upgrade(move |socket| session(socket, mode, seen))
}

async fn send_ctl(ws: &mut WebSocket, c: WsControl) {
    ws.send(Message::Text(serde_json::to_string(&c).unwrap().into()))
        .await
        .unwrap();
}

async fn send_bin(ws: &mut WebSocket, stream: u8, data: &[u8]) {
    let mut f = vec![stream];
    f.extend_from_slice(data);
    ws.send(Message::Binary(f.into())).await.unwrap();
}

/// `cmd=echo`: echoes stdin to stdout until EOF, then writes "bye" to stderr and exits 3.
/// `cmd=noexit`: session and some output, then a close with no exit frame.
/// `cmd=drop`: session, then the connection just goes away.
async fn session(mut ws: WebSocket, mode: String, seen: Seen) {
    send_ctl(
        &mut ws,
        WsControl::Session {
            id: "s1".into(),
            pid: Some(42),
            tty: false,
        },
    )
    .await;
    match mode.as_str() {
        "cmd=echo" => {
            while let Some(Ok(msg)) = ws.recv().await {
                match msg {
                    Message::Binary(b) if b.first() == Some(&ws_stream::STDIN) => {
                        send_bin(&mut ws, ws_stream::STDOUT, &b[1..]).await;
                    }
                    Message::Binary(b) if b[..] == [ws_stream::STDIN_EOF] => break,
                    Message::Text(t) => seen.push(format!("ctl {}", t.as_str())),
                    _ => {}
                }
            }
            send_bin(&mut ws, ws_stream::STDERR, b"bye").await;
            send_ctl(
                &mut ws,
                WsControl::Exit {
                    exit_code: 3,
                    signal: None,
                    reason: None,
                },
            )
            .await;
            let _ = ws.send(Message::Close(None)).await;
        }
        "cmd=noexit" => {
            send_bin(&mut ws, ws_stream::STDOUT, b"partial").await;
            let _ = ws.send(Message::Close(None)).await;
        }
        _ => drop(ws),
    }
}

async fn serve() -> (tempfile::TempDir, Client, Seen) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("burrowd.sock");
    let seen = Seen::default();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/sandboxes", post(create).get(list))
        .route(
            "/v1/sandboxes/{name}",
            get(get_sandbox).delete(|| async { StatusCode::NO_CONTENT }),
        )
        .route("/v1/sandboxes/{name}/exec", get(exec_ws).post(exec_once))
        .with_state(seen.clone());
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (dir, Client::unix(&sock), seen)
}

#[tokio::test]
async fn error_envelope_becomes_api_error() {
    let (_dir, client, _) = serve().await;
    let err = client.get_sandbox("missing").await.unwrap_err();
    match &err {
        ClientError::Api {
            status,
            code,
            message,
        } => {
            assert_eq!(*status, 404);
            assert_eq!(code, "not_found");
            assert_eq!(message, "sandbox 'missing' does not exist");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.to_string(), "sandbox 'missing' does not exist");
}

#[tokio::test]
async fn typed_calls_204_and_content_type() {
    let (_dir, client, seen) = serve().await;
    client.health().await.unwrap();
    client.delete_sandbox("dev").await.unwrap();
    let sb = client.get_sandbox("dev").await.unwrap();
    assert_eq!(sb.name, "dev");
    // Generic JSON call of a 204 endpoint.
    client
        .request_json::<(), ()>(burrow_client::Method::DELETE, "/v1/sandboxes/dev", None)
        .await
        .unwrap();
    let created = client
        .create_sandbox(&CreateSandbox {
            name: SandboxName::parse("new").unwrap(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(created.name, "new");
    let list = client
        .list_sandboxes(Some("a b"), &[("team".into(), "x=y".into())], Some(5), None)
        .await
        .unwrap();
    assert_eq!(list.sandboxes.len(), 1);
    let res = client
        .exec(
            "dev",
            &ExecRequest {
                cmd: vec!["echo".into(), "hi".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(res.stdout, "echo hi");
    let seen = seen.all();
    assert!(
        seen.contains(&r#"create ct=application/json body={"name":"new"}"#.to_string()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"list prefix=a%20b&label=team%3Dx%3Dy&limit=5".to_string()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn connect_error_names_the_socket() {
    let client = Client::unix("/nonexistent/burrowd.sock");
    let err = client.health().await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/burrowd.sock"), "{msg}");
    assert!(
        msg.contains("BURROW_SOCKET") && msg.contains("BURROW_URL"),
        "{msg}"
    );
    let err = client
        .exec_stream("x", ExecStreamOptions::new(["true"]))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn exec_stream_query_and_events() {
    let (_dir, client, seen) = serve().await;
    let opts = ExecStreamOptions {
        cmd: vec!["echo".into(), "a b&c".into()],
        stdin: true,
        cwd: Some("/w d".into()),
        env: vec![("K".into(), "v=1".into())],
        cols: Some(100),
        rows: Some(30),
        ..Default::default()
    };
    let mut s = client.exec_stream("dev", opts).await.unwrap();
    assert_eq!(
        s.next_event().await.unwrap(),
        Some(ExecEvent::Session {
            id: "s1".into(),
            pid: Some(42),
            tty: false
        })
    );
    s.resize(120, 40).await.unwrap();
    s.signal("INT").await.unwrap();
    s.send_stdin(b"hello\0\xff").await.unwrap();
    assert_eq!(
        s.next_event().await.unwrap(),
        Some(ExecEvent::Stdout((&b"hello\0\xff"[..]).into()))
    );
    s.send_stdin(b"more").await.unwrap();
    s.close_stdin().await.unwrap();
    let out = s.collect().await.unwrap();
    assert_eq!(out.stdout, b"more");
    assert_eq!(out.stderr, b"bye");
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.signal, None);

    let seen = seen.all();
    assert!(
        seen.contains(
            &"exec cmd=echo&cmd=a%20b%26c&tty=false&stdin=true&cwd=%2Fw%20d&env=K%3Dv%3D1&cols=100&rows=30"
                .to_string()
        ),
        "{seen:?}"
    );
    assert!(
        seen.contains(&r#"ctl {"type":"resize","cols":120,"rows":40}"#.to_string()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&r#"ctl {"type":"signal","signal":"INT"}"#.to_string()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn exec_stream_without_exit_frame_is_an_error() {
    let (_dir, client, _) = serve().await;
    let mut s = client
        .exec_stream("dev", ExecStreamOptions::new(["noexit"]))
        .await
        .unwrap();
    assert!(matches!(
        s.next_event().await.unwrap(),
        Some(ExecEvent::Session { .. })
    ));
    assert_eq!(
        s.next_event().await.unwrap(),
        Some(ExecEvent::Stdout((&b"partial"[..]).into()))
    );
    assert!(matches!(s.next_event().await, Err(ClientError::NoExitFrame)));

    let s = client
        .exec_stream("dev", ExecStreamOptions::new(["drop"]))
        .await
        .unwrap();
    assert!(matches!(s.collect().await, Err(ClientError::NoExitFrame)));
}

#[tokio::test]
async fn exec_stream_handshake_error_is_api_error() {
    let (_dir, client, _) = serve().await;
    let err = client
        .exec_stream("missing", ExecStreamOptions::new(["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("not_found"), "{err:?}");
    assert_eq!(err.to_string(), "sandbox 'missing' does not exist");
}
