//! burrow-agent: PID 1 of every sandbox.
//!
//! This file owns the command line, the runtime and the listening socket: it serves the
//! agent protocol on every accepted connection (the host may disconnect and reconnect at
//! any time; processes keep running), reaps zombies, and turns SIGTERM into a graceful
//! shutdown. Behaviour lives in the modules: `spawn` (starting processes), `session` (one
//! exec stream), `reaper` (waiting), `shutdown`, `user` (passwd/group), `sys` (syscalls),
//! `guest` (the agent as a VM's init: boot, then serve on the virtio-serial port).

#![deny(unsafe_code)]

/// Writes one line to the agent's log, its stderr. As a sandbox's init that is a
/// non-blocking FIFO the host drains (and caps): when the host does not read, the line is
/// dropped (`EAGAIN`, `EPIPE`) instead of blocking, or panicking like `eprintln!` would.
macro_rules! log_line {
    ($($arg:tt)*) => {
        $crate::write_log_line(format_args!($($arg)*))
    };
}

#[allow(unsafe_code)]
mod sys;

mod connect;
mod files;
mod guest;
mod reaper;
mod service;
mod session;
mod sessions;
mod shutdown;
mod spawn;
mod supervisor;
mod user;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use burrow_agent_proto::{AgentServer, MAX_MESSAGE_BYTES, PROTOCOL_VERSION};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::Stream;

use crate::reaper::Reaper;
use crate::service::AgentService;
use crate::shutdown::{DEFAULT_GRACE, Shutdown};

/// musl's malloc halves output throughput (~450 vs ~1000 MB/s). mimalloc commits its first
/// arena eagerly (~4 MiB RSS when idle); start the agent with `MIMALLOC_ARENA_EAGER_COMMIT=0`
/// to keep idle RSS near 0.6 MiB at the same throughput. Sandbox processes never see that
/// variable: every exec's environment is exactly the requested one.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The fd runc passes with `--preserve-fds 1` (the first fd after stdio).
const DEFAULT_LISTEN_FD: RawFd = 3;
/// After a shutdown, how long open connections get to finish before the agent exits anyway.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// HTTP/2 receive windows of the agent (bounds host → agent data in flight, i.e. stdin).
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

const USAGE: &str = "usage: burrow-agent [--listen-fd N | --listen PATH] [--cgroup-fd N] | --version\n\
    \n  --listen-fd N   serve on the already listening unix socket at fd N (default: 3)\
    \n  --listen PATH   create a unix socket at PATH and serve on it\
    \n  --cgroup-fd N   move every process started into the cgroup whose cgroup.procs is fd N\
    \n  --version       print the agent and protocol versions";

#[derive(Debug, PartialEq, Eq)]
enum Listen {
    Fd(RawFd),
    Path(PathBuf),
    /// A VM's virtio-serial port device (guest mode only; no command line flag).
    VirtioPort(PathBuf),
}

#[derive(Debug, PartialEq, Eq)]
enum Command {
    /// Serve on `Listen`; with a `cgroup.procs` fd for the processes started.
    Serve(Listen, Option<RawFd>),
    Version,
    Help,
}

#[derive(Debug, thiserror::Error)]
enum AgentError {
    #[error("invalid arguments: {0}")]
    Usage(String),
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error("fd {fd} is not a usable listening unix socket")]
    ListenFd {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("fd {fd} is not a cgroup.procs open for writing")]
    CgroupFd {
        fd: RawFd,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the agent port {path}")]
    Port {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot install signal handlers")]
    Signals(#[source] io::Error),
    #[error("gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, AgentError> {
    let mut args = args.into_iter();
    let mut listen = None;
    let mut cgroup_fd = None;
    let parse_fd = |flag: &str, v: OsString| {
        v.to_str()
            .and_then(|s| s.parse::<RawFd>().ok())
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| AgentError::Usage(format!("{flag}: bad fd {v:?}")))
    };
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .ok_or_else(|| AgentError::Usage(format!("{flag} needs a value")))
        };
        let next = match arg.to_str() {
            Some("--version" | "-V") => return Ok(Command::Version),
            Some("--help" | "-h") => return Ok(Command::Help),
            Some("--listen-fd") => Listen::Fd(parse_fd("--listen-fd", value("--listen-fd")?)?),
            Some("--cgroup-fd") => {
                let fd = parse_fd("--cgroup-fd", value("--cgroup-fd")?)?;
                if cgroup_fd.replace(fd).is_some() {
                    return Err(AgentError::Usage("--cgroup-fd given twice".into()));
                }
                continue;
            }
            Some("--listen") => Listen::Path(PathBuf::from(value("--listen")?)),
            _ => return Err(AgentError::Usage(format!("unexpected argument {arg:?}"))),
        };
        if listen.replace(next).is_some() {
            return Err(AgentError::Usage(
                "give only one of --listen-fd and --listen".into(),
            ));
        }
    }
    Ok(Command::Serve(
        listen.unwrap_or(Listen::Fd(DEFAULT_LISTEN_FD)),
        cgroup_fd,
    ))
}

fn write_log_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let line = format!("{args}\n");
    let _ = io::stderr().lock().write_all(line.as_bytes());
}

fn main() -> ExitCode {
    // First of all, before anything runs beside us: the code the agent runs has the same uid,
    // and while the agent is dumpable it could ptrace it, read its memory and open its file
    // descriptors through /proc/1. Processes the agent starts become dumpable again at
    // execve, so debuggers still work on them.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        log_line!("burrow-agent: cannot make the agent non-dumpable: {e}");
    }
    sys::cloexec_inherited_fds();
    if let Some(cfg) = guest::detect() {
        run_guest(cfg);
    }
    let result = parse_args(std::env::args_os().skip(1)).and_then(|cmd| match cmd {
        Command::Version => {
            println!(
                "burrow-agent {} (protocol {PROTOCOL_VERSION})",
                env!("CARGO_PKG_VERSION")
            );
            Ok(())
        }
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Serve(listen, cgroup_fd) => {
            if let Some(fd) = cgroup_fd {
                let procs = sys::adopt_file_fd(fd).map_err(|source| AgentError::CgroupFd { fd, source })?;
                spawn::set_payload_cgroup(procs);
            }
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(4)
                .enable_all()
                .build()
                .map_err(AgentError::Runtime)?
                .block_on(serve(listen))
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log_error(&err);
            if matches!(err, AgentError::Usage(_)) {
                log_line!("{USAGE}");
                return ExitCode::from(2);
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs an error with its whole `source()` chain.
fn log_error(err: &dyn std::error::Error) {
    let mut msg = format!("burrow-agent: {err}");
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    log_line!("{msg}");
}

/// The agent as a VM's init: boot the guest, serve on the virtio-serial port until a
/// shutdown, then power the VM off. Never returns (init must not exit).
fn run_guest(cfg: Result<guest::GuestConfig, guest::GuestError>) -> ! {
    let port = match cfg.and_then(|cfg| guest::boot(&cfg)) {
        Ok(port) => port,
        Err(e) => {
            log_error(&e);
            guest::power_off();
        }
    };
    // From here on the console must never hold the agent up: a console that stops taking
    // output (a guest process flooding it, a UART that lost its interrupt over a memory
    // snapshot) drops the agent's log lines instead of blocking the thread that writes them.
    if let Err(e) = sys::set_nonblocking(std::io::stderr().as_fd()) {
        log_line!("burrow-agent: guest: cannot make the console non-blocking: {e}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build();
    // The runtime is never dropped: dropping it would wait for blocking tasks still running
    // (a file transfer the host abandoned), and the VM is about to power off anyway.
    let result = match &runtime {
        Ok(rt) => rt.block_on(serve(Listen::VirtioPort(port))),
        Err(e) => Err(AgentError::Runtime(io::Error::new(e.kind(), e.to_string()))),
    };
    if let Err(e) = result {
        log_error(&e);
    }
    guest::power_off();
}

fn bind(listen: &Listen) -> Result<UnixListener, AgentError> {
    let std_listener = match listen {
        Listen::Fd(fd) => {
            sys::adopt_listener(*fd).map_err(|source| AgentError::ListenFd { fd: *fd, source })?
        }
        Listen::VirtioPort(path) => {
            return Err(AgentError::Bind {
                path: path.clone(),
                source: io::Error::from(io::ErrorKind::Unsupported),
            });
        }
        Listen::Path(path) => {
            let bind_err = |source| AgentError::Bind {
                path: path.clone(),
                source,
            };
            // A stale socket from an earlier run would make bind fail; anything else is kept.
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                std::fs::remove_file(path).map_err(bind_err)?;
            }
            let l = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
            l.set_nonblocking(true).map_err(bind_err)?;
            l
        }
    };
    UnixListener::from_std(std_listener).map_err(|source| AgentError::Bind {
        path: PathBuf::new(),
        source,
    })
}

/// Where the host shares the in-sandbox API socket, and where sandbox programs look for it.
const HOST_API_SOCKET: &str = "/.burrow/host/api.sock";
const API_SOCKET_LINK: &str = "/.burrow/api.sock";

/// As init of a sandbox, points `/.burrow/api.sock` at the host's socket. The host shares a
/// directory rather than the socket itself so that it can re-create the socket after a
/// restart; the link keeps the documented path stable.
fn link_api_socket() {
    if std::process::id() == 1 && std::path::Path::new("/.burrow/host").is_dir() {
        let _ = std::fs::remove_file(API_SOCKET_LINK);
        if let Err(e) = std::os::unix::fs::symlink(HOST_API_SOCKET, API_SOCKET_LINK) {
            log_line!("burrow-agent: linking {API_SOCKET_LINK}: {e}");
        }
    }
}

async fn serve(listen: Listen) -> Result<(), AgentError> {
    link_api_socket();
    // The reaper (and its SIGCHLD handler) must exist before anything is spawned.
    let reaper = Reaper::start().map_err(AgentError::Signals)?;
    if std::process::id() != 1 {
        // Off PID 1, orphans of our sessions would escape to the host's init; adopt them.
        let _ = sys::set_child_subreaper();
    }
    let shutdown = Shutdown::new(Arc::clone(&reaper));

    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let on_term = Arc::clone(&shutdown);
    tokio::spawn(async move {
        if sigterm.recv().await.is_some() {
            on_term.run(DEFAULT_GRACE).await;
        }
    });

    let mut done = shutdown.done();
    let stop = async move {
        let _ = done.wait_for(|d| *d).await;
    };
    let service = AgentServer::new(AgentService::new(reaper, Arc::clone(&shutdown)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(service);
    type ServerFuture = Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;
    let server: ServerFuture = match &listen {
        Listen::VirtioPort(path) => {
            let fd = guest::port::open_port(path).map_err(|source| AgentError::Port {
                path: path.clone(),
                source,
            })?;
            log_line!("burrow-agent: guest: serving on {}", path.display());
            Box::pin(router.serve_with_incoming_shutdown(guest::port::PortIncoming::new(fd, path), stop))
        }
        Listen::Fd(_) | Listen::Path(_) => {
            let listener = bind(&listen)?;
            Box::pin(router.serve_with_incoming_shutdown(Incoming::new(listener), stop))
        }
    };

    let mut done = shutdown.done();
    let result = tokio::select! {
        r = server => r.map_err(AgentError::Serve),
        // Hosts may keep connections open; do not let them hold up the exit for long.
        () = async { let _ = done.wait_for(|d| *d).await; tokio::time::sleep(EXIT_GRACE).await } => Ok(()),
    };
    if let Listen::Path(path) = &listen {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Accepted connections, backing off briefly after an accept error (e.g. EMFILE) instead
/// of spinning, and never ending on one.
struct Incoming {
    listener: UnixListener,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Incoming {
    fn new(listener: UnixListener) -> Self {
        Self {
            listener,
            backoff: None,
        }
    }
}

impl Stream for Incoming {
    type Item = io::Result<UnixStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(backoff) = self.backoff.as_mut() {
            ready!(backoff.as_mut().poll(cx));
            self.backoff = None;
        }
        match ready!(self.listener.poll_accept(cx)) {
            Ok((stream, _)) => Poll::Ready(Some(Ok(stream))),
            Err(e) => {
                log_line!("burrow-agent: accept failed: {e}");
                self.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, AgentError> {
        parse_args(args.iter().map(OsString::from))
    }

    #[test]
    fn cli() {
        assert_eq!(parse(&[]).unwrap(), Command::Serve(Listen::Fd(3), None));
        assert_eq!(
            parse(&["--listen-fd", "7"]).unwrap(),
            Command::Serve(Listen::Fd(7), None)
        );
        assert_eq!(
            parse(&["--listen", "/x"]).unwrap(),
            Command::Serve(Listen::Path("/x".into()), None)
        );
        assert_eq!(
            parse(&["--listen-fd", "3", "--cgroup-fd", "4"]).unwrap(),
            Command::Serve(Listen::Fd(3), Some(4))
        );
        assert!(parse(&["--cgroup-fd", "4", "--cgroup-fd", "5"]).is_err());
        assert!(parse(&["--cgroup-fd", "x"]).is_err());
        assert_eq!(parse(&["--version"]).unwrap(), Command::Version);
        assert!(parse(&["--listen-fd"]).is_err());
        assert!(parse(&["--listen-fd", "-1"]).is_err());
        assert!(parse(&["--listen", "/x", "--listen-fd", "3"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
