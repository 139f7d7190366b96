//! Sessions against the real agent binary on the host: ids, detaching, attach with replay,
//! several callers, the detach timeout, kills, and finished sessions.

mod common;

use std::time::Instant;

use burrow_agent_proto::Connection;
use burrow_agent_proto::v1::{
    AttachStart, ExecInput, ExecOutput, ExecStart, KillSessionRequest, ListSessionsRequest, SessionInfo,
    exec_input, exec_output,
};
use common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

fn counter() -> ExecStart {
    start(&[
        "sh",
        "-c",
        "i=0; while :; do i=$((i+1)); echo n$i; sleep 0.02; done",
    ])
}

async fn list(conn: &mut Connection) -> Vec<SessionInfo> {
    conn.client
        .list_sessions(ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions
}

async fn info(conn: &mut Connection, id: &str) -> Option<SessionInfo> {
    list(conn).await.into_iter().find(|s| s.id == id)
}

/// Polls (bounded) until session `id` satisfies `cond`.
async fn wait_info(
    conn: &mut Connection,
    id: &str,
    what: &str,
    cond: impl Fn(&SessionInfo) -> bool,
) -> SessionInfo {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = info(conn, id).await;
        if let Some(s) = s.as_ref().filter(|s| cond(s)) {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Starts an exec and returns (input, output, session id).
async fn open_session(
    conn: &mut Connection,
    start: ExecStart,
) -> (mpsc::Sender<ExecInput>, Streaming<ExecOutput>, String) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(input(exec_input::Kind::Start(start))).await.unwrap();
    let mut output = conn
        .client
        .exec(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match output.message().await.unwrap().and_then(|m| m.kind) {
        Some(exec_output::Kind::Started(s)) => {
            assert!(
                s.session_id.starts_with("s-") && s.session_id.len() == 18,
                "{}",
                s.session_id
            );
            (tx, output, s.session_id)
        }
        other => panic!("first message was not `started`: {other:?}"),
    }
}

/// Attaches; `Ok((input, output, attached))` or the status.
async fn attach(
    conn: &mut Connection,
    id: &str,
) -> Result<(mpsc::Sender<ExecInput>, Streaming<ExecOutput>, exec_output::Kind), tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(input(exec_input::Kind::Attach(AttachStart {
        session_id: id.to_owned(),
    })))
    .await
    .unwrap();
    let mut output = conn.client.attach(ReceiverStream::new(rx)).await?.into_inner();
    let first = output
        .message()
        .await?
        .and_then(|m| m.kind)
        .expect("a first message");
    Ok((tx, output, first))
}

/// Reads stdout until it contains `needle`.
async fn read_until(output: &mut Streaming<ExecOutput>, needle: &str) -> String {
    let mut seen = Vec::new();
    loop {
        match output.message().await.unwrap().and_then(|m| m.kind) {
            Some(exec_output::Kind::Stdout(b)) => seen.extend_from_slice(&b),
            other => panic!("unexpected {other:?} while waiting for {needle:?}"),
        }
        let s = String::from_utf8_lossy(&seen);
        if s.contains(needle) {
            return s.into_owned();
        }
    }
}

/// Reads to the end; returns the `exited` message and asserts it came last.
async fn exit_of(output: &mut Streaming<ExecOutput>) -> burrow_agent_proto::v1::Exited {
    let mut exited = None;
    while let Some(msg) = output.message().await.unwrap() {
        assert!(exited.is_none(), "message after `exited`: {msg:?}");
        if let Some(exec_output::Kind::Exited(e)) = msg.kind {
            exited = Some(e);
        }
    }
    exited.expect("stream ended without `exited`")
}

fn last_n(text: &str) -> u64 {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix('n')?.parse().ok())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn detached_session_keeps_running_and_replays_on_attach() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let (tx, mut out, id) = open_session(
        &mut conn,
        ExecStart {
            detach_timeout_ms: 600_000,
            ..counter()
        },
    )
    .await;
    let seen = last_n(&read_until(&mut out, "n3\n").await);
    drop((tx, out));
    let s = wait_info(&mut conn, &id, "detached", |s| s.attached == 0).await;
    assert!(s.exit.is_none() && s.exited_at_ms.is_none());
    assert_eq!(s.argv[0], "sh");
    assert!(pid_exists(s.pid));

    let (tx1, mut out1, first) = attach(&mut conn, &id).await.unwrap();
    let exec_output::Kind::Attached(a) = first else {
        panic!("{first:?}")
    };
    assert_eq!((a.pid, a.tty, a.dropped_bytes), (s.pid, false, 0));
    assert!(a.replay_bytes > 0);
    let text = read_until(&mut out1, &format!("n{}\n", seen + 3)).await;
    assert!(
        text.starts_with("n1\n"),
        "the replay starts at the beginning: {text}"
    );
    wait_info(&mut conn, &id, "attached", |s| s.attached == 1).await;

    // A second caller; a signal from it ends the session for both.
    let (tx2, mut out2, _) = attach(&mut conn, &id).await.unwrap();
    tx2.send(input(exec_input::Kind::Signal(15))).await.unwrap();
    assert_eq!(exit_of(&mut out1).await.signal, 15);
    assert_eq!(exit_of(&mut out2).await.signal, 15);
    drop((tx1, tx2));
    let s = wait_info(&mut conn, &id, "exited", |s| s.exit.is_some()).await;
    assert!(s.exited_at_ms.unwrap() >= s.started_at_ms);

    // Finished: attach answers `exited` alone; kill is refused; unknown ids are NOT_FOUND.
    let (_, mut out, first) = attach(&mut conn, &id).await.unwrap();
    assert!(
        matches!(first, exec_output::Kind::Exited(e) if e.signal == 15),
        "{first:?}"
    );
    assert!(out.message().await.unwrap().is_none());
    let err = conn
        .client
        .kill_session(KillSessionRequest {
            session_id: id.clone(),
            signal: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let Err(err) = attach(&mut conn, "s-nope").await else {
        panic!("attached to an unknown id")
    };
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn detach_timeout_kills_and_zero_kills_at_once() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    for (timeout_ms, tty) in [(300, false), (300, true), (0, false)] {
        let (tx, out, id) = open_session(
            &mut conn,
            ExecStart {
                detach_timeout_ms: timeout_ms,
                tty,
                ..start(&["sleep", "600"])
            },
        )
        .await;
        drop((tx, out));
        let s = wait_info(&mut conn, &id, "the detached session to be killed", |s| {
            s.exit.is_some()
        })
        .await;
        let sig = s.exit.unwrap().signal;
        assert!(
            sig == 9 || (tty && sig == 1),
            "timeout {timeout_ms} tty {tty}: signal {sig}"
        );
        wait_for("the process to be reaped", || !pid_exists(s.pid)).await;
    }
}

#[tokio::test]
async fn kill_session_and_output_while_detached_is_bounded() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    // 3 MiB while nobody is attached, then a marker.
    let (tx, out, id) = open_session(
        &mut conn,
        ExecStart {
            detach_timeout_ms: 600_000,
            ..start(&["sh", "-c", "head -c 3145728 /dev/zero; echo end; exec sleep 600"])
        },
    )
    .await;
    drop((tx, out));
    let deadline = Instant::now() + PATIENCE;
    let (replay, dropped) = loop {
        let (_tx, mut out, first) = attach(&mut conn, &id).await.unwrap();
        let exec_output::Kind::Attached(a) = first else {
            panic!("{first:?}")
        };
        let mut got = Vec::new();
        while (got.len() as u64) < a.replay_bytes {
            match out.message().await.unwrap().and_then(|m| m.kind) {
                Some(exec_output::Kind::Stdout(b)) => got.extend_from_slice(&b),
                other => panic!("{other:?}"),
            }
        }
        if got.ends_with(b"end\n") {
            break (got, a.dropped_bytes);
        }
        assert!(Instant::now() < deadline, "output never finished");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(replay.len(), 1 << 20);
    assert_eq!(dropped + replay.len() as u64, 3 * (1 << 20) + 4);

    conn.client
        .kill_session(KillSessionRequest {
            session_id: id.clone(),
            signal: 0,
        })
        .await
        .unwrap();
    let s = wait_info(&mut conn, &id, "the kill", |s| s.exit.is_some()).await;
    assert_eq!(s.exit.unwrap().signal, 9);
}

#[tokio::test]
async fn sessions_outlive_the_connection() {
    let mut agent = Agent::start();
    let mut conn1 = agent.connect().await;
    let (tx, mut out, id) = open_session(
        &mut conn1,
        ExecStart {
            detach_timeout_ms: 600_000,
            tty: true,
            ..counter()
        },
    )
    .await;
    read_until(&mut out, "n2").await;
    // The whole connection goes away (as when burrowd dies).
    drop((tx, out, conn1));
    let mut conn2 = agent.connect().await;
    let s = wait_info(&mut conn2, &id, "detached", |s| s.attached == 0).await;
    assert!(s.tty && s.exit.is_none());
    let (tx, mut out, _) = attach(&mut conn2, &id).await.unwrap();
    read_until(&mut out, "n5").await;
    tx.send(input(exec_input::Kind::Signal(9))).await.unwrap();
    assert_eq!(exit_of(&mut out).await.signal, 9);
}

/// A SIGKILL is answered once the session's exit is recorded: a listing right after it
/// shows the session finished. Here a process that left the group keeps the output open for
/// half a second after the kill, so the exit is recorded that much later (an answer at the
/// signal would come before it). The control: the process really outlives the signal (the
/// listing before the kill shows the session running).
#[tokio::test]
async fn a_kill_answers_once_the_exit_is_recorded() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let (tx, out, id) = open_session(
        &mut conn,
        ExecStart {
            detach_timeout_ms: 600_000,
            ..start(&["sh", "-c", "setsid sleep 0.5 & echo up; exec sleep 600"])
        },
    )
    .await;
    drop((tx, out));
    let s = wait_info(&mut conn, &id, "detached", |s| s.attached == 0).await;
    assert!(s.exit.is_none(), "control: it runs before the kill");
    conn.client
        .kill_session(KillSessionRequest {
            session_id: id.clone(),
            signal: 0,
        })
        .await
        .unwrap();
    let s = info(&mut conn, &id).await.expect("the session is listed");
    assert_eq!(
        s.exit.map(|e| e.signal),
        Some(9),
        "listed as running after the kill: {s:?}"
    );
}
