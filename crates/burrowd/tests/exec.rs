//! Exec end to end: one-shot JSON and WebSocket sessions, against a real sandbox.

use std::collections::BTreeMap;

use base64::Engine as _;
use burrow_api::{CreateSandbox, ExecRequest, SandboxName};
use burrow_testkit::burrow_client::{Client, ExecEvent, ExecStreamOptions};
use burrow_testkit::{shared, unique_name};
use tokio::sync::OnceCell;

/// One sandbox shared by the exec tests of this binary.
async fn sandbox() -> (Client, String) {
    static NAME: OnceCell<String> = OnceCell::const_new();
    let d = shared();
    let name = NAME
        .get_or_init(|| async {
            let name = unique_name("exec");
            let req = CreateSandbox {
                name: SandboxName::parse(&name).unwrap(),
                ..Default::default()
            };
            d.client().create_sandbox(&req).await.expect("create");
            name
        })
        .await
        .clone();
    (d.client(), name)
}

fn req(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_shot_output_exit_codes_and_input() {
    let (c, name) = sandbox().await;
    let r = c
        .exec(&name, &req(&["python3", "-c", "print(42)"]))
        .await
        .unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str(), r.timed_out), (0, "42\n", false));
    let r = c
        .exec(&name, &req(&["sh", "-c", "echo out; echo err >&2; exit 3"]))
        .await
        .unwrap();
    assert_eq!(
        (r.exit_code, r.stdout.as_str(), r.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    assert_eq!(r.signal, None);
    let r = c.exec(&name, &req(&["sh", "-c", "kill -KILL $$"])).await.unwrap();
    assert_eq!(r.signal.as_deref(), Some("KILL"));

    let mut q = req(&["sh", "-c", "tr a-z A-Z"]);
    q.stdin = Some("hello".into());
    assert_eq!(c.exec(&name, &q).await.unwrap().stdout, "HELLO");
    let mut q = req(&["wc", "-c"]);
    q.stdin_b64 = Some(base64::engine::general_purpose::STANDARD.encode([0u8, 159, 146, 150]));
    assert_eq!(c.exec(&name, &q).await.unwrap().stdout.trim(), "4");

    let mut q = req(&["sh", "-c", "pwd; echo $FOO; id -un"]);
    q.cwd = Some("/tmp".into());
    q.env = BTreeMap::from([("FOO".into(), "bar".into())]);
    q.user = Some("nobody".into());
    assert_eq!(c.exec(&name, &q).await.unwrap().stdout, "/tmp\nbar\nnobody\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_output_comes_as_base64() {
    let (c, name) = sandbox().await;
    let r = c.exec(&name, &req(&["printf", "\\377\\376ok"])).await.unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(r.stdout_b64.expect("b64 for non-UTF-8"))
        .unwrap();
    assert_eq!(bytes, b"\xff\xfeok");
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_and_output_cap() {
    let (c, name) = sandbox().await;
    let mut q = req(&["sleep", "60"]);
    q.timeout_s = Some(0.5);
    let r = c.exec(&name, &q).await.unwrap();
    assert!(r.timed_out);
    assert_eq!(r.signal.as_deref(), Some("KILL"));
    let mut q = req(&["head", "-c", "100000", "/dev/zero"]);
    q.max_output_bytes = Some(1000);
    let r = c.exec(&name, &q).await.unwrap();
    assert_eq!(r.stdout.len(), 1000);
    assert!(r.stdout_truncated);
    assert_eq!(r.exit_code, 0);
    q.max_output_bytes = Some(0);
    assert_eq!(c.exec(&name, &q).await.unwrap_err().status(), Some(422));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_exec_requests_get_clear_errors() {
    let (c, name) = sandbox().await;
    let e = c.exec(&name, &req(&[])).await.unwrap_err();
    assert_eq!(e.status(), Some(422));
    assert!(e.to_string().contains("argv is empty"), "{e}");
    let e = c.exec(&name, &req(&["no-such-binary-xyz"])).await.unwrap_err();
    assert_eq!(e.status(), Some(422));
    assert!(e.to_string().contains("no-such-binary-xyz"), "{e}");
    let e = c.exec(&name, &req(&["/etc/passwd"])).await.unwrap_err();
    assert_eq!(e.status(), Some(422), "{e}");
    let mut q = req(&["true"]);
    q.cwd = Some("/does/not/exist".into());
    assert_eq!(c.exec(&name, &q).await.unwrap_err().status(), Some(422));
    let mut q = req(&["true"]);
    q.user = Some("nosuchuser".into());
    assert_eq!(c.exec(&name, &q).await.unwrap_err().status(), Some(422));
    let mut q = req(&["true"]);
    q.timeout_s = Some(-1.0);
    assert_eq!(c.exec(&name, &q).await.unwrap_err().status(), Some(422));
    // And the sandbox still works.
    assert_eq!(c.exec(&name, &req(&["true"])).await.unwrap().exit_code, 0);
}

async fn ws_run(c: &Client, name: &str, opts: ExecStreamOptions) -> (Vec<u8>, Vec<u8>, i32, Option<String>) {
    let mut s = c.exec_stream(name, opts).await.expect("exec_stream");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut saw_session = false;
    loop {
        match s.next_event().await.expect("event") {
            Some(ExecEvent::Session { .. }) => saw_session = true,
            Some(ExecEvent::Stdout(b)) => out.extend(b),
            Some(ExecEvent::Stderr(b)) => err.extend(b),
            Some(ExecEvent::Exit {
                exit_code, signal, ..
            }) => {
                assert!(saw_session, "session frame must come first");
                return (out, err, exit_code, signal);
            }
            Some(other) => panic!("unexpected event {other:?}"),
            None => panic!("stream ended without an exit frame"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_streams_and_always_ends_with_exit() {
    let (c, name) = sandbox().await;
    let (out, err, code, _) = ws_run(
        &c,
        &name,
        ExecStreamOptions::new(["sh", "-c", "echo a; echo b >&2; exit 7"]),
    )
    .await;
    assert_eq!(
        (out.as_slice(), err.as_slice(), code),
        (&b"a\n"[..], &b"b\n"[..], 7)
    );

    // stdin and EOF.
    let mut opts = ExecStreamOptions::new(["cat"]);
    opts.stdin = true;
    let s = c.exec_stream(&name, opts).await.unwrap();
    s.send_stdin(b"ping").await.unwrap();
    s.close_stdin().await.unwrap();
    let out = s.collect().await.unwrap();
    assert_eq!((out.stdout.as_slice(), out.exit_code), (&b"ping"[..], 0));

    // Signals reach the process.
    let mut s = c
        .exec_stream(&name, ExecStreamOptions::new(["sleep", "100"]))
        .await
        .unwrap();
    assert!(matches!(
        s.next_event().await.unwrap(),
        Some(ExecEvent::Session { .. })
    ));
    s.signal("TERM").await.unwrap();
    let out = s.collect().await.unwrap();
    assert_eq!(out.signal.as_deref(), Some("TERM"));
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_tty_has_a_terminal_and_resizes() {
    let (c, name) = sandbox().await;
    let mut opts = ExecStreamOptions::new(["sh", "-c", "tty; stty size; read x; stty size"]);
    opts.tty = true;
    opts.cols = Some(100);
    opts.rows = Some(30);
    let mut s = c.exec_stream(&name, opts).await.unwrap();
    let mut out = Vec::new();
    // Wait for the first size, then resize and let the shell go on.
    loop {
        match s.next_event().await.unwrap() {
            Some(ExecEvent::Stdout(b)) => {
                out.extend(b);
                if String::from_utf8_lossy(&out).contains("30 100") {
                    break;
                }
            }
            Some(ExecEvent::Session { .. }) => {}
            other => panic!(
                "unexpected {other:?}; output so far {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    s.resize(120, 40).await.unwrap();
    s.send_stdin(b"go\n").await.unwrap();
    let rest = s.collect().await.unwrap();
    out.extend(rest.stdout);
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("40 120"), "{text}");
    assert_eq!(rest.exit_code, 0);
}

/// Thousands of fast commands, in a row and in parallel: none loses its exit frame or
/// output (Sprites' clients lose ~30% of exit frames on fast commands).
#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_fast_commands_never_lose_exit_frames() {
    let (c, name) = sandbox().await;
    for i in 0..1000 {
        let (out, _, code, _) = ws_run(&c, &name, ExecStreamOptions::new(["echo", &i.to_string()])).await;
        assert_eq!((out, code), (format!("{i}\n").into_bytes(), 0), "run {i}");
    }
    let mut tasks = Vec::new();
    for t in 0..16 {
        let c = c.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..125 {
                let cmd = if i % 2 == 0 {
                    vec!["true".to_owned()]
                } else {
                    vec!["echo".into(), format!("{t}-{i}")]
                };
                let (out, _, code, _) = ws_run(&c, &name, ExecStreamOptions::new(cmd)).await;
                assert_eq!(code, 0);
                if i % 2 == 1 {
                    assert_eq!(out, format!("{t}-{i}\n").into_bytes());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // One-shot too.
    for i in 0..200 {
        let r = c.exec(&name, &req(&["echo", &i.to_string()])).await.unwrap();
        assert_eq!(r.stdout, format!("{i}\n"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_output_arrives_complete() {
    let (c, name) = sandbox().await;
    let (out, _, code, _) = ws_run(
        &c,
        &name,
        ExecStreamOptions::new(["head", "-c", "67108864", "/dev/urandom"]),
    )
    .await;
    assert_eq!((out.len(), code), (64 << 20, 0));
}

/// A session whose process burrowd ends (stop, delete) ends with an exit frame that says
/// why, even when the sandbox is gone by the time the frame is written (its in-memory state
/// left with it: the session keeps what it needs). Control: a process that exits by itself
/// has no reason.
#[tokio::test(flavor = "multi_thread")]
async fn sessions_ended_by_stop_or_delete_are_told_why() {
    let (c, shared_name) = sandbox().await;
    let out = c
        .exec_stream(&shared_name, ExecStreamOptions::new(["true"]))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, out.reason),
        (0, None),
        "a process that exits by itself"
    );

    for (verb, said) in [("stop", "was stopped"), ("delete", "was deleted")] {
        let name = unique_name("ended");
        let req = CreateSandbox {
            name: SandboxName::parse(&name).unwrap(),
            ..Default::default()
        };
        c.create_sandbox(&req).await.unwrap();
        let mut s = c
            .exec_stream(&name, ExecStreamOptions::new(["sleep", "1000"]))
            .await
            .unwrap();
        assert!(matches!(
            s.next_event().await.unwrap(),
            Some(ExecEvent::Session { .. })
        ));
        match verb {
            "stop" => {
                c.sandbox_action(&name, "stop").await.unwrap();
            }
            _ => c.delete_sandbox(&name).await.unwrap(),
        }
        let out = s
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{verb}: an exit frame, not a dropped connection: {e}"));
        let reason = out
            .reason
            .unwrap_or_else(|| panic!("{verb}: the exit frame says why"));
        assert!(
            reason.contains(&format!("sandbox '{name}' {said}")),
            "{verb}: {reason}"
        );
        if verb == "stop" {
            c.delete_sandbox(&name).await.unwrap();
        }
    }
}
