//! The driver of one session's process: forwards input from the session's attached
//! callers (stdin, EOF, resize, signals) to the process, reads its output into the session
//! (ring buffer and attached callers, see `sessions`), kills the process group once nobody
//! has been attached for the session's detach timeout, and guarantees the ordering
//! contract: `started` first, all output next, `exited` last — always.
//!
//! Output is handed to the attached callers through bounded channels, so a slow host slows
//! the readers down (HTTP/2 backpressure); with nobody attached it only feeds the bounded
//! ring buffer, so a detached process never blocks on its output.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use burrow_agent_proto::v1::ExecOutput;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::Status;

use crate::reaper::Reaper;
use crate::sessions::{Control, Session};
use crate::spawn::Spawned;
use crate::sys::{self, ExitStatus};

/// Largest output chunk read from a pipe/pty and sent as one message.
pub const CHUNK: usize = 64 * 1024;
/// Output messages queued per attached caller before readers wait for the host.
pub const OUTPUT_QUEUE: usize = 16;
/// How long output is still collected after the process exited while a background
/// descendant keeps its pipe open (e.g. `sh -c 'daemon &'`): the exit is then reported
/// without waiting for the pipe's EOF, which might never come.
const LINGER_AFTER_EXIT: Duration = Duration::from_millis(250);
/// Upper bound for waiting on output that was already in the pipe when the process exited.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// In TTY mode a vanished host first hangs the terminal up; KILL follows after this.
const HANGUP_GRACE: Duration = Duration::from_millis(200);
/// stdin messages queued towards the process before attached callers wait.
pub const STDIN_QUEUE: usize = 16;

pub type OutputSender = mpsc::Sender<Result<ExecOutput, Status>>;

/// Input for the process's stdin, from any attached caller.
pub enum StdinMsg {
    Data(Vec<u8>),
    Eof,
    /// A terminal resize, sent in line with the input so that input typed after a resize
    /// is read under the new size (TTY only; the writer's fd is the pty master).
    Resize(u16, u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Drives the session until the process has exited and `exited` was queued for every
/// caller still attached.
pub async fn run(
    proc: Spawned,
    session: Arc<Session>,
    mut control: mpsc::UnboundedReceiver<Control>,
    stdin_rx: Option<mpsc::Receiver<StdinMsg>>,
    reaper: Arc<Reaper>,
) {
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
        Arc::clone(&session),
        exited_rx.clone(),
    )));
    if let Some(stderr) = stderr {
        pumps.push(tokio::spawn(pump(
            stderr,
            Stream::Stderr,
            Arc::clone(&session),
            exited_rx,
        )));
    }
    // A second handle on the pty master serves resizes; the writer task owns stdin.
    let resize_fd = if tty {
        stdin.as_ref().and_then(|fd| fd.try_clone().ok())
    } else {
        None
    };
    let writer = match (stdin, stdin_rx) {
        (Some(fd), Some(rx)) => Some(tokio::spawn(write_stdin(fd, tty, rx))),
        _ => None,
    };

    let detach_timeout = session.detach_timeout;
    // Set while nobody is attached: when the process group gets killed.
    let mut detach_deadline: Option<Instant> = None;
    let mut hung_up = false;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        let kill_timer = sleep_until_opt(kill_at);
        let detach_timer = sleep_until_opt(detach_deadline);
        tokio::select! {
            // Exit first: once reaped, the pid may be reused, so no signal may follow it.
            biased;
            status = &mut exit => {
                // The reaper never drops a waiter before sending; treat it as a kill.
                break status.unwrap_or(ExitStatus::Signaled(libc::SIGKILL));
            }
            ctl = control.recv() => match ctl {
                Some(Control::Resize { cols, rows }) => {
                    if let (Some(fd), Ok(cols), Ok(rows)) = (resize_fd.as_ref(), u16::try_from(cols), u16::try_from(rows))
                        && cols > 0
                        && rows > 0
                    {
                        let _ = sys::set_window_size(fd.as_fd(), cols, rows);
                    }
                }
                Some(Control::Signal(sig)) if sys::valid_signal(sig) => {
                    let _ = sys::kill_group(pid, sig);
                }
                Some(Control::Attachment) => {
                    if hung_up {
                        continue;
                    }
                    if session.attached_count() > 0 {
                        detach_deadline = None;
                    } else if detach_deadline.is_none() {
                        if detach_timeout.is_zero() {
                            // Nobody will ever read this process's output: it must not
                            // outlive its callers.
                            hung_up = true;
                            kill_at = hang_up(pid, tty);
                        } else {
                            detach_deadline = Some(Instant::now() + detach_timeout);
                        }
                    }
                }
                // Out-of-range signals; and `None` cannot happen: the session holds a
                // sender for as long as the driver runs.
                Some(Control::Signal(_)) | None => {}
            },
            () = detach_timer => {
                detach_deadline = None;
                hung_up = true;
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
    session.close_stdin();
    if let Some(writer) = writer {
        writer.abort();
    }
    for pump in pumps {
        let _ = pump.await;
    }
    // Every pump has finished, so nothing can be queued after this: `exited` is last.
    session.finish(status).await;
    reaper.forget_group_if_empty(pid);
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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

/// Reads one output fd into the session until EOF, or until the rules after the
/// process's exit say to stop (see [`LINGER_AFTER_EXIT`]).
async fn pump(
    fd: OwnedFd,
    stream: Stream,
    session: Arc<Session>,
    mut exited: watch::Receiver<Option<Instant>>,
) {
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
                Some(chunk) => session.output(stream, chunk).await,
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
                session.output(stream, chunk).await;
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
            StdinMsg::Resize(cols, rows) => {
                if tty && cols > 0 && rows > 0 {
                    let _ = sys::set_window_size(fd.get_ref().as_fd(), cols, rows);
                }
                continue;
            }
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
