//! `burrow images pull`: fetch an image from an OCI distribution registry into a root directory.
//!
//! Every document and blob is verified (sha256 and size) before it is used; layers are streamed to a scratch
//! file beside the destination (never held in memory), verified, then applied on a blocking thread while the
//! next layer downloads. The result appears at the destination by rename only when everything succeeded.

mod auth;
mod client;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::OciError;
use crate::digest::{Expected, Sha256Digest};
use crate::image::{
    self, DOCKER_LIST, DOCKER_MANIFEST, Document, ImageConfig, MAX_CONFIG_BYTES, MAX_INDEX_DEPTH,
    MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST, Platform, human_size, short,
};
use crate::layer::{LayerCheck, LayerStats, Rootfs};
use crate::reference::{Reference, TagOrDigest};
use crate::staging::Staging;
use client::RegistryClient;

/// A layer being applied on a blocking thread; hands the root back with the layer's label and outcome.
type ApplyTask = tokio::task::JoinHandle<(Rootfs, String, Result<LayerStats, OciError>)>;

/// Options for [`pull`].
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Use plain HTTP for loopback registries (`127.0.0.0/8`, `::1`, `localhost`). Default `true`. Other
    /// registries always use HTTPS, verified against the system's CA certificates.
    pub insecure_loopback_http: bool,
    /// Username for basic auth or for the bearer token service. Anonymous when `None`.
    pub username: Option<String>,
    /// Password or access token for `username`.
    pub password: Option<String>,
    /// Platform to select from multi-platform images. Default: linux on the host architecture.
    pub platform: Platform,
    /// Connect timeout, time to response headers, and longest pause while a body streams.
    pub timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            insecure_loopback_http: true,
            username: None,
            password: None,
            platform: Platform::default(),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Progress callback for [`pull`]; `Send` so the pull future can run on any runtime thread.
pub type PullProgress<'a> = &'a mut (dyn FnMut(&str) + Send);

/// Pulls `reference` (e.g. `127.0.0.1:5000/team/tool:1`) into `dest_root`.
///
/// `dest_root` must not exist (or be an empty directory) and its parent must exist. The root is assembled in a
/// temporary directory beside it and renamed into place at the end; on error, or if the future is dropped,
/// nothing is left behind and `dest_root` is untouched.
pub async fn pull(
    reference: &str,
    dest_root: &Path,
    opts: &PullOptions,
    progress: PullProgress<'_>,
) -> Result<ImageConfig, OciError> {
    let reference = Reference::parse(reference)?;
    let plain_http = opts.insecure_loopback_http && reference.is_loopback();
    let credentials = match (&opts.username, &opts.password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (Some(u), None) => Some((u.clone(), String::new())),
        _ => None,
    };
    let mut client = RegistryClient::new(
        reference.api_authority(),
        &reference.repository,
        plain_http,
        credentials,
        opts.timeout,
    )?;
    let dest = dest_root.to_path_buf();
    // Held by every blocking task too: the staging directory outlives any extraction still running.
    let staging = Arc::new(blocking(move || Staging::new(&dest)).await?);

    progress(&format!("resolving {reference}"));
    let accept = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ");
    let fetched = client
        .manifest(reference.tag_or_digest.as_str(), &accept, MAX_MANIFEST_BYTES)
        .await?;
    let top_digest = Sha256Digest::of(&fetched.bytes);
    let claimed = match &reference.tag_or_digest {
        TagOrDigest::Digest(d) => Some(d.clone()),
        TagOrDigest::Tag(_) => fetched.digest_header.clone(),
    };
    if let Some(claimed) = claimed
        && claimed.starts_with("sha256:")
        && claimed != top_digest.as_str()
    {
        return Err(OciError::DigestMismatch {
            digest: claimed,
            actual: top_digest.to_string(),
        });
    }

    let mut document = image::parse_document(
        &fetched.bytes,
        fetched.content_type.as_deref(),
        &format!("manifest {top_digest}"),
    )?;
    let mut manifest_digest = top_digest.clone();
    let mut depth = 0;
    let manifest = loop {
        match document {
            Document::Manifest(m) => break m,
            Document::Index(_) if depth >= MAX_INDEX_DEPTH => {
                return Err(OciError::malformed(
                    format!("index {manifest_digest}"),
                    "indexes nested too deep",
                ));
            }
            Document::Index(index) => {
                depth += 1;
                let desc = image::select_from_index(&index, &opts.platform, None)?;
                let expected = Expected {
                    digest: image::descriptor_digest(&desc)?,
                    size: Some(desc.size()),
                };
                progress(&format!(
                    "platform {}: manifest {}",
                    opts.platform,
                    short(expected.digest.as_str())
                ));
                let fetched = client
                    .manifest(expected.digest.as_str(), &accept, MAX_MANIFEST_BYTES)
                    .await?;
                let mut hasher = crate::digest::Hasher::default();
                hasher.update(&fetched.bytes);
                expected.check(hasher)?;
                manifest_digest = expected.digest.clone();
                document = image::parse_document(
                    &fetched.bytes,
                    Some(desc.media_type().as_ref()),
                    &format!("manifest {manifest_digest}"),
                )?;
            }
        }
    };

    let config_expected = Expected {
        digest: image::descriptor_digest(manifest.config())?,
        size: Some(manifest.config().size()),
    };
    let config_bytes = client.small_blob(&config_expected, MAX_CONFIG_BYTES).await?;
    let parsed = image::parse_config(&config_bytes, &opts.platform, &config_expected.digest)?;
    if parsed.diff_ids.len() != manifest.layers().len() {
        return Err(OciError::malformed(
            format!("image config {}", config_expected.digest),
            format!(
                "{} diff_ids for {} layers",
                parsed.diff_ids.len(),
                manifest.layers().len()
            ),
        ));
    }

    let total = manifest.layers().len();
    let mut rootfs = Some(Rootfs::new(staging.rootfs()));
    let mut applying: Option<ApplyTask> = None;
    let result: Result<(), OciError> = async {
        for (i, (layer, diff_id)) in manifest.layers().iter().zip(parsed.diff_ids).enumerate() {
            let digest = image::descriptor_digest(layer)?;
            let label = format!("layer {}/{total} {}", i + 1, short(digest.as_str()));
            progress(&format!("{label} ({}): downloading", human_size(layer.size())));
            let expected = Expected {
                digest: digest.clone(),
                size: Some(layer.size()),
            };
            let path = staging.scratch().join(digest.hex());
            client.blob_to_file(&expected, &path).await?;
            progress(&format!("{label}: downloaded and verified"));

            if let Some(task) = applying.take() {
                rootfs = Some(finish_apply(task, progress).await?);
            }
            let mut fs = rootfs
                .take()
                .ok_or_else(|| OciError::Refused("internal: rootfs in use".into()))?;
            let staging = Arc::clone(&staging);
            let check = LayerCheck {
                name: digest.to_string(),
                blob: Some(expected),
                diff_id: Some(diff_id),
            };
            progress(&format!("{label}: applying"));
            let label = label.clone();
            applying = Some(tokio::task::spawn_blocking(move || {
                let result = std::fs::File::open(&path)
                    .map_err(|e| OciError::io(format!("opening {}", path.display()), e))
                    .and_then(|file| fs.apply_blob(file, &check))
                    .inspect(|_| {
                        let _ = std::fs::remove_file(&path);
                    });
                drop(staging);
                (fs, label, result)
            }));
        }
        if let Some(task) = applying.take() {
            rootfs = Some(finish_apply(task, progress).await?);
        }
        Ok(())
    }
    .await;
    if result.is_err()
        && let Some(task) = applying.take()
    {
        // Let the extraction stop before the staging directory is removed under it.
        let _ = task.await;
    }
    result?;

    let fs = rootfs.ok_or_else(|| OciError::Refused("internal: rootfs missing".into()))?;
    let staging =
        Arc::try_unwrap(staging).map_err(|_| OciError::Refused("internal: staging still shared".into()))?;
    blocking(move || {
        fs.finish()?;
        staging.commit()
    })
    .await?;
    progress(&format!("image root ready at {}", dest_root.display()));

    let mut config = parsed.settings;
    config.digest = Some(top_digest.to_string());
    config.manifest_digest = Some(manifest_digest.to_string());
    Ok(config)
}

async fn finish_apply(task: ApplyTask, progress: PullProgress<'_>) -> Result<Rootfs, OciError> {
    let (fs, label, result) = task
        .await
        .map_err(|e| OciError::Refused(format!("layer extraction task failed: {e}")))?;
    let stats = result?;
    progress(&format!("{label}: {stats}"));
    Ok(fs)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OciError> + Send + 'static,
) -> Result<T, OciError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OciError::Refused(format!("blocking task failed: {e}")))?
}
