//! Turns an `ExecStart` into a running process: validates argv, environment, working
//! directory and user, resolves the executable through `PATH`, and forks it in its own
//! session with pipes or a pty.
//!
//! Every reason an exec can be refused is an [`ExecError`], mapped to a gRPC status in
//! exactly one place ([`ExecError::into_status`]). This module never waits for processes
//! (the reaper does) and never touches the exec stream (the session does).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use burrow_agent_proto::v1::ExecStart;
use tokio::sync::oneshot;
use tonic::Status;

use crate::reaper::Reaper;
use crate::sys::{self, Credentials, ExitStatus};
use crate::user::{self, Identity, UserError};

/// `PATH` used when the request's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_COLS: u16 = 80;
const DEFAULT_ROWS: u16 = 24;
/// Kernel buffer of stdout/stderr pipes (the default is 64 KiB).
const OUTPUT_PIPE_BYTES: i32 = 1024 * 1024;

/// Why an exec request was refused before a process existed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("argv must not be empty")]
    EmptyArgv,
    #[error("invalid environment variable name '{0}'")]
    BadEnvName(String),
    #[error("working directory '{0}' does not exist")]
    NoCwd(String),
    #[error("working directory '{0}' is not a directory")]
    CwdNotDir(String),
    #[error(transparent)]
    User(#[from] UserError),
    #[error("executable '{0}' not found in PATH")]
    NotInPath(String),
    #[error("executable '{0}' does not exist")]
    NoSuchFile(String),
    #[error("'{0}' is not executable")]
    NotExecutable(String),
    #[error("terminal size {cols}x{rows} is out of range")]
    BadSize { cols: u32, rows: u32 },
    #[error("cannot create a pseudo-terminal")]
    Pty(#[source] io::Error),
    #[error("cannot start '{program}'{}", limit_note(source))]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
}

impl ExecError {
    /// The one mapping from exec errors to gRPC statuses.
    pub fn into_status(self) -> Status {
        let msg = error_chain(&self);
        match &self {
            Self::EmptyArgv
            | Self::BadEnvName(_)
            | Self::NoCwd(_)
            | Self::CwdNotDir(_)
            | Self::User(_)
            | Self::BadSize { .. } => Status::invalid_argument(msg),
            Self::NotInPath(_) | Self::NoSuchFile(_) => Status::not_found(msg),
            Self::NotExecutable(_) => Status::permission_denied(msg),
            Self::Spawn { source, .. } if source.raw_os_error() == Some(libc::EAGAIN) => {
                limit_status(tonic::Code::ResourceExhausted, LIMIT_PIDS, msg)
            }
            Self::Spawn { source, .. } if source.raw_os_error() == Some(libc::ENOMEM) => {
                limit_status(tonic::Code::ResourceExhausted, LIMIT_MEMORY, msg)
            }
            Self::Spawn { source, .. }
                if matches!(source.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) =>
            {
                limit_status(tonic::Code::ResourceExhausted, LIMIT_FILES, msg)
            }
            Self::Spawn { source, .. } if source.raw_os_error() == Some(libc::E2BIG) => {
                limit_status(tonic::Code::InvalidArgument, LIMIT_ARGV, msg)
            }
            Self::Spawn { source, .. } => match source.kind() {
                io::ErrorKind::NotFound => Status::not_found(msg),
                io::ErrorKind::PermissionDenied => Status::permission_denied(msg),
                io::ErrorKind::InvalidInput => Status::invalid_argument(msg),
                _ => Status::internal(msg),
            },
            Self::Pty(_) => Status::internal(msg),
        }
    }
}

/// Status metadata key naming the sandbox limit an exec ran into; the host turns it into a
/// distinct API error (`resource_exhausted`, `argument_too_long`) instead of "agent failed".
/// Codes alone cannot say it: tonic itself reports oversized messages as `ResourceExhausted`
/// and `OutOfRange`.
pub const LIMIT_KEY: &str = "burrow-limit";
/// The process limit (cgroup `pids.max`): fork/clone failed with `EAGAIN`.
pub const LIMIT_PIDS: &str = "pids";
/// Memory: fork/clone failed with `ENOMEM`.
pub const LIMIT_MEMORY: &str = "memory";
/// Open files (`RLIMIT_NOFILE`, or the host's file table): pipes for the process failed with
/// `EMFILE`/`ENFILE`.
pub const LIMIT_FILES: &str = "files";
/// The kernel's argument and environment size limits: execve failed with `E2BIG`.
pub const LIMIT_ARGV: &str = "argv";

fn limit_status(code: tonic::Code, limit: &'static str, msg: String) -> Status {
    let mut st = Status::new(code, msg);
    st.metadata_mut()
        .insert(LIMIT_KEY, tonic::metadata::MetadataValue::from_static(limit));
    st
}

/// Kernel limit behind a spawn error, in words, for the error message.
fn limit_note(source: &io::Error) -> String {
    match source.raw_os_error() {
        Some(libc::EAGAIN) => match pids_limit() {
            Some((max, current)) => {
                format!(": the sandbox's process limit is reached (pids limit {max}, {current} in use)")
            }
            None => ": the sandbox's process limit (pids) is reached".to_owned(),
        },
        Some(libc::ENOMEM) => ": the sandbox is out of memory (memory limit)".to_owned(),
        Some(libc::EMFILE) => ": the agent's open-files limit (nofile) is reached".to_owned(),
        Some(libc::ENFILE) => ": the host's open-files table is full".to_owned(),
        Some(libc::E2BIG) => format!(
            ": the arguments and environment are too long for the kernel (at most {} bytes per \
             argument or variable, {} bytes in all)",
            MAX_ARG_STRLEN,
            arg_max()
        ),
        _ => String::new(),
    }
}

/// The kernel's limit on one argument or environment string (`MAX_ARG_STRLEN`, 32 pages).
pub const MAX_ARG_STRLEN: usize = 32 * 4096;

/// The kernel's limit on argv and environment together: a quarter of the stack limit, at
/// most three quarters of 8 MiB, at least 128 KiB (`fs/exec.c`). (musl's `sysconf(ARG_MAX)`
/// only says 128 KiB.)
fn arg_max() -> u64 {
    const MIN: u64 = 128 * 1024;
    const MAX: u64 = 6 * 1024 * 1024;
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_STACK)
        .map_or(MIN, |(soft, _)| (soft / 4).clamp(MIN, MAX))
}

/// The cgroup `pids.max` and `pids.current` the agent sees (cgroup v2, or the v1 `pids`
/// hierarchy), when it can read them.
fn pids_limit() -> Option<(String, String)> {
    let mut dirs = vec![
        PathBuf::from("/sys/fs/cgroup"),
        PathBuf::from("/sys/fs/cgroup/pids"),
        // A VM guest's: the agent runs in the root, what it starts in `payload`.
        PathBuf::from("/sys/fs/cgroup/payload"),
    ];
    // Without a cgroup namespace the own cgroup is below the mount's root.
    if let Ok(s) = std::fs::read_to_string("/proc/self/cgroup") {
        for line in s.lines() {
            let mut f = line.splitn(3, ':');
            let (_, ctrl, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            let rel = path.trim_start_matches('/');
            if rel.is_empty() || rel.split('/').any(|c| c == "..") {
                continue;
            }
            if ctrl.is_empty() {
                dirs.push(Path::new("/sys/fs/cgroup").join(rel));
            } else if ctrl.split(',').any(|c| c == "pids") {
                dirs.push(Path::new("/sys/fs/cgroup/pids").join(rel));
            }
        }
    }
    // Most specific first.
    dirs.reverse();
    dirs.into_iter().find_map(|d| {
        let max = std::fs::read_to_string(d.join("pids.max")).ok()?;
        let current = std::fs::read_to_string(d.join("pids.current")).unwrap_or_default();
        let max = max.trim();
        (max != "max").then(|| (max.to_owned(), current.trim().to_owned()))
    })
}

/// `error: cause: cause` for one-line status messages.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// A validated exec request, ready to fork.
#[derive(Debug)]
pub struct ExecSpec {
    program: PathBuf,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    identity: Identity,
    /// `Some((cols, rows))` in TTY mode.
    tty: Option<(u16, u16)>,
    stdin: bool,
}

/// Validates a start message against this system (the sandbox's root filesystem).
pub fn prepare(start: ExecStart) -> Result<ExecSpec, ExecError> {
    let argv = start.argv;
    let Some(argv0) = argv.first().cloned() else {
        return Err(ExecError::EmptyArgv);
    };
    let mut env = Vec::with_capacity(start.env.len() + 3);
    for var in start.env {
        if var.name.is_empty() || var.name.contains(['=', '\0']) {
            return Err(ExecError::BadEnvName(var.name));
        }
        env.push((var.name, var.value));
    }
    let identity = user::resolve_local(&start.user)?;

    let cwd = if start.cwd.is_empty() {
        identity
            .home
            .clone()
            .filter(|h| h.is_dir())
            .unwrap_or_else(|| PathBuf::from("/"))
    } else {
        let cwd = PathBuf::from(&start.cwd);
        match std::fs::metadata(&cwd) {
            Ok(m) if m.is_dir() => cwd,
            Ok(_) => return Err(ExecError::CwdNotDir(start.cwd)),
            Err(_) => return Err(ExecError::NoCwd(start.cwd)),
        }
    };

    let has = |name: &str| env.iter().any(|(n, _)| n == name);
    let mut extra = Vec::new();
    if !has("HOME") {
        let home = identity.home.as_deref().unwrap_or(Path::new("/"));
        extra.push(("HOME".to_owned(), home.to_string_lossy().into_owned()));
    }
    if let Some(name) = &identity.name {
        for var in ["USER", "LOGNAME"] {
            if !has(var) {
                extra.push((var.to_owned(), name.clone()));
            }
        }
    }
    env.extend(extra);

    let path_var = env
        .iter()
        .rev()
        .find(|(n, _)| n == "PATH")
        .map(|(_, v)| v.as_str());
    let program = resolve_program(&argv0, path_var.unwrap_or(DEFAULT_PATH), &cwd)?;

    let tty = if start.tty {
        let dim = |v: u32, default: u16| {
            if v == 0 {
                Some(default)
            } else {
                u16::try_from(v).ok()
            }
        };
        match (dim(start.cols, DEFAULT_COLS), dim(start.rows, DEFAULT_ROWS)) {
            (Some(c), Some(r)) => Some((c, r)),
            _ => {
                return Err(ExecError::BadSize {
                    cols: start.cols,
                    rows: start.rows,
                });
            }
        }
    } else {
        None
    };

    Ok(ExecSpec {
        program,
        argv,
        env,
        cwd,
        identity,
        tty,
        stdin: start.stdin,
    })
}

fn is_executable(m: &std::fs::Metadata) -> bool {
    m.is_file() && m.permissions().mode() & 0o111 != 0
}

/// Finds the file to exec for `argv0`: a path when it contains `/`, else a `PATH` search.
fn resolve_program(argv0: &str, path: &str, cwd: &Path) -> Result<PathBuf, ExecError> {
    if argv0.contains('/') {
        let candidate = cwd.join(argv0);
        return match std::fs::metadata(&candidate) {
            Ok(m) if is_executable(&m) => Ok(candidate),
            Ok(_) => Err(ExecError::NotExecutable(argv0.to_owned())),
            Err(_) => Err(ExecError::NoSuchFile(argv0.to_owned())),
        };
    }
    if argv0.is_empty() {
        return Err(ExecError::NotInPath(argv0.to_owned()));
    }
    let mut found_non_executable = false;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = cwd.join(dir).join(argv0);
        match std::fs::metadata(&candidate) {
            Ok(m) if is_executable(&m) => return Ok(candidate),
            Ok(m) if m.is_file() => found_non_executable = true,
            _ => {}
        }
    }
    if found_non_executable {
        Err(ExecError::NotExecutable(argv0.to_owned()))
    } else {
        Err(ExecError::NotInPath(argv0.to_owned()))
    }
}

/// `cgroup.procs` of the cgroup every process the agent starts must run in (the sandbox's
/// payload cgroup; `--cgroup-fd`). Unset: processes stay in the agent's cgroup.
static PAYLOAD_CGROUP: OnceLock<OwnedFd> = OnceLock::new();

/// Makes every process spawned from now on move into the cgroup whose `cgroup.procs` is
/// `procs` (see [`sys::configure_child`]). Call once, before anything is spawned.
pub fn set_payload_cgroup(procs: OwnedFd) {
    let _ = PAYLOAD_CGROUP.set(procs);
}

/// A freshly started process and the agent's ends of its stdio.
pub struct Spawned {
    pub pid: i32,
    pub exit: oneshot::Receiver<ExitStatus>,
    /// stdout pipe, or the pty master in TTY mode.
    pub stdout: OwnedFd,
    /// stderr pipe; `None` in TTY mode.
    pub stderr: Option<OwnedFd>,
    /// stdin pipe, or a second handle on the pty master; `None` when stdin is `/dev/null`.
    pub stdin: Option<OwnedFd>,
    pub tty: bool,
}

/// Forks the process described by `spec` in its own session.
pub fn spawn(reaper: &Reaper, spec: ExecSpec) -> Result<Spawned, ExecError> {
    let mut cmd = Command::new(&spec.program);
    cmd.arg0(&spec.argv[0])
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(n, v)| (n, v)))
        .current_dir(&spec.cwd);

    let pty = match spec.tty {
        Some((cols, rows)) => Some(sys::open_pty(cols, rows).map_err(ExecError::Pty)?),
        None => None,
    };
    let master = match pty {
        Some(pty) => {
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(ExecError::Pty);
            cmd.stdin(Stdio::from(dup(&pty.slave)?))
                .stdout(Stdio::from(dup(&pty.slave)?))
                .stderr(Stdio::from(pty.slave));
            Some(pty.master)
        }
        None => {
            cmd.stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            None
        }
    };

    let creds = if spec.identity.uid == sys::euid() && sys::euid() != 0 {
        // Not root and asked to stay who we are: nothing to switch (host tests as non-root).
        None
    } else {
        Some(Credentials {
            uid: spec.identity.uid,
            gid: spec.identity.gid,
            groups: spec.identity.groups.clone(),
        })
    };
    let cgroup = PAYLOAD_CGROUP.get().map(AsRawFd::as_raw_fd);
    sys::configure_child(&mut cmd, master.is_some(), creds, cgroup);

    let program = spec.argv[0].clone();
    let (mut child, exit) = reaper
        .spawn(&mut cmd)
        .map_err(|source| ExecError::Spawn { program, source })?;
    // Drops our copies of the pty slave: the master must see EOF/EIO once the process
    // (and whatever inherited the terminal) is gone.
    drop(cmd);
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);

    let (stdout, stderr, stdin) = match master {
        Some(master) => {
            let writer = master.try_clone().ok();
            (master, None, writer)
        }
        None => {
            let stdout = child.stdout.take().map(OwnedFd::from);
            let stderr = child.stderr.take().map(OwnedFd::from);
            let stdin = child.stdin.take().map(OwnedFd::from);
            for fd in [stdout.as_ref(), stderr.as_ref()].into_iter().flatten() {
                sys::grow_pipe(fd.as_fd(), OUTPUT_PIPE_BYTES);
            }
            (
                stdout.expect("Stdio::piped() always yields a handle"),
                stderr,
                stdin,
            )
        }
    };
    for fd in [Some(&stdout), stderr.as_ref(), stdin.as_ref()]
        .into_iter()
        .flatten()
    {
        // Failing here would only make reads block a runtime thread; it cannot happen for
        // fresh pipes and ptys.
        let _ = sys::set_nonblocking(fd.as_fd());
    }
    Ok(Spawned {
        pid,
        exit,
        stdout,
        stderr,
        stdin,
        tty: spec.tty.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_search_and_errors() {
        let cwd = Path::new("/");
        assert_eq!(
            resolve_program("sh", DEFAULT_PATH, cwd)
                .unwrap()
                .file_name()
                .unwrap(),
            "sh"
        );
        assert!(matches!(
            resolve_program("definitely-not-here-xyz", DEFAULT_PATH, cwd),
            Err(ExecError::NotInPath(_))
        ));
        assert!(matches!(
            resolve_program("/nope/x", DEFAULT_PATH, cwd),
            Err(ExecError::NoSuchFile(_))
        ));
        assert!(matches!(
            resolve_program("/etc/passwd", DEFAULT_PATH, cwd),
            Err(ExecError::NotExecutable(_))
        ));
        assert!(matches!(
            resolve_program("passwd", "/etc", cwd),
            Err(ExecError::NotExecutable(_))
        ));
    }

    #[test]
    fn limits_get_their_own_status_and_name_the_limit() {
        let spawn_err = |errno| ExecError::Spawn {
            program: "sleep".into(),
            source: io::Error::from_raw_os_error(errno),
        };
        let st = spawn_err(libc::EAGAIN).into_status();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert_eq!(st.metadata().get(LIMIT_KEY).unwrap(), LIMIT_PIDS);
        assert!(st.message().contains("process limit"), "{}", st.message());
        let st = spawn_err(libc::E2BIG).into_status();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        assert_eq!(st.metadata().get(LIMIT_KEY).unwrap(), LIMIT_ARGV);
        assert!(
            st.message().contains("131072 bytes per argument"),
            "{}",
            st.message()
        );
        let st = spawn_err(libc::ENOMEM).into_status();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert_eq!(st.metadata().get(LIMIT_KEY).unwrap(), LIMIT_MEMORY);
        // Other failures carry no limit.
        let st = spawn_err(libc::EIO).into_status();
        assert_eq!(st.code(), tonic::Code::Internal);
        assert!(st.metadata().get(LIMIT_KEY).is_none());
    }

    #[test]
    fn error_messages_name_the_executable() {
        let st = ExecError::NotInPath("foo".into()).into_status();
        assert_eq!(st.code(), tonic::Code::NotFound);
        assert_eq!(st.message(), "executable 'foo' not found in PATH");
    }
}
