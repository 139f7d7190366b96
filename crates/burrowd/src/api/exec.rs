//! Exec: one-shot JSON and the WebSocket session bridge.
//!
//! WebSocket contract (`api.md`): the first server frame is `{"type":"session",…}`; binary
//! frames are `[stream][payload]`; the last frame before a normal close is always
//! `{"type":"exit",…}`. We send the exit frame, then a close frame, and wait (bounded) for
//! the client's close so the exit frame cannot be lost by a racing TCP reset.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use burrow_api::{ExecRequest, ExecResult, WsControl, parse_signal, signal_name, ws_stream};
use burrow_core::{SessionEvent, StreamExecOptions};
use futures::{SinkExt, StreamExt};

use super::extract::{ApiJson, query_pairs};
use super::{ApiError, AppState};

pub async fn exec_once(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Json<ExecResult>, ApiError> {
    Ok(Json(s.mgr.exec(&name, req).await?))
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg)
}

fn parse_bool(k: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(bad(format!(
            "query parameter '{k}' must be true or false, got '{v}'"
        ))),
    }
}

pub async fn exec_ws(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|e| {
        bad(format!(
            "GET …/exec needs a WebSocket upgrade ({e}); use POST …/exec for a one-shot JSON exec"
        ))
    })?;
    let mut opts = StreamExecOptions {
        cols: 80,
        rows: 24,
        ..Default::default()
    };
    let mut env = BTreeMap::new();
    let mut detach_timeout = None;
    for (k, v) in query_pairs(q.as_deref())? {
        match k.as_str() {
            "cmd" => opts.argv.push(v),
            "tty" => opts.tty = parse_bool(&k, &v)?,
            "stdin" => opts.stdin = parse_bool(&k, &v)?,
            "cwd" => opts.cwd = Some(v),
            "user" => opts.user = Some(v),
            "env" => {
                let (ek, ev) = v
                    .split_once('=')
                    .ok_or_else(|| bad(format!("env '{v}' is not K=V")))?;
                env.insert(ek.to_owned(), ev.to_owned());
            }
            "cols" => {
                opts.cols = v
                    .parse()
                    .map_err(|_| bad(format!("cols '{v}' is not a number")))?
            }
            "rows" => {
                opts.rows = v
                    .parse()
                    .map_err(|_| bad(format!("rows '{v}' is not a number")))?
            }
            "detach_timeout_s" => detach_timeout = Some(parse_detach_timeout(&v)?),
            other => return Err(bad(format!("unknown query parameter '{other}'"))),
        }
    }
    if opts.tty {
        // A terminal is interactive by nature.
        opts.stdin = true;
    }
    // A terminal session survives the client's network dropping; a pipe exec is killed
    // with its connection unless asked otherwise.
    opts.detach_timeout = detach_timeout.unwrap_or(if opts.tty {
        DEFAULT_TTY_DETACH_TIMEOUT
    } else {
        Duration::ZERO
    });
    let session = s.mgr.exec_stream(&name, opts.clone(), &env).await?;
    let mgr = s.mgr.clone();
    Ok(ws.on_upgrade(move |socket| bridge(socket, session, opts.tty, mgr, None)))
}

/// How long a TTY session outlives its connection when the query does not say.
const DEFAULT_TTY_DETACH_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest `detach_timeout_s` accepted (a week).
const MAX_DETACH_TIMEOUT_S: f64 = 7.0 * 86_400.0;

fn parse_detach_timeout(v: &str) -> Result<Duration, ApiError> {
    v.parse::<f64>()
        .ok()
        .filter(|s| (0.0..=MAX_DETACH_TIMEOUT_S).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            bad(format!(
                "detach_timeout_s '{v}' must be a number of seconds between 0 and {MAX_DETACH_TIMEOUT_S}"
            ))
        })
}

/// Bridges a session (a new exec, or an attach with its `replay` notice) to a WebSocket.
pub(super) async fn bridge(
    socket: WebSocket,
    session: burrow_core::ExecSession,
    tty: bool,
    mgr: std::sync::Arc<burrow_core::Manager>,
    replay: Option<burrow_api::WsNotice>,
) {
    let sandbox = session.sandbox.clone();
    let started = std::time::Instant::now();
    let (mut tx, mut rx) = socket.split();
    let hello = WsControl::Session {
        id: session.id.clone(),
        pid: Some(session.pid),
        tty,
    };
    let (input, mut output) = session.split();
    if tx.send(text(&hello)).await.is_err() {
        return;
    }
    if let Some(notice) = replay {
        let notice = serde_json::to_string(&notice).expect("notices serialize");
        if tx.send(Message::Text(notice.into())).await.is_err() {
            return;
        }
    }
    let end = loop {
        tokio::select! {
            ev = output.next() => match ev {
                Ok(Some(SessionEvent::Stdout(b))) => {
                    if tx.send(Message::Binary(frame(ws_stream::STDOUT, &b))).await.is_err() { return; }
                }
                Ok(Some(SessionEvent::Stderr(b))) => {
                    if tx.send(Message::Binary(frame(ws_stream::STDERR, &b))).await.is_err() { return; }
                }
                Ok(Some(SessionEvent::Exited { exit_code, signal })) => {
                    // A process the sandbox's stop/restore ended exits normally (TERM), but
                    // its client still learns why.
                    let reason = mgr.end_reason_since(&sandbox, started);
                    break Ok(WsControl::Exit { exit_code, signal: signal.map(signal_name), reason });
                }
                Ok(None) => break Err(("internal".to_owned(), "session ended twice".to_owned())),
                Err(e) => match mgr.end_reason_since(&sandbox, started) {
                    // The sandbox ended the process (stop, restore, delete): a normal end,
                    // with the reason, rather than an error.
                    Some(reason) => {
                        break Ok(WsControl::Exit { exit_code: -1, signal: Some("KILL".into()), reason: Some(reason) })
                    }
                    None => break Err((e.code().to_owned(), burrow_core::error::chain(&e))),
                },
            },
            msg = rx.next() => {
                let Some(Ok(msg)) = msg else {
                    // The client went away: dropping the call detaches from the session; the
                    // agent kills the process group unless its detach timeout keeps it.
                    return;
                };
                let inp = &input;
                let res = match msg {
                    Message::Binary(b) if !b.is_empty() => match b[0] {
                        ws_stream::STDIN => inp.stdin(b[1..].to_vec()).await,
                        ws_stream::STDIN_EOF => inp.close_stdin().await,
                        _ => Ok(()),
                    },
                    Message::Text(t) => match serde_json::from_str::<WsControl>(t.as_str()) {
                        Ok(WsControl::Resize { cols, rows }) => inp.resize(cols, rows).await,
                        Ok(WsControl::Signal { signal }) => match parse_signal(&signal) {
                            Some(n) => inp.signal(n).await,
                            None => Ok(()),
                        },
                        _ => Ok(()),
                    },
                    Message::Close(_) => return,
                    _ => Ok(()),
                };
                // The process may have exited already; its exit status still follows.
                let _ = res;
            }
        }
    };
    match end {
        Ok(exit) => {
            if tx.send(text(&exit)).await.is_err() {
                return;
            }
            let _ = tx
                .send(Message::Close(Some(CloseFrame {
                    code: close_code::NORMAL,
                    reason: "".into(),
                })))
                .await;
        }
        Err((code, message)) => {
            let _ = tx.send(text(&WsControl::Error { code, message })).await;
            let _ = tx
                .send(Message::Close(Some(CloseFrame {
                    code: close_code::ERROR,
                    reason: "agent failed".into(),
                })))
                .await;
        }
    }
    drop(input);
    // Wait (bounded) for the client's close reply so our last frames are delivered.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = rx.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn text(c: &WsControl) -> Message {
    Message::Text(serde_json::to_string(c).expect("control frames serialize").into())
}

fn frame(stream: u8, payload: &[u8]) -> axum::body::Bytes {
    let mut v = Vec::with_capacity(payload.len() + 1);
    v.push(stream);
    v.extend_from_slice(payload);
    v.into()
}
