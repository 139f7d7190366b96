//! One running exec session: forwards host input (stdin, EOF, resize, signals) to the
//! process, streams its output back, and guarantees the stream's ordering contract:
//! `started` first, all output next, `exited` last — always, for every started process.
//!
//! Output goes through a bounded channel into the gRPC response, so a slow host slows the
//! readers down (HTTP/2 backpressure) instead of making the agent buffer without limit.
//! If the host goes away before the process exits, the session kills the process group.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use burrow_agent_proto::v1::{ExecInput, ExecOutput, Exited, exec_input, exec_output};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Status, Streaming};

use crate::reaper::Reaper;
use crate::spawn::Spawned;
use crate::sys::{self, ExitStatus};

/// Largest output chunk read from a pipe/pty and sent as one message.
pub const CHUNK: usize = 64 * 1024;
/// Output messages queued per session before readers wait for the host.
pub const OUTPUT_QUEUE: usize = 16;
/// How long output is still collected after the process exited while a background
/// descendant keeps its pipe open (e.g. `sh -c 'daemon &'`): the exit is then reported
/// without waiting for the pipe's EOF, which might never come.
const LINGER_AFTER_EXIT: Duration = Duration::from_millis(250);
/// Upper bound for waiting on output that was already in the pipe when the process exited.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// In TTY mode a vanished host first hangs the terminal up; KILL follows after this.
const HANGUP_GRACE: Duration = Duration::from_millis(200);
/// stdin messages queued towards the process before the input loop waits.
const STDIN_QUEUE: usize = 16;

pub type OutputSender = mpsc::Sender<Result<ExecOutput, Status>>;

enum StdinMsg {
    Data(Vec<u8>),
    Eof,
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn output(kind: exec_output::Kind) -> Result<ExecOutput, Status> {
    Ok(ExecOutput { kind: Some(kind) })
}

/// Drives the session until the process has exited and `exited` was queued.
pub async fn run(proc: Spawned, mut input: Streaming<ExecInput>, tx: OutputSender, reaper: Arc<Reaper>) {
    let Spawned {
        pid,
        mut exit,
        stdout,
        stderr,
        stdin,
        tty,
    } = proc;
    let (exited_tx, exited_rx) = watch::channel(None::<Instant>);

    let mut pumps = Vec::with_capacity(2);
    pumps.push(tokio::spawn(pump(
        stdout,
        Stream::Stdout,
        tx.clone(),
        exited_rx.clone(),
    )));
    if let Some(stderr) = stderr {
        pumps.push(tokio::spawn(pump(stderr, Stream::Stderr, tx.clone(), exited_rx)));
    }
    // A second handle on the pty master serves resizes; the writer task owns stdin.
    let resize_fd = if tty {
        stdin.as_ref().and_then(|fd| fd.try_clone().ok())
    } else {
        None
    };
    let (mut stdin_tx, writer) = match stdin {
        Some(fd) => {
            let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_QUEUE);
            (Some(stdin_tx), Some(tokio::spawn(write_stdin(fd, tty, stdin_rx))))
        }
        None => (None, None),
    };

    // Input for stdin waits here while the writer is busy, so that a process that never reads
    // its stdin cannot keep the loop from seeing its exit. (Later input, signals included,
    // waits behind it: the input stream is ordered.)
    let mut pending_stdin: Option<StdinMsg> = None;
    let mut host_gone = false;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        let kill_timer = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Exit first: once reaped, the pid may be reused, so no signal may follow it.
            biased;
            status = &mut exit => {
                // The reaper never drops a waiter before sending; treat it as a kill.
                break status.unwrap_or(ExitStatus::Signaled(libc::SIGKILL));
            }
            permit = reserve(stdin_tx.clone()), if pending_stdin.is_some() => {
                let forwarded = match (permit, pending_stdin.take()) {
                    (Ok(permit), Some(msg)) => {
                        permit.send(msg);
                        true
                    }
                    _ => false,
                };
                if !forwarded {
                    // The writer stopped (the process closed its stdin): drop further input.
                    stdin_tx = None;
                }
            }
            msg = input.message(), if !host_gone && pending_stdin.is_none() => match msg {
                Ok(Some(msg)) => {
                    pending_stdin = handle_input(pid, msg, resize_fd.as_ref()).filter(|_| stdin_tx.is_some());
                }
                // The host ended its side or the call was cancelled: nobody will ever read
                // this process's output, so it must not outlive the call.
                Ok(None) | Err(_) => {
                    host_gone = true;
                    kill_at = hang_up(pid, tty);
                }
            },
            () = tx.closed(), if !host_gone => {
                host_gone = true;
                kill_at = hang_up(pid, tty);
            }
            () = kill_timer => {
                kill_at = None;
                let _ = sys::kill_group(pid, libc::SIGKILL);
            }
        }
    };

    let _ = exited_tx.send(Some(Instant::now()));
    // A writer blocked on a terminal still held open by a descendant would never finish.
    drop(stdin_tx);
    if let Some(writer) = writer {
        writer.abort();
    }
    for pump in pumps {
        let _ = pump.await;
    }
    let (exit_code, signal) = match status {
        ExitStatus::Exited(code) => (code, 0),
        ExitStatus::Signaled(sig) => (-1, sig),
    };
    // Every pump has finished, so nothing can be queued after this: `exited` is last.
    let _ = tx
        .send(output(exec_output::Kind::Exited(Exited { exit_code, signal })))
        .await;
    reaper.forget_group_if_empty(pid);
}

/// Starts killing a session whose host is gone. Returns when a follow-up KILL is due.
fn hang_up(pid: i32, tty: bool) -> Option<Instant> {
    if tty {
        let _ = sys::kill_group(pid, libc::SIGHUP);
        Some(Instant::now() + HANGUP_GRACE)
    } else {
        let _ = sys::kill_group(pid, libc::SIGKILL);
        None
    }
}

/// Waits for room in the stdin queue (forever when there is no stdin).
async fn reserve(tx: Option<mpsc::Sender<StdinMsg>>) -> Result<mpsc::OwnedPermit<StdinMsg>, ()> {
    match tx {
        Some(tx) => tx.reserve_owned().await.map_err(|_| ()),
        None => Err(()),
    }
}

/// Applies one input message; returns what has to be forwarded to stdin, if anything.
fn handle_input(pid: i32, msg: ExecInput, resize_fd: Option<&OwnedFd>) -> Option<StdinMsg> {
    match msg.kind {
        Some(exec_input::Kind::Stdin(data)) => return Some(StdinMsg::Data(data)),
        Some(exec_input::Kind::StdinEof(true)) => return Some(StdinMsg::Eof),
        Some(exec_input::Kind::Resize(r)) => {
            if let (Some(fd), Ok(cols), Ok(rows)) = (resize_fd, u16::try_from(r.cols), u16::try_from(r.rows))
                && cols > 0
                && rows > 0
            {
                let _ = sys::set_window_size(fd.as_fd(), cols, rows);
            }
        }
        Some(exec_input::Kind::Signal(sig)) if sys::valid_signal(sig) => {
            let _ = sys::kill_group(pid, sig);
        }
        // A second `start`, `stdin_eof: false`, out-of-range signals: nothing to do. The
        // stream has started, so they cannot be refused with a status.
        _ => {}
    }
    None
}

/// Reads one output fd into the response stream until EOF, or until the rules after the
/// process's exit say to stop (see [`LINGER_AFTER_EXIT`]).
async fn pump(fd: OwnedFd, stream: Stream, tx: OutputSender, mut exited: watch::Receiver<Option<Instant>>) {
    let Ok(fd) = sys::async_fd(fd, Interest::READABLE) else {
        return;
    };
    // While the process runs: read whatever comes.
    let exit_time = loop {
        tokio::select! {
            biased;
            changed = exited.changed() => match (changed, *exited.borrow()) {
                (Ok(()), Some(at)) => break at,
                (Ok(()), None) => continue,
                (Err(_), _) => return,
            },
            read = read_chunk(&fd) => match read {
                Some(chunk) => if !send(&tx, stream, chunk).await { return },
                None => return,
            },
        }
    };
    // After the exit: everything the process wrote is in the pipe now (a writer blocked on a
    // full pipe cannot have exited). Drain that much whatever the host's pace, then keep
    // reading only until the pipe's EOF or LINGER_AFTER_EXIT, whichever comes first.
    let mut owed = sys::readable_bytes(fd.get_ref().as_fd());
    let linger_until = exit_time + LINGER_AFTER_EXIT;
    loop {
        let now = Instant::now();
        if owed == 0 && now >= linger_until {
            return;
        }
        let wait_until = if owed > 0 { now + DRAIN_LIMIT } else { linger_until };
        match tokio::time::timeout_at(wait_until, read_chunk(&fd)).await {
            Ok(Some(chunk)) => {
                owed = owed.saturating_sub(chunk.len());
                if !send(&tx, stream, chunk).await {
                    return;
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// One read of up to [`CHUNK`] bytes; `None` at EOF or on error (a pty master reports EIO
/// once the last slave handle is closed, which is its EOF).
async fn read_chunk(fd: &AsyncFd<OwnedFd>) -> Option<Vec<u8>> {
    loop {
        let mut guard = fd.readable().await.ok()?;
        match guard.try_io(|inner| sys::read_chunk(inner.get_ref().as_fd(), CHUNK)) {
            Ok(Ok(buf)) if buf.is_empty() => return None,
            Ok(Ok(buf)) => return Some(buf),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(_)) => return None,
            Err(_would_block) => continue,
        }
    }
}

async fn send(tx: &OutputSender, stream: Stream, chunk: Vec<u8>) -> bool {
    let kind = match stream {
        Stream::Stdout => exec_output::Kind::Stdout(chunk),
        Stream::Stderr => exec_output::Kind::Stderr(chunk),
    };
    tx.send(output(kind)).await.is_ok()
}

/// Writes host input to the process. Closing the pipe is the EOF in pipe mode; in TTY mode
/// EOF is the terminal's VEOF character, since the terminal itself must stay open.
async fn write_stdin(fd: OwnedFd, tty: bool, mut rx: mpsc::Receiver<StdinMsg>) {
    let Ok(fd) = sys::async_fd(fd, Interest::WRITABLE) else {
        return;
    };
    while let Some(msg) = rx.recv().await {
        let data = match msg {
            StdinMsg::Data(data) => data,
            StdinMsg::Eof if tty => vec![sys::eof_char(fd.get_ref().as_fd())],
            StdinMsg::Eof => return,
        };
        if write_all(&fd, &data).await.is_err() {
            return;
        }
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}
