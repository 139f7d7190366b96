//! The sandbox manager: every operation on sandboxes, crash-safe (intent, work, commit),
//! serialised per sandbox, and reconciled with disk and runtime on start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use burrow_agent_proto::AgentClient;
use burrow_api::{
    CreateSandbox, EngineKind, ExecRequest, ExecResult, Image, PatchSandbox, Sandbox, SandboxConfig,
    SandboxList, SandboxStatus, UrlAuth, VersionInfo,
};
use burrow_engine::{Engine, Resources, RuntimeStatus, SandboxSpec};
use burrow_storage::Pool;
use tonic::transport::Channel;

use crate::error::chain;
use crate::exec::{self, ExecSession, StreamExecOptions};
use crate::images::ImageService;
use crate::state::{Action, transition, valid_transition};
use crate::store::{INTERNAL_LABEL, Intent, SandboxRecord, Store, StoreError};
use crate::time_util::now_rfc3339;
use crate::{Config, CoreError};

tokio::task_local! {
    /// Set around the daemon's own work inside a sandbox (installing the CA after a create):
    /// it runs only while the sandbox does, and never wakes one its user put to sleep.
    pub(crate) static NO_WAKE: ();
}

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Why the host connects to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connect {
    /// A fresh boot: the agent may still be on its way up.
    Boot,
    /// A resume from saved memory: it serves at once, maybe still holding an old connection.
    Resume,
    /// Anything else: it serves already (or should; the caller gives up when it should not).
    Reconnect,
}

/// How long sandbox processes get between SIGTERM and SIGKILL on stop.
const STOP_GRACE: Duration = Duration::from_secs(5);
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// One-connection channels (VMs) to an agent that serves already (a resume, a reconnect):
/// a handshake stalled by an earlier connection is retried after this long. Between tries,
/// the pause lets the agent see the hangup (QEMU reports port changes at most once a second).
const ONE_CONNECTION_RETRY: Duration = Duration::from_secs(3);
const ONE_CONNECTION_PAUSE: Duration = Duration::from_millis(1100);

/// The share of the pool in use at which every sandbox gets a `pool.almost_full` event.
const POOL_ALARM: f64 = 0.90;
/// ... and below which that alarm is re-armed.
const POOL_CLEAR: f64 = 0.85;

pub struct Manager {
    pub(crate) cfg: Config,
    pub(crate) store: Arc<Store>,
    pub(crate) pool: Arc<dyn Pool>,
    pub(crate) engines: crate::engines::Engines,
    /// Held while an image's VM disk is made ([`Manager::image_disk`]).
    image_disks: tokio::sync::Mutex<()>,
    pub(crate) images: ImageService,
    /// Each sandbox's in-memory state (agent channel, operation lock, activity, restart
    /// policy, ...), by id (`runtime.rs`).
    pub(crate) runtimes: crate::runtime::Runtimes,
    /// Whether the pool is past [`POOL_ALARM`] full (an event was sent; re-armed below
    /// [`POOL_CLEAR`]).
    pool_alarm: std::sync::atomic::AtomicBool,
    /// The background reclaim of deleted volumes' space: idle, running, or running with
    /// another pass asked for (see `reclaim_space`).
    reclaim: Arc<std::sync::atomic::AtomicU8>,
    inside_api: Option<InsideApiServer>,
    pub events: crate::events::Events,
    pub(crate) keys: crate::keys::Keys,
    /// Sandbox networking; `None` = loopback only (`--network off`).
    pub(crate) net: Option<crate::network::Net>,
    /// Pre-started sandboxes that creates take (`prestart.rs`).
    pub(crate) prestart: crate::prestart::Prestart,
    /// The manager itself, for work that outlives a request (set once in `new`).
    me: std::sync::OnceLock<std::sync::Weak<Manager>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("data_dir", &self.cfg.data_dir)
            .finish_non_exhaustive()
    }
}

/// Serves the in-sandbox API (`/.burrow/api.sock`) of sandbox `id` on `listener` until
/// aborted. Installed by the HTTP layer, which owns request parsing.
pub type InsideApiServer =
    Arc<dyn Fn(String, std::os::unix::net::UnixListener) -> tokio::task::AbortHandle + Send + Sync>;

/// Runs blocking engine/pool work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CoreError::Internal(format!("worker panicked: {e}")))?
}

impl Manager {
    /// Assembles a manager from parts that are already open; touches no disk, runtime or
    /// network. Before it serves requests, call [`Manager::reconcile`]; for the idle policy,
    /// restart policy, pool alarm and base image, [`crate::spawn_background`]. In-process
    /// tests build one from a fake engine and a `dir` pool this way.
    pub fn new(
        cfg: Config,
        store: Arc<Store>,
        pool: Arc<dyn Pool>,
        engines: crate::engines::Engines,
        keys: crate::keys::Keys,
        net: Option<crate::network::Net>,
        inside_api: Option<InsideApiServer>,
    ) -> Arc<Self> {
        let images = ImageService::new(cfg.clone(), store.clone(), pool.clone());
        let mgr = Arc::new(Self {
            prestart: crate::prestart::Prestart::new(
                std::collections::HashMap::from([
                    (EngineKind::Container, cfg.prestart),
                    (EngineKind::Vm, cfg.prestart_vm.unwrap_or(0)),
                ]),
                std::collections::HashMap::from([(EngineKind::Container, cfg.prestart_max)]),
            ),
            keys,
            net,
            me: std::sync::OnceLock::new(),
            cfg,
            store,
            pool,
            engines,
            image_disks: tokio::sync::Mutex::new(()),
            images,
            runtimes: Default::default(),
            pool_alarm: Default::default(),
            reclaim: Default::default(),
            inside_api,
            events: Default::default(),
        });
        let _ = mgr.me.set(Arc::downgrade(&mgr));
        mgr
    }

    /// The manager itself, for work that outlives the request that starts it.
    /// Runs `f` with the manager on the blocking pool: for work that waits on processes
    /// (`ip`, `nft`) and must not hold up an async worker (there is one per core). Inline
    /// when the manager is not shared through an `Arc` (in-process tests).
    pub(crate) async fn off_runtime<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Manager) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match self.me() {
            Some(me) => blocking(move || f(&me)).await,
            None => f(self),
        }
    }

    pub(crate) fn me(&self) -> Option<Arc<Manager>> {
        self.me.get().and_then(std::sync::Weak::upgrade)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn version(&self) -> VersionInfo {
        VersionInfo {
            version: burrow_api::VERSION.to_owned(),
            api: "v1".to_owned(),
            agent_protocol: burrow_agent_proto::PROTOCOL_VERSION,
            engines: self.engines.info(),
            default_engine: self.engines.default_kind(),
            pool: self.pool.kind_name().to_owned(),
            pool_space: self.pool_space().ok(),
            lxcfs: self.cfg.lxcfs.as_ref().is_some_and(|l| l.available()),
            prestart: self.prestart.info(),
        }
    }

    /// The pool's size and use now, with its reserve. Free space is the smaller of the
    /// pool's and that of the filesystem holding the data dir (the loop-backed pool's image
    /// file, the state database): a sparse pool image on a full host disk cannot grow.
    pub fn pool_space(&self) -> Result<burrow_api::PoolSpaceInfo> {
        let pool = self.pool.space()?;
        let host_free = nix::sys::statvfs::statvfs(&self.cfg.data_dir)
            .map(|st| st.blocks_available() * st.fragment_size().max(1))
            .unwrap_or(u64::MAX);
        let free = pool.free_bytes.min(host_free);
        Ok(burrow_api::PoolSpaceInfo {
            size_bytes: pool.size_bytes,
            used_bytes: pool.size_bytes.saturating_sub(pool.free_bytes),
            free_bytes: free,
            reserve_bytes: self.cfg.pool_reserve(pool.size_bytes),
        })
    }

    /// From the background loop: the first time the pool is [`POOL_ALARM`] full, a
    /// `pool.almost_full` event to every sandbox (their writes are what will fail) and a
    /// warning; again only after it was below [`POOL_CLEAR`].
    pub(crate) fn watch_pool(&self) {
        use std::sync::atomic::Ordering;
        let Ok(sp) = self.pool_space() else {
            return;
        };
        if sp.size_bytes == 0 {
            return;
        }
        let used = 1.0 - sp.free_bytes.min(sp.size_bytes) as f64 / sp.size_bytes as f64;
        if used >= POOL_ALARM && !self.pool_alarm.swap(true, Ordering::Relaxed) {
            let percent = (used * 100.0).floor() as u64;
            tracing::warn!(
                percent,
                free_bytes = sp.free_bytes,
                reserve_bytes = sp.reserve_bytes,
                "the storage pool is almost full"
            );
            let data = serde_json::json!({
                "percent": percent, "size_bytes": sp.size_bytes, "free_bytes": sp.free_bytes,
                "reserve_bytes": sp.reserve_bytes,
                "message": format!("the storage pool is {percent}% full; below the reserve, \
                                    create, fork and image builds are refused"),
            });
            for rec in self.store.all_sandboxes().unwrap_or_default() {
                self.events.emit(&rec.name, "pool.almost_full", data.clone());
            }
        } else if used < POOL_CLEAR && self.pool_alarm.swap(false, Ordering::Relaxed) {
            tracing::info!("the storage pool has room again");
        }
    }

    /// In the background: makes the space of just-deleted volumes free (and uncharged from
    /// quotas) within about a second instead of at btrfs's next periodic commit.
    /// One pass runs at a time: a delete during a pass asks for one more after it, so a
    /// burst of deletes costs two passes (each two btrfs commits), not one per delete.
    pub(crate) fn reclaim_space(&self) {
        use std::sync::atomic::Ordering;
        const IDLE: u8 = 0;
        const RUNNING: u8 = 1;
        const AGAIN: u8 = 2;
        let was = self
            .reclaim
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                Some(if s == IDLE { RUNNING } else { AGAIN })
            })
            .unwrap_or(AGAIN);
        if was != IDLE {
            return;
        }
        let (pool, state) = (self.pool.clone(), self.reclaim.clone());
        tokio::task::spawn_blocking(move || {
            loop {
                if let Err(e) = pool.reclaim() {
                    tracing::debug!(error = %e, "reclaiming deleted volumes' space");
                }
                // Nothing asked for since this pass began: done. Otherwise one more pass.
                if state
                    .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return;
                }
                state.store(RUNNING, Ordering::Release);
            }
        });
    }

    /// Refuses to make something new in the pool (`what`: "create sandbox 'x'", ...) when
    /// its free space is below the reserve: running sandboxes keep room to write, and no
    /// sandbox is made that could not write a byte.
    pub(crate) fn check_pool_room(&self, what: &str) -> Result<()> {
        let Ok(sp) = self.pool_space() else {
            return Ok(());
        };
        if sp.free_bytes >= sp.reserve_bytes {
            return Ok(());
        }
        let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64);
        Err(CoreError::PoolFull(format!(
            "cannot {what}: the storage pool is full ({} free of {}, below the {} kept for running \
             sandboxes' writes); delete sandboxes, checkpoints or images (`burrow images prune`), \
             or give the pool more room",
            mib(sp.free_bytes),
            mib(sp.size_bytes),
            mib(sp.reserve_bytes)
        )))
    }

    pub(crate) fn op_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.runtime(id).op_lock()
    }

    pub(crate) fn record(&self, name: &str) -> Result<SandboxRecord> {
        burrow_api::SandboxName::parse(name).map_err(|e| CoreError::BadRequest(e.to_string()))?;
        match self.store.sandbox_by_name(name)? {
            Some(r) if r.intent != Some(Intent::Destroy) && !crate::prestart::is_prestarted(&r) => Ok(r),
            _ => Err(CoreError::not_found("sandbox", name)),
        }
    }

    pub(crate) fn view(&self, r: &SandboxRecord) -> Sandbox {
        Sandbox {
            id: r.id.clone(),
            name: r.name.clone(),
            status: r.status,
            engine: r.engine,
            image: r.image.clone(),
            created_at: r.created_at.clone(),
            updated_at: r.updated_at.clone(),
            last_active_at: r.last_active_at.clone(),
            url: format!(
                "http://{}.{}:{}/",
                r.name, self.cfg.base_domain, self.cfg.public_port
            ),
            config: r.config.clone(),
            env: r.env.clone(),
            labels: r.labels.clone(),
            parent: r.parent.clone(),
            failure_reason: r.failure_reason.clone(),
            notice: r.notice.clone(),
            usage: None,
            sleep: (r.status == SandboxStatus::Sleeping).then(|| {
                let mode = self
                    .runtime(&r.id)
                    .sleep_mode()
                    .unwrap_or(crate::state::SleepMode::Warm);
                mode.as_str().to_owned()
            }),
            engine_detail: None,
        }
    }

    fn spec(&self, r: &SandboxRecord) -> SandboxSpec {
        SandboxSpec {
            id: r.eid().to_owned(),
            hostname: r.name.clone(),
            rootfs: self.pool.sandbox_path(&r.id),
            run_dir: self.engine_dir(r),
            resources: Resources {
                cpus: r.config.cpus,
                memory_mb: r.config.memory_mb,
                pids: r.config.pids,
            },
            shared_dirs: self.shared_dirs(r, false),
            netns: None,
        }
    }

    /// The host paths bound read-only into sandbox `r` (path inside, host path): its
    /// checkpoints, its `/.burrow/host`, and with a network (`net`) burrowd's resolver's
    /// resolv.conf over the image's.
    pub(crate) fn shared_dirs(&self, r: &SandboxRecord, net: bool) -> Vec<(String, PathBuf)> {
        let mut dirs = vec![
            (
                "/.burrow/checkpoints".to_owned(),
                self.pool.checkpoints_dir().join(&r.id),
            ),
            ("/.burrow/host".to_owned(), self.host_api_dir(&r.id)),
        ];
        if net {
            dirs.push((
                "/etc/resolv.conf".to_owned(),
                self.host_api_dir(&r.id).join("resolv.conf"),
            ));
        }
        dirs
    }

    /// Sandbox `id`'s own files on the host: its egress CA and its `host` directory (seen
    /// at `/.burrow/host`). They stay with the sandbox whatever runtime runs it.
    /// The directory of `rec`'s checkpoints, seen read-only inside at
    /// `/.burrow/checkpoints`: made if missing.
    pub(crate) fn make_checkpoints_view(&self, rec: &SandboxRecord) -> Result<()> {
        let cp_dir = self.pool.checkpoints_dir().join(&rec.id);
        std::fs::create_dir_all(&cp_dir)
            .and_then(|()| {
                std::fs::set_permissions(&cp_dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            })
            .map_err(|e| CoreError::Internal(format!("creating {}: {e}", cp_dir.display())))
    }

    pub(crate) fn run_dir(&self, id: &str) -> PathBuf {
        self.cfg.run_dir().join(id)
    }

    /// The run dir of the runtime that runs `rec` (the engine's bundle, agent socket and
    /// logs): `run_dir(rec.eid())`, which is its own run dir unless it was woken into a
    /// pre-started sandbox.
    pub(crate) fn engine_dir(&self, rec: &SandboxRecord) -> PathBuf {
        self.run_dir(rec.eid())
    }

    /// Host directory whose `api.sock` is the sandbox's `/.burrow/api.sock`. A directory is
    /// shared (not the socket file) so that burrowd can bind a new socket after a restart.
    pub fn host_api_dir(&self, id: &str) -> PathBuf {
        self.run_dir(id).join("host")
    }

    /// Makes sure burrowd serves the sandbox's `/.burrow/api.sock` (a socket in a host
    /// directory that the sandbox sees read-only at `/.burrow/host`).
    pub(crate) fn ensure_inside_api(&self, rec: &SandboxRecord) -> Result<()> {
        let Some(serve) = &self.inside_api else {
            return Ok(());
        };
        let rt = self.runtime(&rec.id);
        let mut listener_slot = rt.inside_api();
        use std::os::unix::fs::PermissionsExt;
        let dir = self.host_api_dir(&rec.id);
        // A listener whose socket file was deleted (with the run dir) serves nobody: bind anew.
        if listener_slot.as_ref().is_some_and(|h| !h.is_finished()) && dir.join("api.sock").exists() {
            return Ok(());
        }
        if let Some(old) = listener_slot.take() {
            old.abort();
        }
        let io = |e: std::io::Error| {
            CoreError::Internal(format!("in-sandbox API socket in {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        let sock = dir.join("api.sock");
        match std::fs::remove_file(&sock) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = std::os::unix::net::UnixListener::bind(&sock).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        // Any process in the sandbox may use it; it only reaches this sandbox's checkpoints.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).map_err(io)?;
        *listener_slot = Some(serve(rec.id.clone(), listener));
        Ok(())
    }

    fn stop_inside_api(&self, id: &str) {
        if let Some(rt) = self.runtimes.existing(id) {
            rt.stop_inside_api();
        }
    }

    /// The sandbox with id `id` (for the in-sandbox API, whose listener knows only the id).
    pub fn name_of(&self, id: &str) -> Result<String> {
        self.store
            .all_sandboxes()?
            .into_iter()
            .find(|r| r.id == id && r.intent != Some(Intent::Destroy))
            .map(|r| r.name)
            .ok_or_else(|| CoreError::not_found("sandbox", id))
    }

    /// Records why the processes of sandbox `id` are about to end; its sessions tell their
    /// clients (`SessionOutput::end_reason_since`).
    pub(crate) fn set_end_reason(&self, id: &str, reason: String) {
        self.runtime(id).set_end_reason(reason);
    }

    // ----- queries -------------------------------------------------------------------

    pub fn get(&self, name: &str) -> Result<Sandbox> {
        let rec = self.record(name)?;
        let mut view = self.view(&rec);
        view.engine_detail = self.engine(&rec).ok().map(|e| e.describe());
        if matches!(rec.status, SandboxStatus::Running | SandboxStatus::Sleeping) {
            view.usage =
                self.engine(&rec)
                    .ok()
                    .and_then(|e| e.stats(rec.eid()))
                    .map(|s| burrow_api::SandboxUsage {
                        memory_bytes: s.memory_bytes,
                        pids: s.pids,
                        oom_kills: s.oom_kills,
                        pids_limit: s.pids_limit,
                        disk_bytes: self
                            .pool
                            .charged_bytes(&self.pool.sandbox_path(&rec.id))
                            .ok()
                            .flatten(),
                    });
        }
        Ok(view)
    }

    pub fn list(
        &self,
        prefix: &str,
        labels: &[(String, String)],
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<SandboxList> {
        let limit = limit.unwrap_or(100).clamp(1, 1000);
        let mut out = Vec::new();
        let mut after = cursor.map(str::to_owned);
        // Label filters are applied after the page query; keep paging until the page is full.
        loop {
            let page = self.store.list_sandboxes(prefix, after.as_deref(), limit + 1)?;
            let exhausted = page.len() <= limit as usize;
            for r in page.into_iter().take(limit as usize) {
                after = Some(r.name.clone());
                if r.intent == Some(Intent::Destroy) || r.labels.contains_key(crate::store::INTERNAL_LABEL) {
                    continue;
                }
                if labels.iter().all(|(k, v)| r.labels.get(k) == Some(v)) {
                    out.push(self.view(&r));
                    if out.len() == limit as usize {
                        let more =
                            !exhausted || self.store.list_sandboxes(prefix, after.as_deref(), 1)?.len() == 1;
                        return Ok(SandboxList {
                            sandboxes: out,
                            next_cursor: more.then(|| after.unwrap_or_default()),
                        });
                    }
                }
            }
            if exhausted {
                return Ok(SandboxList {
                    sandboxes: out,
                    next_cursor: None,
                });
            }
        }
    }

    pub fn images(&self) -> Result<Vec<Image>> {
        self.images.list()
    }

    // ----- create / delete -------------------------------------------------------------

    pub async fn create(&self, req: CreateSandbox) -> Result<Sandbox> {
        reject_internal_label(&req.labels)?;
        self.create_from(req, None).await
    }

    /// Creates a sandbox; `layer` (image label, volume) overrides the image lookup, for
    /// image builds that run steps on intermediate layers.
    pub(crate) async fn create_from(
        &self,
        req: CreateSandbox,
        layer: Option<(String, PathBuf)>,
    ) -> Result<Sandbox> {
        let name = req.name.to_string();
        let fork_src = match &req.from {
            Some(f) => {
                let src = self.record(f.sandbox.as_str())?;
                if let Some(cp) = &f.checkpoint {
                    burrow_api::CheckpointId::parse(cp).map_err(|e| CoreError::Invalid(e.to_string()))?;
                }
                Some((src, f.checkpoint.clone()))
            }
            None => None,
        };
        // A fork runs on its source's engine: the disk it copies is that engine's kind.
        let engine = match (&fork_src, req.engine) {
            (Some((src, _)), Some(asked)) if asked != src.engine => {
                return Err(CoreError::Invalid(format!(
                    "sandbox '{}' runs on the {} engine; a fork of it does too (engine '{}' was asked)",
                    src.name,
                    src.engine.as_str(),
                    asked.as_str()
                )));
            }
            (Some((src, _)), _) => src.engine,
            (None, asked) => asked.unwrap_or_else(|| self.engines.default_kind()),
        };
        let kind = self.engines.get(engine)?;
        if let (Some((src, _)), Some(true)) = (&fork_src, req.from.as_ref().map(|f| f.memory))
            && !kind.capabilities().memory_snapshot
        {
            return Err(CoreError::Conflict(format!(
                "sandbox '{}' runs on the {} engine, which keeps no memory: a fork with memory \
                 needs the vm engine (fork without --memory copies the disk)",
                src.name,
                engine.as_str()
            )));
        }
        let mut d = self.cfg.defaults.clone();
        // A VM fork resumes its source's memory: it has its source's machine unless told
        // otherwise (a saved memory state only resumes with the same guest RAM).
        if let Some((src, _)) = fork_src.as_ref().filter(|(s, _)| s.engine == EngineKind::Vm) {
            d.cpus = src.config.cpus;
            d.memory_mb = src.config.memory_mb;
            d.disk_gb = src.config.disk_gb;
        }
        let config = SandboxConfig {
            cpus: req.cpus.unwrap_or(d.cpus),
            memory_mb: req.memory_mb.unwrap_or(d.memory_mb),
            disk_gb: req.disk_gb.unwrap_or(d.disk_gb),
            pids: req.pids.unwrap_or(d.pids),
            idle_timeout_s: req.idle_timeout_s.unwrap_or(d.idle_timeout_s),
            cold_after_s: req.cold_after_s.unwrap_or(d.cold_after_s),
            url_auth: req.url_auth.unwrap_or(UrlAuth::Private),
            restart: req.restart.unwrap_or_default(),
        };
        validate_config(&config)?;
        validate_env(&req.env)?;
        validate_labels(&req.labels)?;
        if self.store.sandbox_by_name(&name)?.is_some() {
            return Err(CoreError::NameTaken(name));
        }
        // A plain create of a container may take a pre-started sandbox (`prestart.rs`).
        let pooled = req
            .labels
            .get(INTERNAL_LABEL)
            .is_some_and(|v| v == crate::prestart::PRESTART);
        let poolable = fork_src.is_none()
            && layer.is_none()
            && !req.labels.contains_key(INTERNAL_LABEL)
            && self.prestart_fits(engine, &config);
        if poolable {
            let image = req.image.clone().unwrap_or_else(|| "base".to_owned());
            let mut env = self.images.config(&image).env;
            env.extend(req.env.clone());
            let asked = crate::prestart::Asked {
                name: &name,
                config: &config,
                env,
                labels: req.labels.clone(),
                fork: None,
            };
            if let Some(sb) = self.claim_prestarted(engine, &image, &asked).await? {
                return Ok(sb);
            }
        }
        // A fork of a container's disk may too: the copy goes under a pre-started sandbox of
        // its source's image as its root, in place (`reroot.rs`).
        if let (Some((src, cp)), Some(from)) = (&fork_src, &req.from)
            && !from.memory
            && engine == EngineKind::Container
            && layer.is_none()
            && !req.labels.contains_key(INTERNAL_LABEL)
            && self.prestart_fits(engine, &config)
        {
            if let Some(cp) = cp {
                self.checkpoint_record(src, cp)?;
            }
            let asked = crate::prestart::Asked {
                name: &name,
                config: &config,
                env: req.env.clone(),
                labels: req.labels.clone(),
                fork: Some(crate::prestart::PoolFork {
                    src,
                    checkpoint: cp.as_deref(),
                    parent: from.clone(),
                }),
            };
            if let Some(sb) = self.claim_prestarted(engine, &src.image, &asked).await? {
                return Ok(sb);
            }
        }
        self.check_pool_room(&match (&fork_src, &layer) {
            (Some((src, _)), _) => format!("fork sandbox '{}' into '{name}'", src.name),
            (None, Some((label, _))) => format!("run a build step of image '{label}'"),
            (None, None) => format!("create sandbox '{name}'"),
        })?;
        let image = match (&fork_src, &layer) {
            (Some((src, _)), _) => src.image.clone(),
            (None, Some((label, _))) => label.clone(),
            (None, None) => req.image.clone().unwrap_or_else(|| "base".to_owned()),
        };
        let image_path = match (&fork_src, layer) {
            (Some(_), _) => None,
            (None, Some((_, path))) => Some(path),
            (None, None) => Some(self.images.wait_ready(&image).await?),
        };
        // An image's ENV (from its build) is the default environment of its sandboxes.
        let mut env = match &fork_src {
            Some(_) => BTreeMap::new(),
            None => self.images.config(&image).env,
        };
        env.extend(req.env);

        let now = now_rfc3339();
        let mut rec = SandboxRecord {
            id: format!("sb-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            name: name.clone(),
            status: SandboxStatus::Creating,
            intent: Some(Intent::Create),
            engine,
            image,
            created_at: now.clone(),
            updated_at: now.clone(),
            last_active_at: now,
            config,
            env,
            labels: req.labels,
            parent: req.from.clone(),
            failure_reason: None,
            next_checkpoint: 0,
            notice: None,
            instance: None,
        };
        // Intent first: a crash from here on leaves a row that reconciliation cleans up.
        self.store.insert_sandbox(&rec).map_err(|e| match e {
            StoreError::Unique(_) => CoreError::NameTaken(name.clone()),
            e => e.into(),
        })?;
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        match self.provision(&rec, image_path, fork_src).await {
            Ok(()) => {
                transition(&mut rec, Action::Created)?;
                rec.intent = None;
                rec.updated_at = now_rfc3339();
                self.store.update_sandbox(&rec)?;
                tracing::info!(sandbox = %rec.name, id = %rec.id, "created");
                // The CA into the image's trust store, off the create's path (processes already
                // find it through SSL_CERT_FILE and friends).
                if let Some(me) = self.me() {
                    let rec = rec.clone();
                    tokio::spawn(NO_WAKE.scope((), async move { me.install_net_files(&rec).await }));
                }
                self.runtime(&rec.id).touch();
                if !pooled {
                    self.events.emit(
                        &rec.name,
                        "created",
                        serde_json::json!({"id": rec.id, "parent": rec.parent}),
                    );
                }
                Ok(self.view(&rec))
            }
            Err(e) => {
                tracing::warn!(sandbox = %rec.name, error = %chain(&e), "create failed; cleaning up");
                if let Err(ce) = self.teardown(&rec).await {
                    tracing::error!(sandbox = %rec.name, error = %chain(&ce), "cleanup after failed create");
                } else {
                    self.delete_record(&rec.id)?;
                }
                Err(e)
            }
        }
    }

    async fn provision(
        &self,
        rec: &SandboxRecord,
        image_path: Option<PathBuf>,
        fork_src: Option<(SandboxRecord, Option<String>)>,
    ) -> Result<()> {
        let pool = self.pool.clone();
        let dst = pool.sandbox_path(&rec.id);
        let t = std::time::Instant::now();
        match (image_path, fork_src) {
            (_, Some((src, cp))) => {
                let memory = rec.parent.as_ref().is_some_and(|p| p.memory);
                self.snapshot_fork_source(&src, cp.as_deref(), dst, memory, None)
                    .await?
            }
            (Some(image_path), None) => {
                let src = match self.engine(rec)?.disk_kind() {
                    burrow_engine::DiskKind::Tree => image_path,
                    burrow_engine::DiskKind::Image => self.image_disk(rec, &image_path).await?,
                };
                blocking(move || Ok(pool.snapshot(&src, &dst, false)?)).await?
            }
            (None, None) => return Err(CoreError::Internal("nothing to create the sandbox from".into())),
        }
        tracing::debug!(sandbox = %rec.name, ms = t.elapsed().as_secs_f64() * 1e3, "snapshot");
        self.size_disk_image(rec).await?;
        self.apply_disk_limit(rec).await?;
        crate::fault::point("create.after_snapshot");
        self.boot(rec).await?;
        crate::fault::point("create.after_boot");
        Ok(())
    }

    /// The volume an image-disk engine's sandboxes of `rec.image` are snapshots of: the
    /// image's tree made into a disk image by the engine, once per image version (a rebuilt
    /// image gets a new one), read-only, under `vmdisks/` in the pool.
    async fn image_disk(&self, rec: &SandboxRecord, tree: &std::path::Path) -> Result<PathBuf> {
        let engine = self.engine(rec)?;
        let made = self
            .store
            .image(&rec.image)?
            .map(|i| i.created_at)
            .unwrap_or_default();
        let key = format!(
            "{}-{}-{:08x}",
            rec.image,
            engine.kind().as_str(),
            crate::config::fnv1a(made.as_bytes()) as u32
        );
        let dir = self.pool.root().join("vmdisks");
        let vol = dir.join(&key);
        // One build at a time: two creates from a fresh image wait for the same disk.
        let _g = self.image_disks.lock().await;
        if self.pool.is_volume(&vol) {
            return Ok(vol);
        }
        let pool = self.pool.clone();
        let tree = tree.to_owned();
        let out = vol.clone();
        let t = std::time::Instant::now();
        blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| CoreError::Internal(format!("creating {}: {e}", dir.display())))?;
            let tmp = out.with_extension("new");
            if pool.is_volume(&tmp) {
                pool.delete_volume(&tmp)?;
            }
            pool.create_volume(&tmp)?;
            if let Err(e) = engine.prepare_image(&tree, &tmp) {
                let _ = pool.delete_volume(&tmp);
                return Err(e.into());
            }
            pool.set_readonly(&tmp, true)?;
            std::fs::rename(&tmp, &out)
                .map_err(|e| CoreError::Internal(format!("renaming {}: {e}", tmp.display())))?;
            Ok(())
        })
        .await?;
        tracing::info!(image = %rec.image, ms = t.elapsed().as_secs_f64() * 1e3, "made the image's VM disk");
        Ok(vol)
    }

    /// Grows an image-disk sandbox's disk file to `disk_gb` (the guest grows its
    /// filesystem to the device at boot). Nothing for tree disks.
    pub(crate) async fn size_disk_image(&self, rec: &SandboxRecord) -> Result<()> {
        if self.engine(rec)?.disk_kind() != burrow_engine::DiskKind::Image {
            return Ok(());
        }
        let disk = self.pool.sandbox_path(&rec.id).join(burrow_engine::DISK_IMAGE);
        let bytes = rec.config.disk_gb << 30;
        blocking(move || Ok(burrow_engine::vm::disk::grow(&disk, bytes)?)).await
    }

    /// What the volume of `rec` with `config` may reference: its disk, and for a VM its
    /// memory too (a VM's volume holds its guest memory: the limit is on the disk's share).
    pub(crate) fn disk_limit_bytes(&self, rec: &SandboxRecord, config: &SandboxConfig) -> Result<u64> {
        let memory = match self.engine(rec)?.disk_kind() {
            burrow_engine::DiskKind::Image => config.memory_mb << 20,
            burrow_engine::DiskKind::Tree => 0,
        };
        Ok((config.disk_gb << 30) + memory)
    }

    /// Enforces `disk_gb` on the sandbox's volume (btrfs qgroup on what it references).
    pub(crate) async fn apply_disk_limit(&self, rec: &SandboxRecord) -> Result<()> {
        let pool = self.pool.clone();
        let path = pool.sandbox_path(&rec.id);
        let bytes = self.disk_limit_bytes(rec, &rec.config)?;
        let enforced = blocking(move || Ok(pool.set_quota(&path, bytes)?)).await?;
        if !enforced {
            tracing::warn!(sandbox = %rec.name, "disk limit not enforced: the pool has no quotas (dir pool)");
        }
        Ok(())
    }

    /// Starts the engine and waits for the agent's handshake.
    pub(crate) async fn boot(&self, rec: &SandboxRecord) -> Result<()> {
        let mut spec = self.spec(rec);
        spec.netns = self.net_namespace(rec).await?;
        if spec.netns.is_some() {
            // burrowd's resolver, bound read-only over the image's resolv.conf.
            spec.shared_dirs = self.shared_dirs(rec, true);
        }
        self.make_checkpoints_view(rec)?;
        std::fs::create_dir_all(&spec.run_dir)
            .map_err(|e| CoreError::Internal(format!("creating {}: {e}", spec.run_dir.display())))?;
        self.ensure_inside_api(rec)?;
        self.runtime(&rec.id).booted();
        let engine = self.engine(rec)?;
        // A VM with its memory saved is resumed, not booted: its agent serves at once.
        let resuming = engine.suspended(&spec.rootfs);
        let t = std::time::Instant::now();
        // The sandbox starts in its (still unwired) namespace while the veth, addresses and
        // rules are set up: the agent needs no network to answer.
        let (started_engine, wired) =
            tokio::join!(blocking(move || Ok(engine.start(&spec)?)), self.net_attach(rec));
        if let Err(e) = wired {
            if started_engine.is_ok() {
                let _ = self.kill(rec).await;
            }
            return Err(e);
        }
        started_engine?;
        let started = t.elapsed();
        let why = if resuming { Connect::Resume } else { Connect::Boot };
        let client = self.connect_agent(rec, why).await?;
        // A VM woken from its own memory has them already; a fresh boot or a fork (its own
        // CA) gets them.
        if !self.engine(rec)?.capabilities().shared_dirs
            && (!resuming || rec.status == SandboxStatus::Creating)
        {
            self.mirror_host_files(rec, &client).await;
        }
        if resuming {
            self.sync_clock(rec, client).await;
        }
        tracing::debug!(
            sandbox = %rec.name,
            engine_ms = started.as_secs_f64() * 1e3,
            agent_ms = (t.elapsed() - started).as_secs_f64() * 1e3,
            "booted"
        );
        self.start_services(rec).await;
        Ok(())
    }

    /// Sets a resumed guest's wall clock to the host's (it stood still while the VM slept).
    /// Bounded; a failure is logged, never fatal: the guest runs, with a late clock.
    async fn sync_clock(&self, rec: &SandboxRecord, mut client: AgentClient<Channel>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let mut entropy = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut entropy);
        let req = burrow_agent_proto::v1::SetClockRequest {
            unix_nanos: now,
            hostname: rec.name.clone(),
            entropy,
        };
        match tokio::time::timeout(Duration::from_secs(5), client.set_clock(req)).await {
            Ok(Ok(r)) => {
                tracing::debug!(sandbox = %rec.name, skew_ms = r.into_inner().skew_nanos / 1_000_000, "guest clock set")
            }
            Ok(Err(e)) => tracing::warn!(sandbox = %rec.name, error = %e, "setting the guest's clock"),
            Err(_) => tracing::warn!(sandbox = %rec.name, "setting the guest's clock: no answer"),
        }
    }

    /// Connects to an agent that was just (re)started in the running sandbox `rec`, waiting
    /// for it to come up like after a boot.
    pub(crate) async fn connect_fresh_agent(&self, rec: &SandboxRecord) -> Result<()> {
        self.connect_agent(rec, Connect::Boot).await.map(drop)
    }

    /// Connects to the agent of `rec`, one connect at a time per sandbox; `why` says what
    /// the agent is doing (on its way up, resumed, or serving already).
    async fn connect_agent(&self, rec: &SandboxRecord, why: Connect) -> Result<AgentClient<Channel>> {
        let booting = why == Connect::Boot;
        let rt = self.runtime(&rec.id);
        let lock = rt.connect_lock();
        let _connecting = lock.lock().await;
        if let Some(c) = rt.agent() {
            // Connected by whoever held the lock before us: after a stop or a sleep the
            // cached client is dropped, so one here talks to this very instance. A boot
            // makes sure it answers (a one-connection channel cannot take a second).
            match why {
                Connect::Reconnect => return Ok(c),
                Connect::Boot | Connect::Resume => {
                    let mut ping = c.clone();
                    let hello = burrow_agent_proto::v1::HelloRequest {
                        protocol_version: burrow_agent_proto::PROTOCOL_VERSION,
                        host_version: env!("CARGO_PKG_VERSION").to_owned(),
                    };
                    if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), ping.hello(hello)).await {
                        return Ok(c);
                    }
                    rt.set_agent(None);
                }
            }
        }
        let engine = self.engine(rec)?;
        let dialer = engine.agent_dialer(&self.engine_dir(rec));
        let connect = |timeout| {
            let d = dialer.clone();
            burrow_agent_proto::client::connect(
                move || {
                    let d = d.clone();
                    async move { d.dial().await }
                },
                dialer.endpoint(),
                timeout,
            )
        };
        let total = engine.ready_timeout().max(AGENT_CONNECT_TIMEOUT);
        // What the sandbox printed last says why it does not answer (a kernel or an agent
        // that failed on its way up, a guest that ran out of memory).
        let agent_err = |e: burrow_agent_proto::client::ConnectError| {
            let mut detail = chain(&e);
            let tail = engine.output_tail(&self.engine_dir(rec), 1024);
            if !tail.is_empty() {
                detail.push_str(&format!("; its output ends with: {tail}"));
            }
            CoreError::Agent {
                name: rec.name.clone(),
                detail,
            }
        };
        let conn = if engine.capabilities().one_connection && !booting {
            // A guest may still hold an earlier connection (a daemon restart, a resume):
            // its first handshake then stalls; hang up, let it see that, and try again.
            // (A fresh boot has no earlier connection: one attempt takes the whole time,
            // as a kernel on a loaded host may take long to bring its agent up.)
            let deadline = tokio::time::Instant::now() + total;
            let mut attempt = ONE_CONNECTION_RETRY;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match connect(attempt.min(left)).await {
                    Ok(c) => break c,
                    // A caller that is not booting it gives up as soon as the sandbox
                    // is no longer expected to serve (it went to sleep, stopped, …): its
                    // next start connects on its own.
                    Err(e) if why == Connect::Reconnect && !self.still_serving(rec) => {
                        return Err(agent_err(e));
                    }
                    Err(e) if left > attempt + ONE_CONNECTION_PAUSE => {
                        tracing::debug!(sandbox = %rec.name, error = %chain(&e), "agent handshake: trying again");
                        tokio::time::sleep(ONE_CONNECTION_PAUSE).await;
                        attempt = ONE_CONNECTION_RETRY;
                    }
                    Err(e) => return Err(agent_err(e)),
                }
            }
        } else {
            connect(total).await.map_err(agent_err)?
        };
        let client = conn.client;
        self.runtime(&rec.id).set_agent(Some(client.clone()));
        Ok(client)
    }

    /// Whether `rec`'s sandbox (as stored now) should still have an agent to talk to.
    fn still_serving(&self, rec: &SandboxRecord) -> bool {
        self.store
            .sandbox_by_name(&rec.name)
            .ok()
            .flatten()
            .is_some_and(|now| now.id == rec.id && self.agent_expected(&now))
    }

    pub(crate) async fn agent(&self, rec: &SandboxRecord) -> Result<AgentClient<Channel>> {
        let cached = self.runtime(&rec.id).agent();
        match cached {
            Some(c) => Ok(c),
            None => self.connect_agent(rec, Connect::Reconnect).await,
        }
    }

    /// Whether `rec`'s volume holds a memory state its engine resumes on the next start.
    pub(crate) fn has_saved_memory(&self, rec: &SandboxRecord) -> bool {
        self.engine(rec)
            .is_ok_and(|e| e.suspended(&self.pool.sandbox_path(&rec.id)))
    }

    /// The engine that runs `rec` (the one its record names).
    pub(crate) fn engine(&self, rec: &SandboxRecord) -> Result<Arc<dyn Engine>> {
        self.engines.get(rec.engine)
    }

    pub(crate) fn forget_agent(&self, id: &str) {
        if let Some(rt) = self.runtimes.existing(id) {
            rt.set_agent(None);
        }
    }

    /// Stops the runtime and removes the disk and runtime dir of a sandbox. Idempotent.
    pub(crate) async fn teardown(&self, rec: &SandboxRecord) -> Result<()> {
        self.forget_agent(&rec.id);
        self.stop_inside_api(&rec.id);
        let engine = self.engine(rec)?;
        let pool = self.pool.clone();
        let id = rec.id.clone();
        let run_dirs = [self.run_dir(&rec.id), self.engine_dir(rec)];
        let stopped = engine.clone();
        let eid = rec.eid().to_owned();
        blocking(move || Ok(stopped.stop(&eid, Duration::ZERO)?)).await?;
        self.net_detach(rec).await;
        blocking(move || {
            let live = pool.sandbox_path(&id);
            pool.delete_volume(&live)?;
            // What a swap of volumes (a restore, a fork into a pre-started sandbox) that a
            // crash interrupted left beside it.
            for extension in ["new", "old"] {
                pool.delete_volume(&live.with_extension(extension))?;
            }
            // Its checkpoints directory when it has none (a pre-started sandbox's): the
            // checkpoints themselves are the caller's (`delete_all_checkpoints`).
            let _ = std::fs::remove_dir(pool.checkpoints_dir().join(&id));
            for run_dir in run_dirs {
                match std::fs::remove_dir_all(&run_dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(CoreError::Internal(format!(
                            "removing {}: {e}",
                            run_dir.display()
                        )));
                    }
                }
            }
            Ok(())
        })
        .await
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        let mut rec = self.record(name)?;
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        let mut rec2 = self
            .store
            .sandbox_by_name(name)?
            .ok_or_else(|| CoreError::not_found("sandbox", name))?;
        if rec2.id != rec.id {
            return Err(CoreError::not_found("sandbox", name));
        }
        rec2.intent = Some(Intent::Destroy);
        rec2.updated_at = now_rfc3339();
        self.store.update_sandbox(&rec2)?;
        rec = rec2;
        crate::fault::point("delete.after_intent");
        self.set_end_reason(&rec.id, format!("sandbox '{}' was deleted", rec.name));
        self.teardown(&rec).await?;
        self.delete_all_checkpoints(&rec).await?;
        self.forget_services(&rec);
        self.delete_record(&rec.id)?;
        self.reclaim_space();
        tracing::info!(sandbox = %rec.name, id = %rec.id, "destroyed");
        self.events
            .emit(&rec.name, "deleted", serde_json::json!({"id": rec.id}));
        Ok(())
    }

    // ----- lifecycle -------------------------------------------------------------------

    pub async fn action(&self, name: &str, action: Action) -> Result<Sandbox> {
        let rec = self.record(name)?;
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        // Re-read under the lock: another operation may have changed it meanwhile.
        let mut rec = self.record(name)?;
        // No verb acts on a dead agent as if it ran: its death is recorded first (`failed`),
        // so `start` boots it and `sleep`/`wake` refuse.
        self.reap_if_dead(&mut rec).await?;
        valid_transition(&rec.name, rec.status, action)?;
        match (rec.status, action) {
            (SandboxStatus::Running, Action::Start | Action::Wake) => {}
            (SandboxStatus::Stopped, Action::Stop) => {}
            (SandboxStatus::Sleeping, Action::Sleep) => {}
            (SandboxStatus::Running, Action::Sleep) => {
                let mode = self.put_to_sleep(&rec).await?;
                self.runtime(&rec.id).set_sleep(Some(mode));
                self.events
                    .emit(&rec.name, "sleeping", serde_json::json!({"mode": mode.as_str()}));
            }
            (SandboxStatus::Sleeping, Action::Wake | Action::Start) => {
                let t = std::time::Instant::now();
                let mode = self
                    .runtime(&rec.id)
                    .sleep_mode()
                    .unwrap_or(crate::state::SleepMode::Warm);
                // How it woke (the `woke` event's `via`).
                let via = match mode {
                    crate::state::SleepMode::Warm => {
                        self.freeze(&rec, false).await?;
                        "thaw"
                    }
                    // Memory: the engine resumes the saved VM, processes and all.
                    crate::state::SleepMode::Memory => {
                        self.boot_or_fail(&mut rec).await?;
                        "resume"
                    }
                    // Cold: every process was stopped; in a pre-started sandbox's runtime
                    // where one can serve, else boot again (services restart either way).
                    crate::state::SleepMode::Cold => {
                        if self.wake_into_prestarted(&mut rec).await? {
                            "pre-started"
                        } else {
                            self.boot_or_fail(&mut rec).await?;
                            "boot"
                        }
                    }
                };
                self.runtime(&rec.id).set_sleep(None);
                self.runtime(&rec.id).touch();
                let lost = match mode {
                    crate::state::SleepMode::Warm | crate::state::SleepMode::Memory => serde_json::json!([]),
                    crate::state::SleepMode::Cold => {
                        serde_json::json!(["every process: the sandbox was booted again"])
                    }
                };
                self.events.emit(
                    &rec.name,
                    "woke",
                    serde_json::json!({"from": mode.as_str(), "via": via, "ms": t.elapsed().as_secs_f64() * 1e3, "lost": lost}),
                );
            }
            (_, Action::Stop) => {
                self.set_end_reason(&rec.id, format!("sandbox '{}' was stopped", rec.name));
                self.halt(&rec).await?;
                self.discard_memory(&rec).await?;
                // Nothing runs in its network namespace any more (see `sleep_cold`).
                self.net_unwire(rec.eid()).await;
                self.runtime(&rec.id).set_sleep(None);
            }
            // A stopped container starts in a pre-started sandbox's runtime where one can
            // serve, like a cold wake.
            (SandboxStatus::Stopped, Action::Start) => {
                if !self.wake_into_prestarted(&mut rec).await? {
                    self.boot_or_fail(&mut rec).await?
                }
            }
            (_, Action::Start) => self.boot_or_fail(&mut rec).await?,
            (_, Action::Restart) => {
                self.set_end_reason(&rec.id, format!("sandbox '{}' was restarted", rec.name));
                self.halt(&rec).await?;
                self.discard_memory(&rec).await?;
                self.boot_or_fail(&mut rec).await?;
            }
            (from, action) => {
                return Err(CoreError::IllegalTransition {
                    name: rec.name,
                    action: action.as_str(),
                    from,
                });
            }
        }
        transition(&mut rec, action)?;
        rec.failure_reason = None;
        rec.updated_at = now_rfc3339();
        self.store.update_sandbox(&rec)?;
        tracing::info!(sandbox = %rec.name, status = %rec.status, "{}", action.as_str());
        if matches!(action, Action::Start | Action::Stop | Action::Restart) {
            let kind = match action {
                Action::Start => "started",
                Action::Stop => "stopped",
                _ => "restarted",
            };
            self.events
                .emit(&rec.name, kind, serde_json::json!({"status": rec.status}));
        }
        Ok(self.view(&rec))
    }

    pub(crate) async fn freeze(&self, rec: &SandboxRecord, freeze: bool) -> Result<()> {
        let engine = self.engine(rec)?;
        let id = rec.eid().to_owned();
        blocking(move || {
            if freeze {
                engine.freeze(&id)?;
            } else {
                engine.thaw(&id)?;
            }
            Ok(())
        })
        .await
    }

    /// Stops every process of the sandbox without a grace period.
    pub(crate) async fn kill(&self, rec: &SandboxRecord) -> Result<()> {
        self.forget_agent(&rec.id);
        let engine = self.engine(rec)?;
        let id = rec.eid().to_owned();
        blocking(move || Ok(engine.stop(&id, Duration::ZERO)?)).await
    }

    pub(crate) async fn halt(&self, rec: &SandboxRecord) -> Result<()> {
        let engine = self.engine(rec)?;
        if engine.capabilities().agent_shutdown {
            self.ask_agent_to_shut_down(rec).await;
        }
        self.forget_agent(&rec.id);
        let id = rec.eid().to_owned();
        blocking(move || Ok(engine.stop(&id, STOP_GRACE)?)).await
    }

    /// Asks a running agent to end its processes (SIGTERM, then SIGKILL after the grace)
    /// and its sandbox; bounded, and a no-op when nothing answers.
    async fn ask_agent_to_shut_down(&self, rec: &SandboxRecord) {
        let Some(mut client) = self.runtime(&rec.id).agent() else {
            return;
        };
        let req = burrow_agent_proto::v1::ShutdownRequest {
            grace_ms: STOP_GRACE.as_millis() as u32,
        };
        // The agent answers once every process is gone and the filesystems are synced: the
        // call must outlive the grace (a cancelled call would stop it before the sync).
        let bound = STOP_GRACE + Duration::from_secs(15);
        let _ = tokio::time::timeout(bound, client.shutdown(req)).await;
    }

    /// Sends a running sandbox to sleep: its memory saved to its volume and its runtime
    /// ended where the engine can (VMs), else every process frozen in place.
    async fn put_to_sleep(&self, rec: &SandboxRecord) -> Result<crate::state::SleepMode> {
        let engine = self.engine(rec)?;
        if !engine.capabilities().memory_snapshot {
            self.freeze(rec, true).await?;
            return Ok(crate::state::SleepMode::Warm);
        }
        let id = rec.eid().to_owned();
        let rt = self.runtime(&rec.id);
        blocking(move || Ok(engine.suspend(&id, &move || rt.set_agent(None))?)).await?;
        crate::fault::point("sleep.after_suspend");
        Ok(crate::state::SleepMode::Memory)
    }

    /// Drops a saved memory state, so the next start boots afresh (stop means no process).
    pub(crate) async fn discard_memory(&self, rec: &SandboxRecord) -> Result<()> {
        let engine = self.engine(rec)?;
        let volume = self.pool.sandbox_path(&rec.id);
        blocking(move || Ok(engine.discard_suspended(&volume)?)).await
    }

    /// Boots a sandbox; on failure records `failed` with the reason and returns the error.
    pub(crate) async fn boot_or_fail(&self, rec: &mut SandboxRecord) -> Result<()> {
        if let Err(e) = self.boot(rec).await {
            let _ = self.halt(rec).await;
            transition(rec, Action::Fail)?;
            rec.failure_reason = Some(chain(&e));
            self.events
                .emit(&rec.name, "failed", serde_json::json!({"reason": chain(&e)}));
            rec.updated_at = now_rfc3339();
            self.store.update_sandbox(rec)?;
            return Err(e);
        }
        Ok(())
    }

    pub async fn patch(&self, name: &str, p: PatchSandbox) -> Result<Sandbox> {
        let rec = self.record(name)?;
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        let mut rec = self.record(name)?;
        let mut cfg = rec.config.clone();
        if let Some(v) = p.cpus {
            cfg.cpus = v;
        }
        if let Some(v) = p.memory_mb {
            cfg.memory_mb = v;
        }
        if let Some(v) = p.disk_gb {
            cfg.disk_gb = v;
        }
        if let Some(v) = p.pids {
            cfg.pids = v;
        }
        if let Some(v) = p.idle_timeout_s {
            cfg.idle_timeout_s = v;
        }
        if let Some(v) = p.cold_after_s {
            cfg.cold_after_s = v;
        }
        if let Some(v) = p.url_auth {
            cfg.url_auth = v;
        }
        if let Some(v) = p.restart {
            cfg.restart = v;
        }
        validate_config(&cfg)?;
        if let Some(env) = &p.env {
            validate_env(env)?;
        }
        if let Some(labels) = &p.labels {
            validate_labels(labels)?;
            reject_internal_label(labels)?;
        }
        // cpu, memory and pids limits of a running sandbox take effect at its next start; the
        // disk limit at once (a VM's disk grows online; its filesystem fills it, so it
        // cannot shrink).
        let disk_changed = rec.config.disk_gb != cfg.disk_gb;
        if cfg.disk_gb < rec.config.disk_gb
            && self.engine(&rec)?.disk_kind() == burrow_engine::DiskKind::Image
        {
            return Err(CoreError::Conflict(format!(
                "the disk of sandbox '{}' cannot shrink from {} GB to {} GB: a VM's filesystem \
                 fills its whole disk; copy its files into a new sandbox with the smaller disk_gb",
                rec.name, rec.config.disk_gb, cfg.disk_gb
            )));
        }
        rec.config = cfg;
        if disk_changed {
            self.apply_disk_limit(&rec).await?;
        }
        if let Some(env) = p.env {
            rec.env = env;
        }
        if let Some(labels) = p.labels {
            rec.labels = labels;
        }
        rec.updated_at = now_rfc3339();
        self.store.update_sandbox(&rec)?;
        if disk_changed {
            self.grow_disk(&rec).await?;
        }
        Ok(self.view(&rec))
    }

    /// Grows an image disk to `disk_gb` now: a running VM sees the larger device at once
    /// and its agent grows the filesystem online; a VM that does not run grows it at its
    /// next boot. Nothing for tree disks (their limit is the quota).
    async fn grow_disk(&self, rec: &SandboxRecord) -> Result<()> {
        let engine = self.engine(rec)?;
        let volume = self.pool.sandbox_path(&rec.id);
        let bytes = rec.config.disk_gb << 30;
        let id = rec.eid().to_owned();
        if !blocking(move || Ok(engine.grow_disk(&id, &volume, bytes)?)).await? {
            return Ok(());
        }
        let call = |mut client: AgentClient<Channel>| async move {
            let req = burrow_agent_proto::v1::GrowFsRequest {
                min_device_bytes: bytes,
            };
            tokio::time::timeout(Duration::from_secs(60), client.grow_fs(req)).await
        };
        let mut answer = call(self.agent(rec).await?).await;
        if matches!(&answer, Ok(Err(s)) if s.code() != tonic::Code::Unimplemented) {
            // The cached channel may be stale (the VM was resumed): reconnect once.
            self.forget_agent(&rec.id);
            answer = call(self.agent(rec).await?).await;
        }
        let detail = match answer {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => {
                "its agent predates online disk growth".to_owned()
            }
            Ok(Err(s)) => s.message().to_owned(),
            Err(_) => "the guest did not answer within 60 s".to_owned(),
        };
        Err(CoreError::Agent {
            name: rec.name.clone(),
            detail: format!(
                "its disk is now {} GB but the guest did not grow its filesystem ({detail}); \
                 a restart grows it",
                rec.config.disk_gb
            ),
        })
    }

    // ----- exec ------------------------------------------------------------------------

    /// Makes sure the sandbox runs (waking it if asleep) and returns its record.
    pub(crate) async fn ensure_running(&self, name: &str) -> Result<SandboxRecord> {
        let rec = self.record(name)?;
        crate::watch::not_running(&rec)?;
        valid_transition(&rec.name, rec.status, Action::Exec)?;
        self.runtime(&rec.id).touch();
        if rec.status == SandboxStatus::Sleeping {
            if NO_WAKE.try_with(|_| ()).is_ok() {
                return Err(CoreError::Conflict(format!(
                    "sandbox '{name}' is asleep (not woken for the daemon's own work)"
                )));
            }
            self.action(name, Action::Wake).await?;
            return self.record(name);
        }
        // A dead agent is told as such, not as a refused connection.
        self.check_agent(name).await?;
        Ok(rec)
    }

    pub(crate) fn touch(&self, rec: &SandboxRecord) {
        if let Err(e) = self.store.touch_sandbox(&rec.id, &now_rfc3339()) {
            tracing::warn!(sandbox = %rec.name, error = %e, "recording activity");
        }
    }

    /// The environment of a process in the sandbox: a base (PATH, HOSTNAME, LANG, TERM for a
    /// terminal), then the sandbox's env, then `extra`. Exec and services share it.
    pub(crate) fn exec_env(
        &self,
        rec: &SandboxRecord,
        extra: &BTreeMap<String, String>,
        tty: bool,
    ) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
        env.insert("HOSTNAME".into(), rec.name.clone());
        env.insert("LANG".into(), "C.UTF-8".into());
        if tty {
            env.insert("TERM".into(), "xterm-256color".into());
        }
        self.net_env(rec, &mut env);
        env.extend(rec.env.clone());
        env.extend(extra.clone());
        env.into_iter().collect()
    }

    pub async fn exec_stream(
        &self,
        name: &str,
        mut opts: StreamExecOptions,
        extra_env: &BTreeMap<String, String>,
    ) -> Result<ExecSession> {
        validate_argv(&opts.argv)?;
        validate_env(extra_env)?;
        let rec = self.ensure_running(name).await?;
        opts.env = self.exec_env(&rec, extra_env, opts.tty);
        exec::check_args_size(&opts.argv, &opts.env)?;
        if opts.cwd.is_none() {
            // An image's WORKDIR is the default working directory of its sandboxes.
            opts.cwd = self.images.config(&rec.image).workdir;
        }
        self.touch(&rec);
        let client = self.agent(&rec).await?;
        let mut session = match exec::start_session(client, &rec.name, opts.clone()).await {
            Err(CoreError::Agent { .. }) => {
                // The cached channel may be stale (agent restarted): reconnect once.
                self.forget_agent(&rec.id);
                let retried = match self.agent(&rec).await {
                    Ok(client) => exec::start_session(client, &rec.name, opts).await,
                    Err(e) => Err(e),
                };
                match retried {
                    Err(e @ CoreError::Agent { .. }) => Err(self.explain_agent_error(&rec.name, e).await),
                    other => other,
                }
            }
            other => other,
        }?;
        session.busy = Some(self.runtime(&rec.id).busy_guard());
        Ok(session)
    }

    pub async fn exec(&self, name: &str, req: ExecRequest) -> Result<ExecResult> {
        Ok(self.exec_collected(name, req).await?.into_result())
    }

    /// A one-shot exec whose output stays bytes (see [`exec::Collected`]).
    pub async fn exec_collected(&self, name: &str, req: ExecRequest) -> Result<exec::Collected> {
        let stdin = match (&req.stdin, &req.stdin_b64) {
            (Some(_), Some(_)) => return Err(CoreError::Invalid("give stdin or stdin_b64, not both".into())),
            (Some(s), None) => Some(s.clone().into_bytes()),
            (None, Some(b)) => {
                use base64::Engine as _;
                Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map_err(|e| CoreError::Invalid(format!("stdin_b64 is not valid base64: {e}")))?,
                )
            }
            (None, None) => None,
        };
        let timeout = match req.timeout_s {
            Some(t) if !(t > 0.0 && t <= 86_400.0) => {
                return Err(CoreError::Invalid(
                    "timeout_s must be > 0 and at most 86400".into(),
                ));
            }
            Some(t) => Some(Duration::from_secs_f64(t)),
            None => None,
        };
        let cap = exec::output_cap(req.max_output_bytes)?;
        let opts = StreamExecOptions {
            argv: req.cmd,
            cwd: req.cwd,
            user: req.user,
            stdin: stdin.is_some(),
            ..Default::default()
        };
        let session = self.exec_stream(name, opts, &req.env).await?;
        exec::collect(session, stdin, timeout, cap).await
    }

    // ----- reconciliation ----------------------------------------------------------------

    /// Brings DB, disk and runtime into agreement after a start (or crash): finishes or
    /// undoes half-done operations, adopts running sandboxes, restarts ones that should run
    /// and do not, and removes runtime containers, volumes and run dirs nobody owns.
    pub async fn reconcile(&self) -> Result<()> {
        self.reconcile_checkpoints().await?;
        let records = self.store.all_sandboxes()?;
        self.net_reconcile(&records)?;
        for mut rec in records.clone() {
            match rec.intent {
                Some(Intent::Create) | Some(Intent::Destroy) => {
                    tracing::warn!(sandbox = %rec.name, intent = ?rec.intent, "finishing interrupted operation: removing");
                    self.teardown(&rec).await?;
                    self.delete_all_checkpoints(&rec).await?;
                    self.forget_services(&rec);
                    self.delete_record(&rec.id)?;
                    continue;
                }
                Some(Intent::Restore { .. }) | None => {}
            }
            let engine = self.engine(&rec)?;
            let id = rec.eid().to_owned();
            let status = blocking(move || Ok(engine.status(&id)?)).await?;
            let want_running = matches!(rec.status, SandboxStatus::Running | SandboxStatus::Sleeping);
            match (want_running, status) {
                (true, RuntimeStatus::Running { .. }) => {
                    self.adopt_runtime(&rec).await;
                    if rec.status == SandboxStatus::Sleeping {
                        transition(&mut rec, Action::Wake)?;
                        self.store.update_sandbox(&rec)?;
                    }
                    // Lost run dir or agent socket: booted again (or `failed` with why).
                    match self.repair_runtime_files(&mut rec).await {
                        Ok(true) => {}
                        Ok(false) => {
                            self.ensure_inside_api(&rec)?;
                            tracing::info!(sandbox = %rec.name, "adopted running sandbox");
                        }
                        Err(e) => {
                            tracing::warn!(sandbox = %rec.name, error = %chain(&e), "could not boot again")
                        }
                    }
                }
                (true, RuntimeStatus::Missing | RuntimeStatus::Stopped)
                    if rec.status == SandboxStatus::Sleeping && self.has_saved_memory(&rec) =>
                {
                    // A VM asleep with its memory saved: the next request resumes it,
                    // processes and all.
                    self.runtime(&rec.id)
                        .set_sleep(Some(crate::state::SleepMode::Memory));
                    tracing::info!(sandbox = %rec.name, "adopted sandbox asleep with its memory saved");
                }
                (true, RuntimeStatus::Missing | RuntimeStatus::Stopped)
                    if rec.status == SandboxStatus::Sleeping =>
                {
                    // Its processes are gone (host reboot, or it was cold): it stays asleep,
                    // cold, and the next request boots it.
                    let _ = self.halt(&rec).await;
                    self.runtime(&rec.id)
                        .set_sleep(Some(crate::state::SleepMode::Cold));
                    tracing::info!(sandbox = %rec.name, "adopted cold-sleeping sandbox");
                }
                (true, RuntimeStatus::Paused { .. }) => {
                    self.adopt_runtime(&rec).await;
                    if rec.status == SandboxStatus::Sleeping {
                        self.runtime(&rec.id)
                            .set_sleep(Some(crate::state::SleepMode::Warm));
                    }
                    if rec.status == SandboxStatus::Running {
                        let _ = self.freeze(&rec, false).await;
                    }
                    self.ensure_inside_api(&rec)?;
                    tracing::info!(sandbox = %rec.name, status = %rec.status, "adopted sandbox");
                }
                (true, _) => {
                    tracing::warn!(sandbox = %rec.name, "sandbox should run but does not; starting it");
                    let _ = self.halt(&rec).await;
                    transition(&mut rec, Action::Start)?;
                    if self.boot_or_fail(&mut rec).await.is_ok() {
                        rec.updated_at = now_rfc3339();
                        self.store.update_sandbox(&rec)?;
                    }
                }
                (false, RuntimeStatus::Missing) => {}
                (false, _) => {
                    let _ = self.halt(&rec).await;
                }
            }
        }
        // Every sandbox's id, and the runtime it runs in where that is another's.
        let known: std::collections::HashSet<String> = self
            .store
            .all_sandboxes()?
            .into_iter()
            .flat_map(|r| [r.eid().to_owned(), r.id])
            .collect();
        // Runtime containers nobody owns.
        for engine in self.engines.ready().cloned().collect::<Vec<_>>() {
            let e = engine.clone();
            let listed = blocking(move || Ok(e.list()?)).await?;
            for id in listed.into_iter().filter(|id| !known.contains(id)) {
                tracing::warn!(id, engine = engine.kind().as_str(), "removing orphaned runtime");
                let engine = engine.clone();
                blocking(move || Ok(engine.stop(&id, Duration::ZERO)?)).await?;
            }
        }
        // Volumes and run dirs nobody owns.
        for dir in [self.pool.sandboxes_dir(), self.cfg.run_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                if known.contains(&id) {
                    continue;
                }
                tracing::warn!(path = %entry.path().display(), "removing orphaned sandbox data");
                if dir == self.pool.sandboxes_dir() {
                    let pool = self.pool.clone();
                    let p = entry.path();
                    blocking(move || Ok(pool.delete_volume(&p)?)).await?;
                } else {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Lets the engine re-attach its host-side helpers (the agent log drain) to a running
    /// sandbox; a failure costs diagnostics only, never the sandbox.
    async fn adopt_runtime(&self, rec: &SandboxRecord) {
        let Ok(engine) = self.engine(rec) else {
            return;
        };
        let id = rec.eid().to_owned();
        if let Err(e) = blocking(move || Ok(engine.adopt(&id)?)).await {
            tracing::warn!(error = %chain(&e), "re-attaching to a running sandbox");
        }
    }

    /// Destroys every sandbox and releases the pool (for ephemeral test daemons).
    pub async fn destroy_all(&self) -> Result<()> {
        // No pre-started sandbox may be in the making while the rest go (it would be left
        // running with nothing that knows of it).
        self.prestart.close().await;
        for rec in self.store.all_sandboxes()? {
            if let Err(e) = self.teardown(&rec).await {
                tracing::warn!(sandbox = %rec.name, error = %chain(&e), "teardown");
            }
            let _ = self.delete_all_checkpoints(&rec).await;
            self.delete_record(&rec.id)?;
        }
        if let Some(net) = &self.net
            && let Err(e) = net.host.teardown()
        {
            tracing::warn!(error = %e, "removing the daemon's bridge and rules");
        }
        Ok(())
    }
}

/// A configuration, defaults included, against the API's one range for each resource and
/// timeout ([`burrow_api::check_resources`], the check burrowd also applies to requests).
fn validate_config(c: &SandboxConfig) -> Result<()> {
    burrow_api::check_resources(&c.resources()).map_err(|e| CoreError::Invalid(e.to_string()))
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in env {
        let ok = !k.is_empty()
            && k.len() <= 256
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(CoreError::Invalid(format!(
                "environment variable name '{}' is invalid: use letters, digits and '_', not starting with a digit",
                k.chars().take(64).collect::<String>()
            )));
        }
        if v.contains('\0') {
            return Err(CoreError::Invalid(format!(
                "environment variable '{k}' contains a NUL byte"
            )));
        }
    }
    Ok(())
}

/// The daemon's own label ([`INTERNAL_LABEL`]: builds, pre-started sandboxes) is not for
/// users: a sandbox carrying it would be hidden, or discarded at the next start.
fn reject_internal_label(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.contains_key(INTERNAL_LABEL) {
        return Err(CoreError::Invalid(format!(
            "label '{INTERNAL_LABEL}' is reserved for the daemon's own sandboxes"
        )));
    }
    Ok(())
}

fn validate_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    if labels.len() > 64 {
        return Err(CoreError::Invalid("at most 64 labels".into()));
    }
    for (k, v) in labels {
        if k.is_empty()
            || k.len() > 63
            || v.len() > 255
            || k.contains('=')
            || k.contains('\0')
            || v.contains('\0')
        {
            return Err(CoreError::Invalid(format!(
                "label '{}' is invalid: keys 1-63 chars without '=', values up to 255 chars",
                k.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(())
}

fn validate_argv(argv: &[String]) -> Result<()> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(CoreError::Invalid(
            "cmd must name a program: argv is empty".into(),
        ));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(CoreError::Invalid(
            "cmd arguments must not contain NUL bytes".into(),
        ));
    }
    Ok(())
}
