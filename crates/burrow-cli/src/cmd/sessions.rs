//! `burrow sessions`, `burrow attach` and `burrow kill-session`.
//!
//! Attaching to a TTY session works like `exec -t -i` (raw terminal, resizes forwarded);
//! Ctrl-] detaches and leaves the session running. A non-TTY session is streamed as is;
//! Ctrl-C detaches.

use std::io::Write;

use burrow_api::{KillSession, SessionList, WsNotice, parse_signal};
use burrow_client::{ExecEvent, ExecSender, Method, paths};
use tokio::signal::unix::{SignalKind, signal};

use crate::app::App;
use crate::output::{self, print};
use crate::term::{self, RawMode};

/// Ctrl-]: the detach key of a raw-mode attach (as in telnet).
const DETACH_KEY: u8 = 0x1d;

fn sessions_path(name: &str) -> String {
    format!("{}/sessions", paths::sandbox(name))
}

pub async fn list(app: &App, name: &str) -> anyhow::Result<u8> {
    let v = app.get(&sessions_path(name)).await?;
    app.emit(v, |l: SessionList| {
        let rows: Vec<Vec<String>> = l
            .sessions
            .iter()
            .map(|s| {
                let state = match (s.exit_code, s.signal.as_deref()) {
                    (_, Some(sig)) => format!("killed ({sig})"),
                    (Some(code), None) => format!("exited ({code})"),
                    (None, _) if s.attached => "attached".to_owned(),
                    (None, _) => "detached".to_owned(),
                };
                vec![
                    s.id.clone(),
                    state,
                    if s.tty { "yes" } else { "no" }.to_owned(),
                    output::age(&s.started_at),
                    s.cmd.join(" "),
                ]
            })
            .collect();
        print(&output::table(
            &["ID", "STATE", "TTY", "STARTED", "COMMAND"],
            &rows,
        ))
    })?;
    Ok(0)
}

pub async fn kill(app: &App, name: &str, id: &str, signal: Option<String>) -> anyhow::Result<u8> {
    let path = format!("{}/{}/kill", sessions_path(name), paths::encode(id));
    app.call(Method::POST, &path, Some(&KillSession { signal }))
        .await?;
    Ok(0)
}

/// Exit status of `burrow attach`: the session's, or 128+N when signal N killed it.
fn exit_status(exit_code: i32, signal: Option<&str>) -> u8 {
    match signal.and_then(parse_signal) {
        Some(n) => u8::try_from(128 + n).unwrap_or(255),
        None => u8::try_from(exit_code).unwrap_or(255),
    }
}

pub async fn attach(app: &App, name: &str, id: &str) -> anyhow::Result<u8> {
    let stream = app.client.attach_session(name, id).await?;
    let (tx, mut rx) = stream.split();
    let tty = match rx.next_event().await? {
        Some(ExecEvent::Session { tty, .. }) => tty,
        other => anyhow::bail!("unexpected first frame from the server: {other:?}"),
    };
    let interactive = tty && term::stdin_is_tty();
    let _raw = if interactive {
        RawMode::enable_or_warn()
    } else {
        None
    };
    let mut input_task = None;
    let mut resize_task = None;
    let (detach_tx, mut detach_rx) = tokio::sync::mpsc::channel::<()>(1);
    if interactive {
        if let Some((cols, rows)) = term::size() {
            let _ = tx.resize(cols, rows).await;
        }
        resize_task = Some(tokio::spawn(forward_resizes(tx.clone())));
        input_task = Some(tokio::spawn(forward_stdin(tx.clone(), detach_tx)));
    }
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut warned = false;
    let result = loop {
        tokio::select! {
            ev = rx.next_event() => {
                if !warned && let Some(WsNotice::Replay { dropped_bytes, .. }) = rx.replay() {
                    warned = true;
                    if *dropped_bytes > 0 {
                        term::eprint_line(&format!(
                            "burrow: {} of earlier output no longer buffered",
                            output::size(*dropped_bytes)
                        ));
                    }
                }
                match ev? {
                    Some(ExecEvent::Stdout(b)) => write_out(&mut std::io::stdout().lock(), &b),
                    Some(ExecEvent::Stderr(b)) => write_out(&mut std::io::stderr().lock(), &b),
                    Some(ExecEvent::Error { message, .. }) => term::eprint_line(&format!("error: {message}")),
                    Some(ExecEvent::Session { .. }) => {}
                    Some(ExecEvent::Exit { exit_code, signal, reason }) => {
                        if let Some(reason) = reason {
                            term::eprint_line(&format!("burrow: {reason}"));
                        }
                        break exit_status(exit_code, signal.as_deref());
                    }
                    None => break 0,
                }
            }
            _ = detach_rx.recv() => {
                term::eprint_line(&format!("burrow: detached; `burrow attach {name} {id}` to come back"));
                break 0;
            }
            // Only reachable when the terminal is not raw.
            _ = sigint.recv() => {
                term::eprint_line(&format!("burrow: detached; `burrow attach {name} {id}` to come back"));
                break 0;
            }
        }
    };
    for task in [input_task, resize_task].into_iter().flatten() {
        task.abort();
    }
    let _ = tx.close().await;
    Ok(result)
}

fn write_out(w: &mut impl Write, b: &[u8]) {
    let _ = w.write_all(b).and_then(|()| w.flush());
}

/// Local keystrokes to the session until the detach key (or stdin's end).
async fn forward_stdin(tx: ExecSender, detach: tokio::sync::mpsc::Sender<()>) {
    let mut input = term::spawn_stdin_reader();
    while let Some(chunk) = input.recv().await {
        if let Some(at) = chunk.iter().position(|&b| b == DETACH_KEY) {
            let _ = tx.send_stdin(&chunk[..at]).await;
            let _ = detach.send(()).await;
            return;
        }
        if tx.send_stdin(&chunk).await.is_err() {
            return;
        }
    }
}

/// Sends the terminal size on every SIGWINCH.
async fn forward_resizes(tx: ExecSender) {
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if let Some((cols, rows)) = term::size()
            && tx.resize(cols, rows).await.is_err()
        {
            return;
        }
    }
}
