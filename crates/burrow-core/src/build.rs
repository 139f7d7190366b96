//! Image builds from a Burrowfile (`FROM`, `RUN`, `ENV`, `WORKDIR`, `COPY`).
//!
//! Each `RUN`/`COPY` step runs in a temporary sandbox made from the previous layer, and
//! its result is snapshotted read-only as a cached layer keyed by the hash of everything
//! that led to it (parent layer, step text, copied bytes, environment). A rebuild reuses
//! every cached layer up to the first changed step. `COPY` writes through the agent (a
//! tar extracted inside the sandbox), never from the host into the untrusted tree. A failed
//! step stops the build with its output and leaves no sandbox and no layer behind.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use burrow_api::{CreateSandbox, ExecRequest, Image, SandboxName};
use sha2::{Digest, Sha256};

use crate::CoreError;
use crate::images::{ImageConfig, READY, is_plain_name};
use crate::manager::{Manager, blocking};
use crate::store::INTERNAL_LABEL;
use crate::store::ImageRecord;
use crate::time_util::now_rfc3339;

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Largest build context accepted (it is read into memory to pick COPY sources).
pub const MAX_CONTEXT_BYTES: u64 = 512 << 20;

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Run(String),
    Env(Vec<(String, String)>),
    Workdir(String),
    Copy { srcs: Vec<String>, dst: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Burrowfile {
    pub from: String,
    /// (line number, step, the step's text)
    pub steps: Vec<(usize, Step, String)>,
}

fn bad(line: usize, msg: impl std::fmt::Display) -> CoreError {
    CoreError::Invalid(format!("Burrowfile line {line}: {msg}"))
}

/// Parses a Burrowfile: one instruction per line, `\` continues a line, `#` comments.
pub fn parse(text: &str) -> Result<Burrowfile> {
    let mut logical: Vec<(usize, String)> = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim();
        if cur.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        let (start, mut acc) = cur.take().unwrap_or((line_no, String::new()));
        if let Some(body) = trimmed.strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            cur = Some((start, acc));
        } else {
            acc.push_str(trimmed);
            logical.push((start, acc));
        }
    }
    if let Some((start, acc)) = cur {
        logical.push((start, acc));
    }
    let mut from = None;
    let mut steps = Vec::new();
    for (line, text) in logical {
        let (kw, rest) = text.split_once(char::is_whitespace).unwrap_or((&text, ""));
        let rest = rest.trim();
        match kw.to_ascii_uppercase().as_str() {
            "FROM" => {
                if from.is_some() || !steps.is_empty() {
                    return Err(bad(line, "FROM must be the first instruction, once"));
                }
                if rest.is_empty() || rest.contains(char::is_whitespace) {
                    return Err(bad(line, "FROM takes one image name"));
                }
                from = Some(rest.to_owned());
            }
            _ if from.is_none() => return Err(bad(line, "the first instruction must be FROM")),
            "RUN" if !rest.is_empty() => steps.push((line, Step::Run(rest.to_owned()), text.clone())),
            "WORKDIR" if rest.starts_with('/') => {
                steps.push((line, Step::Workdir(rest.to_owned()), text.clone()))
            }
            "WORKDIR" => return Err(bad(line, "WORKDIR takes an absolute path")),
            "ENV" => {
                let pairs: Vec<(String, String)> = if rest.contains('=') {
                    words(rest)
                        .into_iter()
                        .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                        .collect::<Option<_>>()
                        .ok_or_else(|| bad(line, "ENV takes KEY=VALUE pairs (or KEY VALUE)"))?
                } else {
                    let (k, v) = rest
                        .split_once(char::is_whitespace)
                        .ok_or_else(|| bad(line, "ENV takes KEY VALUE"))?;
                    vec![(k.to_owned(), unquote(v.trim()))]
                };
                for (k, _) in &pairs {
                    let ok = !k.is_empty()
                        && !k.starts_with(|c: char| c.is_ascii_digit())
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !ok {
                        return Err(bad(line, format!("'{k}' is not a valid variable name")));
                    }
                }
                steps.push((line, Step::Env(pairs), text.clone()));
            }
            "COPY" => {
                let mut args: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
                if args.len() < 2 {
                    return Err(bad(line, "COPY takes one or more sources and a destination"));
                }
                let dst = args.pop().expect("len checked");
                if !dst.starts_with('/') {
                    return Err(bad(line, "COPY destination must be an absolute path"));
                }
                for s in &args {
                    if s.starts_with('/') || s.split('/').any(|c| c == "..") {
                        return Err(bad(
                            line,
                            format!("COPY source '{s}' must be relative to the build context"),
                        ));
                    }
                }
                steps.push((line, Step::Copy { srcs: args, dst }, text.clone()));
            }
            "RUN" => return Err(bad(line, "RUN needs a command")),
            other => {
                return Err(bad(
                    line,
                    format!("unknown instruction '{other}' (use FROM, RUN, ENV, WORKDIR, COPY)"),
                ));
            }
        }
    }
    let from =
        from.ok_or_else(|| CoreError::Invalid("the Burrowfile is empty: it needs at least FROM".into()))?;
    Ok(Burrowfile { from, steps })
}

/// Splits on whitespace, keeping quoted runs ("a b" or 'a b') together, quotes removed.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|x| x.strip_suffix(q)) {
            return inner.to_owned();
        }
    }
    v.to_owned()
}

/// A tar of the context entries a COPY selects, with paths rewritten to land under `dst`
/// when extracted at `/`. Sources: a file goes to `dst/<name>` (or to `dst` itself when
/// `dst` does not end in `/` and there is one file source); a directory's contents go into
/// `dst/`.
fn copy_tar(context: Option<&Path>, srcs: &[String], dst: &str, line: usize) -> Result<Vec<u8>> {
    let ctx = context.ok_or_else(|| bad(line, "COPY needs a build context (send one with the build)"))?;
    let mut out = tar::Builder::new(Vec::new());
    let mut found = vec![false; srcs.len()];
    let file = std::fs::File::open(ctx)
        .map_err(|e| CoreError::Internal(format!("reading the build context: {e}")))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries()
        .map_err(|e| CoreError::BadRequest(format!("the build context is not a tar: {e}")))?;
    let dst_is_dir = dst.ends_with('/') || srcs.len() > 1;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| CoreError::BadRequest(format!("the build context is not a tar: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| CoreError::BadRequest(format!("bad path in the build context: {e}")))?;
        let rel = path
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            continue;
        }
        for (i, src) in srcs.iter().enumerate() {
            let src = src.trim_start_matches("./").trim_end_matches('/');
            let target = if src == "." {
                Some(format!("{}/{rel}", dst.trim_end_matches('/')))
            } else if rel == src {
                let is_dir = entry.header().entry_type().is_dir();
                if is_dir {
                    Some(dst.trim_end_matches('/').to_owned())
                } else if dst_is_dir {
                    let base = rel.rsplit('/').next().unwrap_or(&rel);
                    Some(format!("{}/{base}", dst.trim_end_matches('/')))
                } else {
                    Some(dst.to_owned())
                }
            } else {
                rel.strip_prefix(&format!("{src}/"))
                    .map(|sub| format!("{}/{sub}", dst.trim_end_matches('/')))
            };
            let Some(target) = target else { continue };
            found[i] = true;
            let mut header = entry.header().clone();
            header.set_uid(0);
            header.set_gid(0);
            let mut data = Vec::new();
            entry
                .read_to_end(&mut data)
                .map_err(|e| CoreError::BadRequest(format!("reading the build context: {e}")))?;
            let name = target.trim_start_matches('/');
            if name.is_empty() {
                continue;
            }
            out.append_data(&mut header, name, data.as_slice())
                .map_err(|e| CoreError::Internal(format!("packing COPY {src}: {e}")))?;
            break;
        }
    }
    if let Some(i) = found.iter().position(|f| !f) {
        return Err(bad(
            line,
            format!("COPY source '{}' is not in the build context", srcs[i]),
        ));
    }
    out.into_inner()
        .map_err(|e| CoreError::Internal(format!("packing COPY: {e}")))
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Progress lines of a build, for NDJSON or logs.
pub type Progress = tokio::sync::mpsc::UnboundedSender<String>;

impl Manager {
    fn layer_dir(&self) -> PathBuf {
        self.pool.images_dir().join(".layers")
    }

    /// One file per built image: the keys of the cached layers it was built from.
    fn chains_dir(&self) -> PathBuf {
        self.layer_dir().join(".chains")
    }

    /// `POST /v1/images/prune`: deletes every cached build layer that no existing image was
    /// built from (images are independent snapshots; layers only speed up rebuilds), and the
    /// records of deleted images' layers. Returns how many layers went and their size.
    pub async fn prune_layers(&self) -> Result<burrow_api::PruneResult> {
        let images: std::collections::HashSet<String> = self.images()?.into_iter().map(|i| i.name).collect();
        let layers = self.layer_dir();
        let chains = self.chains_dir();
        let pool = self.pool.clone();
        let res = blocking(move || {
            let mut keep = std::collections::HashSet::new();
            for e in std::fs::read_dir(&chains).into_iter().flatten().flatten() {
                let image = e.file_name().to_string_lossy().into_owned();
                if images.contains(&image) {
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    keep.extend(text.lines().map(str::to_owned));
                } else {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let mut out = burrow_api::PruneResult::default();
            for e in std::fs::read_dir(&layers).into_iter().flatten().flatten() {
                let key = e.file_name().to_string_lossy().into_owned();
                if key.starts_with('.') || keep.contains(&key) || !pool.is_volume(&e.path()) {
                    continue;
                }
                out.bytes += pool.volume_size(&e.path()).unwrap_or(0);
                pool.delete_volume(&e.path())?;
                out.layers += 1;
            }
            Ok(out)
        })
        .await?;
        if res.layers > 0 {
            self.reclaim_space();
        }
        tracing::info!(layers = res.layers, bytes = res.bytes, "pruned build layers");
        Ok(res)
    }

    /// Builds image `name` from a Burrowfile and an optional context tar.
    pub async fn build_image(
        &self,
        name: &str,
        burrowfile: &str,
        context: Option<&Path>,
        progress: Progress,
    ) -> Result<Image> {
        if !is_plain_name(name) {
            return Err(CoreError::Invalid(format!(
                "image name '{name}' is invalid: use lowercase letters, digits, '-', '_' and '.'"
            )));
        }
        if name == "base" {
            return Err(CoreError::Conflict("image 'base' is built in".into()));
        }
        let bf = parse(burrowfile)?;
        self.check_pool_room(&format!("build image '{name}'"))?;
        let from_path = self.images.wait_ready(&bf.from).await?;
        let from_rec = self
            .store
            .image(&bf.from)?
            .ok_or_else(|| CoreError::not_found("image", &bf.from))?;
        let mut config = self.images.config(&bf.from);
        let mut key = hex(Sha256::digest(format!(
            "from:{}:{}",
            bf.from, from_rec.created_at
        )));
        let mut layer = from_path;
        std::fs::create_dir_all(self.layer_dir())
            .map_err(|e| CoreError::Internal(format!("layer dir: {e}")))?;
        let total = bf.steps.len();
        // The cached layers this image comes from: kept by `images prune` while it exists.
        let mut chain = Vec::new();
        for (n, (line, step, text)) in bf.steps.iter().enumerate() {
            let _ = progress.send(format!("step {}/{total} (line {line}): {text}", n + 1));
            let copy = match step {
                Step::Env(pairs) => {
                    config.env.extend(pairs.iter().cloned());
                    key = hex(Sha256::digest(format!("{key}\n{text}")));
                    continue;
                }
                Step::Workdir(dir) => {
                    config.workdir = Some(dir.clone());
                    key = hex(Sha256::digest(format!("{key}\n{text}")));
                    continue;
                }
                Step::Copy { srcs, dst } => Some(copy_tar(context, srcs, dst, *line)?),
                Step::Run(_) => None,
            };
            let mut h = Sha256::new();
            h.update(key.as_bytes());
            h.update(text.as_bytes());
            h.update(serde_json::to_vec(&config).unwrap_or_default());
            if let Some(c) = &copy {
                h.update(c);
            }
            key = hex(h.finalize());
            chain.push(key.clone());
            let cached = self.layer_dir().join(&key);
            if self.pool.is_volume(&cached) {
                let _ = progress.send("  using cached layer".to_owned());
                layer = cached;
                continue;
            }
            self.run_step(step, copy, &config, &layer, &cached, &progress)
                .await
                .map_err(|e| match e {
                    CoreError::Invalid(m) => bad(*line, m),
                    other => other,
                })?;
            layer = cached;
        }
        // The image: a read-only snapshot of the last layer, renamed into place.
        let tmp = self.pool.images_dir().join(format!(".build-{name}"));
        let final_path = self.pool.image_path(name);
        let pool = self.pool.clone();
        let existed = self.store.image(name)?.is_some();
        let chains = self.chains_dir();
        let image = name.to_owned();
        let size = blocking(move || {
            pool.delete_volume(&tmp)?;
            pool.snapshot(&layer, &tmp, true)?;
            pool.delete_volume(&final_path)?;
            std::fs::rename(&tmp, &final_path)
                .map_err(|e| CoreError::Internal(format!("placing the image: {e}")))?;
            write_chain(&chains, &image, &chain)?;
            Ok(pool.volume_size(&final_path).unwrap_or(0))
        })
        .await?;
        if existed {
            tracing::info!(
                image = name,
                "image rebuilt; sandboxes made from the old one keep their disks"
            );
        }
        self.store.upsert_image(&ImageRecord {
            name: name.to_owned(),
            status: READY.to_owned(),
            created_at: now_rfc3339(),
            size_bytes: size,
            source: format!("Burrowfile FROM {}", bf.from),
            message: None,
            config: Some(serde_json::to_string(&config).unwrap_or_default()),
        })?;
        let _ = progress.send(format!("image {name} ready"));
        self.images()
            .map(|l| l.into_iter().find(|i| i.name == name).expect("just recorded"))
    }

    /// Runs one RUN/COPY step in a temporary sandbox from `layer`; on success snapshots the
    /// result to `out` (read-only). The temporary sandbox is always removed.
    async fn run_step(
        &self,
        step: &Step,
        copy: Option<Vec<u8>>,
        config: &ImageConfig,
        layer: &Path,
        out: &Path,
        progress: &Progress,
    ) -> Result<()> {
        let tmp_name = format!("build-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let req = CreateSandbox {
            name: SandboxName::parse(&tmp_name).expect("valid"),
            labels: BTreeMap::from([(INTERNAL_LABEL.to_owned(), "build".to_owned())]),
            ..Default::default()
        };
        let sb = self
            .create_from(req, Some(("(build)".to_owned(), layer.to_path_buf())))
            .await?;
        let result = self.run_step_in(&tmp_name, step, copy, config, progress).await;
        let result = match result {
            Ok(()) => {
                // Stop first so the snapshot is of a quiet tree.
                let rec = self.record(&tmp_name)?;
                self.kill(&rec).await?;
                let pool = self.pool.clone();
                let src = pool.sandbox_path(&sb.id);
                let part = out.with_extension("part");
                let out = out.to_path_buf();
                blocking(move || {
                    pool.delete_volume(&part)?;
                    pool.snapshot(&src, &part, true)?;
                    std::fs::rename(&part, &out)
                        .map_err(|e| CoreError::Internal(format!("placing a layer: {e}")))?;
                    Ok(())
                })
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = self.delete(&tmp_name).await {
            tracing::warn!(sandbox = tmp_name, error = %crate::error::chain(&e), "removing a build sandbox");
        }
        result
    }

    async fn run_step_in(
        &self,
        sandbox: &str,
        step: &Step,
        copy: Option<Vec<u8>>,
        config: &ImageConfig,
        progress: &Progress,
    ) -> Result<()> {
        use base64::Engine as _;
        let (cmd, stdin) = match step {
            Step::Run(script) => (vec!["/bin/sh".to_owned(), "-c".to_owned(), script.clone()], None),
            Step::Copy { .. } => (
                vec![
                    "tar".to_owned(),
                    "-x".to_owned(),
                    "--no-same-owner".to_owned(),
                    "-C".to_owned(),
                    "/".to_owned(),
                    "-f".to_owned(),
                    "-".to_owned(),
                ],
                copy.map(|c| base64::engine::general_purpose::STANDARD.encode(c)),
            ),
            _ => return Ok(()),
        };
        let req = ExecRequest {
            cmd,
            env: config.env.clone(),
            cwd: config.workdir.clone(),
            stdin_b64: stdin,
            max_output_bytes: Some(4 << 20),
            ..Default::default()
        };
        if let Some(dir) = &config.workdir {
            self.exec(
                sandbox,
                ExecRequest {
                    cmd: vec!["mkdir".into(), "-p".into(), dir.clone()],
                    ..Default::default()
                },
            )
            .await?;
        }
        let r = self.exec(sandbox, req).await?;
        for l in r.stdout.lines().chain(r.stderr.lines()) {
            let _ = progress.send(format!("  {l}"));
        }
        if r.exit_code != 0 {
            let tail: String = {
                let all = format!("{}{}", r.stdout, r.stderr);
                let start = all.len().saturating_sub(4000);
                all[all.floor_char_boundary(start)..].to_owned()
            };
            return Err(CoreError::Invalid(format!(
                "step failed with exit code {}:\n{tail}",
                r.exit_code
            )));
        }
        Ok(())
    }

    /// Removes what an interrupted build left: temporary sandboxes are removed by the
    /// sandbox reconciliation (they carry `INTERNAL_LABEL`); here, partial layers and images.
    pub(crate) async fn reconcile_builds(&self) -> Result<()> {
        for dir in [self.layer_dir(), self.pool.images_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let partial = n.ends_with(".part")
                    || n.starts_with(".build-")
                    || n.starts_with(".template-")
                    || n.starts_with(".oci-");
                if partial {
                    let pool = self.pool.clone();
                    let p = e.path();
                    blocking(move || Ok(pool.delete_volume(&p)?)).await?;
                }
            }
        }
        for rec in self.store.all_sandboxes()? {
            if rec.labels.get(INTERNAL_LABEL).is_some_and(|v| v == "build") {
                tracing::warn!(
                    sandbox = rec.name,
                    "removing a build sandbox left by an interrupted build"
                );
                let _ = self.teardown(&rec).await;
                let _ = self.delete_all_checkpoints(&rec).await;
                self.delete_record(&rec.id)?;
            }
        }
        Ok(())
    }
}

/// Records `chain` (layer keys) as what `image` was built from, replacing an older record.
fn write_chain(dir: &Path, image: &str, chain: &[String]) -> Result<()> {
    let io = |e: std::io::Error| CoreError::Internal(format!("recording image {image}'s layers: {e}"));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".{image}.tmp"));
    std::fs::write(&tmp, chain.join("\n") + "\n").map_err(io)?;
    std::fs::rename(&tmp, dir.join(image)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_instructions() {
        let bf = parse("# comment\nFROM base\nRUN apt-get update && \\\n    echo hi\nENV A=1 B=\"two words\"\nENV C 3\nWORKDIR /srv\nCOPY src app.py /srv/\n").unwrap();
        assert_eq!(bf.from, "base");
        assert_eq!(bf.steps[0].1, Step::Run("apt-get update &&  echo hi".into()));
        assert_eq!(
            bf.steps[1].1,
            Step::Env(vec![("A".into(), "1".into()), ("B".into(), "two words".into())])
        );
        assert_eq!(bf.steps[2].1, Step::Env(vec![("C".into(), "3".into())]));
        assert_eq!(bf.steps[3].1, Step::Workdir("/srv".into()));
        assert_eq!(
            bf.steps[4].1,
            Step::Copy {
                srcs: vec!["src".into(), "app.py".into()],
                dst: "/srv/".into()
            }
        );
    }

    #[test]
    fn refuses_bad_files_naming_the_line() {
        for (text, needle) in [
            ("", "empty"),
            ("RUN x", "line 1"),
            ("FROM base\nFROB x", "line 2: unknown instruction 'FROB'"),
            ("FROM base\nCOPY ../x /y", "relative to the build context"),
            ("FROM base\nCOPY x y", "absolute"),
            ("FROM base\nWORKDIR rel", "absolute"),
            ("FROM base\nENV 1X=2", "not a valid variable name"),
            ("FROM base\nFROM base", "FROM must be the first"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
