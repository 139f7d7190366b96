//! File operations for the host: read, atomic write, list, remove, rename, and tar archives
//! out of and into the sandbox.
//!
//! The agent is the sandbox's init: it lives in the sandbox's mount namespace with the
//! sandbox's root as `/`. So every path here resolves exactly as a sandbox process sees it,
//! symlinks included, and nothing can resolve outside the sandbox, whatever the path or
//! the links in it say. This module adds only what the kernel does not: tar entries never
//! leave the directory they are extracted into, and a write never leaves a partial file.
//!
//! Data moves through bounded channels between the gRPC streams and one plain thread per
//! transfer (blocking file and tar I/O stays off the runtime and off its small blocking
//! pool), so a slow host slows the disk down instead of making the agent buffer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use burrow_agent_proto::v1::{
    DirEntry, FileChunk, FileType, ListDirReply, WriteArchiveHeader, WriteArchiveInput, WriteFileHeader,
    WriteFileInput, write_archive_input, write_file_input,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// Size of the chunks read from files and archives and sent as one message.
pub const CHUNK: usize = 256 * 1024;
/// Chunks queued between a transfer thread and its gRPC stream.
const QUEUE: usize = 8;
/// Entries per `ListDirReply` message (keeps every message far below the size limit).
const LIST_BATCH: usize = 512;
/// Longest path accepted (PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Symlinks followed when resolving the target of a write (the kernel's limit).
const MAX_LINKS: usize = 40;

pub type ChunkStream = ReceiverStream<Result<FileChunk, Status>>;
pub type ListStream = ReceiverStream<Result<ListDirReply, Status>>;

/// Why a file operation failed; mapped to a gRPC status in [`FileError::into_status`] only.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("path must be absolute: '{0}'")]
    NotAbsolute(String),
    #[error("path must not contain NUL bytes")]
    Nul,
    #[error("path is longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("{0}")]
    Invalid(String),
    #[error("'{0}' is a directory")]
    IsDir(String),
    #[error("'{0}' is not a directory")]
    NotDir(String),
    #[error("'{0}' is not a regular file")]
    NotFile(String),
    #[error("the upload of '{0}' ended before it was complete; nothing was written")]
    Incomplete(String),
    #[error("{what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("archive: {0}")]
    Archive(#[source] io::Error),
    #[error("cannot start a transfer thread")]
    Thread(#[source] io::Error),
}

fn io_code(e: &io::Error) -> tonic::Code {
    use io::ErrorKind as K;
    use tonic::Code;
    if e.raw_os_error() == Some(libc::ELOOP) {
        return Code::InvalidArgument;
    }
    match e.kind() {
        K::NotFound => Code::NotFound,
        K::PermissionDenied | K::ReadOnlyFilesystem => Code::PermissionDenied,
        K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Code::ResourceExhausted,
        K::IsADirectory
        | K::NotADirectory
        | K::DirectoryNotEmpty
        | K::AlreadyExists
        | K::CrossesDevices
        | K::ResourceBusy
        | K::ExecutableFileBusy => Code::FailedPrecondition,
        K::InvalidInput | K::InvalidFilename => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

impl FileError {
    pub fn into_status(self) -> Status {
        use tonic::Code;
        let code = match &self {
            Self::NotAbsolute(_) | Self::Nul | Self::TooLong | Self::Invalid(_) => Code::InvalidArgument,
            Self::IsDir(_) | Self::NotDir(_) | Self::NotFile(_) => Code::FailedPrecondition,
            Self::Incomplete(_) => Code::Aborted,
            Self::Io { source, .. } => io_code(source),
            // The tar crate wraps I/O errors (keeping their kind) and reports malformed or
            // escaping entries as `Other`: those are the archive's fault.
            Self::Archive(e) => match io_code(e) {
                Code::Internal => Code::InvalidArgument,
                c => c,
            },
            Self::Thread(_) => Code::Internal,
        };
        let mut msg = self.to_string();
        if let Self::Archive(e) = &self {
            // tar's errors carry their cause only in `source()`.
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                let t = s.to_string();
                if !msg.contains(&t) {
                    msg.push_str(": ");
                    msg.push_str(&t);
                }
                src = s.source();
            }
        }
        Status::new(code, msg)
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
    let path = path.display().to_string();
    move |source| FileError::Io { what, path, source }
}

/// Checks a path from the host: absolute, no NUL, at most [`MAX_PATH`] bytes.
pub fn check_path(path: &str) -> Result<PathBuf, FileError> {
    if path.contains('\0') {
        return Err(FileError::Nul);
    }
    if path.len() > MAX_PATH {
        return Err(FileError::TooLong);
    }
    if !path.starts_with('/') {
        return Err(FileError::NotAbsolute(path.to_owned()));
    }
    Ok(PathBuf::from(path))
}

fn is_root(path: &Path) -> bool {
    path.components()
        .all(|c| matches!(c, Component::RootDir | Component::CurDir))
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), FileError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .map(drop)
        .map_err(FileError::Thread)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("file worker failed: {e}")))?
        .map_err(FileError::into_status)
}

// ----- read -----------------------------------------------------------------------------

/// Opens a regular file (following symlinks) without ever blocking on a FIFO.
fn open_regular(path: &Path) -> Result<File, FileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_err("cannot open", path))?;
    let meta = file.metadata().map_err(io_err("cannot stat", path))?;
    if meta.is_dir() {
        return Err(FileError::IsDir(path.display().to_string()));
    }
    if !meta.is_file() {
        return Err(FileError::NotFile(path.display().to_string()));
    }
    Ok(file)
}

/// Reads up to `CHUNK` bytes (fewer only at the end of the file).
fn read_full(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0;
    while n < CHUNK {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

pub async fn read_file(path: String) -> Result<ChunkStream, Status> {
    let path = check_path(&path).map_err(FileError::into_status)?;
    let shown = path.clone();
    let mut file = blocking(move || open_regular(&path)).await?;
    let (tx, rx) = mpsc::channel(QUEUE);
    spawn_thread("read-file", move || {
        loop {
            let msg = match read_full(&mut file) {
                Ok(data) if data.is_empty() => return,
                Ok(data) => Ok(FileChunk { data }),
                Err(e) => Err(io_err("cannot read", &shown)(e).into_status()),
            };
            let last = msg.is_err();
            // A closed channel means the host went away: stop reading.
            if tx.blocking_send(msg).is_err() || last {
                return;
            }
        }
    })
    .map_err(FileError::into_status)?;
    Ok(ReceiverStream::new(rx))
}

// ----- write ----------------------------------------------------------------------------

/// The file a write replaces: the path with every final symlink followed, as `open(2)`
/// with `O_CREAT` would, and its metadata when it exists.
fn resolve_target(path: &Path) -> Result<(PathBuf, Option<fs::Metadata>), FileError> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&p).map_err(io_err("cannot read link", &p))?;
                // Relative targets are relative to the link's directory; the kernel resolves
                // the joined path exactly as it would have resolved the link.
                p = match p.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            Ok(m) if m.is_dir() => return Err(FileError::IsDir(path.display().to_string())),
            Ok(m) if !m.is_file() => return Err(FileError::NotFile(path.display().to_string())),
            Ok(m) => return Ok((p, Some(m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((p, None)),
            Err(e) => return Err(io_err("cannot stat", &p)(e)),
        }
    }
    Err(FileError::Invalid(format!(
        "too many levels of symbolic links in '{}'",
        path.display()
    )))
}

fn mkdir_all(dir: &Path) -> Result<(), FileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err("cannot create directory", dir))
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A temporary file next to its target; removed on drop unless committed.
struct Upload {
    shown: String,
    target: PathBuf,
    temp: Option<PathBuf>,
    file: Option<File>,
    size: u64,
}

impl Upload {
    fn create(header: &WriteFileHeader) -> Result<Self, FileError> {
        let path = check_path(&header.path)?;
        if let Some(mode) = header.mode
            && mode > 0o7777
        {
            return Err(FileError::Invalid(format!(
                "mode {mode:o} is not a permission mode"
            )));
        }
        if is_root(&path) || header.path.ends_with('/') {
            return Err(FileError::IsDir(header.path.clone()));
        }
        let (target, existing) = resolve_target(&path)?;
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(FileError::IsDir(header.path.clone()));
        };
        if header.mkdir {
            mkdir_all(dir)?;
        }
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(
            ".burrow-{}-{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let temp = dir.join(temp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(|e| {
                // A missing directory is reported as the target's, not the temp file's.
                io_err("cannot create", &path)(e)
            })?;
        let mut upload = Self {
            shown: header.path.clone(),
            target,
            temp: Some(temp),
            file: Some(file),
            size: 0,
        };
        upload.set_owner_and_mode(existing.as_ref(), header.mode)?;
        Ok(upload)
    }

    /// Keeps an existing file's owner and mode (unless a mode is given); a new file is the
    /// agent's (the sandbox's root) with the given mode or 0644. Owner first: chown clears
    /// set-id bits.
    fn set_owner_and_mode(
        &mut self,
        existing: Option<&fs::Metadata>,
        mode: Option<u32>,
    ) -> Result<(), FileError> {
        let file = self.file.as_ref().expect("open until commit");
        let path = Path::new(&self.shown);
        if let Some(m) = existing {
            std::os::unix::fs::fchown(file, Some(m.uid()), Some(m.gid()))
                .map_err(io_err("cannot chown", path))?;
        }
        let mode = mode.unwrap_or_else(|| existing.map_or(0o644, |m| m.mode() & 0o7777));
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("cannot chmod", path))
    }

    fn write(&mut self, data: &[u8]) -> Result<(), FileError> {
        let file = self.file.as_mut().expect("open until commit");
        file.write_all(data)
            .map_err(io_err("cannot write", Path::new(&self.shown)))?;
        self.size += data.len() as u64;
        Ok(())
    }

    fn commit(mut self) -> Result<u64, FileError> {
        drop(self.file.take());
        let temp = self.temp.take().expect("not committed yet");
        if let Err(e) = fs::rename(&temp, &self.target) {
            let _ = fs::remove_file(&temp);
            return Err(io_err("cannot replace", Path::new(&self.shown))(e));
        }
        Ok(self.size)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Where a writer thread reports how it ended.
type WriterResult<T> = oneshot::Receiver<Result<T, FileError>>;

/// Runs a writer on its own thread, fed by a bounded channel; returns the sender and where
/// the writer's result arrives. The writer stops at the first error (its receiver is then
/// dropped, which the feeding loop notices as a failed send).
fn spawn_writer<T: Send + 'static>(
    name: &str,
    f: impl FnOnce(mpsc::Receiver<Vec<u8>>) -> Result<T, FileError> + Send + 'static,
) -> Result<(mpsc::Sender<Vec<u8>>, WriterResult<T>), Status> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let (done_tx, done_rx) = oneshot::channel();
    spawn_thread(name, move || {
        let _ = done_tx.send(f(rx));
    })
    .map_err(FileError::into_status)?;
    Ok((tx, done_rx))
}

/// Feeds `data` messages to a writer until `done`, the end of the host's stream, or the
/// writer stopping. Returns whether `done` was seen.
async fn feed<M>(
    input: &mut Streaming<M>,
    tx: mpsc::Sender<Vec<u8>>,
    classify: impl Fn(M) -> Option<Piece>,
) -> Result<bool, Status> {
    loop {
        let msg = match input.message().await {
            Ok(Some(m)) => m,
            // The host ended its side or the call broke: the upload is incomplete.
            Ok(None) | Err(_) => return Ok(false),
        };
        match classify(msg) {
            Some(Piece::Data(d)) => {
                if d.is_empty() {
                    continue;
                }
                if tx.send(d).await.is_err() {
                    // The writer failed; its error is the answer.
                    return Ok(false);
                }
            }
            Some(Piece::Done) => return Ok(true),
            None => return Err(Status::invalid_argument("unexpected message after the header")),
        }
    }
}

enum Piece {
    Data(Vec<u8>),
    Done,
}

pub async fn write_file(mut input: Streaming<WriteFileInput>) -> Result<u64, Status> {
    let header = match input.message().await? {
        Some(WriteFileInput {
            kind: Some(write_file_input::Kind::Header(h)),
        }) => h,
        _ => return Err(Status::invalid_argument("the first message must be `header`")),
    };
    let shown = header.path.clone();
    let mut upload = blocking(move || Upload::create(&header)).await?;
    let (tx, result) = spawn_writer("write-file", move |mut rx| {
        while let Some(data) = rx.blocking_recv() {
            upload.write(&data)?;
        }
        Ok(upload)
    })?;
    let done = feed(&mut input, tx, |m| match m.kind {
        Some(write_file_input::Kind::Data(d)) => Some(Piece::Data(d)),
        Some(write_file_input::Kind::Done(true)) => Some(Piece::Done),
        _ => None,
    })
    .await;
    // The sender is gone now, so the writer finishes what is queued and reports.
    let upload = result
        .await
        .map_err(|_| Status::internal("file writer vanished"))?
        .map_err(FileError::into_status)?;
    if !done? {
        // Dropping the upload removes the temporary file.
        return Err(FileError::Incomplete(shown).into_status());
    }
    blocking(move || upload.commit()).await
}

// ----- list, remove, rename -------------------------------------------------------------

fn entry_of(name: String, m: &fs::Metadata) -> DirEntry {
    let ft = m.file_type();
    let kind = if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_dir() {
        FileType::Dir
    } else if ft.is_file() {
        FileType::File
    } else {
        FileType::Other
    };
    DirEntry {
        name,
        r#type: kind as i32,
        size: m.len(),
        mode: m.mode() & 0o7777,
        mtime: m.mtime(),
    }
}

fn list(path: &Path) -> Result<Vec<DirEntry>, FileError> {
    let meta = fs::metadata(path).map_err(io_err("cannot stat", path))?;
    if !meta.is_dir() {
        return Err(FileError::NotDir(path.display().to_string()));
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(path).map_err(io_err("cannot list", path))? {
        let entry = entry.map_err(io_err("cannot list", path))?;
        // An entry removed while listing is simply not listed.
        let Ok(m) = entry.metadata() else { continue };
        out.push(entry_of(entry.file_name().to_string_lossy().into_owned(), &m));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

pub async fn list_dir(path: String) -> Result<ListStream, Status> {
    let path = check_path(&path).map_err(FileError::into_status)?;
    let entries = blocking(move || list(&path)).await?;
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(async move {
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let batch: Vec<DirEntry> = entries.by_ref().take(LIST_BATCH).collect();
            if tx.send(Ok(ListDirReply { entries: batch })).await.is_err() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

fn remove_path(path: &Path, recursive: bool) -> Result<(), FileError> {
    if is_root(path) {
        return Err(FileError::Invalid("refusing to remove '/'".into()));
    }
    let meta = fs::symlink_metadata(path).map_err(io_err("cannot remove", path))?;
    let result = if meta.is_dir() {
        if recursive {
            // Does not follow symlinks below `path`.
            fs::remove_dir_all(path)
        } else {
            fs::remove_dir(path)
        }
    } else {
        fs::remove_file(path)
    };
    result.map_err(io_err("cannot remove", path))
}

pub async fn remove(path: String, recursive: bool) -> Result<(), Status> {
    let path = check_path(&path).map_err(FileError::into_status)?;
    blocking(move || remove_path(&path, recursive)).await
}

pub async fn rename(from: String, to: String) -> Result<(), Status> {
    let from = check_path(&from).map_err(FileError::into_status)?;
    let to = check_path(&to).map_err(FileError::into_status)?;
    blocking(move || {
        if is_root(&from) || is_root(&to) {
            return Err(FileError::Invalid("cannot rename '/'".into()));
        }
        fs::rename(&from, &to).map_err(io_err("cannot rename", &from))
    })
    .await
}

// ----- archives -------------------------------------------------------------------------

/// A `Write` that sends full chunks to a gRPC stream; fails once the host is gone.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Result<FileChunk, Status>>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(FileChunk { data }))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the host went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Appends `path` (not following a symlink) as `name`, and everything below it when it
/// is a directory. Entries that vanish meanwhile and sockets are skipped; FIFOs and device
/// nodes are sent as such.
fn append_tree(b: &mut tar::Builder<ChunkWriter>, path: &Path, name: &Path) -> Result<(), FileError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("cannot stat", path)(e)),
    };
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_socket() {
        return Ok(());
    }
    if kind.is_fifo() || kind.is_char_device() || kind.is_block_device() {
        // The tar crate names special files by their full path (so an absolute one fails the
        // whole archive): write the header under `name` here. The host decides what to make.
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        h.set_entry_type(if kind.is_fifo() {
            tar::EntryType::Fifo
        } else if kind.is_char_device() {
            tar::EntryType::Char
        } else {
            tar::EntryType::Block
        });
        h.set_size(0);
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        h.set_device_major(libc::major(rdev))
            .map_err(FileError::Archive)?;
        h.set_device_minor(libc::minor(rdev))
            .map_err(FileError::Archive)?;
        return b
            .append_data(&mut h, name, io::empty())
            .map_err(FileError::Archive);
    }
    b.append_path_with_name(path, name).map_err(FileError::Archive)?;
    if meta.is_dir() {
        let mut children: Vec<_> = fs::read_dir(path)
            .map_err(io_err("cannot list", path))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        children.sort();
        for child in children {
            append_tree(b, &path.join(&child), &name.join(&child))?;
        }
    }
    Ok(())
}

pub async fn read_archive(path: String) -> Result<ChunkStream, Status> {
    let path = check_path(&path).map_err(FileError::into_status)?;
    // The path itself is followed (like `tar -h` on its operand); what is below is not.
    let checked = path.clone();
    let real = blocking(move || fs::canonicalize(&checked).map_err(io_err("cannot open", &checked))).await?;
    let name = path.file_name().map_or_else(|| PathBuf::from("."), PathBuf::from);
    let (tx, rx) = mpsc::channel(QUEUE);
    spawn_thread("read-archive", move || {
        let writer = ChunkWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: tx.clone(),
        };
        let mut b = tar::Builder::new(writer);
        b.follow_symlinks(false);
        let result = append_tree(&mut b, &real, &name).and_then(|()| {
            b.into_inner()
                .and_then(|mut w| w.flush())
                .map_err(FileError::Archive)
        });
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e.into_status()));
        }
    })
    .map_err(FileError::into_status)?;
    Ok(ReceiverStream::new(rx))
}

/// A `Read` over the chunks the host sends; EOF when the feeding loop stops.
struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(data) => {
                    self.cur = data;
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

/// Refuses entries whose name (or hard link target) climbs out with `..`. Absolute names
/// are confined (tar strips the leading `/`); symlinks may point anywhere, but nothing is
/// ever extracted through one that leaves the directory (tar checks every parent).
fn check_entry<R: Read>(entry: &tar::Entry<'_, R>) -> Result<(), FileError> {
    let climbs = |p: &Path| p.components().any(|c| c == Component::ParentDir);
    let path = entry.path().map_err(FileError::Archive)?;
    if climbs(&path) {
        return Err(FileError::Invalid(format!(
            "archive entry '{}' leaves the target directory",
            path.display()
        )));
    }
    if entry.header().entry_type().is_hard_link()
        && let Some(link) = entry.link_name().map_err(FileError::Archive)?
        && (climbs(&link) || link.is_absolute())
    {
        return Err(FileError::Invalid(format!(
            "archive entry '{}' links outside the target directory",
            path.display()
        )));
    }
    Ok(())
}

fn extract(header: &WriteArchiveHeader, rx: mpsc::Receiver<Vec<u8>>) -> Result<u64, FileError> {
    let dir = check_path(&header.path)?;
    let dst = fs::canonicalize(&dir).map_err(io_err("cannot open", &dir))?;
    let mut ar = tar::Archive::new(ChannelReader {
        rx,
        cur: Vec::new(),
        pos: 0,
    });
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    // Everything extracted belongs to the sandbox's root (the agent), like any write.
    ar.set_preserve_ownerships(false);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    let mut count = 0;
    for entry in ar.entries().map_err(FileError::Archive)? {
        let mut entry = entry.map_err(FileError::Archive)?;
        check_entry(&entry)?;
        match entry.unpack_in(&dst) {
            Ok(true) => count += 1,
            Ok(false) => {}
            Err(e) => {
                // A file cut short (a full disk) must not stay behind looking complete.
                if entry.header().entry_type().is_file()
                    && let Ok(rel) = entry.path()
                {
                    let partial = dst.join(&rel);
                    if fs::symlink_metadata(&partial).is_ok_and(|m| m.is_file()) {
                        let _ = fs::remove_file(&partial);
                    }
                }
                return Err(FileError::Archive(e));
            }
        }
    }
    Ok(count)
}

/// Checks (and with `mkdir`, creates) the directory an archive goes into.
fn prepare_dir(header: &WriteArchiveHeader) -> Result<(), FileError> {
    let dir = check_path(&header.path)?;
    if header.mkdir {
        mkdir_all(&dir)?;
    }
    let meta = fs::metadata(&dir).map_err(io_err("cannot open", &dir))?;
    if !meta.is_dir() {
        return Err(FileError::NotDir(header.path.clone()));
    }
    Ok(())
}

pub async fn write_archive(mut input: Streaming<WriteArchiveInput>) -> Result<u64, Status> {
    let header = match input.message().await? {
        Some(WriteArchiveInput {
            kind: Some(write_archive_input::Kind::Header(h)),
        }) => h,
        _ => return Err(Status::invalid_argument("the first message must be `header`")),
    };
    let h = header.clone();
    blocking(move || prepare_dir(&h)).await?;
    let shown = header.path.clone();
    let (tx, result) = spawn_writer("write-archive", move |rx| extract(&header, rx))?;
    let done = feed(&mut input, tx, |m| match m.kind {
        Some(write_archive_input::Kind::Data(d)) => Some(Piece::Data(d)),
        Some(write_archive_input::Kind::Done(true)) => Some(Piece::Done),
        _ => None,
    })
    .await;
    let count = result
        .await
        .map_err(|_| Status::internal("archive writer vanished"))?
        .map_err(FileError::into_status)?;
    if !done? {
        return Err(Status::aborted(format!(
            "the archive upload into '{shown}' ended before it was complete (some entries may have been extracted)"
        )));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked() {
        assert!(check_path("/a/b").is_ok());
        assert!(matches!(check_path("a/b"), Err(FileError::NotAbsolute(_))));
        assert!(matches!(check_path(""), Err(FileError::NotAbsolute(_))));
        assert!(matches!(check_path("/a\0b"), Err(FileError::Nul)));
        assert!(matches!(
            check_path(&format!("/{}", "a".repeat(MAX_PATH))),
            Err(FileError::TooLong)
        ));
        assert!(is_root(Path::new("/")) && is_root(Path::new("/.")) && !is_root(Path::new("/a")));
    }

    #[test]
    fn errors_map_to_codes() {
        use tonic::Code;
        let io = |k: io::ErrorKind| FileError::Io {
            what: "x",
            path: "/p".into(),
            source: io::Error::from(k),
        };
        assert_eq!(io(io::ErrorKind::NotFound).into_status().code(), Code::NotFound);
        assert_eq!(
            io(io::ErrorKind::StorageFull).into_status().code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            io(io::ErrorKind::QuotaExceeded).into_status().code(),
            Code::ResourceExhausted
        );
        assert_eq!(
            io(io::ErrorKind::IsADirectory).into_status().code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            io(io::ErrorKind::PermissionDenied).into_status().code(),
            Code::PermissionDenied
        );
        assert_eq!(FileError::Nul.into_status().code(), Code::InvalidArgument);
        let escaping = FileError::Archive(io::Error::other("trying to unpack outside of destination path"));
        assert_eq!(escaping.into_status().code(), Code::InvalidArgument);
    }

    #[test]
    fn write_target_follows_final_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, b"x").unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("l1")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("l1"), dir.path().join("l2")).unwrap();
        let (t, m) = resolve_target(&dir.path().join("l2")).unwrap();
        assert_eq!(fs::canonicalize(t).unwrap(), fs::canonicalize(&real).unwrap());
        assert!(m.is_some());
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        assert!(matches!(
            resolve_target(&dir.path().join("loop")),
            Err(FileError::Invalid(_))
        ));
        let (t, m) = resolve_target(&dir.path().join("new")).unwrap();
        assert_eq!(t, dir.path().join("new"));
        assert!(m.is_none());
    }
}
