//! Interactive exec over WebSocket (`GET /v1/sandboxes/{name}/exec`).
//!
//! Binary frames are `[stream byte][payload]` (`burrow_api::ws_stream`); text frames are
//! [`WsControl`] JSON. The server always sends an exit frame before a normal close, so a stream
//! that ends without one is reported as [`ClientError::NoExitFrame`], never as success.

use std::sync::Arc;

use burrow_api::{WsControl, WsNotice, ws_stream};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hyper::body::Bytes;
use tokio::sync::Mutex;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::paths::Query;
use crate::transport::Stream;
use crate::{Client, ClientError};

/// What to run and how, as the WebSocket query carries it.
#[derive(Debug, Clone, Default)]
pub struct ExecStreamOptions {
    /// argv; the first element is the program.
    pub cmd: Vec<String>,
    /// Run under a pseudo-terminal (output arrives on stdout only).
    pub tty: bool,
    /// The client will send stdin; without it the process gets an empty stdin.
    pub stdin: bool,
    pub cwd: Option<String>,
    /// Extra environment, in order (`env=K=V` repeated).
    pub env: Vec<(String, String)>,
    /// Initial terminal size (TTY only).
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    /// Extension: user to run as (`user=`), as in the one-shot exec body.
    pub user: Option<String>,
    /// How long the process may outlive the connection.
    pub detach_timeout_s: Option<u64>,
}

impl ExecStreamOptions {
    /// Runs `cmd` with no stdin and no TTY.
    pub fn new<I, S>(cmd: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            cmd: cmd.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    pub(crate) fn query(&self) -> Query {
        self.query_with(true)
    }

    /// The query, with or without what the `start` frame can carry instead (`cmd`, `env`,
    /// `cwd`, `user`).
    fn query_with(&self, command: bool) -> Query {
        let mut q = Query::new();
        if command {
            for a in &self.cmd {
                q.push("cmd", a);
            }
        }
        q.push("tty", bool_str(self.tty));
        q.push("stdin", bool_str(self.stdin));
        if command {
            q.push_opt("cwd", self.cwd.as_deref());
            for (k, v) in &self.env {
                q.push("env", format!("{k}={v}"));
            }
        }
        q.push_opt("cols", self.cols.map(|c| c.to_string()));
        q.push_opt("rows", self.rows.map(|r| r.to_string()));
        if command {
            q.push_opt("user", self.user.as_deref());
        }
        q.push_opt("detach_timeout_s", self.detach_timeout_s.map(|t| t.to_string()));
        q
    }

    /// The `start` frame for the command, environment, cwd and user.
    fn start_frame(&self) -> WsControl {
        WsControl::Start {
            cmd: self.cmd.clone(),
            env: self.env.iter().cloned().collect(),
            cwd: self.cwd.clone(),
            user: self.user.clone(),
        }
    }

    /// How the command travels: in the URL query while it is short (any server version
    /// understands that), else in a `start` frame (no URL length limit).
    pub(crate) fn request(&self) -> (Query, Option<WsControl>) {
        let full = self.query();
        if full.as_str().len() <= MAX_QUERY_BYTES {
            (full, None)
        } else {
            (self.query_with(false), Some(self.start_frame()))
        }
    }
}

/// Longest URL query the client sends; a longer command goes in a `start` frame. Servers and
/// proxies commonly refuse request lines past 8 KiB.
pub const MAX_QUERY_BYTES: usize = 4096;

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// Something the server sent on an exec stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// First event: the session was created.
    Session {
        id: String,
        pid: Option<u32>,
        tty: bool,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    /// The session cannot go on; an `Exit` still follows when the status is known.
    /// `status`: the HTTP status of the same error, when the session could not start.
    Error {
        code: String,
        message: String,
        status: Option<u16>,
    },
    /// Last event: the process ended. `signal` is set when it was killed by one; `reason`
    /// when the sandbox ended it (stopped, restored, …).
    Exit {
        exit_code: i32,
        signal: Option<String>,
        reason: Option<String>,
    },
}

type WsStream = WebSocketStream<Stream>;

/// An open exec session. Use [`ExecStream::split`] to send and receive from different tasks.
#[derive(Debug)]
pub struct ExecStream {
    sender: ExecSender,
    receiver: ExecReceiver,
}

/// Sending half of an exec stream. Clones share the connection.
#[derive(Debug, Clone)]
pub struct ExecSender {
    sink: Arc<Mutex<SplitSink<WsStream, Message>>>,
}

/// Receiving half of an exec stream.
#[derive(Debug)]
pub struct ExecReceiver {
    stream: SplitStream<WsStream>,
    exited: bool,
    replay: Option<WsNotice>,
    /// An event already read (the answer to a `start` frame), returned first.
    pending: Option<ExecEvent>,
}

/// Everything an exec stream produced, from [`ExecStream::collect`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutput {
    pub session_id: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    pub signal: Option<String>,
    /// `Error` events, as `code: message`.
    pub errors: Vec<String>,
    /// Why the sandbox ended the process, when it did (stop, restore, …).
    pub reason: Option<String>,
}

impl ExecStream {
    pub(crate) async fn connect(client: &Client, path: &str) -> Result<Self, ClientError> {
        let ws = crate::ingress::ws_connect(client, path).await?;
        let (sink, stream) = ws.split();
        Ok(Self {
            sender: ExecSender {
                sink: Arc::new(Mutex::new(sink)),
            },
            receiver: ExecReceiver {
                stream,
                exited: false,
                replay: None,
                pending: None,
            },
        })
    }

    /// Connects, sends the `start` frame and waits for the server's answer: a session (kept
    /// as the first event) or the error the session could not start with, as
    /// [`ClientError::Api`] with the HTTP status the server names.
    pub(crate) async fn connect_with_start(
        client: &Client,
        path: &str,
        start: &WsControl,
    ) -> Result<Self, ClientError> {
        let mut s = Self::connect(client, path).await?;
        s.sender.control(start).await?;
        match s.receiver.next_event().await {
            Ok(Some(ExecEvent::Error {
                code,
                message,
                status,
            })) => {
                let _ = s.sender.close().await;
                Err(ClientError::Api {
                    status: status.unwrap_or(500),
                    code,
                    message,
                })
            }
            Ok(Some(first)) => {
                s.receiver.pending = Some(first);
                Ok(s)
            }
            Ok(None) => Err(ClientError::NoExitFrame),
            Err(e) => Err(e),
        }
    }

    /// A handle for sending stdin, resizes and signals.
    pub fn sender(&self) -> ExecSender {
        self.sender.clone()
    }

    pub fn split(self) -> (ExecSender, ExecReceiver) {
        (self.sender, self.receiver)
    }

    /// See [`ExecReceiver::next_event`].
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        self.receiver.next_event().await
    }

    /// See [`ExecReceiver::replay`].
    pub fn replay(&self) -> Option<&WsNotice> {
        self.receiver.replay()
    }

    pub async fn send_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        self.sender.send_stdin(data).await
    }

    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.sender.close_stdin().await
    }

    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), ClientError> {
        self.sender.resize(cols, rows).await
    }

    pub async fn signal(&self, signal: &str) -> Result<(), ClientError> {
        self.sender.signal(signal).await
    }

    /// Reads the stream to the end, buffering all output.
    pub async fn collect(mut self) -> Result<ExecOutput, ClientError> {
        let mut out = ExecOutput::default();
        while let Some(ev) = self.receiver.next_event().await? {
            match ev {
                ExecEvent::Session { id, .. } => out.session_id = Some(id),
                ExecEvent::Stdout(b) => out.stdout.extend_from_slice(&b),
                ExecEvent::Stderr(b) => out.stderr.extend_from_slice(&b),
                ExecEvent::Error { code, message, .. } => out.errors.push(format!("{code}: {message}")),
                ExecEvent::Exit {
                    exit_code,
                    signal,
                    reason,
                } => {
                    out.exit_code = exit_code;
                    out.signal = signal;
                    out.reason = reason;
                }
            }
        }
        let _ = self.sender.close().await;
        Ok(out)
    }
}

impl ExecSender {
    /// Sends bytes to the process's stdin (or terminal).
    pub async fn send_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut frame = Vec::with_capacity(data.len() + 1);
        frame.push(ws_stream::STDIN);
        frame.extend_from_slice(data);
        self.send(Message::Binary(frame.into())).await
    }

    /// Closes the process's stdin (EOF).
    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.send(Message::Binary(Bytes::from_static(&[ws_stream::STDIN_EOF])))
            .await
    }

    /// Tells the server the terminal's new size.
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), ClientError> {
        self.control(&WsControl::Resize { cols, rows }).await
    }

    /// Sends a signal (`TERM`, `SIGINT`, `9`, …) to the process.
    pub async fn signal(&self, signal: &str) -> Result<(), ClientError> {
        self.control(&WsControl::Signal {
            signal: signal.to_owned(),
        })
        .await
    }

    /// Starts a normal close of the connection.
    pub async fn close(&self) -> Result<(), ClientError> {
        let mut sink = self.sink.lock().await;
        match sink.close().await {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Ok(()),
            Err(e) => Err(ClientError::WebSocket(e.to_string())),
        }
    }

    async fn control(&self, msg: &WsControl) -> Result<(), ClientError> {
        self.send(Message::Text(serde_json::to_string(msg)?.into())).await
    }

    async fn send(&self, msg: Message) -> Result<(), ClientError> {
        self.sink.lock().await.send(msg).await.map_err(|e| match e {
            WsError::ConnectionClosed | WsError::AlreadyClosed => {
                ClientError::WebSocket("the session's connection is closed".into())
            }
            e => ClientError::WebSocket(e.to_string()),
        })
    }
}

impl ExecReceiver {
    /// The next event; `Ok(None)` after the exit event. A connection that ends before the exit
    /// event is [`ClientError::NoExitFrame`].
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        if self.exited {
            return Ok(None);
        }
        if let Some(ev) = self.pending.take() {
            return Ok(Some(ev));
        }
        loop {
            let msg = match self.stream.next().await {
                None => return Err(ClientError::NoExitFrame),
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(map_read_error(e)),
            };
            match msg {
                Message::Binary(b) => match b.first() {
                    Some(&ws_stream::STDOUT) => return Ok(Some(ExecEvent::Stdout(b.slice(1..)))),
                    Some(&ws_stream::STDERR) => return Ok(Some(ExecEvent::Stderr(b.slice(1..)))),
                    // Unknown streams are skipped so newer servers can add some.
                    _ => continue,
                },
                Message::Text(t) if t.as_str().contains("\"replay\"") && self.replay.is_none() => {
                    // Attach only, right after the session event: how much buffered output
                    // follows and how much was dropped (see `replay`).
                    if let Ok(notice) = serde_json::from_str::<WsNotice>(t.as_str()) {
                        self.replay = Some(notice);
                    }
                    continue;
                }
                Message::Text(t) => match serde_json::from_str::<WsControl>(t.as_str()) {
                    Ok(WsControl::Session { id, pid, tty }) => {
                        return Ok(Some(ExecEvent::Session { id, pid, tty }));
                    }
                    Ok(WsControl::Exit {
                        exit_code,
                        signal,
                        reason,
                    }) => {
                        self.exited = true;
                        return Ok(Some(ExecEvent::Exit {
                            exit_code,
                            signal,
                            reason,
                        }));
                    }
                    Ok(WsControl::Error {
                        code,
                        message,
                        status,
                    }) => {
                        return Ok(Some(ExecEvent::Error {
                            code,
                            message,
                            status,
                        }));
                    }
                    // Client-bound only by mistake, or a frame type this client does not know.
                    Ok(WsControl::Resize { .. } | WsControl::Signal { .. } | WsControl::Start { .. })
                    | Err(_) => continue,
                },
                Message::Close(_) => return Err(ClientError::NoExitFrame),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    /// True once the exit event was received.
    pub fn exited(&self) -> bool {
        self.exited
    }

    /// On a session attach: the server's replay notice (buffered bytes that follow the
    /// session event, and older bytes no longer buffered), once received.
    pub fn replay(&self) -> Option<&WsNotice> {
        self.replay.as_ref()
    }
}

fn map_read_error(e: WsError) -> ClientError {
    match e {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Io(_)
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ClientError::NoExitFrame,
        e => ClientError::WebSocket(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_commands_go_in_the_start_frame() {
        let short = ExecStreamOptions::new(["echo", "hi"]);
        let (q, start) = short.request();
        assert!(start.is_none());
        assert!(q.as_str().starts_with("cmd=echo&cmd=hi"), "{}", q.as_str());
        let mut long = ExecStreamOptions::new(["echo".to_owned(), "x".repeat(MAX_QUERY_BYTES)]);
        long.env = vec![("A".into(), "1".into())];
        long.tty = true;
        let (q, start) = long.request();
        assert_eq!(q.as_str(), "tty=true&stdin=false");
        let Some(WsControl::Start { cmd, env, .. }) = start else {
            panic!("{start:?}")
        };
        assert_eq!(cmd, long.cmd);
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
    }

    #[test]
    fn query_encoding() {
        let opts = ExecStreamOptions {
            cmd: vec!["sh".into(), "-c".into(), "echo 'a b' && x=1".into()],
            tty: true,
            stdin: false,
            cwd: Some("/tmp/my dir".into()),
            env: vec![("A".into(), "1=2".into()), ("B".into(), "ü&".into())],
            cols: Some(80),
            rows: Some(24),
            ..Default::default()
        };
        assert_eq!(
            opts.query().as_str(),
            "cmd=sh&cmd=-c&cmd=echo%20%27a%20b%27%20%26%26%20x%3D1&tty=true&stdin=false&cwd=%2Ftmp%2Fmy%20dir\
             &env=A%3D1%3D2&env=B%3D%C3%BC%26&cols=80&rows=24"
        );
    }
}
