//! Pre-started sandboxes: a few containers per image, already booted up to their agent's
//! handshake, wired to the network and with the CA installed, waiting under an internal
//! name. A create that one can serve takes it instead of booting: the engine gives it the
//! asked-for hostname and cpu and memory limits in place (`Engine::reassign`), one row
//! update gives it its name, labels, env and config, and the create answers. A background
//! loop makes the next one.
//!
//! What a pre-started sandbox cannot become is made the usual way: a fork, an image build's
//! step, another engine than the container one, a pids limit other than the default (the
//! agent's file limit was derived from it at start), an image that changed since. Images
//! join the pool on their first create (`base` at start) and leave it after
//! [`UNWANTED_AFTER`] without one. Pre-started sandboxes carry [`INTERNAL_LABEL`] =
//! [`PRESTART`]: no list, lookup, event or idle policy sees them, and a restarted daemon
//! discards the ones it finds (it cannot vouch for them) and makes new ones.
//!
//! Demand sizes a container pool: each create that finds its pool empty raises that pool's
//! target by one, up to the configured maximum, so the next burst of the same size is served
//! from the pool; [`DEMAND_DECAY`] without such a miss brings it back to the base size (the
//! surplus is removed). VM pools keep their size (an idle VM holds its memory).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, EngineKind, Sandbox, SandboxConfig, SandboxName, SandboxStatus};

use crate::CoreError;
use crate::manager::{Manager, blocking};
use crate::store::{INTERNAL_LABEL, SandboxRecord, StoreError};
use crate::time_util::now_rfc3339;

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// The [`INTERNAL_LABEL`] value of pre-started sandboxes.
pub(crate) const PRESTART: &str = "prestart";
/// An image no create asked for in this long leaves the pool (its sandboxes are removed).
const UNWANTED_AFTER: Duration = Duration::from_secs(30 * 60);
/// Longest pause between attempts after the pool failed to make a sandbox.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A pool grown by demand goes back to its base size after this long without a create that
/// found it empty.
const DEMAND_DECAY: Duration = Duration::from_secs(5 * 60);
/// A refill does not wait for a taken sandbox's first command this long after a create found
/// the pool empty (see [`Prestart::refill_after`]).
const URGENT_AFTER_MISS: Duration = Duration::from_secs(10);

/// Whether `rec` is a pre-started sandbox (hidden from users until a create takes it).
pub(crate) fn is_prestarted(rec: &SandboxRecord) -> bool {
    rec.labels.get(INTERNAL_LABEL).is_some_and(|v| v == PRESTART)
}

/// What a create asks a pre-started sandbox to become.
pub(crate) struct Asked<'a> {
    pub(crate) name: &'a str,
    pub(crate) config: &'a SandboxConfig,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) labels: BTreeMap<String, String>,
    /// A fork: of what.
    pub(crate) fork: Option<PoolFork<'a>>,
}

/// What a pre-started sandbox becomes when a create is a fork: its source (and the
/// checkpoint of it, if any), and the record's `parent`.
pub(crate) struct PoolFork<'a> {
    pub(crate) src: &'a SandboxRecord,
    pub(crate) checkpoint: Option<&'a str>,
    pub(crate) parent: burrow_api::ForkSource,
}

/// What a pool is kept for: an engine and an image.
type Key = (EngineKind, String);

/// The pool's bookkeeping: which sandboxes wait for which engine and image, and which are
/// wanted. The sandboxes themselves are ordinary records in the store.
#[derive(Debug)]
pub(crate) struct Prestart {
    /// Sandboxes kept ready per wanted image, by engine (absent or 0: none).
    targets: HashMap<EngineKind, usize>,
    /// How far demand may grow a pool, by engine (absent or at most the target: no growth).
    maxima: HashMap<EngineKind, usize>,
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
    /// Told by a create that found a pool empty: a refill waiting for a first command stops
    /// waiting.
    urgent: tokio::sync::Notify,
    /// Held by the loop while it makes a sandbox; `close` takes it to wait for that one.
    making: tokio::sync::Mutex<()>,
    /// Set once the daemon is going away: the loop makes no more.
    closed: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ready sandboxes: id and the image version they were made from.
    ready: HashMap<Key, VecDeque<(String, String)>>,
    /// When a create last asked for each.
    wanted: HashMap<Key, Instant>,
    /// Creates that found a pool empty: how many since it last was at its base size (what
    /// it grows by), and when the last one was.
    misses: HashMap<Key, (usize, Instant)>,
    /// Set by a take: the next refill waits for it (see [`Prestart::refill_after`]).
    refill_after: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Prestart {
    /// A pool that keeps `targets[engine]` sandboxes ready per wanted image of that engine,
    /// and grows by demand up to `maxima[engine]`.
    pub(crate) fn new(targets: HashMap<EngineKind, usize>, maxima: HashMap<EngineKind, usize>) -> Self {
        Self {
            targets,
            maxima,
            inner: Mutex::new(Inner::default()),
            wake: tokio::sync::Notify::new(),
            urgent: tokio::sync::Notify::new(),
            making: tokio::sync::Mutex::new(()),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Stops the loop for good and waits (at most a minute: a make may wait for an image's
    /// import) until the sandbox it was making, if any, is made: after this, every
    /// pre-started sandbox is in the store.
    pub(crate) async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
        if tokio::time::timeout(Duration::from_secs(60), self.making.lock())
            .await
            .is_err()
        {
            tracing::warn!("a pre-started sandbox still in the making after a minute; not waiting");
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The base size of `engine`'s pools.
    fn target(&self, engine: EngineKind) -> usize {
        self.targets.get(&engine).copied().unwrap_or(0)
    }

    /// What the pool of `key` holds now: its base size plus what demand added (forgotten
    /// after [`DEMAND_DECAY`] without a miss), at most the engine's maximum.
    fn target_of(&self, inner: &Inner, key: &Key) -> usize {
        let base = self.target(key.0);
        let max = self.maxima.get(&key.0).copied().unwrap_or(base).max(base);
        match inner.misses.get(key) {
            Some((n, at)) if at.elapsed() < DEMAND_DECAY => (base + n).min(max),
            _ => base,
        }
    }

    /// A create found the pool of `key` empty: it grows by one (up to its maximum), and the
    /// loop is woken to fill it.
    fn missed(&self, key: &Key) {
        let mut inner = self.lock();
        let now = Instant::now();
        let entry = inner.misses.entry(key.clone()).or_insert((0, now));
        if entry.1.elapsed() >= DEMAND_DECAY {
            entry.0 = 0;
        }
        *entry = (entry.0 + 1, now);
        inner.refill_after = None;
        drop(inner);
        self.urgent.notify_one();
        self.wake.notify_one();
    }

    /// Whether any engine keeps sandboxes ready.
    pub(crate) fn enabled(&self) -> bool {
        self.targets.values().any(|n| *n > 0)
    }

    /// Whether `engine`'s sandboxes are kept ready.
    pub(crate) fn serves(&self, engine: EngineKind) -> bool {
        self.target(engine) > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that a create asked for `image` on `engine`, and wakes the loop.
    pub(crate) fn want(&self, engine: EngineKind, image: &str) {
        if self.note_wanted(engine, image) {
            self.wake.notify_one();
        }
    }

    /// Records that a create asked for `image` (without waking the loop); false if the
    /// pool does not serve `engine`.
    fn note_wanted(&self, engine: EngineKind, image: &str) -> bool {
        if !self.serves(engine) {
            return false;
        }
        self.lock()
            .wanted
            .insert((engine, image.to_owned()), Instant::now());
        true
    }

    /// The next refill waits until `first_use` (of the sandbox just taken from `key`'s pool)
    /// tells its first use ended, or a moment: the command a user runs right after a create
    /// or a fork comes before a boot in the background. Not while creates find the pool
    /// empty (a miss in the last [`URGENT_AFTER_MISS`]): then the next create needs the
    /// refill more.
    fn refill_after(&self, key: &Key, first_use: tokio::sync::watch::Receiver<bool>) {
        let mut inner = self.lock();
        let urgent = inner
            .misses
            .get(key)
            .is_some_and(|(_, last)| last.elapsed() < URGENT_AFTER_MISS);
        inner.refill_after = (!urgent).then_some(first_use);
    }

    /// Takes a ready sandbox made from `version` of the image; also returns the ones made
    /// from another version (to be discarded).
    fn take(&self, key: &Key, version: &str) -> (Option<String>, Vec<String>) {
        let mut inner = self.lock();
        let Some(queue) = inner.ready.get_mut(key) else {
            return (None, Vec::new());
        };
        let mut stale = Vec::new();
        while let Some((id, v)) = queue.pop_front() {
            if v == version {
                return (Some(id), stale);
            }
            stale.push(id);
        }
        (None, stale)
    }

    fn put(&self, key: Key, id: String, version: String) {
        self.lock().ready.entry(key).or_default().push_back((id, version));
    }

    /// A wanted engine and image short of sandboxes, if any.
    fn short(&self) -> Option<Key> {
        let inner = self.lock();
        inner
            .wanted
            .keys()
            .find(|key| inner.ready.get(*key).map_or(0, VecDeque::len) < self.target_of(&inner, key))
            .cloned()
    }

    /// The sandboxes of pools above their target (demand that went away); the newest go.
    fn drop_surplus(&self) -> Vec<String> {
        let mut inner = self.lock();
        let targets: Vec<(Key, usize)> = inner
            .ready
            .keys()
            .map(|key| (key.clone(), self.target_of(&inner, key)))
            .collect();
        let mut ids = Vec::new();
        for (key, target) in targets {
            if let Some(queue) = inner.ready.get_mut(&key) {
                while queue.len() > target {
                    ids.extend(queue.pop_back().map(|(id, _)| id));
                }
            }
        }
        inner.misses.retain(|_, (_, at)| at.elapsed() < DEMAND_DECAY);
        ids
    }

    /// Forgets what nobody asked for in [`UNWANTED_AFTER`]; returns their sandboxes.
    fn drop_unwanted(&self) -> Vec<String> {
        let mut inner = self.lock();
        let gone: Vec<Key> = inner
            .wanted
            .iter()
            .filter(|(_, at)| at.elapsed() >= UNWANTED_AFTER)
            .map(|(key, _)| key.clone())
            .collect();
        let mut ids = Vec::new();
        for key in gone {
            inner.wanted.remove(&key);
            inner.misses.remove(&key);
            ids.extend(inner.ready.remove(&key).into_iter().flatten().map(|(id, _)| id));
        }
        ids
    }

    /// What `GET /v1/version` says of the pool; `None` when it is off.
    pub(crate) fn info(&self) -> Option<burrow_api::PrestartInfo> {
        if !self.enabled() {
            return None;
        }
        let inner = self.lock();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut pools: Vec<burrow_api::PrestartPool> = inner
            .wanted
            .keys()
            .map(|key| burrow_api::PrestartPool {
                engine: key.0,
                image: key.1.clone(),
                ready: count(inner.ready.get(key).map_or(0, VecDeque::len)),
                target: count(self.target_of(&inner, key)),
            })
            .collect();
        pools.sort_by(|a, b| (a.engine.as_str(), &a.image).cmp(&(b.engine.as_str(), &b.image)));
        Some(burrow_api::PrestartInfo {
            ready: pools.iter().map(|p| p.ready).sum(),
            pools,
        })
    }

    /// Forgets `image` on every engine (it is being deleted); returns its sandboxes.
    fn forget(&self, image: &str) -> Vec<String> {
        let mut inner = self.lock();
        inner.wanted.retain(|key, _| key.1 != image);
        inner.misses.retain(|key, _| key.1 != image);
        let keys: Vec<Key> = inner.ready.keys().filter(|k| k.1 == image).cloned().collect();
        keys.into_iter()
            .filter_map(|k| inner.ready.remove(&k))
            .flatten()
            .map(|(id, _)| id)
            .collect()
    }
}

impl Manager {
    /// The version of `image` a pre-started sandbox must have been made from to serve a
    /// create now (its record's creation time: a rebuilt image has a new one).
    fn image_version(&self, image: &str) -> String {
        self.store
            .image(image)
            .ok()
            .flatten()
            .map(|i| i.created_at)
            .unwrap_or_default()
    }

    /// Whether a create with these parameters can take a pre-started sandbox: a container
    /// with the default pids limit (cpu and memory are set in place); a VM with the default
    /// machine (its cpus, memory, pids limit and disk are fixed when it boots).
    pub(crate) fn prestart_fits(&self, engine: EngineKind, config: &SandboxConfig) -> bool {
        let d = &self.cfg.defaults;
        self.prestart.serves(engine)
            && config.pids == d.pids
            && match engine {
                EngineKind::Container => true,
                EngineKind::Vm => {
                    config.cpus == d.cpus && config.memory_mb == d.memory_mb && config.disk_gb == d.disk_gb
                }
            }
    }

    /// Serves a create from the pool: `Ok(None)` when no pre-started sandbox of `image` is
    /// ready (the caller creates one the usual way). The pool is told of the demand either way.
    pub(crate) async fn claim_prestarted(
        &self,
        engine: EngineKind,
        image: &str,
        asked: &Asked<'_>,
    ) -> Result<Option<Sandbox>> {
        // Only images that exist are wanted (a create of an unknown one fails as usual).
        if self.store.image(image)?.is_none() {
            return Ok(None);
        }
        if !self.prestart.note_wanted(engine, image) {
            return Ok(None);
        }
        let version = self.image_version(image);
        let key = (engine, image.to_owned());
        loop {
            let (id, stale) = self.prestart.take(&key, &version);
            for id in stale {
                self.discard_prestarted_in_background(id);
            }
            let Some(id) = id else {
                // `missed` wakes the loop.
                self.prestart.missed(&key);
                return Ok(None);
            };
            self.prestart.refill_after(&key, self.runtime(&id).first_use());
            self.prestart.wake.notify_one();
            if let Some(sb) = self.reassign(&id, asked).await? {
                return Ok(Some(sb));
            }
        }
    }

    /// Takes a ready pre-started sandbox of `image` off its pool for another use than a
    /// create (a cold wake); `None` when there is none (the pool learns of the demand either
    /// way). Its refill waits for `first_use` like a create's.
    pub(crate) fn take_prestarted(
        &self,
        engine: EngineKind,
        image: &str,
        first_use: tokio::sync::watch::Receiver<bool>,
    ) -> Option<String> {
        if !self.prestart.note_wanted(engine, image) {
            return None;
        }
        let key = (engine, image.to_owned());
        let (id, stale) = self.prestart.take(&key, &self.image_version(image));
        for id in stale {
            self.discard_prestarted_in_background(id);
        }
        match &id {
            Some(_) => self.prestart.refill_after(&key, first_use),
            None => self.prestart.missed(&key),
        }
        self.prestart.wake.notify_one();
        id
    }

    /// Makes pre-started sandbox `id` the sandbox `name`; `Ok(None)` if it cannot serve (it
    /// is discarded).
    async fn reassign(&self, id: &str, asked: &Asked<'_>) -> Result<Option<Sandbox>> {
        let (name, config, env, labels) = (asked.name, asked.config, &asked.env, &asked.labels);
        let fork = asked.fork.as_ref();
        let lock = self.op_lock(id);
        let _guard = lock.lock().await;
        let Some(mut rec) = self.store.sandbox_by_id(id)? else {
            return Ok(None);
        };
        if !is_prestarted(&rec) || rec.intent.is_some() || rec.status != SandboxStatus::Running {
            tracing::info!(
                id,
                status = rec.status.as_str(),
                "a pre-started sandbox is not running; discarded"
            );
            self.discard_prestarted_in_background(id.to_owned());
            return Ok(None);
        }
        let t = Instant::now();
        // A fork: the source's disk goes under it first, its agent restarts on it.
        if let Some(fork) = fork {
            rec.name = name.to_owned();
            if let Err(e) = self.put_fork_under(&rec, config, fork).await {
                tracing::warn!(id, error = %crate::error::chain(&e), "a pre-started sandbox did not become a fork; discarded");
                self.discard_prestarted_in_background(id.to_owned());
                // The source's own faults (a checkpoint gone meanwhile) are the caller's.
                return match e {
                    CoreError::NotFound { .. } | CoreError::Conflict(_) => Err(e),
                    _ => Ok(None),
                };
            }
            rec.image = fork.src.image.clone();
            rec.parent = Some(fork.parent.clone());
        }
        let engine = self.engine(&rec)?;
        let resources = burrow_engine::Resources {
            cpus: config.cpus,
            memory_mb: config.memory_mb,
            pids: rec.config.pids,
        };
        let (eid, run_dir, hostname) = (rec.eid().to_owned(), self.engine_dir(&rec), name.to_owned());
        match blocking(move || Ok(engine.reassign(&eid, &run_dir, &hostname, &resources)?)).await {
            Ok(true) => {}
            Ok(false) => {
                self.discard_prestarted_in_background(id.to_owned());
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(id, error = %crate::error::chain(&e), "reassigning a pre-started sandbox; discarded");
                self.discard_prestarted_in_background(id.to_owned());
                return Ok(None);
            }
        }
        // A VM names itself: the agent sets the hostname (and reseeds its RNG).
        if self.engine(&rec)?.capabilities().own_kernel
            && let Err(e) = self.rename_guest(&rec, name).await
        {
            tracing::warn!(id, error = %crate::error::chain(&e), "renaming a pre-started VM; discarded");
            self.discard_prestarted_in_background(id.to_owned());
            return Ok(None);
        }
        // A fork's new volume got its limit as it was made.
        let disk_changed = rec.config.disk_gb != config.disk_gb && fork.is_none();
        let now = now_rfc3339();
        rec.name = name.to_owned();
        rec.config = config.clone();
        rec.env = env.clone();
        rec.labels = labels.clone();
        rec.created_at = now.clone();
        rec.updated_at = now.clone();
        rec.last_active_at = now;
        if disk_changed && let Err(e) = self.apply_disk_limit(&rec).await {
            self.discard_prestarted_in_background(id.to_owned());
            return Err(e);
        }
        crate::fault::point("prestart.before_claim");
        if let Err(e) = self.store.claim_sandbox(&rec) {
            // It has the new hostname already: it cannot go back to the pool.
            self.discard_prestarted_in_background(id.to_owned());
            return Err(match e {
                StoreError::Unique(_) => CoreError::NameTaken(name.to_owned()),
                e => e.into(),
            });
        }
        self.runtime(id).touch();
        tracing::info!(sandbox = %rec.name, id, fork = fork.is_some(), ms = t.elapsed().as_secs_f64() * 1e3, "created (pre-started)");
        if fork.is_some() {
            // The fork's own CA into its trust store (the disk has its source's), off the
            // create's path, as after any fork.
            if let Some(me) = self.me() {
                let rec = rec.clone();
                tokio::spawn(
                    crate::manager::NO_WAKE.scope((), async move { me.install_net_files(&rec).await }),
                );
            }
        }
        self.events.emit(
            &rec.name,
            "created",
            serde_json::json!({"id": rec.id, "parent": rec.parent}),
        );
        Ok(Some(self.view(&rec)))
    }

    /// Puts the disk of `fork` under pre-started sandbox `rec` (already given its new name)
    /// as its root, in place, and restarts its agent on it: the fork's processes start
    /// from the copy, as after a boot, without one.
    async fn put_fork_under(
        &self,
        rec: &SandboxRecord,
        config: &SandboxConfig,
        fork: &PoolFork<'_>,
    ) -> Result<()> {
        let live = self.pool.sandbox_path(&rec.id);
        let new = live.with_extension("new");
        {
            let (pool, new) = (self.pool.clone(), new.clone());
            blocking(move || Ok(pool.delete_volume(&new)?)).await?;
        }
        // Limited as it is made (the fork's own disk limit): no commit of its own for it.
        let bytes = self.disk_limit_bytes(rec, config)?;
        self.snapshot_fork_source(fork.src, fork.checkpoint, new.clone(), false, Some(bytes))
            .await?;
        crate::fault::point("prestart.fork_snapshot");
        self.prefetch_root_in_background(rec, &new);
        self.quiesce(rec).await?;
        self.replace_root(rec, new.clone()).await?;
        let pool = self.pool.clone();
        let first_use = self.runtime(&rec.id).first_use();
        blocking(move || {
            let old = live.with_extension("old");
            std::fs::rename(&live, &old)
                .and_then(|()| std::fs::rename(&new, &live))
                .map_err(|e| CoreError::Internal(format!("putting the fork's volume in place: {e}")))?;
            crate::reroot::delete_volume_later(&pool, &old, first_use)
        })
        .await?;
        self.restart_agent(rec).await
    }

    /// Tells the guest of VM `rec` its new hostname, with fresh randomness (bounded: 10 s).
    async fn rename_guest(&self, rec: &SandboxRecord, hostname: &str) -> Result<()> {
        let mut client = self.agent(rec).await?;
        let mut entropy = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut entropy);
        let req = burrow_agent_proto::v1::SetClockRequest {
            unix_nanos: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i64),
            hostname: hostname.to_owned(),
            entropy,
        };
        match tokio::time::timeout(Duration::from_secs(10), client.set_clock(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(CoreError::Agent {
                name: hostname.to_owned(),
                detail: s.message().to_owned(),
            }),
            Err(_) => Err(CoreError::Agent {
                name: hostname.to_owned(),
                detail: "the guest did not answer within 10 s".to_owned(),
            }),
        }
    }

    /// Makes one pre-started sandbox of `image` on `engine` and puts it in the pool.
    async fn make_prestarted(&self, (engine, image): Key) -> Result<()> {
        // The version once the image is ready: an image being imported gets its final
        // record (and creation time) when the import ends.
        self.images.wait_ready(&image).await?;
        let version = self.image_version(&image);
        let name = format!("prestarted-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let req = CreateSandbox {
            name: SandboxName::parse(&name).expect("a valid name"),
            image: Some(image.clone()),
            engine: Some(engine),
            labels: BTreeMap::from([(INTERNAL_LABEL.to_owned(), PRESTART.to_owned())]),
            // Never put to sleep while it waits; a create gives it its own policy.
            idle_timeout_s: Some(0),
            cold_after_s: Some(0),
            ..Default::default()
        };
        let sb = self.create_from(req, None).await?;
        self.warm_up(&sb.id).await;
        self.prestart.put((engine, image), sb.id, version);
        Ok(())
    }

    /// Runs `sh -c /bin/true` once in pre-started sandbox `id`: a sandbox's first process pays
    /// for reading the shell and the C library from its fresh snapshot (page cache is per
    /// file, and a snapshot's files are new ones) and for the agent's first spawn, about
    /// 15 ms; paid here, a create's first command does not. Best effort.
    async fn warm_up(&self, id: &str) {
        let Ok(Some(rec)) = self.store.sandbox_by_id(id) else {
            return;
        };
        let opts = crate::exec::StreamExecOptions {
            argv: vec!["/bin/sh".into(), "-c".into(), "/bin/true".into()],
            env: self.exec_env(&rec, &BTreeMap::new(), false),
            ..Default::default()
        };
        let run = async {
            let client = self.agent(&rec).await?;
            let session = crate::exec::start_session(client, &rec.name, opts).await?;
            crate::exec::collect(session, None, Some(Duration::from_secs(10)), 4096).await
        };
        if let Err(e) = run.await {
            tracing::debug!(id, error = %crate::error::chain(&e), "warming up a pre-started sandbox");
        }
    }

    /// Removes pre-started sandbox `id` (off the caller's path).
    fn discard_prestarted_in_background(&self, id: String) {
        if let Some(me) = self.me() {
            tokio::spawn(async move { me.discard_prestarted(&id).await });
        }
    }

    /// Removes pre-started sandbox `id`: its runtime, volume and record.
    pub(crate) async fn discard_prestarted(&self, id: &str) {
        let lock = self.op_lock(id);
        let _guard = lock.lock().await;
        let Ok(Some(mut rec)) = self.store.sandbox_by_id(id) else {
            return;
        };
        if !is_prestarted(&rec) {
            return;
        }
        rec.intent = Some(crate::store::Intent::Destroy);
        rec.updated_at = now_rfc3339();
        let res = async {
            self.store.update_sandbox(&rec)?;
            self.teardown(&rec).await?;
            self.delete_record(id)
        }
        .await;
        match res {
            Ok(()) => tracing::debug!(id, "pre-started sandbox removed"),
            // Its intent is recorded: reconciliation finishes the job.
            Err(e) => tracing::warn!(id, error = %crate::error::chain(&e), "removing a pre-started sandbox"),
        }
    }

    /// Removes every pre-started sandbox of `image` (before the image is deleted).
    pub(crate) async fn discard_prestarted_of(&self, image: &str) {
        for id in self.prestart.forget(image) {
            self.discard_prestarted(&id).await;
        }
    }

    /// Keeps the pool filled, forever (spawned by `daemon::spawn_background` when the pool
    /// is on): one sandbox at a time, so a refill never takes more than one core from the
    /// creates it serves.
    pub(crate) async fn prestart_loop(self: Arc<Self>) {
        // Left by an earlier run: nothing vouches for their state.
        for rec in self.store.all_sandboxes().unwrap_or_default() {
            if is_prestarted(&rec) {
                self.discard_prestarted(&rec.id).await;
            }
        }
        for engine in [EngineKind::Container, EngineKind::Vm] {
            if self.engines.get(engine).is_ok() {
                self.prestart.want(engine, "base");
            }
        }
        let mut backoff = Duration::from_secs(1);
        loop {
            let surplus = self.prestart.drop_surplus();
            for id in self.prestart.drop_unwanted().into_iter().chain(surplus) {
                self.discard_prestarted(&id).await;
            }
            let Some(key) = self.prestart.short() else {
                // Woken by a create (demand, or a sandbox taken); the timeout drops unwanted
                // images.
                let _ = tokio::time::timeout(Duration::from_secs(60), self.prestart.wake.notified()).await;
                continue;
            };
            let image = key.1.clone();
            let after = self.prestart.lock().refill_after.take();
            if let Some(first_use) = after {
                tokio::select! {
                    () = crate::runtime::after_first_use(first_use) => {}
                    () = self.prestart.urgent.notified() => {}
                }
            }
            let making = self.prestart.making.lock().await;
            if self.prestart.is_closed() {
                return;
            }
            let made = self.make_prestarted(key).await;
            drop(making);
            match made {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(image, error = %crate::error::chain(&e), ?backoff, "could not pre-start a sandbox");
                    if matches!(e, CoreError::NotFound { .. }) && image != "base" {
                        // The image is gone: stop wanting it. (`base` is recorded a moment
                        // after the daemon starts: wait for it.)
                        for id in self.prestart.forget(&image) {
                            self.discard_prestarted(&id).await;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        (EngineKind::Container, "base".to_owned())
    }

    fn pool(base: usize, max: usize) -> Prestart {
        let p = Prestart::new(
            HashMap::from([(EngineKind::Container, base), (EngineKind::Vm, base)]),
            HashMap::from([(EngineKind::Container, max)]),
        );
        p.want(EngineKind::Container, "base");
        p
    }

    fn target(p: &Prestart, key: &Key) -> usize {
        p.target_of(&p.lock(), key)
    }

    #[test]
    fn demand_grows_a_pool_to_its_maximum_then_it_shrinks_back() {
        let p = pool(2, 4);
        let key = key();
        assert_eq!(target(&p, &key), 2);
        p.missed(&key);
        assert_eq!(target(&p, &key), 3);
        p.missed(&key);
        p.missed(&key);
        assert_eq!(target(&p, &key), 4, "capped at the maximum");
        for i in 0..4 {
            p.put(key.clone(), format!("sb-{i}"), "v1".into());
        }
        assert_eq!(p.short(), None);
        assert!(p.drop_surplus().is_empty(), "at its target, nothing is surplus");
        // Five minutes without a miss: back to the base size, the newest two go.
        let long_ago = Instant::now().checked_sub(DEMAND_DECAY).unwrap();
        p.lock().misses.get_mut(&key).unwrap().1 = long_ago;
        assert_eq!(target(&p, &key), 2);
        assert_eq!(p.drop_surplus(), vec!["sb-3".to_owned(), "sb-2".to_owned()]);
        assert!(p.lock().misses.is_empty());
        // A miss after the decay counts from the base again.
        p.missed(&key);
        assert_eq!(target(&p, &key), 3);
    }

    #[test]
    fn without_a_maximum_above_the_base_a_pool_keeps_its_size() {
        let p = pool(2, 0);
        let key = key();
        p.missed(&key);
        assert_eq!(target(&p, &key), 2);
        // VM pools have no maximum: they never grow.
        let vm = (EngineKind::Vm, "base".to_owned());
        p.missed(&vm);
        assert_eq!(target(&p, &vm), 2);
    }
}
