//! `burrow cp SRC DST`: files and directories between this machine and a sandbox, either
//! way. One side is `NAME:/path`; the other a local path or `-` (stdin/stdout).
//!
//! Like `cp -r`: when the destination is an existing directory the source goes inside it
//! under its own name, otherwise it takes the destination's name. Files stream through
//! `…/files`, directories through `…/files/archive` as tar streams built and unpacked on
//! the fly: nothing is held in memory whole. Archives from a sandbox are hostile: see
//! [`unpack`] for what a download can and cannot create (in short: nothing outside the
//! destination, no device nodes or FIFOs, and without `--preserve` no setuid/setgid bits and
//! no owner but the user running `burrow cp`). A directory sent to stdout (`-`) is the
//! sandbox's archive as is.

mod unpack;

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use burrow_api::SandboxName;
use burrow_client::{ByteStream, Client, WriteFileOptions};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::app::App;
use crate::cli::CpArgs;

const CHUNK: usize = 256 * 1024;

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Remote { sandbox: String, path: String },
    Local(PathBuf),
    Stdio,
}

fn parse_endpoint(s: &str) -> Endpoint {
    if s == "-" {
        return Endpoint::Stdio;
    }
    if let Some((name, path)) = s.split_once(':')
        && path.starts_with('/')
        && SandboxName::parse(name).is_ok()
    {
        return Endpoint::Remote {
            sandbox: name.to_owned(),
            path: path.to_owned(),
        };
    }
    Endpoint::Local(PathBuf::from(s))
}

/// The last component of a sandbox path (`/a/b/` → `b`), if any.
fn remote_basename(path: &str) -> Option<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
}

fn remote_join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn remote_parent(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/".to_owned(),
        Some((parent, _)) => parent.to_owned(),
    }
}

/// Whether `path` in the sandbox is a directory (`None`: it does not exist).
async fn remote_is_dir(c: &Client, sandbox: &str, path: &str) -> anyhow::Result<Option<bool>> {
    match c.list_files(sandbox, path).await {
        Ok(_) => Ok(Some(true)),
        Err(e) if e.status() == Some(409) => Ok(Some(false)),
        Err(e) if e.status() == Some(404) && e.code() != Some("not_found") => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub async fn run(app: &App, a: CpArgs) -> anyhow::Result<u8> {
    let c = &app.client;
    match (parse_endpoint(&a.src), parse_endpoint(&a.dst)) {
        (Endpoint::Remote { .. }, Endpoint::Remote { .. }) => {
            bail!("copying between two sandboxes is not supported; copy through a local path")
        }
        (Endpoint::Remote { sandbox, path }, local) => {
            let opts = unpack::Options { preserve: a.preserve };
            download(c, &sandbox, &path, local, opts).await?
        }
        (local, Endpoint::Remote { sandbox, path }) => upload(c, local, &sandbox, &path, a.parents).await?,
        _ => bail!("one of SRC and DST must be NAME:/path (a sandbox and an absolute path in it)"),
    }
    Ok(0)
}

// ----- upload ---------------------------------------------------------------------------

/// A local reader as a stream of chunks.
fn read_stream<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    r: R,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(Some(r), |state| async move {
        let mut r = state?;
        let mut buf = Vec::with_capacity(CHUNK);
        match (&mut r).take(CHUNK as u64).read_to_end(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(buf.into()), Some(r))),
            Err(e) => Some((Err(e), None)),
        }
    })
}

async fn upload(c: &Client, src: Endpoint, sandbox: &str, dst: &str, parents: bool) -> anyhow::Result<()> {
    let local = match src {
        Endpoint::Stdio => {
            if dst.ends_with('/') {
                bail!("give a file name for stdin: {sandbox}:{dst}<name>");
            }
            let opts = WriteFileOptions {
                mode: None,
                mkdir: parents,
            };
            return c
                .write_file(sandbox, dst, opts, read_stream(tokio::io::stdin()))
                .await
                .with_context(|| format!("writing {sandbox}:{dst}"));
        }
        Endpoint::Local(p) => p,
        Endpoint::Remote { .. } => unreachable!("handled by the caller"),
    };
    let meta = std::fs::metadata(&local).with_context(|| format!("cannot read {}", local.display()))?;
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            std::fs::canonicalize(&local)
                .ok()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .context("the source has no name to copy it under")?;
    let dst_is_dir = remote_is_dir(c, sandbox, dst).await?;
    if meta.is_dir() {
        // Extract into the destination (named after the source) or, when it does not exist,
        // into its parent under the destination's name.
        let (into, top) = match dst_is_dir {
            Some(true) => (dst.to_owned(), name),
            Some(false) => bail!("{sandbox}:{dst} exists and is not a directory"),
            None => {
                let top = remote_basename(dst).context("the destination needs a name")?;
                (remote_parent(dst), top.to_owned())
            }
        };
        let tar = tar_stream(local, top);
        c.write_archive(sandbox, &into, tar)
            .await
            .with_context(|| format!("copying into {sandbox}:{into}"))?;
        return Ok(());
    }
    let target = match dst_is_dir {
        Some(true) => remote_join(dst, &name),
        _ if dst.ends_with('/') => bail!("{sandbox}:{dst} is not a directory"),
        _ => dst.to_owned(),
    };
    let file = tokio::fs::File::open(&local)
        .await
        .with_context(|| format!("cannot open {}", local.display()))?;
    let opts = WriteFileOptions {
        mode: Some(meta.permissions().mode() & 0o7777),
        mkdir: parents,
    };
    c.write_file(sandbox, &target, opts, read_stream(file))
        .await
        .with_context(|| format!("writing {sandbox}:{target}"))
}

/// A `Write` that hands full chunks to an async consumer.
struct ChannelWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "upload stopped"))
    }
}

/// A tar stream of the local directory `dir`, its entries under `top/`, built on a blocking
/// thread as the upload consumes it. Symlinks are archived as symlinks.
fn tar_stream(dir: PathBuf, top: String) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: tx.clone(),
        };
        let mut b = tar::Builder::new(writer);
        b.follow_symlinks(false);
        let result = b
            .append_dir_all(&top, &dir)
            .and_then(|()| b.into_inner())
            .and_then(|mut w| w.flush());
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(io::Error::new(
                e.kind(),
                format!("archiving {}: {e}", dir.display()),
            )));
        }
    });
    tokio_stream_of(rx).map(|r| r.map(Into::into))
}

fn tokio_stream_of<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// ----- download -------------------------------------------------------------------------

async fn download(
    c: &Client,
    sandbox: &str,
    src: &str,
    dst: Endpoint,
    opts: unpack::Options,
) -> anyhow::Result<()> {
    let is_dir = remote_is_dir(c, sandbox, src)
        .await?
        .with_context(|| format!("{sandbox}:{src} does not exist"))?;
    match dst {
        Endpoint::Stdio => {
            // A file's bytes, or a directory as a tar stream.
            let stream = if is_dir {
                c.read_archive(sandbox, src).await?
            } else {
                c.read_file(sandbox, src).await?
            };
            let mut out = tokio::io::stdout();
            copy_stream(stream, &mut out).await
        }
        Endpoint::Local(dst) => {
            if is_dir {
                download_dir(c, sandbox, src, &dst, opts).await
            } else {
                download_file(c, sandbox, src, &dst).await
            }
        }
        Endpoint::Remote { .. } => unreachable!("handled by the caller"),
    }
}

async fn copy_stream(
    mut s: ByteStream,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    while let Some(chunk) = s.next().await {
        out.write_all(&chunk?).await?;
    }
    out.flush().await?;
    Ok(())
}

async fn download_file(c: &Client, sandbox: &str, src: &str, dst: &Path) -> anyhow::Result<()> {
    let target = if dst.is_dir() {
        dst.join(remote_basename(src).context("the source has no name")?)
    } else {
        dst.to_owned()
    };
    let stream = c.read_file(sandbox, src).await?;
    // Into a temporary file first, so an interrupted copy leaves no truncated target.
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".burrow-cp-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut out = tokio::fs::File::from_std(tmp.reopen()?);
    copy_stream(stream, &mut out).await?;
    drop(out);
    // The mode of the regular file replaced (a symlink is replaced, not followed), never
    // its setuid/setgid/sticky bits: the content comes from the sandbox.
    let mode = match std::fs::symlink_metadata(&target) {
        Ok(m) if m.is_file() => m.permissions().mode() & 0o777,
        _ => 0o644,
    };
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))?;
    tmp.persist(&target)
        .with_context(|| format!("cannot write {}", target.display()))?;
    Ok(())
}

/// A `Read` over chunks arriving from the async side.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.cur = chunk?;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Unpacks a tar stream into `dir` on a blocking thread while it downloads; entries must lie
/// under `top/` when given. Skipped entries are reported on stderr.
async fn unpack(
    mut s: ByteStream,
    dir: PathBuf,
    top: Option<String>,
    opts: unpack::Options,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let unpacker = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            cur: Default::default(),
            pos: 0,
        };
        let mut warn = |w: String| eprintln!("burrow cp: {w}");
        unpack::unpack(reader, &dir, top.as_deref().map(OsStr::new), opts, &mut warn)
    });
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| io::Error::other(e.to_string()));
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            break;
        }
    }
    drop(tx);
    unpacker.await?.context("unpacking the archive")?;
    Ok(())
}

async fn download_dir(
    c: &Client,
    sandbox: &str,
    src: &str,
    dst: &Path,
    opts: unpack::Options,
) -> anyhow::Result<()> {
    // The agent names entries `<last component of src>/...` (`.` for `/`).
    let top = remote_basename(src).map(str::to_owned);
    let stream = c.read_archive(sandbox, src).await?;
    if dst.is_dir() {
        // `dst/<name of src>`.
        return unpack(stream, dst.to_owned(), top, opts).await;
    }
    if dst.exists() {
        bail!("{} exists and is not a directory", dst.display());
    }
    let Some(top) = top else {
        // The sandbox's `/`: its entries go straight into the new directory.
        std::fs::create_dir(dst).with_context(|| format!("cannot create {}", dst.display()))?;
        return unpack(stream, dst.to_owned(), None, opts).await;
    };
    // Unpack next to the destination, then move the one top directory into place.
    let parent = dst
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new()
        .prefix(".burrow-cp-")
        .tempdir_in(parent)
        .with_context(|| format!("cannot write in {}", parent.display()))?;
    unpack(stream, staging.path().to_owned(), Some(top.clone()), opts).await?;
    let unpacked = staging.path().join(&top);
    match std::fs::symlink_metadata(&unpacked) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("the sandbox sent '{top}' as something other than a directory"),
        Err(_) => bail!("the sandbox sent an empty archive"),
    }
    std::fs::rename(&unpacked, dst).with_context(|| format!("cannot create {}", dst.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let r = |s: &str, p: &str| Endpoint::Remote {
            sandbox: s.into(),
            path: p.into(),
        };
        assert_eq!(parse_endpoint("box:/etc/hosts"), r("box", "/etc/hosts"));
        assert_eq!(parse_endpoint("my-box:/"), r("my-box", "/"));
        assert_eq!(parse_endpoint("-"), Endpoint::Stdio);
        assert_eq!(parse_endpoint("./a:b"), Endpoint::Local("./a:b".into()));
        assert_eq!(
            parse_endpoint("box:relative"),
            Endpoint::Local("box:relative".into())
        );
        assert_eq!(parse_endpoint("Bad:/x"), Endpoint::Local("Bad:/x".into()));
        assert_eq!(parse_endpoint("/tmp/x"), Endpoint::Local("/tmp/x".into()));
    }

    #[test]
    fn remote_paths() {
        assert_eq!(remote_basename("/a/b/"), Some("b"));
        assert_eq!(remote_basename("/"), None);
        assert_eq!(remote_parent("/a/b"), "/a");
        assert_eq!(remote_parent("/a"), "/");
        assert_eq!(remote_join("/a/", "x"), "/a/x");
    }
}
