//! The one place that waits for child processes.
//!
//! A single SIGCHLD-driven loop calls `waitpid(-1, WNOHANG)`: statuses of processes the
//! agent spawned go to their session through a oneshot; anything else (orphans re-parented
//! to PID 1 or to us as subreaper) is reaped silently. Nothing else in the agent may call
//! `wait*` (that is why exec never uses `tokio::process`).
//!
//! Spawning happens while holding the waiter map's lock, and the reaper holds the same lock
//! while it calls `waitpid`, so a child that exits immediately can never be reaped before
//! its waiter is registered (and std's own `waitpid` after a failed exec cannot race us).
//!
//! The module also remembers the process groups of sessions, for a graceful shutdown that
//! must not signal anything else when the agent is not PID 1.

use std::collections::{HashMap, HashSet};
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;

use crate::sys::{self, ExitStatus};

/// Owner of all child-process bookkeeping.
#[derive(Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
    groups: Mutex<HashSet<i32>>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the reaping loop on the current runtime.
    ///
    /// Must be called before the first spawn.
    pub fn start() -> io::Result<Arc<Self>> {
        let reaper = Arc::new(Self::default());
        let sigchld = signal(SignalKind::child())?;
        tokio::spawn(Arc::clone(&reaper).run(sigchld));
        Ok(reaper)
    }

    async fn run(self: Arc<Self>, mut sigchld: Signal) {
        loop {
            self.reap_all();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }

    fn lock_waiters(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<ExitStatus>>> {
        // A panic while holding the lock cannot leave the map inconsistent; keep going.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_groups(&self) -> MutexGuard<'_, HashSet<i32>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reap_all(&self) {
        let mut waiters = self.lock_waiters();
        loop {
            match sys::reap_one() {
                Ok(Some((pid, status))) => {
                    if let Some(tx) = waiters.remove(&pid) {
                        // The session may be gone already; then nobody needs the status.
                        let _ = tx.send(status);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    log_line!("burrow-agent: waitpid failed: {e}");
                    return;
                }
            }
        }
    }

    /// Spawns `cmd` (which must start its own session) and registers a waiter for its exit.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, oneshot::Receiver<ExitStatus>)> {
        let mut waiters = self.lock_waiters();
        let child = cmd.spawn()?;
        let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        drop(waiters);
        self.lock_groups().insert(pid);
        Ok((child, rx))
    }

    /// Forgets the process group of a finished session unless something still runs in it.
    pub fn forget_group_if_empty(&self, pgid: i32) {
        let mut groups = self.lock_groups();
        if !sys::group_alive(pgid) {
            groups.remove(&pgid);
        }
    }

    /// Process groups of sessions that still have members.
    pub fn live_groups(&self) -> Vec<i32> {
        let mut groups = self.lock_groups();
        groups.retain(|&g| sys::group_alive(g));
        groups.iter().copied().collect()
    }
}
