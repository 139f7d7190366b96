//! Sessions: every exec is a session the agent owns, not the call that started it.
//!
//! A session has an id, a bounded ring buffer of its most recent output, and any number of
//! attached callers (the `Exec` call that started it, later `Attach` calls). Each caller
//! gets every output message through its own bounded channel, and its input reaches the
//! process. A caller whose input ends or whose call goes away detaches; the session's
//! driver (`session::run`) kills the process group once nobody has been attached for the
//! session's detach timeout. Finished sessions stay listable for a while.
//!
//! This module never touches the process itself (the driver does) and never waits for it
//! (the reaper does).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use burrow_agent_proto::v1::{
    Attached, ExecInput, ExecOutput, Exited, SessionInfo, Started, exec_input, exec_output,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::reaper::Reaper;
use crate::session::{self, OUTPUT_QUEUE, OutputSender, STDIN_QUEUE, StdinMsg, Stream};
use crate::spawn::Spawned;
use crate::sys::ExitStatus;

/// Output kept per session for callers that attach later (the oldest bytes go first).
pub const RING_BYTES: usize = 1024 * 1024;
/// Bounds the ring's bookkeeping when output alternates between stdout and stderr in tiny
/// pieces (chunks of one stream are merged).
const RING_MAX_CHUNKS: usize = 4096;
/// Finished sessions kept for listing: the most recent ones, and none older than this.
const KEEP_FINISHED: usize = 100;
const KEEP_FINISHED_FOR: Duration = Duration::from_secs(600);

/// What attached callers ask of the driver besides stdin.
pub enum Control {
    Resize {
        cols: u32,
        rows: u32,
    },
    Signal(i32),
    /// A caller attached or detached.
    Attachment,
}

/// All sessions of this agent.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<Registry>,
    ids: AtomicU64,
}

/// How long a SIGKILL's answer waits for the session's exit to be recorded (its output
/// pumps end when every process holding its terminal or pipes is gone).
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Registry {
    by_id: HashMap<String, Arc<Session>>,
    /// Finished sessions, oldest first, with the time they finished.
    finished: VecDeque<(String, Instant)>,
}

/// One session: what it runs, its buffered output and its attached callers.
pub struct Session {
    pub id: String,
    argv: Vec<String>,
    tty: bool,
    pid: i32,
    started_at_ms: i64,
    pub detach_timeout: Duration,
    state: Mutex<State>,
    control: mpsc::UnboundedSender<Control>,
    /// Flips to true once `exited` was queued for every caller attached at the end.
    done: watch::Sender<bool>,
    registry: std::sync::Weak<Sessions>,
}

struct State {
    ring: Ring,
    callers: Vec<Caller>,
    next_caller: u64,
    /// The stdin queue of the process (None without stdin, or once the process exited).
    stdin: Option<mpsc::Sender<StdinMsg>>,
    exit: Option<(Exited, i64)>,
}

struct Caller {
    id: u64,
    tx: OutputSender,
    /// Its input is still open. A caller whose input ended still receives output until
    /// its call goes away, but no longer keeps the session alive.
    attached: bool,
}

/// The outcome of an attach.
pub enum Attach {
    /// The reply stream: `attached`, the replay, then live output and `exited`.
    Live(ReceiverStream<Result<ExecOutput, Status>>),
    /// The session has finished.
    Finished(Exited),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn msg(kind: exec_output::Kind) -> Result<ExecOutput, Status> {
    Ok(ExecOutput { kind: Some(kind) })
}

fn exited_of(status: ExitStatus) -> Exited {
    match status {
        ExitStatus::Exited(code) => Exited {
            exit_code: code,
            signal: 0,
        },
        ExitStatus::Signaled(sig) => Exited {
            exit_code: -1,
            signal: sig,
        },
    }
}

impl Sessions {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `s-` and 16 hex digits, unpredictable (the std hasher is seeded from the OS).
    fn new_id(&self) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let h = RandomState::new().hash_one((n, now_ms(), std::process::id()));
        format!("s-{h:016x}")
    }

    /// Registers a freshly spawned process as a session with one attached caller whose
    /// input is `input`, starts its driver, and returns the caller's reply stream, which
    /// begins with `started`.
    pub fn start(
        self: &Arc<Self>,
        proc: Spawned,
        argv: Vec<String>,
        detach_timeout: Duration,
        input: Streaming<ExecInput>,
        reaper: Arc<Reaper>,
    ) -> ReceiverStream<Result<ExecOutput, Status>> {
        let id = loop {
            let id = self.new_id();
            if !self.lock().by_id.contains_key(&id) {
                break id;
            }
        };
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (stdin_tx, stdin_rx) = match proc.stdin {
            Some(_) => {
                let (tx, rx) = mpsc::channel(STDIN_QUEUE);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
        // The channel is new and empty, so `started` is queued first, before any output.
        let _ = tx.try_send(msg(exec_output::Kind::Started(Started {
            pid: u32::try_from(proc.pid).unwrap_or(0),
            session_id: id.clone(),
        })));
        let session = Arc::new(Session {
            id: id.clone(),
            argv,
            tty: proc.tty,
            pid: proc.pid,
            started_at_ms: now_ms(),
            detach_timeout,
            state: Mutex::new(State {
                ring: Ring::new(RING_BYTES),
                callers: vec![Caller {
                    id: 0,
                    tx: tx.clone(),
                    attached: true,
                }],
                next_caller: 1,
                stdin: stdin_tx,
                exit: None,
            }),
            control: control_tx,
            done: watch::channel(false).0,
            registry: Arc::downgrade(self),
        });
        self.lock().by_id.insert(id, Arc::clone(&session));
        tokio::spawn(serve_caller(Arc::clone(&session), 0, input, tx));
        tokio::spawn(session::run(
            proc,
            Arc::clone(&session),
            control_rx,
            stdin_rx,
            reaper,
        ));
        ReceiverStream::new(rx)
    }

    /// Attaches a caller whose input is `input` to session `id`.
    pub fn attach(&self, id: &str, input: Streaming<ExecInput>) -> Result<Attach, Status> {
        let session = self.get(id)?;
        let mut state = session.lock();
        if let Some((exit, _)) = &state.exit {
            return Ok(Attach::Finished(*exit));
        }
        let replay = state.ring.replay();
        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE + replay.len() + 1);
        let _ = tx.try_send(msg(exec_output::Kind::Attached(Attached {
            pid: u32::try_from(session.pid).unwrap_or(0),
            tty: session.tty,
            dropped_bytes: state.ring.dropped,
            replay_bytes: state.ring.len as u64,
        })));
        for (stream, data) in replay {
            let _ = tx.try_send(msg(output_kind(stream, data)));
        }
        let caller = state.next_caller;
        state.next_caller += 1;
        state.callers.push(Caller {
            id: caller,
            tx: tx.clone(),
            attached: true,
        });
        drop(state);
        let _ = session.control.send(Control::Attachment);
        tokio::spawn(serve_caller(Arc::clone(&session), caller, input, tx));
        Ok(Attach::Live(ReceiverStream::new(rx)))
    }

    /// Sends `signal` to a running session's process group.
    /// Sends `signal` to session `id`'s process. SIGKILL cannot be caught: the answer then
    /// waits (up to [`KILL_WAIT`]) until the session has exited and its exit is recorded, so
    /// a listing right after a kill never shows it running.
    pub async fn kill(&self, id: &str, signal: i32) -> Result<(), Status> {
        let session = self.get(id)?;
        if session.lock().exit.is_some() {
            return Err(Status::failed_precondition(format!(
                "session {id} has already exited"
            )));
        }
        let mut done = session.done.subscribe();
        // Through the driver, which never signals a process it has seen exit.
        let _ = session.control.send(Control::Signal(signal));
        if signal == libc::SIGKILL {
            let _ = tokio::time::timeout(KILL_WAIT, done.wait_for(|d| *d)).await;
        }
        Ok(())
    }

    /// Every known session, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut reg = self.lock();
        prune(&mut reg);
        let mut sessions: Vec<Arc<Session>> = reg.by_id.values().cloned().collect();
        drop(reg);
        sessions.sort_by(|a, b| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id)));
        sessions.iter().map(|s| s.info()).collect()
    }

    fn get(&self, id: &str) -> Result<Arc<Session>, Status> {
        let mut reg = self.lock();
        prune(&mut reg);
        reg.by_id
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("session {id} does not exist")))
    }

    fn finished(&self, id: &str) {
        let mut reg = self.lock();
        reg.finished.push_back((id.to_owned(), Instant::now()));
        prune(&mut reg);
    }
}

fn prune(reg: &mut Registry) {
    let now = Instant::now();
    while let Some((id, at)) = reg.finished.front() {
        if reg.finished.len() > KEEP_FINISHED || now.duration_since(*at) > KEEP_FINISHED_FOR {
            let id = id.clone();
            reg.by_id.remove(&id);
            reg.finished.pop_front();
        } else {
            break;
        }
    }
}

fn output_kind(stream: Stream, data: Vec<u8>) -> exec_output::Kind {
    match stream {
        Stream::Stdout => exec_output::Kind::Stdout(data),
        Stream::Stderr => exec_output::Kind::Stderr(data),
    }
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Callers whose input is open.
    pub fn attached_count(&self) -> usize {
        self.lock().callers.iter().filter(|c| c.attached).count()
    }

    fn info(&self) -> SessionInfo {
        let state = self.lock();
        SessionInfo {
            id: self.id.clone(),
            argv: self.argv.clone(),
            tty: self.tty,
            pid: u32::try_from(self.pid).unwrap_or(0),
            started_at_ms: self.started_at_ms,
            exited_at_ms: state.exit.map(|(_, at)| at),
            exit: state.exit.map(|(e, _)| e),
            attached: u32::try_from(state.callers.iter().filter(|c| c.attached).count()).unwrap_or(0),
            detach_timeout_ms: u64::try_from(self.detach_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// One chunk of the process's output: into the ring buffer and to every caller. Waits
    /// for room in the callers' queues (their hosts' pace); a caller that went away is
    /// dropped.
    pub async fn output(&self, stream: Stream, chunk: Vec<u8>) {
        let targets: Vec<(u64, OutputSender)> = {
            let mut state = self.lock();
            state.ring.push(stream, &chunk);
            state.callers.iter().map(|c| (c.id, c.tx.clone())).collect()
        };
        let mut gone = Vec::new();
        let last = targets.len().saturating_sub(1);
        let mut chunk = Some(chunk);
        for (i, (id, tx)) in targets.into_iter().enumerate() {
            let data = if i == last {
                chunk.take().unwrap_or_default()
            } else {
                chunk.clone().unwrap_or_default()
            };
            if tx.send(msg(output_kind(stream, data))).await.is_err() {
                gone.push(id);
            }
        }
        for id in gone {
            self.remove_caller(id);
        }
    }

    fn remove_caller(&self, id: u64) {
        self.lock().callers.retain(|c| c.id != id);
        let _ = self.control.send(Control::Attachment);
    }

    fn detach_caller(&self, id: u64) {
        for c in self.lock().callers.iter_mut().filter(|c| c.id == id) {
            c.attached = false;
        }
        let _ = self.control.send(Control::Attachment);
    }

    fn stdin(&self) -> Option<mpsc::Sender<StdinMsg>> {
        self.lock().stdin.clone()
    }

    pub fn close_stdin(&self) {
        self.lock().stdin = None;
    }

    /// Records the exit and queues `exited` for every caller, after all output (the
    /// driver calls this once its output pumps have finished).
    pub async fn finish(&self, status: ExitStatus) {
        let exited = exited_of(status);
        let callers = {
            let mut state = self.lock();
            state.exit = Some((exited, now_ms()));
            state.ring = Ring::new(0);
            std::mem::take(&mut state.callers)
        };
        for c in callers {
            let _ = c.tx.send(msg(exec_output::Kind::Exited(exited))).await;
        }
        self.done.send_replace(true);
        if let Some(registry) = self.registry.upgrade() {
            registry.finished(&self.id);
        }
    }
}

/// Serves one caller's input until its call ends or the session finishes: stdin to the
/// process, resizes and signals to the driver. Ending the input detaches the caller;
/// cancelling the call (its reply stream dropped) removes it.
async fn serve_caller(session: Arc<Session>, caller: u64, mut input: Streaming<ExecInput>, tx: OutputSender) {
    let mut done = session.done.subscribe();
    let mut stdin = session.stdin();
    loop {
        let msg = tokio::select! {
            _ = done.wait_for(|d| *d) => return,
            () = tx.closed() => {
                session.remove_caller(caller);
                return;
            }
            msg = input.message() => msg,
        };
        let kind = match msg {
            Ok(Some(ExecInput { kind: Some(kind) })) => kind,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        };
        let to_stdin = match kind {
            exec_input::Kind::Stdin(data) => StdinMsg::Data(data),
            exec_input::Kind::StdinEof(true) => StdinMsg::Eof,
            exec_input::Kind::Resize(r) => {
                match (stdin.is_some(), u16::try_from(r.cols), u16::try_from(r.rows)) {
                    // In order with the input that follows it.
                    (true, Ok(cols), Ok(rows)) => StdinMsg::Resize(cols, rows),
                    _ => {
                        let _ = session.control.send(Control::Resize {
                            cols: r.cols,
                            rows: r.rows,
                        });
                        continue;
                    }
                }
            }
            exec_input::Kind::Signal(sig) => {
                let _ = session.control.send(Control::Signal(sig));
                continue;
            }
            // A second `start`/`attach`, `stdin_eof: false`: nothing to do. The stream has
            // started, so they cannot be refused with a status.
            _ => continue,
        };
        let Some(sender) = stdin.clone() else {
            continue;
        };
        // A process that does not read its stdin must not keep this caller from noticing
        // that its call or the session ended.
        tokio::select! {
            _ = done.wait_for(|d| *d) => return,
            () = tx.closed() => {
                session.remove_caller(caller);
                return;
            }
            sent = sender.send(to_stdin) => if sent.is_err() {
                // The process closed its stdin: drop further input.
                stdin = None;
            },
        }
    }
    // Input ended: the caller is gone as far as the session's lifetime is concerned, but
    // its reply stream still gets the output (and `exited`) while it reads.
    session.detach_caller(caller);
    tokio::select! {
        _ = done.wait_for(|d| *d) => {}
        () = tx.closed() => session.remove_caller(caller),
    }
}

/// The most recent output of a session, at most `cap` bytes, in order, with the stream
/// of each piece.
struct Ring {
    chunks: VecDeque<(Stream, Vec<u8>)>,
    len: usize,
    cap: usize,
    /// Bytes pushed out of the ring so far.
    dropped: u64,
}

impl Ring {
    fn new(cap: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            len: 0,
            cap,
            dropped: 0,
        }
    }

    fn push(&mut self, stream: Stream, data: &[u8]) {
        let keep = &data[data.len().saturating_sub(self.cap)..];
        self.dropped += (data.len() - keep.len()) as u64;
        if keep.is_empty() {
            return;
        }
        match self.chunks.back_mut() {
            Some((s, buf)) if *s == stream && buf.len() < session::CHUNK => buf.extend_from_slice(keep),
            _ => self.chunks.push_back((stream, keep.to_vec())),
        }
        self.len += keep.len();
        while self.len > self.cap || self.chunks.len() > RING_MAX_CHUNKS {
            let excess = self.len.saturating_sub(self.cap);
            let Some((_, front)) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= excess || self.len <= self.cap {
                let n = front.len();
                self.chunks.pop_front();
                self.len -= n;
                self.dropped += n as u64;
            } else {
                front.drain(..excess);
                self.len -= excess;
                self.dropped += excess as u64;
            }
        }
    }

    /// The buffered output as few messages as possible.
    fn replay(&self) -> Vec<(Stream, Vec<u8>)> {
        let mut out: Vec<(Stream, Vec<u8>)> = Vec::new();
        for (stream, data) in &self.chunks {
            match out.last_mut() {
                Some((s, buf)) if s == stream => buf.extend_from_slice(data),
                _ => out.push((*stream, data.clone())),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(r: &Ring) -> Vec<u8> {
        r.replay().into_iter().flat_map(|(_, d)| d).collect()
    }

    #[test]
    fn ring_keeps_the_newest_bytes_and_counts_the_rest() {
        let mut r = Ring::new(10);
        r.push(Stream::Stdout, b"0123");
        r.push(Stream::Stdout, b"4567");
        assert_eq!((bytes(&r), r.dropped), (b"01234567".to_vec(), 0));
        r.push(Stream::Stderr, b"89ab");
        assert_eq!((bytes(&r), r.dropped), (b"23456789ab".to_vec(), 2));
        assert_eq!(r.len, 10);
        assert_eq!(
            r.replay().iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [Stream::Stdout, Stream::Stderr]
        );
        r.push(Stream::Stdout, b"0123456789XYZ");
        assert_eq!((bytes(&r), r.dropped), (b"3456789XYZ".to_vec(), 15));
        assert_eq!(r.chunks.len(), 1);
        let mut empty = Ring::new(0);
        empty.push(Stream::Stdout, b"abc");
        assert_eq!((empty.len, empty.dropped), (0, 3));
    }

    #[test]
    fn ring_bounds_its_bookkeeping() {
        let mut r = Ring::new(1 << 20);
        for i in 0..10_000 {
            let s = if i % 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            r.push(s, b"x");
        }
        assert!(r.chunks.len() <= RING_MAX_CHUNKS);
        assert_eq!(r.len as u64 + r.dropped, 10_000);
    }
}
