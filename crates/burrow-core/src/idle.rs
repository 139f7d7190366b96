//! The idle policy: a running sandbox with no exec session, no attached client and no API
//! activity for `idle_timeout_s` goes to warm sleep (every process frozen, memory kept);
//! after `cold_after_s` asleep it goes cold (processes stopped, memory released, disk kept).
//! Any request for it wakes it; a cold wake boots it again (services restart) and says so
//! in an event.
//!
//! Activity is tracked in memory, in each sandbox's runtime (`runtime.rs`): a counter of live
//! exec sessions (a guard held by each session) and the last time anything used it. GETs of the sandbox's record do not
//! count, so monitoring does not keep a burrow awake.

use std::sync::Arc;
use std::time::Duration;

use burrow_api::SandboxStatus;

use crate::manager::Manager;
use crate::state::{Action, SleepMode};

impl Manager {
    /// Runs the idle policy forever (spawned by `daemon::spawn_background`), once a second.
    pub(crate) async fn idle_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.watch_pool();
            // Taken before the store is read: see `drop_stale_runtimes`.
            let had_runtime = self.runtimes.ids();
            let Ok(all) = self.store.all_sandboxes() else {
                continue;
            };
            self.drop_stale_runtimes(had_runtime, &all);
            for rec in all {
                if rec.intent.is_some() {
                    continue;
                }
                // A dead agent is recorded (and nothing else done with the sandbox) first;
                // its restart policy acts on a later tick, once the backoff has passed.
                if self.watch_agent(&rec).await || self.restart_if_due(&rec).await {
                    continue;
                }
                if rec.status == SandboxStatus::Running {
                    self.watch_oom(&rec);
                }
                let idle = Duration::from_secs(rec.config.idle_timeout_s);
                let cold = Duration::from_secs(rec.config.cold_after_s);
                let rt = self.runtime(&rec.id);
                let res = match rec.status {
                    SandboxStatus::Running if !idle.is_zero() && rt.busy() == 0 && rt.idle_for() >= idle => {
                        // A detached session still running is an exec session: not idle.
                        // Asked only at the moment of deciding, so it costs one call per
                        // would-be sleep, not one per tick.
                        if self.has_live_sessions(&rec).await {
                            rt.touch();
                            continue;
                        }
                        tracing::info!(sandbox = %rec.name, "idle: going to warm sleep");
                        self.action(&rec.name, Action::Sleep).await.map(|_| ())
                    }
                    SandboxStatus::Sleeping if !cold.is_zero() => match rt.asleep_for() {
                        Some((SleepMode::Warm, t)) if t >= cold => {
                            tracing::info!(sandbox = %rec.name, "asleep long enough: going cold");
                            self.sleep_cold(&rec.name).await
                        }
                        _ => Ok(()),
                    },
                    _ => Ok(()),
                };
                if let Err(e) = res {
                    tracing::warn!(sandbox = %rec.name, error = %crate::error::chain(&e), "idle policy");
                }
            }
        }
    }

    /// Whether the agent runs a session that has not exited (attached or not). Asks the
    /// agent directly: going through the request path would count as activity itself.
    async fn has_live_sessions(&self, rec: &crate::store::SandboxRecord) -> bool {
        let Ok(mut client) = self.agent(rec).await else {
            return false;
        };
        let req = burrow_agent_proto::v1::ListSessionsRequest {};
        match tokio::time::timeout(Duration::from_secs(5), client.list_sessions(req)).await {
            Ok(Ok(reply)) => reply
                .into_inner()
                .sessions
                .iter()
                .any(|s| s.exited_at_ms.is_none()),
            _ => false,
        }
    }

    /// Emits an `oom` event when the kernel's OOM killer killed something in the sandbox
    /// since the last look (the agent survives; the user learns what happened).
    fn watch_oom(&self, rec: &crate::store::SandboxRecord) {
        let Some(stats) = self.engine(rec).ok().and_then(|e| e.stats(rec.eid())) else {
            return;
        };
        let before = self.runtime(&rec.id).swap_oom_kills(stats.oom_kills);
        if stats.oom_kills > before {
            tracing::warn!(sandbox = %rec.name, kills = stats.oom_kills - before, "OOM kill in sandbox");
            self.events.emit(
                &rec.name,
                "oom",
                serde_json::json!({"killed": stats.oom_kills - before, "memory_mb": rec.config.memory_mb}),
            );
        }
    }

    /// Warm → cold: stop every process (memory released), keep the disk; still `sleeping`,
    /// and any request boots it again.
    pub async fn sleep_cold(&self, name: &str) -> Result<(), crate::CoreError> {
        let rec = self.record(name)?;
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        let rec = self.record(name)?;
        let rt = self.runtime(&rec.id);
        if rec.status != SandboxStatus::Sleeping || rt.sleep_mode() == Some(SleepMode::Cold) {
            return Ok(());
        }
        rt.set_end_reason(format!("sandbox '{}' went to cold sleep", rec.name));
        self.halt(&rec).await?;
        // Cold means no process kept: a saved VM memory goes too.
        self.discard_memory(&rec).await?;
        // And no network namespace: whatever wakes it wires one (a boot its own, a wake
        // into a pre-started runtime that runtime's), and removing a veth takes tens of
        // milliseconds that a wake would otherwise wait for.
        self.net_unwire(rec.eid()).await;
        rt.set_sleep(Some(SleepMode::Cold));
        self.events
            .emit(&rec.name, "sleeping", serde_json::json!({"mode": "cold"}));
        Ok(())
    }
}
