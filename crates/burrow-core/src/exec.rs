//! Exec through the agent channel: streaming sessions (for the WebSocket API) and the
//! one-shot collector (for `POST …/exec`).
//!
//! The host never trusts the agent: message sizes are bounded by the channel, collected
//! output is capped, waits are bounded, and a stream that ends without an exit status is
//! reported as an agent failure rather than invented.

use std::time::{Duration, Instant};

use base64::Engine as _;
use burrow_agent_proto::AgentClient;
use burrow_agent_proto::v1::{EnvVar, ExecInput, ExecOutput, ExecStart, Resize, exec_input, exec_output};
use burrow_api::{ExecResult, signal_name};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::CoreError;

/// How a streaming exec is started.
#[derive(Debug, Clone, Default)]
pub struct StreamExecOptions {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub tty: bool,
    pub cols: u16,
    pub rows: u16,
    pub stdin: bool,
    /// How long the process may run with nobody attached (see `sessions`); zero = it is
    /// killed as soon as its caller goes away.
    pub detach_timeout: Duration,
}

/// What a session produces, in order; `Exited` is always last when the process was known
/// to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exited { exit_code: i32, signal: Option<i32> },
}

/// A running process in a sandbox.
#[derive(Debug)]
pub struct ExecSession {
    pub id: String,
    pub pid: u32,
    pub sandbox: String,
    input: SessionInput,
    output: tonic::Streaming<ExecOutput>,
    exited: bool,
    /// Keeps the sandbox from idling while the session lives.
    pub(crate) busy: Option<crate::runtime::BusyGuard>,
}

/// The input half of a session; cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionInput {
    tx: mpsc::Sender<ExecInput>,
}

impl SessionInput {
    async fn send(&self, kind: exec_input::Kind) -> Result<(), CoreError> {
        self.tx
            .send(ExecInput { kind: Some(kind) })
            .await
            .map_err(|_| CoreError::Gone("the process has already exited".into()))
    }
    pub async fn stdin(&self, data: Vec<u8>) -> Result<(), CoreError> {
        self.send(exec_input::Kind::Stdin(data)).await
    }
    pub async fn close_stdin(&self) -> Result<(), CoreError> {
        self.send(exec_input::Kind::StdinEof(true)).await
    }
    pub async fn resize(&self, cols: u16, rows: u16) -> Result<(), CoreError> {
        self.send(exec_input::Kind::Resize(Resize {
            cols: cols.into(),
            rows: rows.into(),
        }))
        .await
    }
    pub async fn signal(&self, sig: i32) -> Result<(), CoreError> {
        self.send(exec_input::Kind::Signal(sig)).await
    }
}

/// The output half of a session.
#[derive(Debug)]
pub struct SessionOutput {
    sandbox: String,
    output: tonic::Streaming<ExecOutput>,
    exited: bool,
    busy: Option<crate::runtime::BusyGuard>,
}

impl SessionOutput {
    /// The next event; `Ok(None)` after `Exited`. A stream that ends without `Exited` is
    /// an agent error.
    pub async fn next(&mut self) -> Result<Option<SessionEvent>, CoreError> {
        next_event(&self.sandbox, &mut self.output, &mut self.exited).await
    }

    /// Why burrowd ended the sandbox's processes (stop, restore, delete, ...), if it did
    /// after `since` (when the asking session started); still known after a delete.
    pub fn end_reason_since(&self, since: std::time::Instant) -> Option<String> {
        self.busy.as_ref().and_then(|b| b.end_reason_since(since))
    }
}

async fn next_event(
    sandbox: &str,
    output: &mut tonic::Streaming<ExecOutput>,
    exited: &mut bool,
) -> Result<Option<SessionEvent>, CoreError> {
    if *exited {
        return Ok(None);
    }
    loop {
        let msg = output.message().await.map_err(|s| agent_status(sandbox, s))?;
        let Some(msg) = msg else {
            return Err(CoreError::Agent {
                name: sandbox.to_owned(),
                detail:
                    "the process's output ended without an exit status (agent restarted or sandbox stopped)"
                        .into(),
            });
        };
        match msg.kind {
            Some(exec_output::Kind::Stdout(b)) => return Ok(Some(SessionEvent::Stdout(b))),
            Some(exec_output::Kind::Stderr(b)) => return Ok(Some(SessionEvent::Stderr(b))),
            Some(exec_output::Kind::Exited(e)) => {
                *exited = true;
                let signal = (e.signal > 0).then_some(e.signal);
                return Ok(Some(SessionEvent::Exited {
                    exit_code: e.exit_code,
                    signal,
                }));
            }
            // A second `started` or an empty message: ignore, the agent is not trusted to
            // be well-formed but it cannot make us misreport.
            Some(exec_output::Kind::Started(_) | exec_output::Kind::Attached(_)) | None => continue,
        }
    }
}

impl ExecSession {
    pub fn input(&self) -> SessionInput {
        self.input.clone()
    }

    pub async fn next(&mut self) -> Result<Option<SessionEvent>, CoreError> {
        next_event(&self.sandbox, &mut self.output, &mut self.exited).await
    }

    pub fn split(self) -> (SessionInput, SessionOutput) {
        (
            self.input,
            SessionOutput {
                sandbox: self.sandbox,
                output: self.output,
                exited: self.exited,
                busy: self.busy,
            },
        )
    }
}

/// Status metadata key by which the agent names the sandbox limit an exec ran into
/// (`burrow-agent`'s `spawn::LIMIT_KEY`): `pids`, `memory`, `files` or `argv`.
const LIMIT_KEY: &str = "burrow-limit";

/// Largest argv plus environment (each string with its NUL) burrowd passes to a sandbox.
/// Above the kernel's usual `ARG_MAX` (2 MiB with an 8 MiB stack), so that the kernel's own
/// limits decide what it can run, and below the agent channel's 4 MiB message limit, so that
/// a larger command is refused clearly here instead of breaking the channel's stream.
pub const MAX_EXEC_ARGS_BYTES: usize = 3 << 20;

/// Refuses an argv and environment larger than [`MAX_EXEC_ARGS_BYTES`] (413
/// `argument_too_long`).
pub fn check_args_size(argv: &[String], env: &[(String, String)]) -> Result<(), CoreError> {
    let argv_bytes: usize = argv.iter().map(|a| a.len() + 1).sum();
    let env_bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let total = argv_bytes + env_bytes;
    if total > MAX_EXEC_ARGS_BYTES {
        return Err(CoreError::ArgumentTooLong(format!(
            "the command's arguments and environment are {total} bytes ({argv_bytes} of arguments, \
             {env_bytes} of environment); burrowd passes at most {MAX_EXEC_ARGS_BYTES} bytes (3 MiB) \
             to a sandbox, and the kernel usually allows 2 MiB in all and 128 KiB per argument: \
             pass large data on stdin or in a file instead"
        )));
    }
    Ok(())
}

/// Maps an agent's gRPC status to the error a client should see. A sandbox limit the agent
/// names (`burrow-limit`) is its own error: processes or memory exhausted (429), arguments
/// too long for the kernel (413). Statuses the agent uses for bad requests (missing binary,
/// bad cwd or user) are the caller's fault (422); the rest mean the agent or channel failed
/// (503).
pub(crate) fn agent_status(sandbox: &str, s: tonic::Status) -> CoreError {
    use tonic::Code;
    // Bound what a hostile agent can put in our error messages.
    let msg: String = s.message().chars().take(512).collect();
    let limit = s.metadata().get(LIMIT_KEY).and_then(|v| v.to_str().ok());
    match (s.code(), limit) {
        (Code::ResourceExhausted, Some("pids" | "memory" | "files")) => {
            return CoreError::ResourceExhausted(format!("sandbox '{sandbox}': {msg}"));
        }
        (Code::InvalidArgument, Some("argv")) => {
            return CoreError::ArgumentTooLong(format!("sandbox '{sandbox}': {msg}"));
        }
        _ => {}
    }
    match s.code() {
        Code::NotFound | Code::InvalidArgument | Code::PermissionDenied | Code::FailedPrecondition => {
            CoreError::Invalid(msg)
        }
        _ => CoreError::Agent {
            name: sandbox.to_owned(),
            detail: format!("{:?}: {msg}", s.code()),
        },
    }
}

pub(crate) async fn start_session(
    mut client: AgentClient<Channel>,
    sandbox: &str,
    opts: StreamExecOptions,
) -> Result<ExecSession, CoreError> {
    if opts.argv.is_empty() {
        return Err(CoreError::Invalid(
            "cmd must name a program (argv is empty)".into(),
        ));
    }
    let (tx, rx) = mpsc::channel(64);
    let start = ExecStart {
        argv: opts.argv,
        env: opts
            .env
            .into_iter()
            .map(|(name, value)| EnvVar { name, value })
            .collect(),
        cwd: opts.cwd.unwrap_or_default(),
        user: opts.user.unwrap_or_default(),
        tty: opts.tty,
        detach_timeout_ms: u64::try_from(opts.detach_timeout.as_millis()).unwrap_or(u64::MAX),
        cols: opts.cols.into(),
        rows: opts.rows.into(),
        stdin: opts.stdin,
    };
    tx.send(ExecInput {
        kind: Some(exec_input::Kind::Start(start)),
    })
    .await
    .map_err(|_| CoreError::Internal("exec input channel closed".into()))?;
    let call = client.exec(ReceiverStream::new(rx));
    let resp = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .map_err(|_| CoreError::Agent {
            name: sandbox.into(),
            detail: "no answer to exec within 30 s".into(),
        })?
        .map_err(|s| agent_status(sandbox, s))?;
    let mut output = resp.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), output.message())
        .await
        .map_err(|_| CoreError::Agent {
            name: sandbox.into(),
            detail: "process did not start within 30 s".into(),
        })?
        .map_err(|s| agent_status(sandbox, s))?;
    let (pid, id) = match first.and_then(|m| m.kind) {
        // The agent names the session; an agent from before sessions does not.
        Some(exec_output::Kind::Started(s)) if s.session_id.is_empty() => (s.pid, new_session_id()),
        Some(exec_output::Kind::Started(s)) => (s.pid, s.session_id),
        _ => {
            return Err(CoreError::Agent {
                name: sandbox.into(),
                detail: "agent did not confirm the process start".into(),
            });
        }
    };
    Ok(ExecSession {
        id,
        pid,
        sandbox: sandbox.to_owned(),
        input: SessionInput { tx },
        output,
        exited: false,
        busy: None,
    })
}

/// A session joined through the agent's `Attach` call (see `sessions`): `tx` feeds the
/// call's input, `output` is its reply after the `attached` message.
pub(crate) fn attached_session(
    id: String,
    pid: u32,
    sandbox: &str,
    tx: mpsc::Sender<ExecInput>,
    output: tonic::Streaming<ExecOutput>,
) -> ExecSession {
    ExecSession {
        id,
        pid,
        sandbox: sandbox.to_owned(),
        input: SessionInput { tx },
        output,
        exited: false,
        busy: None,
    }
}

fn new_session_id() -> String {
    format!("s-{:016x}", rand::random::<u64>())
}

/// Default and maximum per-stream output cap of one-shot exec.
pub const DEFAULT_OUTPUT_CAP: usize = 16 << 20;
pub const MAX_OUTPUT_CAP: usize = 64 << 20;

/// The per-stream output cap a one-shot exec asks for (`max_output_bytes`), checked.
pub fn output_cap(max_output_bytes: Option<u64>) -> Result<usize, CoreError> {
    match max_output_bytes {
        Some(c) if c == 0 || c > MAX_OUTPUT_CAP as u64 => Err(CoreError::Invalid(format!(
            "max_output_bytes must be between 1 and {MAX_OUTPUT_CAP}"
        ))),
        Some(c) => Ok(c as usize),
        None => Ok(DEFAULT_OUTPUT_CAP),
    }
}

/// A finished one-shot exec with its output as collected bytes (at most the cap each), for
/// a caller that encodes it without copying it whole ([`Collected::into_result`] does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub timed_out: bool,
    pub duration_ms: u64,
}

impl Collected {
    /// The API's result: text when the bytes are UTF-8, else lossy text plus base64.
    pub fn into_result(self) -> ExecResult {
        let (stdout, stdout_b64) = encode(self.stdout);
        let (stderr, stderr_b64) = encode(self.stderr);
        ExecResult {
            exit_code: self.exit_code,
            signal: self.signal.map(signal_name),
            stdout,
            stderr,
            stdout_b64,
            stderr_b64,
            stdout_truncated: self.stdout_truncated,
            stderr_truncated: self.stderr_truncated,
            timed_out: self.timed_out,
            duration_ms: self.duration_ms,
        }
    }
}

/// Text when the bytes are UTF-8; otherwise lossy text plus the exact bytes in base64.
fn encode(buf: Vec<u8>) -> (String, Option<String>) {
    match String::from_utf8(buf) {
        Ok(s) => (s, None),
        Err(e) => {
            let buf = e.into_bytes();
            (
                String::from_utf8_lossy(&buf).into_owned(),
                Some(base64::engine::general_purpose::STANDARD.encode(&buf)),
            )
        }
    }
}

/// Runs a session to completion, feeding `stdin` and collecting capped output.
pub(crate) async fn collect(
    session: ExecSession,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
    cap: usize,
) -> Result<Collected, CoreError> {
    let started = Instant::now();
    let (input, mut output) = session.split();
    if let Some(data) = stdin {
        let input = input.clone();
        tokio::spawn(async move {
            for chunk in data.chunks(64 * 1024) {
                if input.stdin(chunk.to_vec()).await.is_err() {
                    return;
                }
            }
            let _ = input.close_stdin().await;
        });
    }
    let mut out = Capped::new(cap);
    let mut err = Capped::new(cap);
    let mut timed_out = false;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let (exit_code, signal) = loop {
        let ev = match deadline {
            Some(d) if !timed_out => match tokio::time::timeout_at(d, output.next()).await {
                Ok(ev) => ev?,
                Err(_) => {
                    timed_out = true;
                    // Kill the whole process group, then keep reading to the exit status.
                    let _ = input.signal(libc::SIGKILL).await;
                    continue;
                }
            },
            _ => output.next().await?,
        };
        match ev {
            Some(SessionEvent::Stdout(b)) => out.push(&b),
            Some(SessionEvent::Stderr(b)) => err.push(&b),
            Some(SessionEvent::Exited { exit_code, signal }) => break (exit_code, signal),
            None => return Err(CoreError::Internal("session ended twice".into())),
        }
    };
    drop(input);
    Ok(Collected {
        exit_code,
        signal,
        stdout: out.buf,
        stderr: err.buf,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

struct Capped {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capped {
    fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
            truncated: false,
        }
    }
    fn push(&mut self, b: &[u8]) {
        let room = self.cap - self.buf.len();
        if b.len() > room {
            self.truncated = true;
        }
        let take = b.len().min(room);
        if self.buf.capacity() - self.buf.len() < take {
            // Grow by doubling, never past the cap: what is held stays within the cap the
            // daemon budgeted for (no doubling beyond it).
            let want = (self.buf.len() + take).max(self.buf.capacity() * 2).min(self.cap);
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend_from_slice(&b[..take]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_limits_map_to_their_own_errors() {
        let limit = |code, limit: &'static str| {
            let mut s = tonic::Status::new(code, "cannot start 'x'");
            s.metadata_mut()
                .insert(LIMIT_KEY, tonic::metadata::MetadataValue::from_static(limit));
            agent_status("sb", s)
        };
        let e = limit(tonic::Code::ResourceExhausted, "pids");
        assert_eq!(
            (e.kind(), e.code()),
            (crate::ErrorKind::Exhausted, "resource_exhausted")
        );
        let e = limit(tonic::Code::InvalidArgument, "argv");
        assert_eq!(
            (e.kind(), e.code()),
            (crate::ErrorKind::TooLarge, "argument_too_long")
        );
        // tonic's own ResourceExhausted (an oversized message) is no sandbox limit.
        let e = agent_status("sb", tonic::Status::resource_exhausted("message too large"));
        assert_eq!(e.code(), "agent_unavailable");
    }

    #[test]
    fn the_host_caps_argv_and_env() {
        let env = vec![("PATH".to_owned(), "/bin".to_owned())];
        assert!(check_args_size(&["a".repeat(MAX_EXEC_ARGS_BYTES - 100)], &env).is_ok());
        let e = check_args_size(&["a".repeat(MAX_EXEC_ARGS_BYTES)], &env).unwrap_err();
        assert_eq!(e.code(), "argument_too_long");
        assert!(e.to_string().contains("at most 3145728 bytes"), "{e}");
    }

    #[test]
    fn capped_output_truncates_and_encodes() {
        let mut c = Capped::new(4);
        c.push(b"ab");
        c.push(b"cdef");
        assert!(c.truncated);
        assert!(c.buf.capacity() <= 4);
        assert_eq!(encode(c.buf), ("abcd".into(), None));
        let mut c = Capped::new(10);
        c.push(&[0xff, b'a']);
        let (text, b64) = encode(c.buf);
        assert_eq!(text, "\u{fffd}a");
        assert_eq!(b64.as_deref(), Some("/2E="));
    }
}
