//! The agent's output sink: the sandbox's init writes its stdout and stderr into a FIFO in
//! the run dir (`agent.out`), never into a host file; the engine drains the FIFO into
//! `agent.log`, rotating it to `agent.log.1` so that the two together never hold more than
//! [`MAX_BYTES`], whatever the sandbox writes.
//!
//! The FIFO outlives the daemon with the container: after a restart, `attach` opens it for
//! reading again (an exclusive `flock` on the read side makes sure only one drain reads it).
//! The writer's side is opened `O_NONBLOCK` by the engine and handed to runc, so the init
//! inherits a descriptor whose writes fail with `EAGAIN` when the pipe is full and `EPIPE`
//! when no one reads (the daemon is down): it drops its output instead of blocking.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// The FIFO the sandbox's init writes to (both stdout and stderr).
pub const FIFO_FILE: &str = "agent.out";
/// The newest agent output.
pub const LOG_FILE: &str = "agent.log";
/// The output before that, replaced at every rotation.
pub const OLD_LOG_FILE: &str = "agent.log.1";
/// Most bytes of agent output kept on the host, `agent.log` and `agent.log.1` together.
pub const MAX_BYTES: u64 = 1024 * 1024;
/// `agent.log` is rotated before it would grow past this.
const FILE_MAX: u64 = MAX_BYTES / 2;
/// One read from the FIFO (its default capacity).
const CHUNK: usize = 64 * 1024;
/// Reads per wake-up of the drain: 1 MiB, a full pipe even where it has been enlarged.
const PIPE_CHUNKS: usize = 16;
/// The drain thread's stack: it only copies bytes.
const STACK: usize = 128 * 1024;

/// A running drain: a thread copying the FIFO into the capped log. Dropping it stops the
/// thread (after it has copied what is already in the pipe); it also ends by itself when the
/// last writer (the sandbox) is gone.
#[derive(Debug)]
pub struct Drain {
    /// Closing it wakes the thread to stop.
    stop: Option<OwnedFd>,
    done: mpsc::Receiver<()>,
}

impl Drain {
    fn wait(&self, timeout: Duration) -> bool {
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => false,
        }
    }

    /// Waits up to `timeout` for the drain to reach the end of the output (every writer
    /// closed); stops it if it has not. Returns whether it reached the end.
    pub fn finish(self, timeout: Duration) -> bool {
        self.wait(timeout)
    }

    /// Stops the drain after it has copied what the pipe holds, and waits (up to `timeout`)
    /// until its thread no longer holds the FIFO. Returns whether it stopped in time.
    pub fn stop(mut self, timeout: Duration) -> bool {
        self.stop.take();
        self.wait(timeout)
    }
}

/// Creates a fresh FIFO in `run_dir` and starts draining it. Returns the writer's side,
/// non-blocking, for runc to give the sandbox's init as stdout and stderr.
pub fn create(run_dir: &Path) -> io::Result<(OwnedFd, Drain)> {
    let fifo = run_dir.join(FIFO_FILE);
    match fs::remove_file(&fifo) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    nix::unistd::mkfifo(fifo.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    // mkfifo applies the umask; make sure of the mode.
    fs::set_permissions(&fifo, fs::Permissions::from_mode(0o600))?;
    // The reader first: opening a FIFO's write side without O_NONBLOCK would wait for it,
    // with O_NONBLOCK it fails (ENXIO) when there is none.
    let reader = open_reader(&fifo)?;
    let writer: OwnedFd = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)?
        .into();
    let drain = start(reader, run_dir)?.ok_or_else(|| io::Error::other("FIFO already drained"))?;
    Ok((writer, drain))
}

/// Starts draining the FIFO of a sandbox that runs already (after a daemon restart).
/// `Ok(None)` when there is no FIFO or another drain holds it.
pub fn attach(run_dir: &Path) -> io::Result<Option<Drain>> {
    let fifo = run_dir.join(FIFO_FILE);
    let is_fifo = fs::symlink_metadata(&fifo).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo()
    });
    if !is_fifo {
        return Ok(None);
    }
    start(open_reader(&fifo)?, run_dir)
}

/// The FIFO's read side. Non-blocking so that opening does not wait for a writer; the
/// drain polls it.
fn open_reader(fifo: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(fifo)
}

fn start(reader: File, run_dir: &Path) -> io::Result<Option<Drain>> {
    match reader.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(None),
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    let mut log = CappedLog::open(run_dir)?;
    let (stop_rx, stop_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (done_tx, done) = mpsc::channel();
    std::thread::Builder::new()
        .name("agent-log".to_owned())
        .stack_size(STACK)
        .spawn(move || {
            let result = pump(&reader, &stop_rx, &mut log);
            // Let go of the FIFO (and its lock) before saying so.
            drop(reader);
            if let Err(e) = result {
                tracing::warn!(dir = %log.dir.display(), error = %e, "agent log drain stopped");
            }
            let _ = done_tx.send(());
        })?;
    Ok(Some(Drain {
        stop: Some(stop_tx),
        done,
    }))
}

/// Copies `reader` into `log` until every writer has closed it or `stop` is closed.
fn pump(mut reader: &File, stop: &OwnedFd, log: &mut CappedLog) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut fds = [
            PollFd::new(reader.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let stopping = fds[1].any().unwrap_or(true);
        // Copy what is there, at most a pipe's worth per wake-up so that a writer that never
        // pauses cannot keep the drain from seeing `stop`. A read of 0 bytes (POLLHUP and
        // nothing left) means no writer is left.
        for _ in 0..PIPE_CHUNKS {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => log.write(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if stopping {
            return Ok(());
        }
    }
}

/// `agent.log`, rotated to `agent.log.1` before a write would take it past `FILE_MAX`.
struct CappedLog {
    dir: PathBuf,
    file: File,
    len: u64,
}

impl CappedLog {
    fn open(dir: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(LOG_FILE))?;
        let len = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_owned(),
            file,
            len,
        })
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        debug_assert!(data.len() as u64 <= FILE_MAX);
        if self.len + data.len() as u64 > FILE_MAX {
            let path = self.dir.join(LOG_FILE);
            fs::rename(&path, self.dir.join(OLD_LOG_FILE))?;
            self.file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            self.len = 0;
        }
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total(dir: &Path) -> u64 {
        [LOG_FILE, OLD_LOG_FILE]
            .iter()
            .map(|f| fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Writes `n` bytes to the non-blocking writer, waiting (bounded) whenever the pipe is full.
    fn write_all_waiting(w: &OwnedFd, mut data: &[u8]) {
        let mut f = File::from(w.try_clone().unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !data.is_empty() {
            match f.write(data) {
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "the drain does not read");
                    let mut fds = [PollFd::new(w.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(100u16));
                }
                Err(e) => panic!("write: {e}"),
            }
        }
    }

    #[test]
    fn keeps_at_most_the_cap_and_the_newest_output() {
        let dir = tempfile::tempdir().unwrap();
        let (w, drain) = create(dir.path()).unwrap();
        // 8 MiB of numbered lines, then a last line.
        let mut data = Vec::new();
        let mut i = 0;
        while data.len() < 8 << 20 {
            data.extend_from_slice(format!("line {i:08}\n").as_bytes());
            i += 1;
        }
        write_all_waiting(&w, &data);
        write_all_waiting(&w, b"the end\n");
        drop(w);
        assert!(
            drain.finish(Duration::from_secs(30)),
            "no EOF after the writer closed"
        );
        assert!(total(dir.path()) <= MAX_BYTES, "{} bytes kept", total(dir.path()));
        let new = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        let old = fs::read_to_string(dir.path().join(OLD_LOG_FILE)).unwrap();
        assert!(
            new.ends_with("\nthe end\n"),
            "{}",
            &new[new.len().saturating_sub(100)..]
        );
        // What is kept is the newest output, in order, without a gap between the files.
        let both = old + &new;
        assert!(both.len() as u64 > MAX_BYTES / 2, "{}", both.len());
        let nums: Vec<u64> = both
            .lines()
            .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
            .collect();
        assert_eq!(*nums.last().unwrap(), i - 1);
        assert!(
            nums.windows(2).all(|w| w[1] == w[0] + 1),
            "a gap in the kept output"
        );
    }

    #[test]
    fn a_writer_that_never_pauses_cannot_keep_the_drain_from_stopping() {
        let dir = tempfile::tempdir().unwrap();
        let (w, drain) = create(dir.path()).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let done = done.clone();
            let mut f = File::from(w);
            std::thread::spawn(move || {
                let chunk = vec![b'y'; 64 * 1024];
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = f.write(&chunk);
                }
            })
        };
        // Let it run past the cap, then stop the drain while it still writes.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !dir.path().join(OLD_LOG_FILE).exists() {
            assert!(std::time::Instant::now() < deadline, "nothing drained");
            std::thread::sleep(Duration::from_millis(5));
        }
        let stopped = drain.stop(Duration::from_secs(10));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(stopped, "the drain did not stop while the writer kept writing");
        assert!(total(dir.path()) <= MAX_BYTES);
        // It let go of the FIFO: another drain may take it.
        assert!(attach(dir.path()).unwrap().is_some());
    }

    #[test]
    fn a_full_pipe_makes_the_writer_drop_not_wait_and_attach_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (w, drain) = create(dir.path()).unwrap();
        // A second drain on the same FIFO is refused while the first holds it.
        assert!(attach(dir.path()).unwrap().is_none());
        // No reader (the daemon is down): writes fail at once instead of blocking.
        assert!(drain.stop(Duration::from_secs(10)));
        let mut f = File::from(w.try_clone().unwrap());
        let chunk = vec![b'x'; 4096];
        let err = f.write(&chunk).unwrap_err();
        drop(f);
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE), "{err}");
        // A new drain (the daemon started again) picks the output up.
        let drain = attach(dir.path()).unwrap().expect("drain attached");
        write_all_waiting(&w, b"after the restart\n");
        drop(w);
        assert!(drain.finish(Duration::from_secs(30)));
        let log = fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert!(log.ends_with("after the restart\n"), "{log:?}");
        assert!(total(dir.path()) <= MAX_BYTES);
    }
}
