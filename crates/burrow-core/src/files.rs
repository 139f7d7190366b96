//! The Files API on the host side: every operation goes to the sandbox's agent, which runs
//! it inside the sandbox (its mount namespace and root), so paths resolve exactly as a
//! sandbox process sees them and can never reach the host's filesystem. This module only
//! checks paths up front (for clear 400s), streams bytes between the caller and the agent
//! with backpressure, and turns the agent's statuses into typed errors.
//!
//! It must never touch the sandbox's files from the host: no path of the sandbox's root
//! tree is ever opened here. The agent is not trusted: listings are bounded and checked,
//! messages are bounded by the channel, and its error texts are truncated.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use burrow_agent_proto::AgentClient;
use burrow_agent_proto::v1::{
    DirEntry, FileChunk, FileType, ListDirRequest, ReadArchiveRequest, ReadFileRequest, RemoveRequest,
    RenameRequest, WriteArchiveHeader, WriteArchiveInput, WriteFileHeader, WriteFileInput,
    write_archive_input, write_file_input,
};
use burrow_api::{FileEntry, FileKind, FileList};
use futures::{Stream, StreamExt};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::store::SandboxRecord;
use crate::{CoreError, ErrorKind, Manager};

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Longest path accepted (PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Upload bytes are coalesced into messages of this size before they go to the agent.
const UPLOAD_CHUNK: usize = 256 * 1024;
/// Upload messages queued towards the agent (plus the channel's HTTP/2 window).
const UPLOAD_QUEUE: usize = 4;
/// Most entries a listing may have; a larger directory is refused rather than buffered.
pub const MAX_LIST_ENTRIES: usize = 200_000;
/// Metadata calls (list, remove, rename) must finish within this.
const META_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the liveness check of a cached agent channel may take before an upload.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest error text taken from the agent.
const MAX_AGENT_MESSAGE: usize = 512;

/// Bytes of a file or tar stream read from a sandbox; an `Err` item ends it early.
pub type FileStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>>> + Send>>;

/// How `write_file` treats the target.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Permission bits; `None` keeps an existing file's mode (new files get 0644).
    pub mode: Option<u32>,
    /// Create missing parent directories.
    pub mkdir: bool,
}

/// Checks a path the caller gave: absolute, no NUL, at most [`MAX_PATH`] bytes.
pub fn check_path(path: &str) -> Result<()> {
    let bad = |m: String| {
        Err(CoreError::File {
            kind: ErrorKind::BadRequest,
            message: m,
        })
    };
    if path.contains('\0') {
        return bad("path must not contain NUL bytes".into());
    }
    if path.len() > MAX_PATH {
        return bad(format!("path is longer than {MAX_PATH} bytes"));
    }
    if !path.starts_with('/') {
        return bad(format!("path must be absolute (start with '/'): '{path}'"));
    }
    Ok(())
}

/// Parses an octal permission mode such as `0644` or `755`.
pub fn parse_mode(s: &str) -> Result<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(m),
        _ => Err(CoreError::File {
            kind: ErrorKind::BadRequest,
            message: format!("mode must be octal permission bits such as 0644 (got '{s}')"),
        }),
    }
}

/// Maps a status of a file RPC to the error the caller should see.
fn file_status(sandbox: &str, s: &Status) -> CoreError {
    let msg: String = s.message().chars().take(MAX_AGENT_MESSAGE).collect();
    let file = |kind| CoreError::File {
        kind,
        message: msg.clone(),
    };
    match s.code() {
        Code::NotFound => file(ErrorKind::NotFound),
        Code::InvalidArgument | Code::Aborted | Code::OutOfRange => file(ErrorKind::BadRequest),
        Code::FailedPrecondition | Code::AlreadyExists => file(ErrorKind::Conflict),
        Code::PermissionDenied => file(ErrorKind::Forbidden),
        Code::ResourceExhausted => CoreError::File {
            kind: ErrorKind::NoSpace,
            message: format!("sandbox '{sandbox}' is out of disk space: {msg}"),
        },
        Code::Unimplemented => CoreError::Unavailable(format!(
            "the agent of sandbox '{sandbox}' is too old for file operations; restart the sandbox to update it"
        )),
        code => CoreError::Agent {
            name: sandbox.to_owned(),
            detail: format!("{code:?}: {msg}"),
        },
    }
}

/// A failed call that a fresh channel may fix (the cached one went stale).
fn is_transport(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
}

fn file_type(t: i32) -> FileKind {
    match FileType::try_from(t) {
        Ok(FileType::File) => FileKind::File,
        Ok(FileType::Dir) => FileKind::Dir,
        Ok(FileType::Symlink) => FileKind::Symlink,
        Ok(FileType::Other) | Err(_) => FileKind::Other,
    }
}

fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Checks one entry of an agent's listing: a plain file name, nothing else.
fn entry(sandbox: &str, e: DirEntry) -> Result<FileEntry> {
    if e.name.is_empty()
        || e.name.len() > 255
        || e.name.contains(['/', '\0'])
        || e.name == "."
        || e.name == ".."
    {
        return Err(CoreError::Agent {
            name: sandbox.to_owned(),
            detail: "the agent listed an invalid file name".into(),
        });
    }
    Ok(FileEntry {
        kind: file_type(e.r#type),
        name: e.name,
        size: e.size,
        mode: e.mode & 0o7777,
        mtime: rfc3339(e.mtime),
    })
}

fn chunks(sandbox: String, stream: tonic::Streaming<FileChunk>) -> FileStream {
    Box::pin(futures::stream::unfold(Some(stream), move |state| {
        let sandbox = sandbox.clone();
        async move {
            let mut stream = state?;
            match stream.message().await {
                Ok(Some(chunk)) => Some((Ok(chunk.data), Some(stream))),
                Ok(None) => None,
                Err(s) => Some((Err(file_status(&sandbox, &s)), None)),
            }
        }
    }))
}

/// Why feeding an upload stopped early.
enum FeedError {
    /// The caller's body failed (e.g. the client went away).
    Body(String),
    /// The agent stopped reading (its answer says why).
    Closed,
}

/// Coalesces the caller's body into messages and sends them, then `done`.
async fn feed<S, B, E, M>(
    tx: mpsc::Sender<M>,
    body: S,
    data: fn(Vec<u8>) -> M,
    done: M,
) -> Result<(), FeedError>
where
    S: Stream<Item = Result<B, E>> + Send,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    futures::pin_mut!(body);
    let mut buf = Vec::with_capacity(UPLOAD_CHUNK);
    while let Some(item) = body.next().await {
        let bytes = item.map_err(|e| FeedError::Body(e.to_string()))?;
        let mut rest = bytes.as_ref();
        while !rest.is_empty() {
            let n = (UPLOAD_CHUNK - buf.len()).min(rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if buf.len() == UPLOAD_CHUNK {
                let full = std::mem::replace(&mut buf, Vec::with_capacity(UPLOAD_CHUNK));
                tx.send(data(full)).await.map_err(|_| FeedError::Closed)?;
            }
        }
    }
    if !buf.is_empty() {
        tx.send(data(buf)).await.map_err(|_| FeedError::Closed)?;
    }
    tx.send(done).await.map_err(|_| FeedError::Closed)
}

/// Runs a client-streaming upload: `header`, the body, `done`. The call and the feeding run
/// together, so an early answer (disk full, bad path) ends the upload at once; a body that
/// fails never sends `done`, so the agent commits nothing.
async fn upload<S, B, E, M, R, Fut>(
    sandbox: &str,
    header: M,
    body: S,
    data: fn(Vec<u8>) -> M,
    done: M,
    call: impl FnOnce(ReceiverStream<M>) -> Fut,
) -> Result<R>
where
    S: Stream<Item = Result<B, E>> + Send,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
    Fut: Future<Output = Result<tonic::Response<R>, Status>>,
{
    let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
    tx.send(header)
        .await
        .map_err(|_| CoreError::Internal("upload queue closed".into()))?;
    let call = call(ReceiverStream::new(rx));
    let feeding = feed(tx, body, data, done);
    futures::pin_mut!(call, feeding);
    let mut fed: Option<Result<(), FeedError>> = None;
    loop {
        tokio::select! {
            answer = &mut call => {
                return match (answer, fed) {
                    (Ok(reply), _) => Ok(reply.into_inner()),
                    (Err(_), Some(Err(FeedError::Body(e)))) => Err(CoreError::BadRequest(format!(
                        "the request body ended early ({e}); nothing was written"
                    ))),
                    (Err(s), _) => Err(file_status(sandbox, &s)),
                };
            }
            r = &mut feeding, if fed.is_none() => fed = Some(r),
        }
    }
}

impl Manager {
    /// The running sandbox's record and agent (waking it when asleep).
    async fn files_agent(&self, name: &str) -> Result<(SandboxRecord, AgentClient<Channel>)> {
        let rec = self.ensure_running(name).await?;
        self.touch(&rec);
        let client = self.agent(&rec).await?;
        Ok((rec, client))
    }

    /// One call, retried once on a fresh channel when the cached one turns out stale.
    async fn file_call<T, F, Fut>(&self, name: &str, f: F) -> Result<(SandboxRecord, T)>
    where
        F: Fn(AgentClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let (rec, client) = self.files_agent(name).await?;
        let first = tokio::time::timeout(META_TIMEOUT, f(client)).await;
        let answer = match first {
            Ok(Err(s)) if is_transport(&s) => {
                self.forget_agent(&rec.id);
                let client = self.agent(&rec).await?;
                tokio::time::timeout(META_TIMEOUT, f(client)).await
            }
            other => other,
        };
        match answer {
            Ok(Ok(r)) => Ok((rec, r.into_inner())),
            Ok(Err(s)) => Err(file_status(&rec.name, &s)),
            Err(_) => Err(CoreError::Agent {
                name: rec.name.clone(),
                detail: format!("file operation did not finish within {META_TIMEOUT:?}"),
            }),
        }
    }

    /// The agent for an upload, whose body cannot be replayed: a cached channel is checked
    /// first and replaced when stale.
    async fn upload_agent(&self, name: &str) -> Result<(SandboxRecord, AgentClient<Channel>)> {
        let (rec, mut client) = self.files_agent(name).await?;
        let ping = burrow_agent_proto::v1::HelloRequest {
            protocol_version: burrow_agent_proto::PROTOCOL_VERSION,
            host_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        match tokio::time::timeout(PING_TIMEOUT, client.hello(ping)).await {
            Ok(Ok(_)) => Ok((rec, client)),
            _ => {
                self.forget_agent(&rec.id);
                let client = self.agent(&rec).await?;
                Ok((rec, client))
            }
        }
    }

    /// For an engine that cannot share host directories (a VM): copies the files of the
    /// sandbox's `/.burrow/host` (the CA, the CA bundle, resolv.conf, markers) into the
    /// guest at that path, read-only for its processes. The copy is the guest's own: the
    /// host never reads it back. Bounded per file; failures are logged (the trust store
    /// gets the CA through [`Manager::install_net_files`] all the same).
    pub(crate) async fn mirror_host_files(&self, rec: &SandboxRecord, client: &AgentClient<Channel>) {
        const MAX: u64 = 4 << 20;
        let dir = self.host_api_dir(&rec.id);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            let Some(file) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !meta.is_file() || meta.len() > MAX {
                continue;
            }
            let Ok(data) = std::fs::read(e.path()) else {
                continue;
            };
            let header = WriteFileInput {
                kind: Some(write_file_input::Kind::Header(WriteFileHeader {
                    path: format!("/.burrow/host/{file}"),
                    mode: Some(0o444),
                    mkdir: true,
                })),
            };
            let body = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(data) });
            let mut c = client.clone();
            let written = upload(
                &rec.name,
                header,
                body,
                |d| WriteFileInput {
                    kind: Some(write_file_input::Kind::Data(d)),
                },
                WriteFileInput {
                    kind: Some(write_file_input::Kind::Done(true)),
                },
                |input| async move { c.write_file(input).await },
            )
            .await;
            if let Err(e) = written {
                tracing::warn!(sandbox = %rec.name, file, error = %crate::error::chain(&e), "copying a host file into the guest");
            }
        }
    }

    /// `GET …/files`: the contents of a regular file, streamed.
    pub async fn read_file(&self, name: &str, path: &str) -> Result<FileStream> {
        check_path(path)?;
        let (rec, stream) = self
            .file_call(name, |mut c| {
                let req = ReadFileRequest {
                    path: path.to_owned(),
                };
                async move { c.read_file(req).await }
            })
            .await?;
        Ok(chunks(rec.name, stream))
    }

    /// `PUT …/files`: replaces the file atomically with the body; returns its size.
    pub async fn write_file<S, B, E>(
        &self,
        name: &str,
        path: &str,
        opts: WriteOptions,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = Result<B, E>> + Send,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        check_path(path)?;
        let (rec, mut client) = self.upload_agent(name).await?;
        let header = WriteFileInput {
            kind: Some(write_file_input::Kind::Header(WriteFileHeader {
                path: path.to_owned(),
                mode: opts.mode,
                mkdir: opts.mkdir,
            })),
        };
        let reply = upload(
            &rec.name,
            header,
            body,
            |d| WriteFileInput {
                kind: Some(write_file_input::Kind::Data(d)),
            },
            WriteFileInput {
                kind: Some(write_file_input::Kind::Done(true)),
            },
            |input| async move { client.write_file(input).await },
        )
        .await
        .map_err(|e| self.explain_no_space(&rec, e))?;
        self.touch(&rec);
        Ok(reply.size)
    }

    /// A write refused for want of space: says which space (the sandbox's disk limit and
    /// what holds it, or the host's pool) and what frees it.
    pub(crate) fn explain_no_space(&self, rec: &crate::store::SandboxRecord, e: CoreError) -> CoreError {
        let CoreError::File {
            kind: ErrorKind::NoSpace,
            message,
        } = e
        else {
            return e;
        };
        let mut message = message;
        if message.contains("Quota exceeded") {
            let charged = self
                .pool
                .charged_bytes(&self.pool.sandbox_path(&rec.id))
                .ok()
                .flatten()
                .map(|b| format!(", {:.1} GiB charged", b as f64 / (1u64 << 30) as f64))
                .unwrap_or_default();
            message.push_str(&format!(
                "; its disk limit is {} GiB{charged}",
                rec.config.disk_gb
            ));
            let held = self
                .store
                .checkpoints(Some(&rec.id))
                .map(|c| c.len())
                .unwrap_or(0);
            if held > 0 {
                message.push_str(&format!(
                    "; it has {held} checkpoint{}, and data it wrote before a checkpoint counts against the \
                     limit until that checkpoint is deleted, even after the files are removed: delete old \
                     checkpoints (`burrow checkpoints {}` lists them, `burrow rm-checkpoint {} vN`) or raise \
                     the limit (PATCH disk_gb)",
                    if held == 1 { "" } else { "s" },
                    rec.name,
                    rec.name
                ));
            } else {
                message.push_str("; remove files or raise the limit (PATCH disk_gb)");
            }
        } else if self.pool_space().is_ok_and(|sp| sp.free_bytes < sp.reserve_bytes) {
            message.push_str("; the host's storage pool is full (see `burrow version`)");
        }
        CoreError::File {
            kind: ErrorKind::NoSpace,
            message,
        }
    }

    /// `GET …/files/list`: the entries of a directory, sorted by name.
    pub async fn list_files(&self, name: &str, path: &str) -> Result<FileList> {
        check_path(path)?;
        let (rec, mut stream) = self
            .file_call(name, |mut c| {
                let req = ListDirRequest {
                    path: path.to_owned(),
                };
                async move { c.list_dir(req).await }
            })
            .await?;
        let mut entries = Vec::new();
        while let Some(batch) = stream.message().await.map_err(|s| file_status(&rec.name, &s))? {
            if entries.len() + batch.entries.len() > MAX_LIST_ENTRIES {
                return Err(CoreError::TooLarge(format!(
                    "'{path}' has more than {MAX_LIST_ENTRIES} entries; list a subdirectory or use the archive endpoint"
                )));
            }
            for e in batch.entries {
                entries.push(entry(&rec.name, e)?);
            }
        }
        Ok(FileList { entries })
    }

    /// `DELETE …/files`.
    pub async fn remove_file(&self, name: &str, path: &str, recursive: bool) -> Result<()> {
        check_path(path)?;
        self.file_call(name, |mut c| {
            let req = RemoveRequest {
                path: path.to_owned(),
                recursive,
            };
            async move { c.remove(req).await }
        })
        .await
        .map(drop)
    }

    /// `POST …/files/rename`.
    pub async fn rename_file(&self, name: &str, from: &str, to: &str) -> Result<()> {
        check_path(from)?;
        check_path(to)?;
        self.file_call(name, |mut c| {
            let req = RenameRequest {
                from: from.to_owned(),
                to: to.to_owned(),
            };
            async move { c.rename(req).await }
        })
        .await
        .map(drop)
    }

    /// `GET …/files/archive`: a tar stream of a file or directory tree.
    pub async fn read_archive(&self, name: &str, path: &str) -> Result<FileStream> {
        check_path(path)?;
        let (rec, stream) = self
            .file_call(name, |mut c| {
                let req = ReadArchiveRequest {
                    path: path.to_owned(),
                };
                async move { c.read_archive(req).await }
            })
            .await?;
        Ok(chunks(rec.name, stream))
    }

    /// `PUT …/files/archive`: extracts a tar stream into the directory `path`; returns the
    /// number of entries extracted.
    pub async fn write_archive<S, B, E>(&self, name: &str, path: &str, mkdir: bool, body: S) -> Result<u64>
    where
        S: Stream<Item = Result<B, E>> + Send,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        check_path(path)?;
        let (rec, mut client) = self.upload_agent(name).await?;
        let header = WriteArchiveInput {
            kind: Some(write_archive_input::Kind::Header(WriteArchiveHeader {
                path: path.to_owned(),
                mkdir,
            })),
        };
        let reply = upload(
            &rec.name,
            header,
            body,
            |d| WriteArchiveInput {
                kind: Some(write_archive_input::Kind::Data(d)),
            },
            WriteArchiveInput {
                kind: Some(write_archive_input::Kind::Done(true)),
            },
            |input| async move { client.write_archive(input).await },
        )
        .await
        .map_err(|e| self.explain_no_space(&rec, e))?;
        self.touch(&rec);
        Ok(reply.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_modes() {
        assert!(check_path("/a").is_ok());
        for bad in ["a", "", "/a\0", &format!("/{}", "x".repeat(MAX_PATH))] {
            let e = check_path(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadRequest, "{bad:?}");
        }
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("4755").unwrap(), 0o4755);
        for bad in ["", "9", "10000", "rw", "-1"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_map_to_kinds() {
        let k = |c| file_status("s", &Status::new(c, "m")).kind();
        assert_eq!(k(Code::NotFound), ErrorKind::NotFound);
        assert_eq!(k(Code::InvalidArgument), ErrorKind::BadRequest);
        assert_eq!(k(Code::FailedPrecondition), ErrorKind::Conflict);
        assert_eq!(k(Code::ResourceExhausted), ErrorKind::NoSpace);
        assert_eq!(k(Code::PermissionDenied), ErrorKind::Forbidden);
        assert_eq!(k(Code::Unimplemented), ErrorKind::Unavailable);
        assert_eq!(k(Code::Internal), ErrorKind::Unavailable);
        let long = file_status("s", &Status::not_found("x".repeat(10_000)));
        assert!(long.to_string().len() <= MAX_AGENT_MESSAGE);
    }

    #[test]
    fn listings_are_checked() {
        let e = |name: &str| DirEntry {
            name: name.into(),
            r#type: FileType::Dir as i32,
            size: 1,
            mode: 0o170755,
            mtime: 0,
        };
        let ok = entry("s", e("a b")).unwrap();
        assert_eq!(
            (ok.kind, ok.mode, ok.mtime.as_str()),
            (FileKind::Dir, 0o755, "1970-01-01T00:00:00Z")
        );
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(entry("s", e(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(file_type(99), FileKind::Other);
    }
}
