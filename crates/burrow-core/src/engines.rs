//! The engines this daemon runs sandboxes with, keyed by kind. Each sandbox uses the engine
//! its record names; an engine that could not start on this host is kept with the reason,
//! so asking for it says why instead of "unknown".

use std::collections::BTreeMap;
use std::sync::Arc;

use burrow_api::{EngineInfo, EngineKind};
use burrow_engine::Engine;

use crate::CoreError;

#[derive(Debug, Clone)]
pub struct Engines {
    ready: BTreeMap<EngineKind, Arc<dyn Engine>>,
    /// Engines that cannot run here, with why and what to do about it.
    absent: BTreeMap<EngineKind, String>,
    default: EngineKind,
}

/// Initramfs builds kept in the host cache (one per agent build; other daemons of the host
/// may run other builds).
const KEEP_INITRAMFS: usize = 4;

/// Removes all but the `keep` newest `initramfs-*.cpio` of `dir`. A VM reads its initramfs
/// at boot only, and a saved memory state made with another agent is refused anyway.
fn prune_initramfs(dir: &std::path::Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut builds: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("initramfs-") && n.ends_with(".cpio")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    builds.sort_by_key(|b| std::cmp::Reverse(b.0));
    for (_, path) in builds.into_iter().skip(keep) {
        let _ = std::fs::remove_file(path);
    }
}

/// Builds the vm engine from `cfg.vm`, or says why it cannot run here (the message names
/// what to install).
pub fn vm_engine(cfg: &crate::Config) -> Result<burrow_engine::vm::VmEngine, String> {
    use burrow_engine::vm::{self, VmConfig, VmEngine};
    let Some(s) = &cfg.vm else {
        return Err("turned off (--vm off)".into());
    };
    let qemu_version = vm::qemu_version(&s.qemu_bin).map_err(|e| {
        format!(
            "cannot run {} ({e}); install Debian's qemu-system-x86 (scripts/setup.sh)",
            s.qemu_bin.display()
        )
    })?;
    let guest = burrow_engine::vm_guest::GuestKernel::find(&s.guest_dir).map_err(|e| e.to_string())?;
    let cache = cfg.host_cache_dir().join("vm");
    std::fs::create_dir_all(&cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    // The initramfs is the agent plus the guest's modules: one per agent build and kernel.
    let agent = std::fs::metadata(&cfg.agent_bin).map_err(|e| format!("{}: {e}", cfg.agent_bin.display()))?;
    let key = crate::config::fnv1a(
        format!(
            "{}:{}:{:?}:{}",
            cfg.agent_bin.display(),
            agent.len(),
            agent.modified().ok(),
            guest.release
        )
        .as_bytes(),
    );
    let initramfs = cache.join(format!("initramfs-{key:016x}.cpio"));
    burrow_engine::vm_guest::require_static(&cfg.agent_bin).map_err(|e| e.to_string())?;
    if !initramfs.is_file() {
        burrow_engine::vm_guest::build_initramfs(&cfg.agent_bin, &s.guest_dir, &initramfs)
            .map_err(|e| format!("building the guest's initramfs: {e}"))?;
        prune_initramfs(&cache, KEEP_INITRAMFS);
    }
    let (accel, why) = match s.accel {
        Some(a) => (a, format!("{} (forced)", a.as_str())),
        None => vm::probe::accel(
            &s.qemu_bin,
            &qemu_version,
            &guest.vmlinuz,
            &guest.release,
            &cache.join("accel.json"),
        ),
    };
    tracing::info!(accel = accel.as_str(), %why, "vm engine");
    VmEngine::new(VmConfig {
        qemu_bin: s.qemu_bin.clone(),
        guest,
        initramfs,
        accel,
        run_root: cfg.run_dir(),
        uid_base: cfg.uid_base,
        uid_count: cfg.uid_count,
        tsc_khz: vm::host_tsc_khz(),
        cgroup_parent: cfg.container.cgroup_parent.clone(),
    })
    .map_err(|e| e.to_string())
}

impl Engines {
    /// An empty set whose default is `default` (added later, or the first one added).
    pub fn new(default: EngineKind) -> Self {
        Self {
            ready: BTreeMap::new(),
            absent: BTreeMap::new(),
            default,
        }
    }

    pub fn with(mut self, engine: Arc<dyn Engine>) -> Self {
        self.absent.remove(&engine.kind());
        self.ready.insert(engine.kind(), engine);
        self
    }

    pub fn without(mut self, kind: EngineKind, why: impl Into<String>) -> Self {
        self.ready.remove(&kind);
        self.absent.insert(kind, why.into());
        self
    }

    /// The engine new sandboxes get when they name none: the configured default where it
    /// runs, else the container engine.
    pub fn default_kind(&self) -> EngineKind {
        if self.ready.contains_key(&self.default) {
            self.default
        } else {
            EngineKind::Container
        }
    }

    /// The engine of `kind`, or 503 with why it cannot run here.
    pub fn get(&self, kind: EngineKind) -> Result<Arc<dyn Engine>, CoreError> {
        if let Some(e) = self.ready.get(&kind) {
            return Ok(e.clone());
        }
        let why = self
            .absent
            .get(&kind)
            .cloned()
            .unwrap_or_else(|| "it is not configured".to_owned());
        Err(CoreError::Unavailable(format!(
            "engine '{}' is not available on this host: {why}",
            kind.as_str()
        )))
    }

    /// Every engine that runs here.
    pub fn ready(&self) -> impl Iterator<Item = &Arc<dyn Engine>> {
        self.ready.values()
    }

    /// What `/v1/version` says about each engine.
    pub fn info(&self) -> Vec<EngineInfo> {
        [EngineKind::Container, EngineKind::Vm]
            .into_iter()
            .map(|kind| match self.ready.get(&kind) {
                Some(e) => EngineInfo {
                    kind,
                    available: true,
                    detail: Some(e.describe()),
                },
                None => EngineInfo {
                    kind,
                    available: false,
                    detail: Some(
                        self.absent
                            .get(&kind)
                            .cloned()
                            .unwrap_or_else(|| "not configured".into()),
                    ),
                },
            })
            .collect()
    }
}
