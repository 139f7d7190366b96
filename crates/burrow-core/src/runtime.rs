//! What the manager keeps in memory about each sandbox while it exists: its operation lock,
//! the cached agent channel, activity and sleep for the idle policy, the OOM count, the
//! restart policy's record, whether a restore runs, the in-sandbox API listener, and why its
//! processes were last ended. One [`SandboxRuntime`] per sandbox id, in one map, made on
//! first use and removed with the sandbox's record ([`Manager::delete_record`]), so nothing
//! piles up for sandboxes that are gone.
//!
//! Sessions hold their sandbox's runtime (through [`BusyGuard`]): a session whose process a
//! delete ended still learns why after the entry left the map. Nothing here is persisted:
//! after a daemon restart, reconciliation rebuilds what matters from the store and the
//! engines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use burrow_agent_proto::AgentClient;
use tonic::transport::Channel;

use crate::manager::Manager;
use crate::state::SleepMode;
use crate::watch::RestartState;

/// Every sandbox's runtime, by sandbox id.
#[derive(Default)]
pub(crate) struct Runtimes(Mutex<HashMap<String, Arc<SandboxRuntime>>>);

impl Runtimes {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<SandboxRuntime>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The runtime of sandbox `id`, made on first use.
    pub(crate) fn get(&self, id: &str) -> Arc<SandboxRuntime> {
        self.map().entry(id.to_owned()).or_default().clone()
    }

    /// The runtime of sandbox `id` if it has one (for what should not make one: forgetting).
    pub(crate) fn existing(&self, id: &str) -> Option<Arc<SandboxRuntime>> {
        self.map().get(id).cloned()
    }

    /// Drops sandbox `id`'s runtime (its record is gone); its in-sandbox API stops serving.
    /// Whoever still holds it (a session) keeps what it needs.
    pub(crate) fn remove(&self, id: &str) {
        if let Some(rt) = self.map().remove(id) {
            rt.stop_inside_api();
        }
    }

    /// The ids that have a runtime now.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }
}

/// One sandbox's in-memory state.
pub(crate) struct SandboxRuntime {
    /// Serialises operations on the sandbox (create, lifecycle, restore, services, ...).
    op_lock: Arc<tokio::sync::Mutex<()>>,
    /// Held while connecting to the agent: a one-connection channel (a VM's) must never
    /// see two connects at once, or the second waits in QEMU's backlog behind the first.
    connect_lock: Arc<tokio::sync::Mutex<()>>,
    state: Mutex<State>,
    /// The task serving its `/.burrow/api.sock`; its own lock, held while a socket is bound.
    inside_api: Mutex<Option<tokio::task::AbortHandle>>,
}

struct State {
    agent: Option<AgentClient<Channel>>,
    /// Live exec sessions (each holds a [`BusyGuard`]).
    busy: usize,
    /// The last time anything used it.
    last_active: Instant,
    /// How it sleeps and since when; `None` while awake.
    sleep: Option<(SleepMode, Instant)>,
    /// OOM kills its cgroup had counted at the last look.
    oom_kills: u64,
    /// Why its processes were last ended by burrowd (stop, restore, delete, ...), and when.
    end_reason: Option<(String, Instant)>,
    restoring: bool,
    restarts: RestartState,
    /// Set while background work of the last restore or fork waits for the sandbox's next
    /// use to end (see [`SandboxRuntime::first_use`]); told when it does.
    first_use: Option<tokio::sync::watch::Sender<bool>>,
}

impl Default for SandboxRuntime {
    fn default() -> Self {
        Self {
            op_lock: Arc::default(),
            connect_lock: Arc::default(),
            state: Mutex::new(State {
                agent: None,
                busy: 0,
                last_active: Instant::now(),
                sleep: None,
                oom_kills: 0,
                end_reason: None,
                restoring: false,
                restarts: RestartState::default(),
                first_use: None,
            }),
            inside_api: Mutex::new(None),
        }
    }
}

impl SandboxRuntime {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn op_lock(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.op_lock.clone()
    }

    pub(crate) fn connect_lock(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.connect_lock.clone()
    }

    pub(crate) fn agent(&self) -> Option<AgentClient<Channel>> {
        self.with(|s| s.agent.clone())
    }

    pub(crate) fn set_agent(&self, agent: Option<AgentClient<Channel>>) {
        self.with(|s| s.agent = agent);
    }

    /// Something used the sandbox now.
    pub(crate) fn touch(&self) {
        self.with(|s| s.last_active = Instant::now());
    }

    pub(crate) fn busy(&self) -> usize {
        self.with(|s| s.busy)
    }

    /// How long since anything used it (since the runtime was made, if nothing did).
    pub(crate) fn idle_for(&self) -> Duration {
        self.with(|s| s.last_active.elapsed())
    }

    /// A fresh boot has a fresh cgroup: its OOM counter starts again at 0.
    pub(crate) fn booted(&self) {
        self.with(|s| s.oom_kills = 0);
    }

    /// Records the OOM kill count seen now; returns the one seen at the last look.
    pub(crate) fn swap_oom_kills(&self, now: u64) -> u64 {
        self.with(|s| std::mem::replace(&mut s.oom_kills, now))
    }

    pub(crate) fn set_sleep(&self, mode: Option<SleepMode>) {
        self.with(|s| s.sleep = mode.map(|m| (m, Instant::now())));
    }

    pub(crate) fn sleep_mode(&self) -> Option<SleepMode> {
        self.with(|s| s.sleep.map(|(m, _)| m))
    }

    pub(crate) fn asleep_for(&self) -> Option<(SleepMode, Duration)> {
        self.with(|s| s.sleep.map(|(m, at)| (m, at.elapsed())))
    }

    /// Records why the sandbox's processes are about to end.
    pub(crate) fn set_end_reason(&self, reason: String) {
        self.with(|s| s.end_reason = Some((reason, Instant::now())));
    }

    /// Why burrowd ended the sandbox's processes, if it did after `since`.
    pub(crate) fn end_reason_since(&self, since: Instant) -> Option<String> {
        self.with(|s| {
            s.end_reason
                .as_ref()
                .filter(|(_, at)| *at >= since)
                .map(|(r, _)| r.clone())
        })
    }

    /// Marks a restore as running; `false` if one already is.
    pub(crate) fn begin_restore(&self) -> bool {
        self.with(|s| !std::mem::replace(&mut s.restoring, true))
    }

    pub(crate) fn end_restore(&self) {
        self.with(|s| s.restoring = false);
    }

    pub(crate) fn is_restoring(&self) -> bool {
        self.with(|s| s.restoring)
    }

    /// The restart policy's record of this sandbox (`watch.rs`).
    pub(crate) fn restarts<T>(&self, f: impl FnOnce(&mut RestartState) -> T) -> T {
        self.with(|s| f(&mut s.restarts))
    }

    /// The in-sandbox API listener's slot, locked.
    pub(crate) fn inside_api(&self) -> MutexGuard<'_, Option<tokio::task::AbortHandle>> {
        self.inside_api.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stop_inside_api(&self) {
        if let Some(h) = self.inside_api().take() {
            h.abort();
        }
    }

    /// Told when the sandbox's next use (an exec session, a tunnel) ends. Work an operation
    /// leaves for the background (a replaced volume to delete, a backup to mark read-only,
    /// the pool to refill) waits on it with [`after_first_use`]: on two cores it would slow
    /// the command the user runs right after a restore or a fork, which is what they wait for.
    pub(crate) fn first_use(&self) -> tokio::sync::watch::Receiver<bool> {
        self.with(|s| match &s.first_use {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = tokio::sync::watch::channel(false);
                s.first_use = Some(tx);
                rx
            }
        })
    }

    /// Marks the sandbox busy until the guard drops (an exec session is live).
    pub(crate) fn busy_guard(self: &Arc<Self>) -> BusyGuard {
        self.with(|s| {
            s.busy += 1;
            s.last_active = Instant::now();
        });
        BusyGuard {
            runtime: self.clone(),
        }
    }
}

/// Held by a live exec session (or tunnel); the sandbox is not idle while one exists. It
/// keeps the sandbox's runtime, so the session can learn why its process ended even after
/// the sandbox was deleted.
pub struct BusyGuard {
    runtime: Arc<SandboxRuntime>,
}

impl std::fmt::Debug for BusyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusyGuard { .. }")
    }
}

impl BusyGuard {
    /// Why burrowd ended the sandbox's processes (stop, restore, delete, ...), if it did
    /// after `since`.
    pub fn end_reason_since(&self, since: Instant) -> Option<String> {
        self.runtime.end_reason_since(since)
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.runtime.with(|s| {
            s.busy = s.busy.saturating_sub(1);
            s.last_active = Instant::now();
            if let Some(tx) = s.first_use.take() {
                tx.send_replace(true);
            }
        });
    }
}

/// How long background work waits at most for a sandbox's first use after a restore or a
/// fork: a moment, then it goes ahead.
const FIRST_USE_WAIT: Duration = Duration::from_millis(500);

/// Waits until the use `first_use` watches has ended, [`FIRST_USE_WAIT`] has passed, or the
/// sandbox is gone (its runtime dropped), whichever comes first.
pub(crate) async fn after_first_use(mut first_use: tokio::sync::watch::Receiver<bool>) {
    let wait = crate::fault::first_use_wait().unwrap_or(FIRST_USE_WAIT);
    let _ = tokio::time::timeout(wait, first_use.wait_for(|used| *used)).await;
}

impl Manager {
    /// The runtime of sandbox `id`, made on first use.
    pub(crate) fn runtime(&self, id: &str) -> Arc<SandboxRuntime> {
        self.runtimes.get(id)
    }

    /// Deletes sandbox `id`'s record and drops its runtime: the one way a record goes.
    pub(crate) fn delete_record(&self, id: &str) -> Result<(), crate::CoreError> {
        self.store.delete_sandbox(id)?;
        self.runtimes.remove(id);
        Ok(())
    }

    /// Drops runtimes of sandboxes that have no record (one a request made for a sandbox
    /// being deleted at that moment). `before` were the ids with a runtime before the store
    /// was read for `known`: a runtime made since may belong to a record inserted since.
    pub(crate) fn drop_stale_runtimes(&self, before: Vec<String>, known: &[crate::store::SandboxRecord]) {
        let known: std::collections::HashSet<&str> = known.iter().map(|r| r.id.as_str()).collect();
        for id in before.into_iter().filter(|id| !known.contains(id.as_str())) {
            tracing::debug!(id, "dropping the runtime of a sandbox that is gone");
            self.runtimes.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use burrow_api::{EngineKind, SandboxConfig, SandboxStatus, UrlAuth};
    use burrow_engine::fake::FakeEngine;

    use super::*;
    use crate::state::Action;
    use crate::store::{Intent, SandboxRecord, Store};

    /// A manager from parts: in-memory store, a `dir` pool in `dir`, an engine that runs
    /// nothing.
    fn manager(dir: &std::path::Path) -> Arc<Manager> {
        let cfg = crate::Config::with_data_dir(dir.to_owned());
        let root = dir.join("pool");
        std::fs::create_dir_all(&root).unwrap();
        let pool = Arc::from(burrow_storage::dir_pool(&root).unwrap());
        let engines =
            crate::engines::Engines::new(EngineKind::Container).with(Arc::new(FakeEngine::default()));
        let keys = crate::keys::Keys::open(dir).unwrap();
        let store = Arc::new(Store::open_in_memory().unwrap());
        Manager::new(cfg, store, pool, engines, keys, None, None)
    }

    /// A record of a stopped sandbox, straight into the store.
    fn insert(mgr: &Manager, name: &str, intent: Option<Intent>) -> String {
        let now = "2026-01-01T00:00:00Z".to_owned();
        let rec = SandboxRecord {
            id: format!("sb-{name}"),
            name: name.to_owned(),
            status: SandboxStatus::Stopped,
            intent,
            engine: EngineKind::Container,
            image: "base".into(),
            created_at: now.clone(),
            updated_at: now.clone(),
            last_active_at: now,
            config: SandboxConfig {
                cpus: 1.0,
                memory_mb: 256,
                disk_gb: 1,
                pids: 256,
                idle_timeout_s: 0,
                cold_after_s: 0,
                url_auth: UrlAuth::Private,
                restart: Default::default(),
            },
            env: Default::default(),
            labels: Default::default(),
            parent: None,
            failure_reason: None,
            next_checkpoint: 0,
            notice: None,
            instance: None,
        };
        mgr.store.insert_sandbox(&rec).unwrap();
        rec.id
    }

    fn ids(mgr: &Manager) -> Vec<String> {
        let mut ids = mgr.runtimes.ids();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn a_deleted_sandbox_leaves_no_runtime_and_its_sessions_learn_why() {
        let dir = tempfile::tempdir().unwrap();
        let mgr = manager(dir.path());
        let gone = insert(&mgr, "gone", None);
        let kept = insert(&mgr, "kept", None);
        let t0 = Instant::now();
        // Operations make entries: a lifecycle verb (its lock, an end reason), a session.
        mgr.action("gone", Action::Stop).await.unwrap();
        mgr.action("kept", Action::Stop).await.unwrap();
        let session = mgr.runtime(&gone).busy_guard();
        mgr.runtime(&gone).set_sleep(Some(SleepMode::Cold));
        assert_eq!(ids(&mgr), [gone.clone(), kept.clone()]);

        mgr.delete("gone").await.unwrap();
        assert_eq!(
            ids(&mgr),
            std::slice::from_ref(&kept),
            "the other sandbox keeps its runtime"
        );
        assert_eq!(
            session.end_reason_since(t0).as_deref(),
            Some("sandbox 'gone' was deleted"),
            "a session outlives the entry"
        );
        drop(session);
        assert_eq!(ids(&mgr), [kept]);
    }

    #[tokio::test]
    async fn reconciliation_drops_the_runtime_of_a_record_it_removes() {
        let dir = tempfile::tempdir().unwrap();
        let mgr = manager(dir.path());
        let half_deleted = insert(&mgr, "half-deleted", Some(Intent::Destroy));
        let kept = insert(&mgr, "kept", None);
        mgr.runtime(&half_deleted).touch();
        mgr.runtime(&kept).touch();
        mgr.reconcile().await.unwrap();
        assert!(mgr.store.sandbox_by_name("half-deleted").unwrap().is_none());
        assert_eq!(ids(&mgr), [kept]);
    }

    #[tokio::test]
    async fn stale_runtimes_go_but_not_ones_made_after_the_look() {
        let dir = tempfile::tempdir().unwrap();
        let mgr = manager(dir.path());
        let kept = insert(&mgr, "kept", None);
        mgr.runtime(&kept).touch();
        // A request for a sandbox that was being deleted made this one after the delete.
        mgr.runtime("sb-deleted-meanwhile").touch();
        let before = mgr.runtimes.ids();
        let known = mgr.store.all_sandboxes().unwrap();
        // A create inserted its record after the store was read, then took its lock.
        let new = insert(&mgr, "new", None);
        let _lock = mgr.op_lock(&new);
        mgr.drop_stale_runtimes(before, &known);
        assert_eq!(ids(&mgr), [kept, new]);
    }

    /// The store's record of a sandbox is deleted in one place, which drops its runtime too
    /// (a grep of the sources, so a new direct delete fails here).
    #[test]
    fn only_delete_record_deletes_a_record() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let probe = [".delete", "_sandbox("].concat();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("store.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (n, line) in code.lines().enumerate() {
                if line.contains(&probe) {
                    found.push(format!(
                        "{}:{}",
                        path.file_name().unwrap().to_string_lossy(),
                        n + 1
                    ));
                }
            }
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("runtime.rs:"), "{found:?}");
    }
}
