//! The `burrow` binary: usage, daemon-less errors, and commands against a fake daemon (an
//! in-process axum server on a unix socket with canned answers). End-to-end tests against a real
//! burrowd live with the daemon.

use std::path::Path;
use std::process::Output;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, RawQuery};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_burrow");

fn burrow(socket: &Path, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(BIN);
    c.args(args)
        .env("BURROW_SOCKET", socket)
        .env_remove("BURROW_URL")
        .env_remove("BURROW_TOKEN");
    c
}

async fn run(socket: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = tokio::process::Command::from(burrow(socket, args));
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = input.write_all(&data).await;
    });
    tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("burrow hung")
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let out = std::process::Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for cmd in [
        "create", "ls", "info", "rm", "start", "stop", "restart", "sleep", "wake", "exec", "console",
        "images", "version", "bench", "mcp",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from:\n{help}"
        );
    }
    assert!(help.contains("BURROW_SOCKET"), "{help}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    for args in [
        &["frobnicate"][..],
        &["create", "Not_A_Name"],
        &["exec", "dev"],
        &["create", "ok", "--engine", "qemu"],
        &["exec", "dev", "-e", "NOEQUALS", "--", "true"],
        &[],
    ] {
        let out = burrow(&sock, args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn no_daemon_names_the_socket() {
    let out = burrow(Path::new("/nonexistent/burrowd.sock"), &["ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("/nonexistent/burrowd.sock"), "{err}");
    assert!(
        err.contains("BURROW_SOCKET") && err.contains("BURROW_URL"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = burrow(
        Path::new("/nonexistent/burrowd.sock"),
        &["exec", "dev", "--", "true"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/burrowd.sock"));

    // `version` still prints the client's version.
    let out = burrow(Path::new("/nonexistent/burrowd.sock"), &["version"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn bad_url_is_reported() {
    let out = std::process::Command::new(BIN)
        .args(["ls"])
        .env_remove("BURROW_SOCKET")
        .env("BURROW_URL", "https://example.invalid:7440")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("https is not supported"),
        "{}",
        text(&out.stderr)
    );
}

// ---- fake daemon ----

/// A sandbox record as burrowd sends it, plus a field this CLI does not know (a newer daemon's
/// extension must not break it).
fn sandbox(name: &str, status: &str) -> Value {
    let status = burrow_testkit::burrow_client::api::SandboxStatus::parse(status).expect("a status");
    let mut v = burrow_testkit::fakes::sandbox_json(name, status);
    v["extension_field"] = json!(7);
    v
}

fn not_found(name: &str) -> Response {
    let body = burrow_testkit::fakes::error("not_found", &format!("sandbox '{name}' does not exist"));
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

async fn get_sandbox(UrlPath(name): UrlPath<String>) -> Response {
    if name == "missing" {
        return not_found(&name);
    }
    axum::Json(sandbox(&name, "running")).into_response()
}

async fn exec_ws(RawQuery(q): RawQuery, ws: WebSocketUpgrade) -> Response {
    let q = q.unwrap_or_default();
    let cmd: Vec<String> = q
        .clone()
        .split('&')
        .filter_map(|kv| kv.strip_prefix("cmd="))
        .map(|v| v.replace("%20", " ").replace("%2F", "/"))
        .collect();
    ws.on_upgrade(move |s| session(s, cmd, q))
}

async fn send(ws: &mut WebSocket, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

async fn out(ws: &mut WebSocket, stream: u8, data: &[u8]) {
    let mut f = vec![stream];
    f.extend_from_slice(data);
    ws.send(Message::Binary(f.into())).await.unwrap();
}

/// `emit`: binary stdout, stderr, exit 3 · `killed`: exit by KILL · `cat`: echoes stdin until EOF ·
/// `bash`: not found · `sh`: "sh ok" · `ttycat`: reports size and resizes, echoes stdin, exits 42 on ^C
async fn session(mut ws: WebSocket, cmd: Vec<String>, query: String) {
    send(&mut ws, json!({"type": "session", "id": "s1"})).await;
    let exit = |code: i32, sig: Option<&str>| json!({"type": "exit", "exit_code": code, "signal": sig});
    match cmd.first().map(String::as_str) {
        Some("emit") => {
            out(&mut ws, 1, b"out\xff\x00\n").await;
            out(&mut ws, 2, b"err\n").await;
            send(&mut ws, exit(3, None)).await;
        }
        Some("killed") => send(&mut ws, exit(137, Some("KILL"))).await,
        Some("cat") => {
            while let Some(Ok(m)) = ws.recv().await {
                if let Message::Binary(b) = m {
                    match b[0] {
                        0 => out(&mut ws, 1, &b[1..]).await,
                        4 => break,
                        _ => {}
                    }
                }
            }
            send(&mut ws, exit(0, None)).await;
        }
        Some("bash") => {
            send(
                &mut ws,
                json!({"type": "error", "code": "not_found", "message": "bash: executable not found"}),
            )
            .await;
            send(&mut ws, exit(127, None)).await;
        }
        Some("ttycat") => {
            let param = |k: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(k))
                    .unwrap_or("?")
                    .to_owned()
            };
            let hello = format!(
                "tty={} size={}x{}\r\n",
                param("tty="),
                param("cols="),
                param("rows=")
            );
            out(&mut ws, 1, hello.as_bytes()).await;
            while let Some(Ok(m)) = ws.recv().await {
                match m {
                    Message::Binary(b) if b[0] == 0 => {
                        out(&mut ws, 1, &b[1..]).await;
                        if b.contains(&3) {
                            break;
                        }
                    }
                    Message::Text(t) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        if v["type"] == "resize" {
                            out(
                                &mut ws,
                                1,
                                format!("resize={}x{}\r\n", v["cols"], v["rows"]).as_bytes(),
                            )
                            .await;
                        }
                    }
                    _ => {}
                }
            }
            send(&mut ws, exit(42, None)).await;
        }
        Some("sh") => {
            out(&mut ws, 1, b"sh ok\n").await;
            send(&mut ws, exit(0, None)).await;
        }
        _ => return,
    }
    let _ = ws.send(Message::Close(None)).await;
}

async fn fake_daemon(dir: &Path) -> std::path::PathBuf {
    let sock = dir.join("burrowd.sock");
    let app = Router::new()
        .route(
            "/v1/sandboxes",
            get(|| async {
                axum::Json(
                    json!({"sandboxes": [sandbox("alpha", "running"), sandbox("beta-long-name", "sleeping")],
                           "next_cursor": null}),
                )
            })
            .post(|axum::Json(v): axum::Json<Value>| async move {
                (
                    StatusCode::CREATED,
                    axum::Json(sandbox(v["name"].as_str().unwrap(), "running")),
                )
            }),
        )
        .route(
            "/v1/sandboxes/{name}",
            get(get_sandbox).delete(|UrlPath(name): UrlPath<String>| async move {
                if name == "missing" {
                    not_found(&name)
                } else {
                    StatusCode::NO_CONTENT.into_response()
                }
            }),
        )
        .route(
            "/v1/sandboxes/{name}/stop",
            post(|UrlPath(n): UrlPath<String>| async move { axum::Json(sandbox(&n, "stopped")) }),
        )
        .route(
            "/v1/sandboxes/{name}/exec",
            get(exec_ws).post(|axum::Json(v): axum::Json<Value>| async move {
                axum::Json(burrow_testkit::fakes::exec_result(
                    5,
                    v["stdin"].as_str().unwrap_or_default(),
                ))
            }),
        )
        .route("/v1/images/{name}", delete(|| async { StatusCode::NO_CONTENT }));
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    sock
}

#[tokio::test]
async fn sandbox_commands_against_fake_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let sock = fake_daemon(dir.path()).await;

    let o = run(&sock, &["ls"], b"").await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("STATUS") && header.contains("CREATED"),
        "{table}"
    );
    assert!(lines.next().unwrap().starts_with("alpha "), "{table}");
    assert!(table.contains("sleeping"), "{table}");

    let o = run(&sock, &["ls", "--json"], b"").await;
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sandboxes"][1]["name"], "beta-long-name");
    assert_eq!(
        v["sandboxes"][0]["extension_field"], 7,
        "server JSON is passed through"
    );

    let o = run(&sock, &["info", "missing"], b"").await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stderr), "error: sandbox 'missing' does not exist\n");

    let o = run(&sock, &["create", "new", "--memory", "256", "-e", "A=1"], b"").await;
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("new: running"), "{}", text(&o.stdout));

    let o = run(&sock, &["stop", "dev", "--json"], b"").await;
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "stopped");

    let o = run(&sock, &["rm", "a", "missing", "b"], b"").await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(text(&o.stdout), "a\nb\n");
    assert!(text(&o.stderr).contains("sandbox 'missing' does not exist"));
    let o = run(&sock, &["rm", "-f", "missing", "a"], b"").await;
    assert!(o.status.success(), "{}", text(&o.stderr));

    // bench needs a real daemon; against this fake one it fails cleanly, naming the error.
    let o = run(
        &sock,
        &["bench", "--runs", "3", "--no-floor", "--out", "/dev/null"],
        b"",
    )
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).starts_with("error: "), "{}", text(&o.stderr));
}

#[tokio::test]
async fn exec_streams_and_propagates_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let sock = fake_daemon(dir.path()).await;

    let o = run(&sock, &["exec", "dev", "--", "emit"], b"").await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(o.stdout, b"out\xff\x00\n");
    assert_eq!(o.stderr, b"err\n");

    let o = run(&sock, &["exec", "dev", "killed"], b"").await;
    assert_eq!(o.status.code(), Some(137));

    let o = run(&sock, &["exec", "-i", "dev", "--", "cat"], b"hello\nworld\n").await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "hello\nworld\n");

    // -t without a terminal: warns, still runs.
    let o = run(&sock, &["exec", "-t", "dev", "--", "emit"], b"").await;
    assert_eq!(o.status.code(), Some(3));
    assert!(text(&o.stderr).contains("not a terminal"), "{}", text(&o.stderr));

    let o = run(&sock, &["exec", "--json", "-i", "dev", "--", "cat"], b"in").await;
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stdout"], "in");
}

#[tokio::test]
async fn console_falls_back_to_sh() {
    let dir = tempfile::tempdir().unwrap();
    let sock = fake_daemon(dir.path()).await;
    let o = run(&sock, &["console", "dev"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "sh ok\n");
    assert!(
        !text(&o.stderr).contains("executable not found"),
        "{}",
        text(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_session_is_raw_forwards_resizes_and_restores_the_terminal() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    use nix::pty::{Winsize, openpty};
    use nix::sys::termios::{LocalFlags, tcgetattr};

    let dir = tempfile::tempdir().unwrap();
    let sock = fake_daemon(dir.path()).await;
    let ws = Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&ws), None).unwrap();
    let before = tcgetattr(&pty.slave).unwrap();
    assert!(before.local_flags.contains(LocalFlags::ICANON));

    let mut child = burrow(&sock, &["exec", "-t", "-i", "dev", "--", "ttycat"])
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave.try_clone().unwrap())
        .spawn()
        .unwrap();

    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let wait_for = async |needle: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let got = text(&seen.lock().unwrap());
            if got.contains(needle) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "no {needle:?} in {got:?}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };

    wait_for("tty=true size=100x30").await;
    // The terminal is raw now: no local echo, no line buffering, ^C is a byte.
    let during = tcgetattr(&pty.slave).unwrap();
    assert!(!during.local_flags.contains(LocalFlags::ICANON));
    assert!(!during.local_flags.contains(LocalFlags::ISIG));

    let bigger = Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from a live local; the fd is open.
    let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCSWINSZ, &bigger) };
    assert_eq!(rc, 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGWINCH,
    )
    .unwrap();
    wait_for("resize=120x40").await;

    master.write_all(b"typed\x03").unwrap();
    wait_for("typed\x03").await;
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(42));
    let after = tcgetattr(&pty.slave).unwrap();
    assert!(
        after
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG)
    );
}
