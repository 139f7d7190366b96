//! Test harness: starts the real agent binary on a socket in a temp dir and runs execs
//! through the real host client, checking the stream's ordering contract on every call.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use burrow_agent_proto::v1::{EnvVar, ExecInput, ExecOutput, ExecStart, exec_input, exec_output};
use burrow_agent_proto::{ConnectError, Connection, connect_unix};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

pub const AGENT: &str = env!("CARGO_BIN_EXE_burrow-agent");
/// Upper bound for any wait-for-condition in these tests (not a sleep: loops exit early).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A running agent process; killed on drop.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `burrow-agent --listen <tmp>/a.sock`.
    pub fn start() -> Self {
        Self::start_with(|sock| {
            let mut cmd = Command::new(AGENT);
            cmd.arg("--listen").arg(sock);
            cmd
        })
    }

    /// Starts the agent with a custom command line (given the socket path to use).
    pub fn start_with(build: impl FnOnce(&Path) -> Command) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("a.sock");
        let child = build(&socket).stdin(Stdio::null()).spawn().unwrap();
        Self {
            child,
            socket,
            _dir: dir,
        }
    }

    /// Connects, retrying until the agent has bound its socket (bounded by PATIENCE).
    pub async fn connect(&mut self) -> Connection {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match connect_unix(&self.socket, Duration::from_secs(5)).await {
                Ok(conn) => return conn,
                Err(ConnectError::Connect { .. }) if Instant::now() < deadline => {
                    assert!(self.child.try_wait().unwrap().is_none(), "agent exited early");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("cannot connect to agent: {e:?}"),
            }
        }
    }
}

impl Drop for Agent {
    /// Graceful stop first, so that the agent kills what its sessions left behind (a
    /// SIGKILLed agent would leak them to the host); SIGKILL if it takes too long.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + PATIENCE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(argv: &[&str]) -> ExecStart {
    ExecStart {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn env(vars: &[(&str, &str)]) -> Vec<EnvVar> {
    vars.iter()
        .map(|(n, v)| EnvVar {
            name: n.to_string(),
            value: v.to_string(),
        })
        .collect()
}

/// A live exec call: the input sender (kept open: closing it kills the process) and the
/// output stream.
pub struct Exec {
    pub input: mpsc::Sender<ExecInput>,
    pub output: Streaming<ExecOutput>,
    pub pid: u32,
}

pub fn input(kind: exec_input::Kind) -> ExecInput {
    ExecInput { kind: Some(kind) }
}

/// Starts an exec and checks that the first message is `started`.
pub async fn open(conn: &mut Connection, start: ExecStart) -> Result<Exec, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(input(exec_input::Kind::Start(start))).await.unwrap();
    let mut output = conn.client.exec(ReceiverStream::new(rx)).await?.into_inner();
    match output.message().await?.and_then(|m| m.kind) {
        Some(exec_output::Kind::Started(s)) => Ok(Exec {
            input: tx,
            output,
            pid: s.pid,
        }),
        other => panic!("first message was not `started`: {other:?}"),
    }
}

/// What a finished exec produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
    pub signal: i32,
}

impl Outcome {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Exec {
    pub async fn send(&self, kind: exec_input::Kind) {
        self.input.send(input(kind)).await.unwrap();
    }

    /// Reads to the end, asserting that `exited` comes exactly once and last.
    pub async fn finish(mut self) -> Outcome {
        let mut out = Outcome::default();
        let mut exited = None;
        while let Some(msg) = self.output.message().await.expect("exec stream failed") {
            assert!(exited.is_none(), "message after `exited`: {msg:?}");
            match msg.kind.expect("empty message") {
                exec_output::Kind::Stdout(b) => out.stdout.extend_from_slice(&b),
                exec_output::Kind::Stderr(b) => out.stderr.extend_from_slice(&b),
                exec_output::Kind::Exited(e) => exited = Some(e),
                exec_output::Kind::Started(_) => panic!("second `started`"),
                exec_output::Kind::Attached(_) => panic!("`attached` after the start"),
            }
        }
        let e = exited.expect("stream ended without `exited`");
        out.exit_code = e.exit_code;
        out.signal = e.signal;
        out
    }

    /// Reads stdout until it contains `needle` (bounded by the stream itself).
    pub async fn read_until(&mut self, needle: &str) -> String {
        let mut seen = Vec::new();
        loop {
            let msg = self
                .output
                .message()
                .await
                .unwrap()
                .expect("stream ended while waiting for output");
            match msg.kind {
                Some(exec_output::Kind::Stdout(b)) | Some(exec_output::Kind::Stderr(b)) => {
                    seen.extend_from_slice(&b)
                }
                other => panic!("unexpected {other:?} while waiting for {needle:?}"),
            }
            let s = String::from_utf8_lossy(&seen);
            if s.contains(needle) {
                return s.into_owned();
            }
        }
    }
}

/// Runs `start` to completion with no stdin.
pub async fn run(conn: &mut Connection, start: ExecStart) -> Outcome {
    open(conn, start).await.unwrap().finish().await
}

/// Whether `/proc/<pid>` exists (a zombie still has one, so "gone" also means "reaped").
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits (bounded) until `cond` holds; polls with short pauses, never a fixed sleep.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
