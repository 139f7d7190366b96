//! Graceful shutdown of the whole sandbox (SIGTERM to the agent or the `Shutdown` RPC):
//! TERM every process, wait up to a grace period, KILL what is left, `sync()`. And its
//! sibling for a root swap (`Quiesce`): KILL every process, refuse new work, stay up.
//!
//! As PID 1 of its own pid namespace (or a VM's init) the agent signals everything with
//! `kill(-1)`. Anywhere else (tests on the host) it must only touch the process groups of
//! its own sessions, never `kill(-1)`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use crate::reaper::Reaper;
use crate::sys;

/// Grace period between TERM and KILL when none is given.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// How often the remaining processes are checked while waiting for them to exit.
const POLL: Duration = Duration::from_millis(10);
/// How long KILLed processes get to disappear before we sync anyway.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// Coordinates one shutdown and tells the server to stop once it is done.
pub struct Shutdown {
    reaper: Arc<Reaper>,
    started: AtomicBool,
    /// Set by [`Shutdown::quiesce`].
    quiesced: AtomicBool,
    running: Mutex<bool>,
    done: watch::Sender<bool>,
}

impl Shutdown {
    pub fn new(reaper: Arc<Reaper>) -> Arc<Self> {
        let (done, _) = watch::channel(false);
        Arc::new(Self {
            reaper,
            started: AtomicBool::new(false),
            quiesced: AtomicBool::new(false),
            running: Mutex::new(false),
            done,
        })
    }

    /// Whether a shutdown has begun (new execs are refused from then on).
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Resolves once the processes are gone and filesystems synced; the agent then exits.
    pub fn done(&self) -> watch::Receiver<bool> {
        self.done.subscribe()
    }

    /// Runs the shutdown once; concurrent callers wait for the first one to finish.
    pub async fn run(&self, grace: Duration) {
        self.started.store(true, Ordering::SeqCst);
        let mut finished = self.running.lock().await;
        if *finished {
            return;
        }
        let pid1 = std::process::id() == 1;
        self.signal_all(pid1, libc::SIGTERM);
        if !self.wait_all_gone(pid1, grace).await {
            self.signal_all(pid1, libc::SIGKILL);
            self.wait_all_gone(pid1, KILL_WAIT).await;
        }
        sys::sync();
        *finished = true;
        let _ = self.done.send(true);
    }

    /// Ends every process but the agent at once (KILL, no grace) and refuses new work from
    /// then on, without exiting: the host replaces the sandbox's root next and then has the
    /// agent re-exec itself. `true` if they all are gone (and reaped) within [`KILL_WAIT`].
    pub async fn quiesce(&self) -> bool {
        self.started.store(true, Ordering::SeqCst);
        self.quiesced.store(true, Ordering::SeqCst);
        let pid1 = std::process::id() == 1;
        self.signal_all(pid1, libc::SIGKILL);
        let gone = self.wait_all_gone(pid1, KILL_WAIT).await;
        if !gone {
            // One forked between the signal and the wait: once more.
            self.signal_all(pid1, libc::SIGKILL);
            return self.wait_all_gone(pid1, KILL_WAIT).await;
        }
        gone
    }

    /// Whether [`Self::quiesce`] ran: only then may the agent re-exec itself.
    pub fn is_quiesced(&self) -> bool {
        self.quiesced.load(Ordering::SeqCst)
    }

    fn signal_all(&self, pid1: bool, signal: i32) {
        if pid1 {
            let _ = sys::kill_all(signal);
        } else {
            for pgid in self.reaper.live_groups() {
                let _ = sys::kill_group(pgid, signal);
            }
        }
    }

    /// Bounded wait for every process to be gone (and reaped). `true` if they all are.
    async fn wait_all_gone(&self, pid1: bool, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let any_left = if pid1 {
                sys::any_other_process()
            } else {
                !self.reaper.live_groups().is_empty()
            };
            if !any_left {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
