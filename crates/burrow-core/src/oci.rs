//! OCI images: import of an OCI layout or `docker save` archive, and pull from a registry.
//! `burrow-oci` turns the image into a root tree (verifying every digest); this module puts
//! that tree into the pool as an image volume, shifted to the sandbox uid range, and keeps
//! its config (ENV, WORKDIR) for the sandboxes made from it.

use std::path::{Path, PathBuf};

use burrow_api::Image;

use crate::CoreError;
use crate::images::{ImageConfig, READY, is_plain_name};
use crate::manager::{Manager, blocking};
use crate::store::ImageRecord;
use crate::time_util::now_rfc3339;

type Result<T, E = CoreError> = std::result::Result<T, E>;

fn oci_err(e: burrow_oci::OciError) -> CoreError {
    // A bad archive, digest or reference is the caller's input; the message names the blob.
    CoreError::Invalid(crate::error::chain(&e))
}

/// The default image name for a registry reference: the repository's last component.
pub fn default_name(reference: &str) -> Option<String> {
    let r = burrow_oci::Reference::parse(reference).ok()?;
    let last = r.repository.rsplit('/').next()?.to_ascii_lowercase();
    is_plain_name(&last).then_some(last)
}

impl Manager {
    fn check_new_image(&self, name: &str) -> Result<()> {
        if !is_plain_name(name) {
            return Err(CoreError::Invalid(format!(
                "image name '{name}' is invalid: use lowercase letters, digits, '-', '_' and '.'"
            )));
        }
        if self.store.image(name)?.is_some() {
            return Err(CoreError::Conflict(format!("image '{name}' already exists")));
        }
        Ok(())
    }

    /// Imports an image archive (OCI layout or `docker save`, plain or compressed tar).
    pub async fn import_image(&self, name: &str, archive: &Path) -> Result<Image> {
        self.check_new_image(name)?;
        self.check_pool_room(&format!("import image '{name}'"))?;
        let archive = archive.to_path_buf();
        self.place_oci_image(name, "import", move |dest| {
            let mut progress = |m: &str| tracing::info!(target: "burrow::image", "import: {m}");
            burrow_oci::import_archive(
                &archive,
                dest,
                &burrow_oci::ImportOptions::default(),
                &mut progress,
            )
            .map_err(oci_err)
        })
        .await
    }

    /// Pulls `reference` from an OCI registry (plain HTTP only for loopback registries).
    pub async fn pull_image(&self, name: &str, reference: &str) -> Result<Image> {
        self.check_new_image(name)?;
        self.check_pool_room(&format!("pull image '{name}'"))?;
        burrow_oci::Reference::parse(reference).map_err(oci_err)?;
        let (vol, dest) = self.oci_staging(name).await?;
        let mut progress = |m: &str| tracing::info!(target: "burrow::image", "pull: {m}");
        let pulled = burrow_oci::pull(
            reference,
            &dest,
            &burrow_oci::PullOptions::default(),
            &mut progress,
        )
        .await;
        let cfg = match pulled {
            Ok(c) => c,
            Err(e) => {
                self.drop_staging(&vol).await;
                return Err(oci_err(e));
            }
        };
        self.finish_oci_image(name, &format!("pull {reference}"), vol, dest, cfg)
            .await
    }

    async fn place_oci_image(
        &self,
        name: &str,
        what: &str,
        fill: impl FnOnce(&Path) -> Result<burrow_oci::ImageConfig> + Send + 'static,
    ) -> Result<Image> {
        let (vol, dest) = self.oci_staging(name).await?;
        let d = dest.clone();
        let cfg = match blocking(move || fill(&d)).await {
            Ok(c) => c,
            Err(e) => {
                self.drop_staging(&vol).await;
                return Err(e);
            }
        };
        self.finish_oci_image(name, what, vol, dest, cfg).await
    }

    /// A fresh staging volume `images/.oci-NAME`; the image tree goes to `root/` inside it
    /// (renames across btrfs subvolumes are not possible, inside one they are).
    async fn oci_staging(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        let vol = self.pool.images_dir().join(format!(".oci-{name}"));
        let pool = self.pool.clone();
        let v = vol.clone();
        blocking(move || {
            pool.delete_volume(&v)?;
            pool.create_volume(&v)?;
            Ok(())
        })
        .await?;
        let dest = vol.join("root");
        Ok((vol, dest))
    }

    async fn drop_staging(&self, vol: &Path) {
        let pool = self.pool.clone();
        let v = vol.to_path_buf();
        let _ = blocking(move || Ok(pool.delete_volume(&v)?)).await;
    }

    async fn finish_oci_image(
        &self,
        name: &str,
        what: &str,
        vol: PathBuf,
        dest: PathBuf,
        cfg: burrow_oci::ImageConfig,
    ) -> Result<Image> {
        let pool = self.pool.clone();
        let (uid_base, uid_count) = (self.cfg.uid_base, self.cfg.uid_count);
        let final_path = self.pool.image_path(name);
        let v = vol.clone();
        let res = blocking(move || {
            // Lift root/* to the volume root (same subvolume: plain renames).
            let entries = std::fs::read_dir(&dest)
                .map_err(|e| CoreError::Internal(format!("reading {}: {e}", dest.display())))?;
            for e in entries.flatten() {
                std::fs::rename(e.path(), v.join(e.file_name()))
                    .map_err(|err| CoreError::Internal(format!("placing {}: {err}", e.path().display())))?;
            }
            std::fs::remove_dir(&dest)
                .map_err(|e| CoreError::Internal(format!("removing {}: {e}", dest.display())))?;
            burrow_storage::rootfs::shift_ownership(&v, uid_base, uid_count)?;
            for dir in [".burrow", "tmp", "proc", "sys", "dev", "etc"] {
                let p = v.join(dir);
                if !p.exists() {
                    std::fs::create_dir_all(&p)
                        .map_err(|e| CoreError::Internal(format!("creating /{dir}: {e}")))?;
                    let _ = nix::unistd::chown(
                        &p,
                        Some(nix::unistd::Uid::from_raw(uid_base)),
                        Some(nix::unistd::Gid::from_raw(uid_base)),
                    );
                }
            }
            pool.set_readonly(&v, true)?;
            std::fs::rename(&v, &final_path)
                .map_err(|e| CoreError::Internal(format!("placing the image: {e}")))?;
            Ok(())
        })
        .await;
        if let Err(e) = res {
            self.drop_staging(&vol).await;
            return Err(e);
        }
        let config = ImageConfig {
            env: cfg
                .env
                .iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            workdir: cfg.workdir.clone().filter(|w| w.starts_with('/')),
        };
        let digest = cfg
            .manifest_digest
            .clone()
            .or(cfg.digest.clone())
            .unwrap_or(cfg.config_digest.clone());
        self.store.upsert_image(&ImageRecord {
            name: name.to_owned(),
            status: READY.to_owned(),
            created_at: now_rfc3339(),
            size_bytes: 0,
            source: format!("oci {what} ({digest})"),
            message: None,
            config: Some(serde_json::to_string(&config).unwrap_or_default()),
        })?;
        tracing::info!(image = name, digest, "OCI image ready");
        self.images()
            .map(|l| l.into_iter().find(|i| i.name == name).expect("just recorded"))
    }
}
