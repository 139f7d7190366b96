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

/// Whether `rec` is a pre-started sandbox (hidden from users until a create takes it).
pub(crate) fn is_prestarted(rec: &SandboxRecord) -> bool {
    rec.labels.get(INTERNAL_LABEL).is_some_and(|v| v == PRESTART)
}

/// The pool's bookkeeping: which sandboxes wait for which image, and which images are
/// wanted. The sandboxes themselves are ordinary records in the store.
#[derive(Debug)]
pub(crate) struct Prestart {
    per_image: usize,
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ready sandboxes by image: id and the image version they were made from.
    ready: HashMap<String, VecDeque<(String, String)>>,
    /// When a create last asked for each image.
    wanted: HashMap<String, Instant>,
}

impl Prestart {
    /// A pool that keeps `per_image` sandboxes ready per wanted image (0: off).
    pub(crate) fn new(per_image: usize) -> Self {
        Self {
            per_image,
            inner: Mutex::new(Inner::default()),
            wake: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.per_image > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that a create asked for `image`, and wakes the loop if it has work.
    pub(crate) fn want(&self, image: &str) {
        if !self.enabled() {
            return;
        }
        self.lock().wanted.insert(image.to_owned(), Instant::now());
        self.wake.notify_one();
    }

    /// Takes a ready sandbox of `image` made from `version`; also returns the ones made from
    /// another version (to be discarded).
    fn take(&self, image: &str, version: &str) -> (Option<String>, Vec<String>) {
        let mut inner = self.lock();
        let Some(queue) = inner.ready.get_mut(image) else {
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

    fn put(&self, image: &str, id: String, version: String) {
        self.lock()
            .ready
            .entry(image.to_owned())
            .or_default()
            .push_back((id, version));
    }

    /// A wanted image short of sandboxes, if any.
    fn short(&self) -> Option<String> {
        let inner = self.lock();
        inner
            .wanted
            .keys()
            .find(|image| inner.ready.get(*image).map_or(0, VecDeque::len) < self.per_image)
            .cloned()
    }

    /// Forgets images nobody asked for in [`UNWANTED_AFTER`]; returns their sandboxes.
    fn drop_unwanted(&self) -> Vec<String> {
        let mut inner = self.lock();
        let gone: Vec<String> = inner
            .wanted
            .iter()
            .filter(|(_, at)| at.elapsed() >= UNWANTED_AFTER)
            .map(|(image, _)| image.clone())
            .collect();
        let mut ids = Vec::new();
        for image in gone {
            inner.wanted.remove(&image);
            ids.extend(inner.ready.remove(&image).into_iter().flatten().map(|(id, _)| id));
        }
        ids
    }

    /// What `GET /v1/version` says of the pool; `None` when it is off.
    pub(crate) fn info(&self) -> Option<burrow_api::PrestartInfo> {
        if !self.enabled() {
            return None;
        }
        let inner = self.lock();
        let mut images: Vec<String> = inner.wanted.keys().cloned().collect();
        images.sort();
        Some(burrow_api::PrestartInfo {
            per_image: u32::try_from(self.per_image).unwrap_or(u32::MAX),
            ready: u32::try_from(inner.ready.values().map(VecDeque::len).sum::<usize>()).unwrap_or(u32::MAX),
            images,
        })
    }

    /// Forgets `image` (being deleted); returns its sandboxes.
    fn forget(&self, image: &str) -> Vec<String> {
        let mut inner = self.lock();
        inner.wanted.remove(image);
        inner
            .ready
            .remove(image)
            .into_iter()
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

    /// Whether a create with these parameters can take a pre-started sandbox.
    pub(crate) fn prestart_fits(&self, engine: EngineKind, config: &SandboxConfig) -> bool {
        self.prestart.enabled() && engine == EngineKind::Container && config.pids == self.cfg.defaults.pids
    }

    /// Serves a create from the pool: `Ok(None)` when no pre-started sandbox of `image` is
    /// ready (the caller creates one the usual way). The pool is told of the demand either way.
    pub(crate) async fn claim_prestarted(
        &self,
        name: &str,
        image: &str,
        config: &SandboxConfig,
        env: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
    ) -> Result<Option<Sandbox>> {
        // Only images that exist are wanted (a create of an unknown one fails as usual).
        if self.store.image(image)?.is_none() {
            return Ok(None);
        }
        self.prestart.want(image);
        let version = self.image_version(image);
        loop {
            let (id, stale) = self.prestart.take(image, &version);
            for id in stale {
                self.discard_prestarted_in_background(id);
            }
            let Some(id) = id else { return Ok(None) };
            if let Some(sb) = self.reassign(&id, name, config, &env, &labels).await? {
                return Ok(Some(sb));
            }
        }
    }

    /// Makes pre-started sandbox `id` the sandbox `name`; `Ok(None)` if it cannot serve (it
    /// is discarded).
    async fn reassign(
        &self,
        id: &str,
        name: &str,
        config: &SandboxConfig,
        env: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<Option<Sandbox>> {
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
        let engine = self.engine(&rec)?;
        let resources = burrow_engine::Resources {
            cpus: config.cpus,
            memory_mb: config.memory_mb,
            pids: rec.config.pids,
        };
        let (eid, run_dir, hostname) = (id.to_owned(), self.run_dir(id), name.to_owned());
        let t = Instant::now();
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
        let disk_changed = rec.config.disk_gb != config.disk_gb;
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
        tracing::info!(sandbox = %rec.name, id, ms = t.elapsed().as_secs_f64() * 1e3, "created (pre-started)");
        self.events.emit(
            &rec.name,
            "created",
            serde_json::json!({"id": rec.id, "parent": null}),
        );
        Ok(Some(self.view(&rec)))
    }

    /// Makes one pre-started sandbox of `image` and puts it in the pool.
    async fn make_prestarted(&self, image: &str) -> Result<()> {
        let version = self.image_version(image);
        let name = format!("prestarted-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let req = CreateSandbox {
            name: SandboxName::parse(&name).expect("a valid name"),
            image: Some(image.to_owned()),
            engine: Some(EngineKind::Container),
            labels: BTreeMap::from([(INTERNAL_LABEL.to_owned(), PRESTART.to_owned())]),
            // Never put to sleep while it waits; a create gives it its own policy.
            idle_timeout_s: Some(0),
            cold_after_s: Some(0),
            ..Default::default()
        };
        let sb = self.create_from(req, None).await?;
        self.prestart.put(image, sb.id, version);
        Ok(())
    }

    /// Removes pre-started sandbox `id` (off the caller's path).
    fn discard_prestarted_in_background(&self, id: String) {
        if let Some(me) = self.me() {
            tokio::spawn(async move { me.discard_prestarted(&id).await });
        }
    }

    /// Removes pre-started sandbox `id`: its runtime, volume and record.
    async fn discard_prestarted(&self, id: &str) {
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
        self.prestart.want("base");
        let mut backoff = Duration::from_secs(1);
        loop {
            for id in self.prestart.drop_unwanted() {
                self.discard_prestarted(&id).await;
            }
            let Some(image) = self.prestart.short() else {
                // Woken by a create (demand, or a sandbox taken); the timeout drops unwanted
                // images.
                let _ = tokio::time::timeout(Duration::from_secs(60), self.prestart.wake.notified()).await;
                continue;
            };
            match self.make_prestarted(&image).await {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => {
                    tracing::warn!(image, error = %crate::error::chain(&e), ?backoff, "could not pre-start a sandbox");
                    if matches!(e, CoreError::NotFound { .. }) && image != "base" {
                        // The image is gone: stop wanting it. (`base` is recorded a moment
                        // after the daemon starts: wait for it.)
                        let _ = self.prestart.forget(&image);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
