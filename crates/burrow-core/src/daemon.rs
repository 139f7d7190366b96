//! The daemon's composition root: opens what the manager is made of, assembles it, and
//! starts the work that uses it. Builds, the idle policy and image import are clients of
//! the manager (they call it); the manager itself knows none of them.

use std::sync::Arc;

use burrow_api::EngineKind;
use burrow_storage::Pool;

use crate::manager::{InsideApiServer, Manager, blocking};
use crate::store::Store;
use crate::{Config, CoreError};

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Opens (or creates) the daemon's state, pool, engines, keys and network, assembles the
/// manager from them ([`Manager::new`]), clears what interrupted builds left, reconciles
/// ([`Manager::reconcile`]) and starts the background work ([`spawn_background`]).
pub async fn open(mut cfg: Config, inside_api: Option<InsideApiServer>) -> Result<Arc<Manager>> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| CoreError::Internal(format!("creating {}: {e}", cfg.data_dir.display())))?;
    // 0711: host users may not list the sandboxes' run dirs.
    std::fs::create_dir_all(cfg.run_dir())
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(cfg.run_dir(), std::fs::Permissions::from_mode(0o711))
        })
        .map_err(|e| CoreError::Internal(format!("creating {}: {e}", cfg.run_dir().display())))?;
    let store = Arc::new(Store::open(&cfg.db_path())?);
    let pool_opts = burrow_storage::PoolOptions {
        kind: cfg.pool_kind,
        loop_size_bytes: cfg.pool_size_bytes,
        sandbox_gid: Some(cfg.uid_base),
    };
    let data_dir = cfg.data_dir.clone();
    let pool: Arc<dyn Pool> =
        blocking(move || Ok(Arc::from(burrow_storage::open_pool(&data_dir, &pool_opts)?))).await?;
    let vm_cfg = cfg.clone();
    let vm = blocking(move || Ok(crate::engines::vm_engine(&vm_cfg))).await?;
    // The default: what the operator chose, else a VM where KVM boots one.
    let default = cfg.default_engine.unwrap_or(match &vm {
        Ok(e) if e.accel() == burrow_engine::vm::Accel::Kvm => EngineKind::Vm,
        _ => EngineKind::Container,
    });
    if cfg.prestart_vm.is_none() {
        let kvm = matches!(&vm, Ok(e) if e.accel() == burrow_engine::vm::Accel::Kvm);
        cfg.prestart_vm = Some(usize::from(kvm));
    }
    let mut engines = crate::engines::Engines::new(default).with(Arc::new(
        burrow_engine::container::ContainerEngine::new(cfg.container_engine())?,
    ));
    engines = match vm {
        Ok(e) => engines.with(Arc::new(e)),
        Err(why) => {
            tracing::info!(%why, "vm engine unavailable");
            engines.without(EngineKind::Vm, why)
        }
    };
    let keys = crate::keys::Keys::open(&cfg.data_dir)?;
    let net = match &cfg.network {
        Some(settings) => {
            let tag = format!(
                "{:06x}",
                crate::config::fnv1a(cfg.data_dir.to_string_lossy().as_bytes()) & 0xff_ffff
            );
            let settings = settings.clone();
            Some(blocking(move || crate::network::Net::setup(&tag, settings)).await?)
        }
        None => None,
    };
    let mgr = Manager::new(cfg, store, pool, engines, keys, net, inside_api);
    mgr.reconcile_builds().await?;
    mgr.reconcile().await?;
    spawn_background(&mgr);
    Ok(mgr)
}

/// Starts the work that runs for the manager's whole life: the background loop (idle and
/// restart policies, dead agents, the pool alarm) and, when it is missing, the build of the
/// base image.
pub fn spawn_background(mgr: &Arc<Manager>) {
    tokio::spawn(mgr.clone().idle_loop());
    if mgr.prestart.enabled() {
        tokio::spawn(mgr.clone().prestart_loop());
    }
    mgr.images.ensure_base_in_background();
}
