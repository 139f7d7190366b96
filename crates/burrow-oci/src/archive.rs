//! `burrow images import`: an OCI image layout or a `docker save` archive, as a tarball (plain, gzip or zstd)
//! or as an unpacked directory, turned into a root directory.
//!
//! A tarball is not unpacked to disk: it is indexed once (path → offset) and blobs are read in place, so import
//! needs no scratch space beyond a decompressed copy when the archive itself is compressed.
//!
//! Verification: OCI layouts are checked like a registry pull (every blob's sha256 and size, the manifest's
//! digest against `index.json`). Legacy `docker save` archives list no blob digests, so the config is checked
//! against its file name and each layer against the config's `rootfs.diff_ids`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::digest::{Expected, Sha256Digest};
use crate::image::{
    self, Document, ImageConfig, MAX_CONFIG_BYTES, MAX_INDEX_DEPTH, MAX_MANIFEST_BYTES, Platform, human_size,
    short,
};
use crate::layer::{LayerCheck, Rootfs};
use crate::staging::Staging;
use crate::{OciError, Progress};

/// Options for [`import_archive`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Platform to pick from multi-platform archives; the image's config must match it.
    pub platform: Platform,
    /// For archives holding several images: a tag (`1.2`) or full name (`team/tool:1.2`) to select. Matched
    /// against `org.opencontainers.image.ref.name` / `io.containerd.image.name` or docker's `RepoTags`.
    pub image: Option<String>,
}

/// Imports an image archive into `dest_root`.
///
/// `archive` is an OCI image layout or a `docker save` archive, either a tar file (optionally gzip- or
/// zstd-compressed) or an unpacked directory; the format is detected from its contents.
///
/// `dest_root` must not exist (or be an empty directory) and its parent must exist. The root is assembled in a
/// temporary directory beside it and renamed into place at the end; on error nothing is left behind and
/// `dest_root` is untouched. Blocking: call it from `spawn_blocking` in async code.
pub fn import_archive(
    archive: &Path,
    dest_root: &Path,
    opts: &ImportOptions,
    progress: Progress<'_>,
) -> Result<ImageConfig, OciError> {
    let staging = Staging::new(dest_root)?;
    let source = open_source(archive, &staging, progress)?;
    let config = if source.exists("oci-layout") && source.exists("index.json") {
        progress(&format!("{}: OCI image layout", archive.display()));
        import_oci_layout(&source, &staging, opts, progress)?
    } else if source.exists("manifest.json") {
        progress(&format!("{}: docker-save archive", archive.display()));
        import_docker_save(&source, &staging, opts, progress)?
    } else {
        return Err(OciError::UnsupportedArchive {
            path: archive.to_path_buf(),
            reason: "neither oci-layout + index.json nor manifest.json found".into(),
        });
    };
    staging.commit()?;
    progress(&format!("image root ready at {}", dest_root.display()));
    Ok(config)
}

fn import_oci_layout(
    source: &Source,
    staging: &Staging,
    opts: &ImportOptions,
    progress: Progress<'_>,
) -> Result<ImageConfig, OciError> {
    let index_bytes = source.read_small("index.json", MAX_MANIFEST_BYTES)?;
    let Document::Index(mut index) = image::parse_document(&index_bytes, None, "index.json")? else {
        return Err(OciError::malformed("index.json", "not an image index"));
    };
    let mut selector = opts.image.as_deref();
    let mut top_digest = None;
    let mut depth = 0;
    let manifest = loop {
        let desc = image::select_from_index(&index, &opts.platform, selector)?;
        // The name picks an entry of index.json; nested indexes are chosen by platform only.
        selector = None;
        let digest = image::descriptor_digest(&desc)?;
        top_digest.get_or_insert_with(|| digest.clone());
        let expected = Expected {
            digest: digest.clone(),
            size: Some(desc.size()),
        };
        let bytes = read_blob_small(source, &expected, MAX_MANIFEST_BYTES)?;
        match image::parse_document(
            &bytes,
            Some(desc.media_type().as_ref()),
            &format!("manifest {digest}"),
        )? {
            Document::Manifest(m) => break (m, digest),
            Document::Index(i) if depth < MAX_INDEX_DEPTH => {
                depth += 1;
                index = i;
            }
            Document::Index(_) => {
                return Err(OciError::malformed(
                    format!("index {digest}"),
                    "indexes nested too deep",
                ));
            }
        }
    };
    let (manifest, manifest_digest) = manifest;

    let config_digest = image::descriptor_digest(manifest.config())?;
    let config_bytes = read_blob_small(
        source,
        &Expected {
            digest: config_digest.clone(),
            size: Some(manifest.config().size()),
        },
        MAX_CONFIG_BYTES,
    )?;
    let parsed = image::parse_config(&config_bytes, &opts.platform, &config_digest)?;
    if parsed.diff_ids.len() != manifest.layers().len() {
        return Err(OciError::malformed(
            format!("image config {config_digest}"),
            format!(
                "{} diff_ids for {} layers",
                parsed.diff_ids.len(),
                manifest.layers().len()
            ),
        ));
    }

    let mut rootfs = Rootfs::new(staging.rootfs());
    let total = manifest.layers().len();
    for (i, (layer, diff_id)) in manifest.layers().iter().zip(parsed.diff_ids).enumerate() {
        let digest = image::descriptor_digest(layer)?;
        progress(&format!(
            "layer {}/{total} {} ({}): applying",
            i + 1,
            short(digest.as_str()),
            human_size(layer.size())
        ));
        let check = LayerCheck {
            name: digest.to_string(),
            blob: Some(Expected {
                digest: digest.clone(),
                size: Some(layer.size()),
            }),
            diff_id: Some(diff_id),
        };
        let blob = source
            .open(&blob_path(&digest))
            .map_err(|e| missing_blob(e, &digest))?;
        let stats = rootfs.apply_blob(blob, &check)?;
        progress(&format!(
            "layer {}/{total} {}: {stats}",
            i + 1,
            short(digest.as_str())
        ));
    }
    rootfs.finish()?;

    let mut config = parsed.settings;
    config.digest = top_digest.map(|d| d.to_string());
    config.manifest_digest = Some(manifest_digest.to_string());
    Ok(config)
}

/// One entry of a docker-save `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn import_docker_save(
    source: &Source,
    staging: &Staging,
    opts: &ImportOptions,
    progress: Progress<'_>,
) -> Result<ImageConfig, OciError> {
    let bytes = source.read_small("manifest.json", MAX_MANIFEST_BYTES)?;
    let entries: Vec<DockerSaveEntry> =
        serde_json::from_slice(&bytes).map_err(|e| OciError::malformed("docker-save manifest.json", e))?;
    let tags = |e: &DockerSaveEntry| e.repo_tags.clone().unwrap_or_default();
    let entry = match (&opts.image, entries.as_slice()) {
        (_, []) => return Err(OciError::malformed("docker-save manifest.json", "no images")),
        (None, [only]) => only,
        (None, many) => {
            let names: Vec<String> = many.iter().flat_map(tags).collect();
            return Err(OciError::Missing {
                what: format!("a choice between several images ({}); name one", names.join(", ")),
            });
        }
        (Some(want), all) => all
            .iter()
            .find(|e| {
                tags(e)
                    .iter()
                    .any(|t| t == want || t.rsplit_once(':').is_some_and(|(_, tag)| tag == want))
            })
            .ok_or_else(|| OciError::Missing {
                what: format!("an image tagged {want:?}"),
            })?,
    };

    // Config files are named after their digest (`<hex>.json` or `blobs/sha256/<hex>`).
    let config_bytes = source.read_small(&entry.config, MAX_CONFIG_BYTES)?;
    let config_digest = Sha256Digest::of(&config_bytes);
    if let Some(named) = digest_from_name(&entry.config)
        && named != config_digest
    {
        return Err(OciError::DigestMismatch {
            digest: named.to_string(),
            actual: config_digest.to_string(),
        });
    }
    let parsed = image::parse_config(&config_bytes, &opts.platform, &config_digest)?;
    if parsed.diff_ids.len() != entry.layers.len() {
        return Err(OciError::malformed(
            format!("image config {config_digest}"),
            format!(
                "{} diff_ids for {} layers",
                parsed.diff_ids.len(),
                entry.layers.len()
            ),
        ));
    }

    let mut rootfs = Rootfs::new(staging.rootfs());
    let total = entry.layers.len();
    for (i, (path, diff_id)) in entry.layers.iter().zip(parsed.diff_ids).enumerate() {
        progress(&format!("layer {}/{total} {path}: applying", i + 1));
        let check = LayerCheck {
            name: path.clone(),
            blob: digest_from_name(path).map(|digest| Expected { digest, size: None }),
            diff_id: Some(diff_id),
        };
        let stats = rootfs.apply_blob(source.open(path)?, &check)?;
        progress(&format!("layer {}/{total} {path}: {stats}", i + 1));
    }
    rootfs.finish()?;
    Ok(parsed.settings)
}

/// `blobs/sha256/<hex>` or `<hex>.json` → the digest that name promises.
fn digest_from_name(path: &str) -> Option<Sha256Digest> {
    let name = path.rsplit('/').next()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    Sha256Digest::parse(&format!("sha256:{hex}")).ok()
}

fn blob_path(digest: &Sha256Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn missing_blob(e: OciError, digest: &Sha256Digest) -> OciError {
    match e {
        OciError::Missing { .. } => OciError::Missing {
            what: format!("blob {digest}"),
        },
        other => other,
    }
}

fn read_blob_small(source: &Source, expected: &Expected, limit: u64) -> Result<Vec<u8>, OciError> {
    if expected.size.is_some_and(|s| s > limit) {
        return Err(OciError::TooLarge {
            digest: expected.digest.to_string(),
            expected: limit,
        });
    }
    let bytes = source
        .read_small(&blob_path(&expected.digest), limit)
        .map_err(|e| missing_blob(e, &expected.digest))?;
    let mut hasher = crate::digest::Hasher::default();
    hasher.update(&bytes);
    expected.check(hasher)?;
    Ok(bytes)
}

/// Where archive members come from.
enum Source {
    Dir(PathBuf),
    Tar(TarIndex),
}

fn open_source(archive: &Path, staging: &Staging, progress: Progress<'_>) -> Result<Source, OciError> {
    let meta =
        std::fs::metadata(archive).map_err(|e| OciError::io(format!("opening {}", archive.display()), e))?;
    if meta.is_dir() {
        let root = archive
            .canonicalize()
            .map_err(|e| OciError::io(format!("resolving {}", archive.display()), e))?;
        return Ok(Source::Dir(root));
    }
    let mut file =
        File::open(archive).map_err(|e| OciError::io(format!("opening {}", archive.display()), e))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic)
        .map_err(|e| OciError::io(format!("reading {}", archive.display()), e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| OciError::io(format!("reading {}", archive.display()), e))?;
    let compressed: Option<Box<dyn Read>> = if magic[..n].starts_with(&[0x1f, 0x8b]) {
        Some(Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(
            file.try_clone()
                .map_err(|e| OciError::io("reopening archive", e))?,
        ))))
    } else if magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        Some(Box::new(
            zstd::stream::read::Decoder::new(
                file.try_clone()
                    .map_err(|e| OciError::io("reopening archive", e))?,
            )
            .map_err(|e| OciError::io("starting zstd decoder", e))?,
        ))
    } else {
        None
    };
    let (file, path) = match compressed {
        Some(mut decoder) => {
            // Blobs are read by offset, which needs a seekable plain tar.
            progress(&format!("{}: decompressing archive", archive.display()));
            let path = staging.scratch().join("archive.tar");
            let mut out = File::create(&path).map_err(|e| OciError::io("creating scratch archive", e))?;
            io::copy(&mut decoder, &mut out)
                .map_err(|e| OciError::io(format!("decompressing {}", archive.display()), e))?;
            let file = File::open(&path).map_err(|e| OciError::io("reopening scratch archive", e))?;
            (file, path)
        }
        None => (file, archive.to_path_buf()),
    };
    Ok(Source::Tar(TarIndex::build(file, &path)?))
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

impl Source {
    fn exists(&self, path: &str) -> bool {
        match self {
            Source::Dir(root) => safe_join(root, path).is_some_and(|p| p.is_file()),
            Source::Tar(index) => index.lookup(path).is_some(),
        }
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + '_>, OciError> {
        let missing = || OciError::Missing {
            what: format!("{path:?} in the archive"),
        };
        match self {
            Source::Dir(root) => {
                let full = safe_join(root, path).ok_or_else(missing)?;
                // Members must stay inside the layout directory even through symlinks.
                let real = full.canonicalize().map_err(|_| missing())?;
                if !real.starts_with(root) {
                    return Err(OciError::Refused(format!(
                        "{path:?} points outside the image directory"
                    )));
                }
                let file =
                    File::open(&real).map_err(|e| OciError::io(format!("opening {}", real.display()), e))?;
                Ok(Box::new(file))
            }
            Source::Tar(index) => {
                let (offset, size) = index.lookup(path).ok_or_else(missing)?;
                let mut file = File::open(&index.path)
                    .map_err(|e| OciError::io(format!("opening {}", index.path.display()), e))?;
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| OciError::io(format!("reading {path:?}"), e))?;
                Ok(Box::new(file.take(size)))
            }
        }
    }

    fn read_small(&self, path: &str, limit: u64) -> Result<Vec<u8>, OciError> {
        let mut bytes = Vec::new();
        self.open(path)?
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| OciError::io(format!("reading {path:?} from the archive"), e))?;
        if bytes.len() as u64 > limit {
            return Err(OciError::TooLarge {
                digest: path.to_owned(),
                expected: limit,
            });
        }
        Ok(bytes)
    }
}

/// `root/path` for a relative path without `..`; `None` otherwise.
fn safe_join(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        .then(|| root.join(rel))
}

/// Member offsets of a plain tar file.
struct TarIndex {
    path: PathBuf,
    members: HashMap<String, Member>,
}

enum Member {
    File { offset: u64, size: u64 },
    Symlink(String),
    Hardlink(String),
}

impl TarIndex {
    fn build(file: File, path: &Path) -> Result<Self, OciError> {
        let bad = |e: io::Error| OciError::UnsupportedArchive {
            path: path.to_path_buf(),
            reason: format!("not a readable tar file: {e}"),
        };
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let Some(name) = clean(&String::from_utf8_lossy(&entry.path_bytes())) else {
                continue;
            };
            let link = || {
                entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default()
            };
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink => Member::Symlink(link()),
                tar::EntryType::Link => Member::Hardlink(link()),
                _ => continue,
            };
            members.insert(name, member);
        }
        Ok(Self {
            path: path.to_path_buf(),
            members,
        })
    }

    /// Offset and size of a member, following symlinks (relative to the member's directory) and hard links.
    fn lookup(&self, path: &str) -> Option<(u64, u64)> {
        let mut name = clean(path)?;
        for _ in 0..16 {
            match self.members.get(&name)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::Hardlink(target) => name = clean(target)?,
                Member::Symlink(target) => {
                    let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    name = if target.starts_with('/') {
                        clean(target)?
                    } else {
                        clean(&format!("{dir}/{target}"))?
                    };
                }
            }
        }
        None
    }
}

/// Normalizes an archive member name: no leading `/` or `./`, `..` resolved, never above the top.
fn clean(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_normalizes_member_names() {
        assert_eq!(clean("./blobs//sha256/ab").as_deref(), Some("blobs/sha256/ab"));
        assert_eq!(clean("a/../b").as_deref(), Some("b"));
        assert_eq!(clean("../x"), None);
        assert_eq!(clean("./"), None);
    }

    #[test]
    fn digest_from_name_reads_both_layouts() {
        let hex = "ab".repeat(32);
        assert!(digest_from_name(&format!("{hex}.json")).is_some());
        assert!(digest_from_name(&format!("blobs/sha256/{hex}")).is_some());
        assert!(digest_from_name("0123/layer.tar").is_none());
    }
}
