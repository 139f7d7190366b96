//! Faults are never hidden: the agent (PID 1 of a sandbox) dying, or the host files burrowd
//! owns for a sandbox (its run dir, the agent socket) going missing.
//!
//! A dead agent is noticed within about a second by the background loop (the engine keeps a
//! pidfd per sandbox, so a look costs one `poll`), and at once by any request that needs the
//! agent: every lifecycle action looks first, and an exec whose agent does not answer asks
//! why. The sandbox then becomes `failed` with the reason ("the agent (PID 1) died: killed by
//! signal 9 (SIGKILL)"), an `agent.died` event is emitted, and `start` (or `restart`) boots it
//! again. Never while burrowd itself stops, restarts, restores or puts it to sleep: the look
//! and the verdict are taken under the sandbox's operation lock, which those hold.
//!
//! Lost files: the agent holds the listening socket, so a deleted socket path cannot be bound
//! again without a new agent. Reconciliation (daemon start) boots such a sandbox again
//! (stop, start: a new run dir and socket) and says so; a running daemon that meets one
//! names the cause and the fix (`restart`), which recreates whatever is missing.

use burrow_api::SandboxStatus;
use burrow_engine::Liveness;

use crate::CoreError;
use crate::idle::SleepMode;
use crate::manager::{Manager, blocking};
use crate::store::SandboxRecord;
use crate::time_util::now_rfc3339;

type Result<T, E = CoreError> = std::result::Result<T, E>;

impl Manager {
    /// Whether the agent of `rec` should be running: running, or warm asleep (frozen).
    fn agent_expected(&self, rec: &SandboxRecord) -> bool {
        rec.intent.is_none()
            && match rec.status {
                SandboxStatus::Running => true,
                SandboxStatus::Sleeping => self.activity.sleep_mode(&rec.id) != Some(SleepMode::Cold),
                _ => false,
            }
    }

    async fn liveness(&self, id: &str) -> Result<Liveness> {
        let engine = self.engine.clone();
        let id = id.to_owned();
        blocking(move || Ok(engine.liveness(&id)?)).await
    }

    /// Under the sandbox's operation lock: when the agent of `rec` should run but is dead,
    /// records that (`failed` with the reason, an `agent.died` event) and cleans up its
    /// runtime. Returns whether it was dead.
    pub(crate) async fn reap_if_dead(&self, rec: &mut SandboxRecord) -> Result<bool> {
        if !self.agent_expected(rec) {
            return Ok(false);
        }
        let Liveness::Dead { how } = self.liveness(&rec.id).await? else {
            return Ok(false);
        };
        let reason = match &how {
            Some(how) => format!("the agent (PID 1) died: {how}"),
            None => "the agent (PID 1) died".to_owned(),
        };
        tracing::warn!(sandbox = %rec.name, %reason, "sandbox agent died");
        self.set_end_reason(&rec.name, format!("sandbox '{}' stopped: {reason}", rec.name));
        // Its remaining processes (if any) go, and runc forgets the container.
        if let Err(e) = self.kill(rec).await {
            tracing::warn!(sandbox = %rec.name, error = %crate::error::chain(&e), "cleaning up after the agent died");
        }
        self.activity.set_sleep(&rec.id, None);
        rec.status = SandboxStatus::Failed;
        rec.failure_reason = Some(reason.clone());
        rec.updated_at = now_rfc3339();
        self.store.update_sandbox(rec)?;
        self.events.emit(
            &rec.name,
            "agent.died",
            serde_json::json!({"reason": reason, "how": how, "status": rec.status}),
        );
        Ok(true)
    }

    /// The background look (once a second, from the idle loop): a cheap check without the
    /// lock, then the verdict under it. A sandbox with an operation in progress is looked at
    /// on the next tick. Returns whether the agent was found dead.
    pub(crate) async fn watch_agent(&self, rec: &SandboxRecord) -> bool {
        if !self.agent_expected(rec) || self.is_restoring(&rec.id) {
            return false;
        }
        match self.liveness(&rec.id).await {
            Ok(Liveness::Alive) => return false,
            Ok(Liveness::Dead { .. }) => {}
            Err(e) => {
                tracing::debug!(sandbox = %rec.name, error = %crate::error::chain(&e), "agent liveness");
                return false;
            }
        }
        let lock = self.op_lock(&rec.id);
        let Ok(_guard) = lock.try_lock() else {
            return false;
        };
        let Ok(mut rec) = self.record(&rec.name) else {
            return false;
        };
        match self.reap_if_dead(&mut rec).await {
            Ok(dead) => dead,
            Err(e) => {
                tracing::warn!(sandbox = %rec.name, error = %crate::error::chain(&e), "recording a dead agent");
                false
            }
        }
    }

    fn is_restoring(&self, id: &str) -> bool {
        self.restoring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// For a request that needs the agent: if it is dead, records that and returns the error
    /// the caller should see; `Ok(())` when it lives.
    pub(crate) async fn check_agent(&self, name: &str) -> Result<()> {
        let rec = self.record(name)?;
        if !self.agent_expected(&rec) {
            return Ok(());
        }
        if self.liveness(&rec.id).await? == Liveness::Alive {
            return Ok(());
        }
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        let mut rec = self.record(name)?;
        self.reap_if_dead(&mut rec).await?;
        not_running(&rec)
    }

    /// The agent of a live sandbox did not answer: says why, when burrowd can tell (it died,
    /// or its socket was deleted), else returns `err` unchanged.
    pub(crate) async fn explain_agent_error(&self, name: &str, err: CoreError) -> CoreError {
        // A killed agent closes its sockets before its last thread is gone (when the engine
        // sees it dead): give a dying agent a moment to be seen as dead.
        for _ in 0..10 {
            if let Err(e) = self.check_agent(name).await {
                return e;
            }
            match self.record(name) {
                Ok(rec) if self.agent_expected(&rec) => {}
                _ => break,
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let Ok(rec) = self.record(name) else {
            return err;
        };
        let sock = self.engine.agent_socket(&self.run_dir(&rec.id));
        if rec.status == SandboxStatus::Running && !sock.exists() {
            return CoreError::Unavailable(format!(
                "cannot reach the agent of sandbox '{name}': its socket {} was deleted on the host; \
                 `burrow restart {name}` boots the sandbox again",
                sock.display()
            ));
        }
        err
    }

    /// At daemon start, for an adopted running sandbox: whatever burrowd needs to reach it
    /// must be there. The agent socket cannot be bound again while the agent holds the
    /// listening socket, so a sandbox whose socket (or whole run dir) is gone is booted again
    /// (its processes end; the reason is kept in `notice` and an event). Returns whether it
    /// was rebooted.
    pub(crate) async fn repair_runtime_files(&self, rec: &mut SandboxRecord) -> Result<bool> {
        let run_dir = self.run_dir(&rec.id);
        let sock = self.engine.agent_socket(&run_dir);
        let missing = if !run_dir.is_dir() {
            format!("its run directory {} was deleted", run_dir.display())
        } else if !sock.exists() {
            format!("its agent socket {} was deleted", sock.display())
        } else {
            return Ok(false);
        };
        let what = format!(
            "burrowd booted sandbox '{}' again at its start: {missing}, so nothing could reach its agent; \
             the processes it ran were ended",
            rec.name
        );
        tracing::warn!(sandbox = %rec.name, "{what}");
        self.set_end_reason(&rec.name, what.clone());
        let _ = self.halt(rec).await;
        self.activity.set_sleep(&rec.id, None);
        rec.status = SandboxStatus::Running;
        rec.notice = Some(what.clone());
        self.boot_or_fail(rec).await?;
        rec.failure_reason = None;
        rec.updated_at = now_rfc3339();
        self.store.update_sandbox(rec)?;
        self.events.emit(
            &rec.name,
            "restarted",
            serde_json::json!({"status": rec.status, "reason": what}),
        );
        Ok(true)
    }
}

/// Why exec (or anything else that needs the agent) cannot use sandbox `rec` when it is
/// `failed`: with the reason and the way out.
pub(crate) fn not_running(rec: &SandboxRecord) -> Result<()> {
    if rec.status != SandboxStatus::Failed {
        return Ok(());
    }
    Err(CoreError::NotRunning {
        name: rec.name.clone(),
        why: rec
            .failure_reason
            .clone()
            .unwrap_or_else(|| "it failed".to_owned()),
    })
}
