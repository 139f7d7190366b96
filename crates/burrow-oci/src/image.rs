//! The image model shared by archive import and registry pull: platform selection in an index, manifest and
//! config parsing with media-type checks, and the [`ImageConfig`] handed back to the daemon.
//!
//! Parsing uses `oci-spec`'s types; Docker schema 2 manifests and manifest lists are the same JSON shape with
//! other media types, so one code path serves both. Schema 1 manifests are refused.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::OciError;
use crate::digest::Sha256Digest;

pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Size limits for JSON documents, so a hostile source cannot make us buffer gigabytes.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
pub(crate) const MAX_CONFIG_BYTES: u64 = 32 * 1024 * 1024;

/// How deep an index may nest other indexes.
pub(crate) const MAX_INDEX_DEPTH: usize = 4;

/// The runtime settings of an image and the digests that identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// `KEY=value` environment entries.
    pub env: Vec<String>,
    /// Working directory, if the image sets one.
    pub workdir: Option<String>,
    /// Entrypoint argv.
    pub entrypoint: Vec<String>,
    /// Default arguments (appended to the entrypoint).
    pub cmd: Vec<String>,
    /// `user[:group]`, names or ids, if the image sets one.
    pub user: Option<String>,
    /// What the reference resolved to: the digest of the top-level index or manifest (pin with `repo@digest`).
    /// `None` for legacy `docker save` archives, which carry no manifest.
    pub digest: Option<String>,
    /// Digest of the platform-specific image manifest; equals `digest` for single-platform images.
    pub manifest_digest: Option<String>,
    /// Digest of the image config blob (Docker's "image id").
    pub config_digest: String,
    /// The platform of the image, `os/arch[/variant]`.
    pub platform: String,
}

/// An `os/architecture[/variant]` triple as used in image indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Go-style architecture, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// CPU variant, e.g. `v8`; `None` matches any.
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/amd64`.
    pub fn linux_amd64() -> Self {
        Self {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }

    /// Linux on the architecture this binary was built for (`x86_64` → `amd64`, `aarch64` → `arm64`).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && match (&self.variant, variant) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }
}

impl Default for Platform {
    fn default() -> Self {
        Self::host()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Self {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: parts.get(2).filter(|v| !v.is_empty()).map(|v| (*v).to_owned()),
            }),
            _ => Err(format!("platform {s:?} is not os/arch[/variant]")),
        }
    }
}

/// An index or a manifest, as found behind a descriptor or a tag.
pub(crate) enum Document {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

/// Parses a manifest-or-index document. `content_type` (from HTTP, or the descriptor) is a hint; the JSON's
/// own shape decides.
pub(crate) fn parse_document(
    bytes: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<Document, OciError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| OciError::malformed(what, e))?;
    let media_type = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .or(content_type)
        .unwrap_or_default()
        .to_owned();
    if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err(OciError::UnsupportedMediaType {
            media_type: "application/vnd.docker.distribution.manifest.v1+json (schema 1)".into(),
            what: what.into(),
        });
    }
    if value.get("manifests").is_some() || media_type == OCI_INDEX || media_type == DOCKER_LIST {
        let index: ImageIndex = serde_json::from_value(value).map_err(|e| OciError::malformed(what, e))?;
        return Ok(Document::Index(Box::new(index)));
    }
    if value.get("layers").is_some() || media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST {
        let manifest: ImageManifest =
            serde_json::from_value(value).map_err(|e| OciError::malformed(what, e))?;
        check_manifest_media_types(&manifest, what)?;
        return Ok(Document::Manifest(Box::new(manifest)));
    }
    Err(OciError::UnsupportedMediaType {
        media_type,
        what: what.into(),
    })
}

fn check_manifest_media_types(manifest: &ImageManifest, what: &str) -> Result<(), OciError> {
    let config_type = manifest.config().media_type().to_string();
    if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
        return Err(OciError::UnsupportedMediaType {
            media_type: config_type,
            what: format!("config of {what} (not a container image)"),
        });
    }
    for layer in manifest.layers() {
        let mt = layer.media_type().to_string();
        let ok = [".tar", ".tar+gzip", ".tar+zstd", ".tar.gzip"]
            .iter()
            .any(|suffix| mt.ends_with(suffix));
        if !ok || mt.contains("encrypted") {
            return Err(OciError::UnsupportedMediaType {
                media_type: mt,
                what: format!("layer {}", layer.digest()),
            });
        }
    }
    Ok(())
}

/// The digest and size a descriptor promises, validated.
pub(crate) fn descriptor_digest(desc: &Descriptor) -> Result<Sha256Digest, OciError> {
    Sha256Digest::parse(desc.digest().as_ref())
}

fn is_manifest_type(mt: &str) -> bool {
    [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].contains(&mt)
}

/// The annotation naming an image in an OCI layout (`skopeo`, `docker save` ≥ 25, containerd).
fn ref_name(desc: &Descriptor) -> Option<&str> {
    let annotations = desc.annotations().as_ref()?;
    annotations
        .get("org.opencontainers.image.ref.name")
        .or_else(|| annotations.get("io.containerd.image.name"))
        .map(String::as_str)
}

/// Picks the descriptor for `platform` from an index. `image` (a tag or full name) narrows archives that hold
/// several images. Descriptors without a platform are taken as "any platform"; the config is checked later.
pub(crate) fn select_from_index(
    index: &ImageIndex,
    platform: &Platform,
    image: Option<&str>,
) -> Result<Descriptor, OciError> {
    let mut candidates: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| is_manifest_type(d.media_type().as_ref()))
        .collect();
    if let Some(image) = image {
        candidates.retain(|d| {
            ref_name(d).is_some_and(|name| {
                name == image
                    || name.ends_with(&format!("/{image}"))
                    || name.rsplit_once(':').is_some_and(|(_, tag)| tag == image)
            })
        });
        if candidates.is_empty() {
            let names: Vec<&str> = index.manifests().iter().filter_map(ref_name).collect();
            return Err(OciError::Missing {
                what: format!("an image named {image:?} (found: {})", names.join(", ")),
            });
        }
    }
    let matching: Vec<&Descriptor> = candidates
        .iter()
        .copied()
        .filter(|d| match d.platform() {
            Some(p) => platform.matches(
                &p.os().to_string(),
                &p.architecture().to_string(),
                p.variant().as_deref(),
            ),
            None => true,
        })
        .collect();
    let Some(first) = matching.first() else {
        let available: Vec<String> = candidates
            .iter()
            .filter_map(|d| d.platform().as_ref())
            .map(|p| format!("{}/{}", p.os(), p.architecture()))
            .collect();
        return Err(OciError::NoMatchingPlatform {
            wanted: platform.to_string(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
        });
    };
    if image.is_none() {
        let mut names: Vec<&str> = matching.iter().filter_map(|d| ref_name(d)).collect();
        names.sort_unstable();
        names.dedup();
        if names.len() > 1 {
            return Err(OciError::Missing {
                what: format!("a choice between several images ({}); name one", names.join(", ")),
            });
        }
    }
    Ok((*first).clone())
}

/// A parsed image config plus what the layers need from it.
pub(crate) struct ParsedConfig {
    pub(crate) diff_ids: Vec<Sha256Digest>,
    pub(crate) settings: ImageConfig,
}

/// Parses an image config and checks it is for `platform`.
pub(crate) fn parse_config(
    bytes: &[u8],
    platform: &Platform,
    config_digest: &Sha256Digest,
) -> Result<ParsedConfig, OciError> {
    let what = format!("image config {config_digest}");
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|e| OciError::malformed(&what, e))?;
    let os = config.os().to_string();
    let arch = config.architecture().to_string();
    if !platform.matches(&os, &arch, config.variant().as_deref()) {
        return Err(OciError::NoMatchingPlatform {
            wanted: platform.to_string(),
            available: format!("{os}/{arch}"),
        });
    }
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Sha256Digest::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    let run = config.config().clone().unwrap_or_default();
    let mut image_platform = format!("{os}/{arch}");
    if let Some(v) = config.variant() {
        image_platform.push('/');
        image_platform.push_str(v);
    }
    Ok(ParsedConfig {
        diff_ids,
        settings: ImageConfig {
            env: run.env().clone().unwrap_or_default(),
            workdir: run.working_dir().clone().filter(|w| !w.is_empty()),
            entrypoint: run.entrypoint().clone().unwrap_or_default(),
            cmd: run.cmd().clone().unwrap_or_default(),
            user: run.user().clone().filter(|u| !u.is_empty()),
            digest: None,
            manifest_digest: None,
            config_digest: config_digest.to_string(),
            platform: image_platform,
        },
    })
}

/// Human-readable size for progress messages.
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Short form of a digest for progress lines: `sha256:0123456789ab`.
pub(crate) fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parses_and_matches() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "arm64", None));
        assert!(Platform::linux_amd64().matches("linux", "amd64", Some("v2")));
        assert!("linux".parse::<Platform>().is_err());
    }

    #[test]
    fn refuses_schema1() {
        let err = parse_document(br#"{"schemaVersion":1,"fsLayers":[]}"#, None, "m")
            .err()
            .unwrap();
        assert!(matches!(err, OciError::UnsupportedMediaType { .. }), "{err}");
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0 MiB");
    }
}
