//! The idle policy: a running sandbox with no exec session, no attached client and no API
//! activity for `idle_timeout_s` goes to warm sleep (every process frozen, memory kept);
//! after `cold_after_s` asleep it goes cold (processes stopped, memory released, disk kept).
//! Any request for it wakes it; a cold wake boots it again (services restart) and says so
//! in an event.
//!
//! Activity is tracked in memory: a counter of live exec sessions per sandbox (a guard held
//! by each session) and the last time anything used it. GETs of the sandbox's record do not
//! count, so monitoring does not keep a burrow awake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_api::SandboxStatus;

use crate::manager::Manager;
use crate::state::Action;

/// Warm (frozen, memory kept) or cold (stopped, disk kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepMode {
    Warm,
    Cold,
}

impl SleepMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Cold => "cold",
        }
    }
}

#[derive(Debug, Default)]
pub struct Activity {
    busy: Mutex<HashMap<String, usize>>,
    last: Mutex<HashMap<String, Instant>>,
    sleep: Mutex<HashMap<String, (SleepMode, Instant)>>,
    oom_kills: Mutex<HashMap<String, u64>>,
}

impl Activity {
    pub fn touch(&self, id: &str) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), Instant::now());
    }

    fn busy(&self, id: &str) -> usize {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    fn idle_for(&self, id: &str) -> Duration {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.entry(id.to_owned()).or_insert_with(Instant::now).elapsed()
    }

    /// A fresh boot has a fresh cgroup: its OOM counter starts again at 0.
    pub fn booted(&self, id: &str) {
        self.oom_kills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub fn set_sleep(&self, id: &str, mode: Option<SleepMode>) {
        let mut s = self.sleep.lock().unwrap_or_else(|p| p.into_inner());
        match mode {
            Some(m) => {
                s.insert(id.to_owned(), (m, Instant::now()));
            }
            None => {
                s.remove(id);
            }
        }
    }

    pub fn sleep_mode(&self, id: &str) -> Option<SleepMode> {
        self.sleep
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|(m, _)| *m)
    }

    fn asleep_for(&self, id: &str) -> Option<(SleepMode, Duration)> {
        self.sleep
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .map(|(m, at)| (*m, at.elapsed()))
    }

    /// Marks the sandbox busy until the guard drops (an exec session is live).
    pub fn busy_guard(self: &Arc<Self>, id: &str) -> BusyGuard {
        *self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default() += 1;
        self.touch(id);
        BusyGuard {
            activity: self.clone(),
            id: id.to_owned(),
        }
    }
}

/// Held by a live exec session; the sandbox is not idle while one exists.
#[derive(Debug)]
pub struct BusyGuard {
    activity: Arc<Activity>,
    id: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Some(n) = self
            .activity
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.id)
        {
            *n = n.saturating_sub(1);
        }
        self.activity.touch(&self.id);
    }
}

impl Manager {
    /// Runs the idle policy forever (spawned by `Manager::spawn_background`), once a second.
    pub(crate) async fn idle_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.watch_pool();
            let Ok(all) = self.store.all_sandboxes() else {
                continue;
            };
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
                let res = match rec.status {
                    SandboxStatus::Running
                        if !idle.is_zero()
                            && self.activity.busy(&rec.id) == 0
                            && self.activity.idle_for(&rec.id) >= idle =>
                    {
                        // A detached session still running is an exec session: not idle.
                        // Asked only at the moment of deciding, so it costs one call per
                        // would-be sleep, not one per tick.
                        if self.has_live_sessions(&rec).await {
                            self.activity.touch(&rec.id);
                            continue;
                        }
                        tracing::info!(sandbox = %rec.name, "idle: going to warm sleep");
                        self.action(&rec.name, Action::Sleep).await.map(|_| ())
                    }
                    SandboxStatus::Sleeping if !cold.is_zero() => match self.activity.asleep_for(&rec.id) {
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
        let Some(stats) = self.engine(rec).ok().and_then(|e| e.stats(&rec.id)) else {
            return;
        };
        let mut seen = self.activity.oom_kills.lock().unwrap_or_else(|p| p.into_inner());
        let before = seen.insert(rec.id.clone(), stats.oom_kills).unwrap_or(0);
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
        if rec.status != SandboxStatus::Sleeping || self.activity.sleep_mode(&rec.id) == Some(SleepMode::Cold)
        {
            return Ok(());
        }
        self.set_end_reason(&rec.name, format!("sandbox '{}' went to cold sleep", rec.name));
        self.halt(&rec).await?;
        self.activity.set_sleep(&rec.id, Some(SleepMode::Cold));
        self.events
            .emit(&rec.name, "sleeping", serde_json::json!({"mode": "cold"}));
        Ok(())
    }
}
