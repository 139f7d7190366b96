//! Sessions end to end: every exec is a session the sandbox's agent owns, so it outlives
//! its WebSocket (and burrowd) for its detach timeout, and can be listed, re-attached (with
//! the buffered output replayed) and killed.

use std::time::{Duration, Instant};

use burrow_api::{SessionInfo, WsNotice};
use burrow_testkit::burrow_client::{Client, ExecEvent, ExecStream, ExecStreamOptions};
use burrow_testkit::fixtures::{create_unique, poll};
use burrow_testkit::{Daemon, shared};
use tokio::sync::OnceCell;

/// Upper bound of every wait-for-condition loop (they end as soon as the condition holds).
const PATIENCE: Duration = Duration::from_secs(60);

/// One sandbox shared by the tests of this binary that use the shared daemon.
async fn sandbox() -> (Client, String) {
    static NAME: OnceCell<String> = OnceCell::const_new();
    let d = shared();
    let name = NAME
        .get_or_init(|| async { create_unique(&d.client(), "sess").await })
        .await
        .clone();
    (d.client(), name)
}

/// Reads events until the session event; returns its id.
async fn session_id(s: &mut ExecStream) -> String {
    match s.next_event().await.expect("event") {
        Some(ExecEvent::Session { id, .. }) => id,
        other => panic!("first event was not the session: {other:?}"),
    }
}

/// Reads output until it contains `needle`; returns everything read.
async fn read_until(s: &mut ExecStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), s.next_event())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in time; got {:?}", String::from_utf8_lossy(&seen)))
            .expect("event");
        match ev {
            Some(ExecEvent::Stdout(b) | ExecEvent::Stderr(b)) => seen.extend_from_slice(&b),
            other => panic!(
                "unexpected {other:?} while waiting for {needle:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
        }
        let text = String::from_utf8_lossy(&seen);
        if text.contains(needle) {
            return text.into_owned();
        }
    }
}

async fn find(c: &Client, name: &str, id: &str) -> Option<SessionInfo> {
    c.list_sessions(name)
        .await
        .unwrap()
        .sessions
        .into_iter()
        .find(|s| s.id == id)
}

/// Polls the session list (bounded) until `cond` holds for session `id`.
async fn wait_session(
    c: &Client,
    name: &str,
    id: &str,
    what: &str,
    cond: impl Fn(&SessionInfo) -> bool,
) -> SessionInfo {
    let cond = &cond;
    poll(what, PATIENCE, || async move {
        match find(c, name, id).await {
            Some(s) if cond(&s) => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Reads to the exit event; returns (output, exit_code, signal).
async fn finish(mut s: ExecStream) -> (Vec<u8>, i32, Option<String>) {
    let mut out = Vec::new();
    loop {
        match s.next_event().await.expect("event") {
            Some(ExecEvent::Stdout(b) | ExecEvent::Stderr(b)) => out.extend_from_slice(&b),
            Some(ExecEvent::Exit {
                exit_code, signal, ..
            }) => return (out, exit_code, signal),
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("stream ended without an exit frame"),
        }
    }
}

fn counter(prefix: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("i=0; while :; do i=$((i+1)); echo {prefix}-$i; sleep 0.05; done"),
    ]
}

fn last_count(text: &str, prefix: &str) -> u64 {
    text.split(|c: char| c.is_whitespace())
        .filter_map(|w| w.strip_prefix(&format!("{prefix}-")))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn tty_session_survives_its_connection_and_replays_on_attach() {
    let (c, name) = sandbox().await;
    let mut opts = ExecStreamOptions::new(counter("tick"));
    opts.tty = true;
    let mut s = c.exec_stream(&name, opts).await.unwrap();
    let id = session_id(&mut s).await;
    assert!(id.starts_with("s-"), "{id}");
    let before = read_until(&mut s, "tick-3\r\n").await;
    let seen = last_count(&before, "tick");
    drop(s);

    // Listed, running and detached.
    let info = wait_session(&c, &name, &id, "the session to be detached", |s| !s.attached).await;
    assert!(
        info.tty && info.exit_code.is_none() && info.exited_at.is_none(),
        "{info:?}"
    );
    assert_eq!(info.cmd, counter("tick"));

    // Re-attach: the replay holds what was missed, then it goes on live.
    let mut a = c.attach_session(&name, &id).await.unwrap();
    let mut sess_tty = false;
    if let Some(ExecEvent::Session { id: got, tty, .. }) = a.next_event().await.unwrap() {
        assert_eq!(got, id);
        sess_tty = tty;
    }
    assert!(sess_tty, "the session frame says tty");
    let after = read_until(&mut a, &format!("tick-{}\r\n", seen + 5)).await;
    assert!(
        after.contains(&format!("tick-{}\r\n", seen + 1)),
        "the replay misses output: {after}"
    );
    assert!(
        matches!(a.replay(), Some(WsNotice::Replay { dropped_bytes: 0, replay_bytes }) if *replay_bytes > 0),
        "{:?}",
        a.replay()
    );
    wait_session(&c, &name, &id, "the session to be attached", |s| s.attached).await;

    // Two clients at once: both get the stream.
    let mut b = c.attach_session(&name, &id).await.unwrap();
    session_id(&mut b).await;
    let now = last_count(&read_until(&mut a, "\n").await, "tick").max(seen + 5);
    read_until(&mut b, &format!("tick-{}\r\n", now + 2)).await;

    // Kill: every attached client gets the exit frame.
    c.kill_session(&name, &id, None).await.unwrap();
    let (_, code, signal) = finish(a).await;
    assert_eq!((code, signal.as_deref()), (-1, Some("KILL")));
    let (_, _, signal) = finish(b).await;
    assert_eq!(signal.as_deref(), Some("KILL"));

    let info = wait_session(&c, &name, &id, "the exit to be listed", |s| s.exit_code.is_some()).await;
    assert_eq!((info.exit_code, info.signal.as_deref()), (Some(-1), Some("KILL")));
    assert!(info.exited_at.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn detach_timeout_kills_a_detached_session() {
    let (c, name) = sandbox().await;
    let mut opts = ExecStreamOptions::new(counter("pipe"));
    opts.detach_timeout_s = Some(1);
    let mut s = c.exec_stream(&name, opts).await.unwrap();
    let id = session_id(&mut s).await;
    read_until(&mut s, "pipe-1\n").await;
    drop(s);
    let info = wait_session(&c, &name, &id, "the detached session to be killed", |s| {
        s.exit_code.is_some()
    })
    .await;
    assert_eq!(info.signal.as_deref(), Some("KILL"), "{info:?}");
    assert!(!info.attached);
}

#[tokio::test(flavor = "multi_thread")]
async fn pipe_exec_is_still_killed_with_its_connection_by_default() {
    let (c, name) = sandbox().await;
    let mut s = c
        .exec_stream(&name, ExecStreamOptions::new(counter("dflt")))
        .await
        .unwrap();
    let id = session_id(&mut s).await;
    read_until(&mut s, "dflt-1\n").await;
    drop(s);
    let info = wait_session(&c, &name, &id, "the session to be killed", |s| {
        s.exit_code.is_some()
    })
    .await;
    assert_eq!(info.signal.as_deref(), Some("KILL"));
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_unknown_is_404_and_finished_is_410() {
    let (c, name) = sandbox().await;
    let err = c.attach_session(&name, "s-0000000000000000").await.unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    let err = c
        .kill_session(&name, "s-0000000000000000", None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");

    let mut s = c
        .exec_stream(&name, ExecStreamOptions::new(["sh", "-c", "echo bye; exit 7"]))
        .await
        .unwrap();
    let id = session_id(&mut s).await;
    let (out, code, _) = finish(s).await;
    assert_eq!((out.as_slice(), code), (&b"bye\n"[..], 7));
    let info = find(&c, &name, &id).await.expect("finished sessions stay listed");
    assert_eq!(info.exit_code, Some(7));
    let err = c.attach_session(&name, &id).await.unwrap_err();
    assert_eq!(err.status(), Some(410), "{err}");
    assert!(err.to_string().contains("code 7"), "{err}");
    let err = c.kill_session(&name, &id, Some("TERM")).await.unwrap_err();
    assert_eq!(err.status(), Some(410), "{err}");
    let err = c.kill_session(&name, &id, Some("NOPE")).await.unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ring_buffer_is_bounded_and_says_what_it_dropped() {
    const MIB: u64 = 1 << 20;
    let (c, name) = sandbox().await;
    // Waits for a marker file that is made only once it is detached, so that all 5 MiB are
    // produced while nobody is attached.
    let marker = format!("/tmp/ring-go-{}", std::process::id());
    let script = format!(
        "while [ ! -e {marker} ]; do sleep 0.05; done; head -c 5242880 /dev/zero | tr '\\0' x; echo; echo done; sleep 600"
    );
    let mut opts = ExecStreamOptions::new(["sh", "-c", script.as_str()]);
    opts.detach_timeout_s = Some(120);
    let mut s = c.exec_stream(&name, opts).await.unwrap();
    let id = session_id(&mut s).await;
    drop(s);
    wait_session(&c, &name, &id, "the session to be detached", |s| !s.attached).await;
    let touch = burrow_api::ExecRequest {
        cmd: vec!["touch".into(), marker.clone()],
        ..Default::default()
    };
    c.exec(&name, &touch).await.unwrap();

    // `done` is in the replay once everything was produced; attach until it is.
    let deadline = Instant::now() + PATIENCE;
    let (replayed, dropped) = loop {
        let mut a = c.attach_session(&name, &id).await.unwrap();
        session_id(&mut a).await;
        let mut got = Vec::new();
        match a.next_event().await.unwrap() {
            Some(ExecEvent::Stdout(b)) => got.extend_from_slice(&b),
            other => panic!("unexpected {other:?}"),
        }
        let Some(WsNotice::Replay {
            replay_bytes,
            dropped_bytes,
        }) = a.replay().cloned()
        else {
            panic!("no replay notice");
        };
        while (got.len() as u64) < replay_bytes {
            match a.next_event().await.unwrap() {
                Some(ExecEvent::Stdout(b)) => got.extend_from_slice(&b),
                other => panic!("unexpected {other:?}"),
            }
        }
        got.truncate(replay_bytes as usize);
        if got.ends_with(b"\ndone\n") {
            break (got, dropped_bytes);
        }
        assert!(Instant::now() < deadline, "the output was never all produced");
        drop(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(replayed.len() as u64 <= MIB, "replayed {} bytes", replayed.len());
    assert!(
        replayed.len() as u64 >= MIB - 64,
        "replayed {} bytes",
        replayed.len()
    );
    let total = 5 * MIB + "\ndone\n".len() as u64;
    assert_eq!(dropped + replayed.len() as u64, total);
    c.kill_session(&name, &id, None).await.unwrap();
    wait_session(&c, &name, &id, "the kill", |s| s.exit_code.is_some()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_survive_a_burrowd_crash() {
    let d = Daemon::start();
    let c = d.client();
    let name = create_unique(&c, "crash").await;
    let mut opts = ExecStreamOptions::new(counter("live"));
    opts.tty = true;
    let mut s = c.exec_stream(&name, opts).await.unwrap();
    let id = session_id(&mut s).await;
    let seen = last_count(&read_until(&mut s, "live-2\r\n").await, "live");

    d.kill9();
    // The connection dies with burrowd; the session goes on in the sandbox.
    assert!(
        finish_or_error(s).await,
        "an exit frame arrived from a dead daemon"
    );
    d.restart();
    let c = d.client();
    let info = wait_session(&c, &name, &id, "the session after the restart", |s| !s.attached).await;
    assert!(info.exit_code.is_none(), "{info:?}");
    let mut a = c.attach_session(&name, &id).await.unwrap();
    assert_eq!(session_id(&mut a).await, id);
    let text = read_until(&mut a, &format!("live-{}\r\n", seen + 3)).await;
    assert!(text.contains(&format!("live-{}\r\n", seen + 1)), "{text}");
    a.signal("TERM").await.unwrap();
    let (_, _, signal) = finish(a).await;
    assert!(matches!(signal.as_deref(), Some("TERM" | "HUP")), "{signal:?}");
    c.delete_sandbox(&name).await.unwrap();
}

/// Reads until the stream fails; true when it ended without an exit frame.
async fn finish_or_error(mut s: ExecStream) -> bool {
    loop {
        match s.next_event().await {
            Ok(Some(ExecEvent::Exit { .. })) => return false,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return true,
        }
    }
}
