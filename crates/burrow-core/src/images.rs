//! Images: read-only root trees that sandboxes are snapshots of.
//!
//! The `base` image is built once per host from Debian packages with mmdebstrap into a
//! cached tarball (shared by every daemon on the host), then imported into each pool:
//! extracted, shifted to the sandbox uid range, and made read-only. An import goes to a
//! temporary volume that is renamed into place only when complete, so a crash never leaves
//! a half image visible.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use burrow_api::Image;
use burrow_storage::Pool;
use tokio::sync::watch;

use crate::config::fnv1a;
use crate::error::chain;
use crate::store::{ImageRecord, Store};
use crate::time_util::now_rfc3339;
use crate::{Config, CoreError};

/// Debian suite and packages of the `base` image.
pub const BASE_SUITE: &str = "bookworm";
pub const BASE_PACKAGES: &[&str] = &[
    "bash",
    "coreutils",
    "ca-certificates",
    "curl",
    "git",
    "python3",
    "procps",
    "iproute2",
    "iputils-ping",
    "less",
    "vim-tiny",
    "ncurses-base",
    "ncurses-term",
    "locales",
    "netbase",
];

/// What an image says about the sandboxes made from it (from a Burrowfile's ENV and
/// WORKDIR, or an OCI image's config).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub workdir: Option<String>,
}

pub const READY: &str = "ready";
pub const BUILDING: &str = "building";
pub const FAILED: &str = "failed";

#[derive(Debug)]
pub struct ImageService {
    cfg: Config,
    store: Arc<Store>,
    pool: Arc<dyn Pool>,
    changed: watch::Sender<u64>,
}

impl ImageService {
    pub fn new(cfg: Config, store: Arc<Store>, pool: Arc<dyn Pool>) -> Self {
        Self {
            cfg,
            store,
            pool,
            changed: watch::channel(0).0,
        }
    }

    /// The build config of image `name` (empty when it has none or does not exist).
    pub fn config(&self, name: &str) -> ImageConfig {
        self.store
            .image(name)
            .ok()
            .flatten()
            .and_then(|r| r.config)
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default()
    }

    pub fn list(&self) -> Result<Vec<Image>, CoreError> {
        Ok(self
            .store
            .images()?
            .into_iter()
            .map(|r| Image {
                name: r.name,
                status: r.status,
                created_at: r.created_at,
                size_bytes: r.size_bytes,
                source: r.source,
                message: r.message,
            })
            .collect())
    }

    /// The volume of image `name` once it is ready, waiting while it is being built.
    pub async fn wait_ready(&self, name: &str) -> Result<PathBuf, CoreError> {
        if !is_plain_name(name) {
            return Err(CoreError::Invalid(format!(
                "image name '{}' is invalid: use lowercase letters, digits, '-', '_' and '.'",
                name.chars().take(64).collect::<String>()
            )));
        }
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1800);
        loop {
            match self.store.image(name)? {
                None => return Err(CoreError::not_found("image", name)),
                Some(r) if r.status == READY => return Ok(self.pool.image_path(name)),
                Some(r) if r.status == FAILED => {
                    return Err(CoreError::Unavailable(format!(
                        "image '{name}' failed to build: {}",
                        r.message.unwrap_or_default()
                    )));
                }
                Some(_) => {
                    if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
                        return Err(CoreError::Unavailable(format!(
                            "image '{name}' is still being built"
                        )));
                    }
                }
            }
        }
    }

    fn set(&self, name: &str, status: &str, size: u64, message: Option<String>) {
        let rec = ImageRecord {
            name: name.to_owned(),
            status: status.to_owned(),
            created_at: now_rfc3339(),
            size_bytes: size,
            source: format!("debian:{BASE_SUITE} (mmdebstrap)"),
            message,
            config: None,
        };
        if let Err(e) = self.store.upsert_image(&rec) {
            tracing::error!(image = name, error = %e, "recording image state");
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Makes sure the `base` image exists in this pool, building it in the background if
    /// needed. Sandbox creation waits for it.
    pub fn ensure_base_in_background(&self) {
        let ready = matches!(self.store.image("base"), Ok(Some(r)) if r.status == READY)
            && self.pool.is_volume(&self.pool.image_path("base"));
        if ready {
            return;
        }
        self.set("base", BUILDING, 0, Some("preparing the base image".into()));
        let cfg = self.cfg.clone();
        let pool = self.pool.clone();
        let this_store = self.store.clone();
        let changed = self.changed.clone();
        let svc = ImageService {
            cfg,
            store: this_store,
            pool,
            changed,
        };
        tokio::task::spawn_blocking(move || match svc.build_base() {
            Ok(size) => {
                tracing::info!(size, "base image ready");
                svc.set("base", READY, size, None);
            }
            Err(e) => {
                tracing::error!(error = %chain(&e), "building the base image failed");
                svc.set("base", FAILED, 0, Some(chain(&e)));
            }
        });
    }

    fn build_base(&self) -> Result<u64, CoreError> {
        let tar = self.base_tarball()?;
        let final_path = self.pool.image_path("base");
        let tmp = self.pool.images_dir().join(".import-base");
        self.pool.delete_volume(&tmp)?;
        self.pool.delete_volume(&final_path)?;
        self.pool.create_volume(&tmp)?;
        self.set("base", BUILDING, 0, Some("extracting the root tree".into()));
        burrow_storage::rootfs::extract_tar(&tar, &tmp)?;
        self.set(
            "base",
            BUILDING,
            0,
            Some("shifting ownership to the sandbox uid range".into()),
        );
        burrow_storage::rootfs::shift_ownership(&tmp, self.cfg.uid_base, self.cfg.uid_count)?;
        std::fs::create_dir_all(tmp.join(".burrow"))
            .map_err(|e| CoreError::Internal(format!("creating /.burrow in the image: {e}")))?;
        nix::unistd::chown(
            &tmp.join(".burrow"),
            Some(nix::unistd::Uid::from_raw(self.cfg.uid_base)),
            Some(nix::unistd::Gid::from_raw(self.cfg.uid_base)),
        )
        .map_err(|e| CoreError::Internal(format!("chown /.burrow: {e}")))?;
        self.pool.set_readonly(&tmp, true)?;
        std::fs::rename(&tmp, &final_path)
            .map_err(|e| CoreError::Internal(format!("renaming the imported image into place: {e}")))?;
        Ok(self.pool.volume_size(&final_path).unwrap_or(0))
    }

    /// The cached root tree tarball for `base`, built with mmdebstrap if missing. A file
    /// lock makes concurrent daemons build it once.
    fn base_tarball(&self) -> Result<PathBuf, CoreError> {
        let dir = &self.cfg.image_cache_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| CoreError::Internal(format!("creating {}: {e}", dir.display())))?;
        let key = fnv1a(format!("{BASE_SUITE}:{}", BASE_PACKAGES.join(",")).as_bytes());
        let tar = dir.join(format!("base-{BASE_SUITE}-{key:016x}.tar"));
        let lock_path = dir.join(format!("base-{BASE_SUITE}.lock"));
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| CoreError::Internal(format!("opening {}: {e}", lock_path.display())))?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| CoreError::Internal(format!("locking {}: {e}", lock_path.display())))?;
        if tar.exists() {
            return Ok(tar);
        }
        tracing::info!(path = %tar.display(), "building the base image with mmdebstrap (once per host)");
        self.set(
            "base",
            BUILDING,
            0,
            Some("downloading Debian packages (mmdebstrap)".into()),
        );
        let mut progress = |line: &str| {
            tracing::info!(target: "burrow::image", "mmdebstrap: {line}");
        };
        burrow_storage::rootfs::build_debian_rootfs(
            &tar,
            BASE_SUITE,
            BASE_PACKAGES,
            self.cfg.debian_mirror.as_deref(),
            &mut progress,
        )?;
        Ok(tar)
    }
}

/// True when `path` names a file inside `dir` (used to keep image names flat).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
        && Path::new(name).components().count() == 1
}

impl ImageService {
    fn record_template(&self, name: &str, source: String, size: u64) -> Result<(), CoreError> {
        self.store.upsert_image(&ImageRecord {
            name: name.to_owned(),
            status: READY.to_owned(),
            created_at: now_rfc3339(),
            size_bytes: size,
            source,
            message: None,
            config: None,
        })?;
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }
}

impl crate::Manager {
    /// A template: a read-only image from a sandbox's checkpoint or current state. New
    /// sandboxes can be created from it like from `base`.
    pub async fn create_image(&self, req: burrow_api::CreateImage) -> Result<Image, CoreError> {
        let name = req.name.clone();
        if !is_plain_name(&name) {
            return Err(CoreError::Invalid(format!(
                "image name '{}' is invalid: use lowercase letters, digits, '-', '_' and '.'",
                name.chars().take(64).collect::<String>()
            )));
        }
        if self.store.image(&name)?.is_some() {
            return Err(CoreError::Conflict(format!("image '{name}' already exists")));
        }
        if req.from.memory {
            return Err(CoreError::Invalid(
                "an image keeps files, not processes: 'memory' applies to forks only".into(),
            ));
        }
        let src = self.record(req.from.sandbox.as_str())?;
        let tmp = self.pool.images_dir().join(format!(".template-{name}"));
        let final_path = self.pool.image_path(&name);
        {
            let pool = self.pool.clone();
            let tmp = tmp.clone();
            crate::manager::blocking(move || Ok(pool.delete_volume(&tmp)?)).await?;
        }
        self.snapshot_fork_source(&src, req.from.checkpoint.as_deref(), tmp.clone(), false, None)
            .await?;
        let pool = self.pool.clone();
        crate::manager::blocking(move || {
            pool.set_readonly(&tmp, true)?;
            std::fs::rename(&tmp, &final_path)
                .map_err(|e| CoreError::Internal(format!("renaming the template into place: {e}")))?;
            Ok(())
        })
        .await?;
        let source = match &req.from.checkpoint {
            Some(cp) => format!("sandbox {}:{cp}", src.name),
            None => format!("sandbox {} (live)", src.name),
        };
        self.images.record_template(&name, source, 0)?;
        self.images()
            .map(|l| l.into_iter().find(|i| i.name == name).expect("just recorded"))
    }

    /// Deletes an image; refused while a sandbox uses it, and for `base`.
    pub async fn delete_image(&self, name: &str) -> Result<(), CoreError> {
        if self.store.image(name)?.is_none() {
            return Err(CoreError::not_found("image", name));
        }
        if name == "base" {
            return Err(CoreError::Conflict(
                "image 'base' is built in and cannot be deleted".into(),
            ));
        }
        // Its pre-started sandboxes go first: they are the pool's, not users.
        self.discard_prestarted_of(name).await;
        let users: Vec<String> = self
            .store
            .all_sandboxes()?
            .into_iter()
            .filter(|s| s.image == name && !crate::prestart::is_prestarted(s))
            .map(|s| s.name)
            .collect();
        if !users.is_empty() {
            return Err(CoreError::Conflict(format!(
                "image '{name}' is used by sandbox(es) {}; delete them first",
                users.join(", ")
            )));
        }
        let pool = self.pool.clone();
        let path = pool.image_path(name);
        crate::manager::blocking(move || Ok(pool.delete_volume(&path)?)).await?;
        self.store.delete_image(name)?;
        Ok(())
    }
}
