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
//! The restart policy (`config.restart`, default `on-failure`) then boots it again by itself
//! after a backoff (0.5 s, doubling per death); a sandbox that dies again within a minute of
//! each restart is left `failed` after the fifth death, with that said in its reason. Any
//! verb in between (`start`, `stop`, `delete`) takes precedence: a restart only happens to a
//! sandbox that is still `failed` from the death that scheduled it.
//!
//! Lost files: the agent holds the listening socket, so a deleted socket path cannot be bound
//! again without a new agent. Reconciliation (daemon start) boots such a sandbox again
//! (stop, start: a new run dir and socket) and says so; a running daemon that meets one
//! names the cause and the fix (`restart`), which recreates whatever is missing.

use std::time::{Duration, Instant};

use burrow_api::{SandboxRestart, SandboxStatus};
use burrow_engine::Liveness;

use crate::CoreError;
use crate::manager::{Manager, blocking};
use crate::state::SleepMode;
use crate::store::SandboxRecord;
use crate::time_util::now_rfc3339;

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// The first restart's delay; each further death within [`STABLE`] doubles it.
const BACKOFF: Duration = Duration::from_millis(500);
/// Deaths in a row, each within [`STABLE`] of the restart before it, after which the policy
/// gives up.
const MAX_DEATHS: u32 = 5;
/// A sandbox that ran this long since its last restart starts counting from one again.
const STABLE: Duration = Duration::from_secs(60);

/// What the restart policy knows about one sandbox (memory only, in its runtime: after a
/// daemon restart, reconciliation boots whatever should run).
#[derive(Default)]
pub(crate) struct RestartState {
    /// Deaths in a row, each within [`STABLE`] of the restart before it.
    deaths: u32,
    /// When the policy last booted it.
    restarted_at: Option<Instant>,
    /// A restart to do: when, and the death it answers (the sandbox's `updated_at` then).
    due: Option<(Instant, String)>,
}

/// What the policy decided about one death.
#[derive(Debug, PartialEq)]
pub(crate) enum Plan {
    /// Boot again after `delay`; this is restart number `attempt` in a row.
    Restart { attempt: u32, delay: Duration },
    /// Too many deaths in a row: stay `failed`.
    GiveUp { deaths: u32 },
    /// The sandbox's policy is `never`.
    Never,
}

impl RestartState {
    /// Records a death at `now` and decides what to do about it.
    pub(crate) fn on_death(&mut self, policy: SandboxRestart, death: &str, now: Instant) -> Plan {
        self.due = None;
        if policy == SandboxRestart::Never {
            self.deaths = 0;
            return Plan::Never;
        }
        let in_a_row = self.restarted_at.is_some_and(|t| now.duration_since(t) < STABLE);
        self.deaths = if in_a_row { self.deaths + 1 } else { 1 };
        if self.deaths >= MAX_DEATHS {
            return Plan::GiveUp { deaths: self.deaths };
        }
        let delay = BACKOFF * 2u32.pow(self.deaths - 1);
        self.due = Some((now + delay, death.to_owned()));
        Plan::Restart {
            attempt: self.deaths,
            delay,
        }
    }

    /// The death a due restart answers, if one is due at `now`.
    fn due(&self, now: Instant) -> Option<String> {
        let (at, death) = self.due.as_ref()?;
        (*at <= now).then(|| death.clone())
    }

    /// The restart was done (or is moot): none is due any more.
    fn done(&mut self, restarted_at: Option<Instant>) {
        self.due = None;
        if restarted_at.is_some() {
            self.restarted_at = restarted_at;
        }
    }
}

impl Manager {
    /// Whether the agent of `rec` should be running: running, or warm asleep (frozen).
    pub(crate) fn agent_expected(&self, rec: &SandboxRecord) -> bool {
        rec.intent.is_none()
            && match rec.status {
                SandboxStatus::Running => true,
                SandboxStatus::Sleeping => !matches!(
                    self.runtime(&rec.id).sleep_mode(),
                    Some(SleepMode::Cold | SleepMode::Memory)
                ),
                _ => false,
            }
    }

    async fn liveness(&self, rec: &SandboxRecord) -> Result<Liveness> {
        let engine = self.engine(rec)?;
        let id = rec.eid().to_owned();
        blocking(move || Ok(engine.liveness(&id)?)).await
    }

    /// Under the sandbox's operation lock: when the agent of `rec` should run but is dead,
    /// records that (`failed` with the reason, an `agent.died` event) and cleans up its
    /// runtime. Returns whether it was dead.
    pub(crate) async fn reap_if_dead(&self, rec: &mut SandboxRecord) -> Result<bool> {
        if !self.agent_expected(rec) {
            return Ok(false);
        }
        let Liveness::Dead { how } = self.liveness(rec).await? else {
            return Ok(false);
        };
        let reason = match &how {
            Some(how) => format!("the agent (PID 1) died: {how}"),
            None => "the agent (PID 1) died".to_owned(),
        };
        tracing::warn!(sandbox = %rec.name, %reason, "sandbox agent died");
        let rt = self.runtime(&rec.id);
        rt.set_end_reason(format!("sandbox '{}' stopped: {reason}", rec.name));
        // Its remaining processes (if any) go, and runc forgets the container.
        if let Err(e) = self.kill(rec).await {
            tracing::warn!(sandbox = %rec.name, error = %crate::error::chain(&e), "cleaning up after the agent died");
        }
        rt.set_sleep(None);
        crate::state::transition(rec, crate::state::Action::Fail)?;
        rec.updated_at = now_rfc3339();
        let plan = rt.restarts(|r| r.on_death(rec.config.restart, &rec.updated_at, Instant::now()));
        let restart = match plan {
            Plan::Restart { attempt, delay } => {
                tracing::info!(sandbox = %rec.name, attempt, ?delay, "restart policy: booting it again");
                rec.failure_reason = Some(reason.clone());
                serde_json::json!({"attempt": attempt, "in_ms": delay.as_millis() as u64})
            }
            Plan::GiveUp { deaths } => {
                rec.failure_reason = Some(format!(
                    "{reason}; not restarted: it died {deaths} times in a row, each within {} s of its \
                     restart (restart policy on-failure); `burrow start {}` boots it again",
                    STABLE.as_secs(),
                    rec.name
                ));
                serde_json::Value::Null
            }
            Plan::Never => {
                rec.failure_reason = Some(reason.clone());
                serde_json::Value::Null
            }
        };
        self.store.update_sandbox(rec)?;
        self.events.emit(
            &rec.name,
            "agent.died",
            serde_json::json!({"reason": reason, "how": how, "status": rec.status,
                               "restart_policy": rec.config.restart.as_str(), "restart": restart}),
        );
        Ok(true)
    }

    /// From the background loop: boots `rec` again if its restart policy has a restart due
    /// and it is still `failed` from the death that scheduled it (a `start`, `stop` or
    /// `delete` in between wins). Returns whether it acted.
    pub(crate) async fn restart_if_due(&self, rec: &SandboxRecord) -> bool {
        let rt = self.runtime(&rec.id);
        if rec.status != SandboxStatus::Failed || rt.restarts(|r| r.due(Instant::now())).is_none() {
            return false;
        }
        let lock = rt.op_lock();
        let Ok(_guard) = lock.try_lock() else {
            return false;
        };
        // Gone (deleted meanwhile): its runtime went with it.
        let id = rec.id.clone();
        let Ok(mut rec) = self.record(&rec.name) else {
            return false;
        };
        let Some(death) = rt.restarts(|r| r.due(Instant::now())) else {
            return false;
        };
        if rec.id != id || rec.status != SandboxStatus::Failed || rec.updated_at != death {
            rt.restarts(|r| r.done(None));
            return false;
        }
        let reason = rec.failure_reason.clone().unwrap_or_default();
        // Whatever is left of the dead one goes first (as `start` of a failed sandbox does).
        let _ = self.halt(&rec).await;
        if crate::state::transition(&mut rec, crate::state::Action::Start).is_err() {
            return false;
        }
        match self.boot_or_fail(&mut rec).await {
            Ok(()) => {
                rt.restarts(|r| r.done(Some(Instant::now())));
                rt.touch();
                let what = format!("restarted by its restart policy (on-failure) after: {reason}");
                tracing::info!(sandbox = %rec.name, "{what}");
                rec.failure_reason = None;
                rec.notice = Some(what);
                rec.updated_at = now_rfc3339();
                if let Err(e) = self.store.update_sandbox(&rec) {
                    tracing::warn!(sandbox = %rec.name, error = %crate::error::chain(&e), "recording a restart");
                }
                self.events.emit(
                    &rec.name,
                    "restarted",
                    serde_json::json!({"status": rec.status, "by": "restart policy", "reason": reason}),
                );
            }
            Err(e) => {
                // `failed` with why (boot_or_fail recorded it); counts as another death.
                tracing::warn!(sandbox = %rec.name, error = %crate::error::chain(&e), "restart policy: booting failed");
                let now = Instant::now();
                // The attempt counts as a restart, so a sandbox that cannot boot at all runs
                // out of attempts like one that dies at once.
                let plan = rt.restarts(|r| {
                    r.done(Some(now));
                    r.on_death(rec.config.restart, &rec.updated_at, now)
                });
                if let Plan::GiveUp { deaths } = plan {
                    rec.failure_reason = Some(format!(
                        "{}; not restarted again: {deaths} attempts in a row failed (restart policy on-failure)",
                        rec.failure_reason.as_deref().unwrap_or("booting failed")
                    ));
                    let _ = self.store.update_sandbox(&rec);
                }
            }
        }
        true
    }

    /// The background look (once a second, from the idle loop): a cheap check without the
    /// lock, then the verdict under it. A sandbox with an operation in progress is looked at
    /// on the next tick. Returns whether the agent was found dead.
    pub(crate) async fn watch_agent(&self, rec: &SandboxRecord) -> bool {
        if !self.agent_expected(rec) || self.runtime(&rec.id).is_restoring() {
            return false;
        }
        match self.liveness(rec).await {
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

    /// For a request that needs the agent: if it is dead, records that and returns the error
    /// the caller should see; `Ok(())` when it lives.
    pub(crate) async fn check_agent(&self, name: &str) -> Result<()> {
        let rec = self.record(name)?;
        if !self.agent_expected(&rec) {
            return Ok(());
        }
        if self.liveness(&rec).await? == Liveness::Alive {
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
        let Ok(engine) = self.engine(&rec) else {
            return err;
        };
        let dialer = engine.agent_dialer(&self.engine_dir(&rec));
        let sock = dialer.endpoint();
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
        let run_dir = self.engine_dir(rec);
        let dialer = self.engine(rec)?.agent_dialer(&run_dir);
        let sock = dialer.endpoint();
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
        let rt = self.runtime(&rec.id);
        rt.set_end_reason(what.clone());
        let _ = self.halt(rec).await;
        rt.set_sleep(None);
        crate::state::transition(rec, crate::state::Action::Start)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_a_minute_and_gives_up_at_the_fifth_death() {
        let mut r = RestartState::default();
        let t0 = Instant::now();
        let mut now = t0;
        for attempt in 1..=4u32 {
            let plan = r.on_death(SandboxRestart::OnFailure, &format!("d{attempt}"), now);
            let delay = BACKOFF * 2u32.pow(attempt - 1);
            assert_eq!(plan, Plan::Restart { attempt, delay });
            assert_eq!(r.due(now), None, "not before its time");
            assert_eq!(r.due(now + delay), Some(format!("d{attempt}")));
            now += delay;
            r.done(Some(now));
            assert_eq!(r.due(now + STABLE), None, "done");
            now += Duration::from_secs(1);
        }
        assert_eq!(
            r.on_death(SandboxRestart::OnFailure, "d5", now),
            Plan::GiveUp { deaths: 5 }
        );
        assert_eq!(r.due(now + STABLE), None);
    }

    #[test]
    fn a_sandbox_that_ran_a_minute_starts_counting_again_and_never_means_never() {
        let mut r = RestartState::default();
        let t0 = Instant::now();
        r.on_death(SandboxRestart::OnFailure, "d1", t0);
        r.done(Some(t0));
        let plan = r.on_death(SandboxRestart::OnFailure, "d2", t0 + Duration::from_secs(1));
        assert_eq!(
            plan,
            Plan::Restart {
                attempt: 2,
                delay: BACKOFF * 2
            }
        );
        r.done(Some(t0 + Duration::from_secs(2)));
        let later = t0 + Duration::from_secs(2) + STABLE;
        let plan = r.on_death(SandboxRestart::OnFailure, "d3", later);
        assert_eq!(
            plan,
            Plan::Restart {
                attempt: 1,
                delay: BACKOFF
            }
        );
        assert_eq!(r.on_death(SandboxRestart::Never, "d4", later), Plan::Never);
        assert_eq!(r.due(later + STABLE), None, "never schedules nothing");
    }
}
