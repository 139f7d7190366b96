//! Exec: one-shot JSON and the WebSocket session bridge.
//!
//! WebSocket contract (`api.md`): the first server frame is `{"type":"session",…}`; binary
//! frames are `[stream][payload]`; the last frame before a normal close is always
//! `{"type":"exit",…}`. We send the exit frame, then a close frame, and wait (bounded) for
//! the client's close so the exit frame cannot be lost by a racing TCP reset.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use burrow_api::{ExecRequest, WsControl, parse_signal, signal_name, ws_stream};
use burrow_core::{SessionEvent, StreamExecOptions};
use futures::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::extract::{ApiJson, query_pairs};
use super::{ApiError, AppState};

/// The daemon-wide budget of buffered request data: one-shot exec output and large JSON
/// bodies. Each `POST …/exec` reserves what it may hold — its cap for stdout plus its cap for
/// stderr, and its stdin — before it starts, and keeps the reservation until its answer is
/// sent (or the client went away); past the budget it is refused with 429 and nothing runs.
/// The answer is encoded as it is sent, so the reservation bounds the request's memory. A
/// JSON body of [`SMALL_BODY`] or more reserves twice its size while it is read and parsed.
#[derive(Debug)]
pub struct ExecBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// JSON bodies smaller than this are read without a reservation.
pub const SMALL_BODY: usize = 64 << 10;
/// The default budget (`burrowd --exec-buffer-budget-mb`).
pub const DEFAULT_EXEC_BUFFER_BUDGET_MB: u64 = 512;
/// Seconds a refused client is told to wait before trying again.
const RETRY_AFTER_S: u32 = 1;

impl ExecBudget {
    pub fn new(total_bytes: usize) -> Self {
        let total = total_bytes.min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Reserves room to read and parse a JSON body of `len` bytes (twice that); bodies below
    /// [`SMALL_BODY`] need none, so small requests never wait on large ones.
    pub(super) fn reserve_body(&self, len: usize) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        if len < SMALL_BODY {
            return Ok(None);
        }
        let need = len.saturating_mul(2);
        let Some(n) = u32::try_from(need).ok().filter(|_| need <= self.total) else {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "a request body of {} MiB needs {} MiB to read, more than burrowd's whole \
                     buffer budget of {} MiB",
                    len.div_ceil(1 << 20),
                    need.div_ceil(1 << 20),
                    self.total.div_ceil(1 << 20)
                ),
            ));
        };
        self.bytes
            .clone()
            .try_acquire_many_owned(n)
            .map(Some)
            .map_err(|_| {
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "buffer_budget_exhausted",
                    format!(
                        "burrowd's memory budget for request bodies and one-shot exec output ({} MiB) \
                         is taken by other requests; this body of {} MiB needs {} MiB to read. \
                         Nothing was done: retry later",
                        self.total.div_ceil(1 << 20),
                        len.div_ceil(1 << 20),
                        need.div_ceil(1 << 20)
                    ),
                )
                .with_retry_after(RETRY_AFTER_S)
            })
    }

    /// Reserves `bytes`, or says why not: 422 when it is more than the whole budget (it can
    /// never run), 429 with `Retry-After` when other requests hold the rest.
    fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let mib = |b: usize| b.div_ceil(1 << 20);
        let Some(n) = u32::try_from(bytes).ok().filter(|_| bytes <= self.total) else {
            return Err(ApiError::from(burrow_core::CoreError::Invalid(format!(
                "this exec may hold {} MiB of output (max_output_bytes for stdout and for \
                     stderr) but burrowd's whole one-shot exec budget is {} MiB: ask for less \
                     with max_output_bytes, or stream with the WebSocket exec",
                mib(bytes),
                mib(self.total)
            ))));
        };
        self.bytes.clone().try_acquire_many_owned(n).map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "exec_budget_exhausted",
                format!(
                    "burrowd's memory budget for one-shot exec output ({} MiB) is taken by other \
                     running execs; this one would hold up to {} MiB (max_output_bytes for stdout \
                     and stderr). Nothing was run: retry later, ask for less with \
                     max_output_bytes, or stream with the WebSocket exec",
                    mib(self.total),
                    mib(bytes)
                ),
            )
            .with_retry_after(RETRY_AFTER_S)
        })
    }
}

pub async fn exec_once(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Response {
    let cap = match burrow_core::output_cap(req.max_output_bytes) {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    // Its output (both streams, up to the cap each) and its input: the request's stdin text
    // and the bytes decoded from it.
    let stdin = [&req.stdin, &req.stdin_b64]
        .iter()
        .map(|s| s.as_ref().map_or(0, String::len))
        .sum::<usize>();
    let permit = match s
        .exec_budget
        .reserve(cap.saturating_mul(2).saturating_add(stdin.saturating_mul(2)))
    {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let out = match s.mgr.exec_collected(&name, req).await {
        Ok(out) => out,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let body = Body::from_stream(futures::stream::iter(
        ResultJson::new(out, permit).map(Ok::<_, std::convert::Infallible>),
    ));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Bytes of encoded output per body chunk.
const JSON_CHUNK: usize = 64 * 1024;

/// An [`ExecResult`] as JSON, encoded chunk by chunk from the collected bytes (the same JSON
/// `serde_json` gives for `Collected::into_result`, whose copies it avoids). Holds the budget
/// reservation until dropped.
struct ResultJson {
    parts: VecDeque<Part>,
    _permit: Option<OwnedSemaphorePermit>,
}

enum Part {
    Lit(String),
    /// JSON string contents of the (lossy) text of `buf[pos..]`.
    Text {
        buf: Arc<Vec<u8>>,
        pos: usize,
    },
    /// Base64 of `buf[pos..]`.
    B64 {
        buf: Arc<Vec<u8>>,
        pos: usize,
    },
}

impl ResultJson {
    fn new(c: burrow_core::Collected, permit: OwnedSemaphorePermit) -> Self {
        Self::encode(c, Some(permit))
    }

    fn encode(c: burrow_core::Collected, permit: Option<OwnedSemaphorePermit>) -> Self {
        let mut parts = VecDeque::new();
        let mut head = format!("{{\"exit_code\":{}", c.exit_code);
        if let Some(sig) = c.signal {
            let sig = serde_json::to_string(&signal_name(sig)).expect("strings serialize");
            head += &format!(",\"signal\":{sig}");
        }
        let out = Arc::new(c.stdout);
        let err = Arc::new(c.stderr);
        parts.push_back(Part::Lit(head + ",\"stdout\":\""));
        parts.push_back(Part::Text {
            buf: out.clone(),
            pos: 0,
        });
        parts.push_back(Part::Lit("\",\"stderr\":\"".into()));
        parts.push_back(Part::Text {
            buf: err.clone(),
            pos: 0,
        });
        parts.push_back(Part::Lit("\"".into()));
        for (key, buf) in [("stdout_b64", out), ("stderr_b64", err)] {
            if std::str::from_utf8(&buf).is_err() {
                parts.push_back(Part::Lit(format!(",\"{key}\":\"")));
                parts.push_back(Part::B64 { buf, pos: 0 });
                parts.push_back(Part::Lit("\"".into()));
            }
        }
        parts.push_back(Part::Lit(format!(
            ",\"stdout_truncated\":{},\"stderr_truncated\":{},\"timed_out\":{},\"duration_ms\":{}}}",
            c.stdout_truncated, c.stderr_truncated, c.timed_out, c.duration_ms
        )));
        Self {
            parts,
            _permit: permit,
        }
    }
}

impl Iterator for ResultJson {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        loop {
            let part = self.parts.front_mut()?;
            let chunk = match part {
                Part::Lit(s) => Some(std::mem::take(s).into_bytes()),
                Part::Text { buf, pos } => text_chunk(buf, pos),
                Part::B64 { buf, pos } => {
                    (*pos < buf.len()).then(|| {
                        // A multiple of 3 bytes: only the last chunk is padded, so the
                        // chunks concatenate to the base64 of the whole.
                        let end = buf.len().min(*pos + JSON_CHUNK / 4 * 3);
                        let s = base64::engine::general_purpose::STANDARD.encode(&buf[*pos..end]);
                        *pos = end;
                        s.into_bytes()
                    })
                }
            };
            match chunk {
                Some(c) if !c.is_empty() => return Some(Bytes::from(c)),
                Some(_) => {
                    self.parts.pop_front();
                }
                None => {
                    self.parts.pop_front();
                }
            }
        }
    }
}

/// The next piece of `buf[pos..]` as JSON string contents: the text `String::from_utf8_lossy`
/// gives (one U+FFFD per invalid sequence), cut only at character or sequence boundaries.
fn text_chunk(buf: &[u8], pos: &mut usize) -> Option<Vec<u8>> {
    if *pos >= buf.len() {
        return None;
    }
    let mut text = String::new();
    let mut used = 0;
    for chunk in buf[*pos..].utf8_chunks() {
        let valid = chunk.valid();
        let room = JSON_CHUNK.saturating_sub(used);
        if valid.len() > room {
            let mut cut = room;
            while !valid.is_char_boundary(cut) {
                cut -= 1;
            }
            text.push_str(&valid[..cut]);
            used += cut;
            break;
        }
        text.push_str(valid);
        used += valid.len();
        if !chunk.invalid().is_empty() {
            text.push(char::REPLACEMENT_CHARACTER);
            used += chunk.invalid().len();
        }
        if used >= JSON_CHUNK {
            break;
        }
    }
    *pos += used;
    let quoted = serde_json::to_string(&text).expect("strings serialize");
    Some(quoted.as_bytes()[1..quoted.len() - 1].to_vec())
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
    let mut has_cmd = false;
    for (k, v) in query_pairs(q.as_deref())? {
        match k.as_str() {
            "cmd" => {
                has_cmd = true;
                opts.argv.push(v);
            }
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
    if !has_cmd {
        // The command comes in the first frame (`start`): no URL length limit.
        let mgr = s.mgr.clone();
        return Ok(ws.on_upgrade(move |socket| start_from_frame(socket, name, opts, env, mgr)));
    }
    let session = s.mgr.exec_stream(&name, opts.clone(), &env).await?;
    Ok(ws.on_upgrade(move |socket| bridge(socket, session, opts.tty, None)))
}

/// How long the server waits for the `start` frame of a WebSocket exec without `cmd`.
const START_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// A WebSocket exec whose command comes in its first frame: reads the `start` frame, starts
/// the session and bridges it; a failure is an `error` frame with the HTTP status the same
/// failure has on the query form, then a close.
async fn start_from_frame(
    mut socket: WebSocket,
    name: String,
    mut opts: StreamExecOptions,
    mut env: BTreeMap<String, String>,
    mgr: std::sync::Arc<burrow_core::Manager>,
) {
    let started = async {
        let first = match tokio::time::timeout(START_FRAME_TIMEOUT, socket.recv()).await {
            Err(_) => {
                return Err(bad(format!(
                    "no `start` frame within {} s: without `cmd` in the query, the first message \
                     must be {{\"type\":\"start\",\"cmd\":[…]}}",
                    START_FRAME_TIMEOUT.as_secs()
                )));
            }
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => {
                return Err(bad(
                    "without `cmd` in the query, the first message must be a text `start` frame",
                ));
            }
            // The client went away.
            Ok(None | Some(Err(_))) => return Ok(None),
        };
        let (cmd, extra, cwd, user) = match serde_json::from_str::<WsControl>(first.as_str()) {
            Ok(WsControl::Start { cmd, env, cwd, user }) => (cmd, env, cwd, user),
            Ok(_) => return Err(bad("the first message must be a `start` frame")),
            Err(e) => return Err(bad(format!("the `start` frame is not valid: {e}"))),
        };
        opts.argv = cmd;
        env.extend(extra);
        if cwd.is_some() {
            opts.cwd = cwd;
        }
        if user.is_some() {
            opts.user = user;
        }
        mgr.exec_stream(&name, opts.clone(), &env)
            .await
            .map(Some)
            .map_err(ApiError::from)
    }
    .await;
    match started {
        Ok(Some(session)) => bridge(socket, session, opts.tty, None).await,
        Ok(None) => {}
        Err(e) => {
            let frame = WsControl::Error {
                code: e.code.to_owned(),
                message: e.message,
                status: Some(e.status.as_u16()),
            };
            let _ = socket.send(text(&frame)).await;
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: close_code::POLICY,
                    reason: "the exec did not start".into(),
                })))
                .await;
            // Wait (bounded) for the client's close so the error frame is delivered.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(m)) = socket.recv().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
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
    replay: Option<burrow_api::WsNotice>,
) {
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
                    let reason = output.end_reason_since(started);
                    break Ok(WsControl::Exit { exit_code, signal: signal.map(signal_name), reason });
                }
                Ok(None) => break Err(("internal".to_owned(), "session ended twice".to_owned())),
                Err(e) => match output.end_reason_since(started) {
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
            let _ = tx
                .send(text(&WsControl::Error {
                    code,
                    message,
                    status: None,
                }))
                .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn streamed(c: burrow_core::Collected) -> serde_json::Value {
        let bytes: Vec<u8> = ResultJson::encode(c, None).flat_map(|b| b.to_vec()).collect();
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
    }

    #[test]
    fn streamed_json_is_the_result() {
        // Multi-byte characters and invalid sequences across chunk boundaries, control
        // characters, quotes: the same JSON as encoding the whole result at once.
        let mut mixed = Vec::new();
        for i in 0..(3 * JSON_CHUNK / 7) {
            mixed.extend_from_slice(match i % 7 {
                0 => "é".as_bytes(),
                1 => b"\xff",
                2 => "\u{1F600}".as_bytes(),
                3 => b"\"\n\x01",
                4 => b"\xe2\x82",
                _ => b"a",
            });
        }
        let text: Vec<u8> = "héllo\t\"wörld\"\u{0}\n".repeat(JSON_CHUNK / 8).into_bytes();
        for (stdout, stderr, signal) in [
            (mixed.clone(), text.clone(), Some(9)),
            (text.clone(), mixed.clone(), None),
            (Vec::new(), Vec::new(), None),
            (
                vec![b'a'; 3 * JSON_CHUNK + 1],
                vec![0xff; JSON_CHUNK + 2],
                Some(15),
            ),
        ] {
            let c = burrow_core::Collected {
                exit_code: 3,
                signal,
                stdout,
                stderr,
                stdout_truncated: true,
                stderr_truncated: false,
                timed_out: true,
                duration_ms: 42,
            };
            let want = serde_json::to_value(c.clone().into_result()).unwrap();
            assert_eq!(streamed(c), want);
        }
    }

    #[test]
    fn the_budget_refuses_past_its_size() {
        let b = ExecBudget::new(10 << 20);
        let first = b.reserve(6 << 20).expect("fits");
        let refused = b.reserve(6 << 20).unwrap_err().into_response();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        let never = b.reserve(11 << 20).unwrap_err().into_response();
        assert_eq!(never.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(never.headers().get(header::RETRY_AFTER).is_none());
        // Small bodies need no room; a large one does, and is refused while it is taken.
        assert!(b.reserve_body(SMALL_BODY - 1).unwrap().is_none());
        let body = b.reserve_body(3 << 20).unwrap_err().into_response();
        assert_eq!(body.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body.headers()[header::RETRY_AFTER], "1");
        assert!(
            b.reserve_body(2 << 20).unwrap().is_some(),
            "2 × 2 MiB fits in what is left"
        );
        drop(first);
        assert!(
            b.reserve(6 << 20).is_ok(),
            "a finished request gives its share back"
        );
    }
}
