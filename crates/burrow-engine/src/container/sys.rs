//! Raw system calls of the container engine, in one place: pidfds, waiting on them, and the
//! fd plumbing done between fork and exec of runc. Everything else in the engine is safe
//! code built on these few functions.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket};
use nix::sys::stat::{Mode, fchmod};

/// Sets the hostname of the UTS namespace the process behind `pidfd` is in. A thread of its
/// own joins that namespace (setns on a pidfd) and ends after, so no other thread of the
/// daemon, and no pooled worker thread, ever runs in a sandbox's namespace.
pub(crate) fn set_hostname_of(pidfd: OwnedFd, hostname: &str) -> io::Result<()> {
    let name = hostname.to_owned();
    std::thread::Builder::new()
        .name("sethostname".into())
        .spawn(move || -> io::Result<()> {
            nix::sched::setns(&pidfd, nix::sched::CloneFlags::CLONE_NEWUTS)?;
            nix::unistd::sethostname(&name)?;
            Ok(())
        })?
        .join()
        .map_err(|_| io::Error::other("the sethostname thread panicked"))?
}

/// A pidfd for `pid`, or `None` when no such process exists (already reaped).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<Option<OwnedFd>> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new fd or -1; it does not
    // touch our memory.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ESRCH) {
            Ok(None)
        } else {
            Err(err)
        };
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Waits until the process behind `pidfd` has exited (the pidfd becomes readable), at most
/// `timeout`. Returns whether it exited.
pub(crate) fn wait_pidfd(pidfd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up so that a sub-millisecond remainder still waits instead of spinning.
        let ms = u32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u32::MAX);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends SIGKILL to the process behind `pidfd` (nothing when it has exited already).
pub(crate) fn pidfd_kill(pidfd: &OwnedFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes an fd, a signal number, a null siginfo pointer and a
    // flags word; it reads no memory of ours when the siginfo pointer is null.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// Creates a listening unix stream socket at `path`, mode 0600 from the start (the socket
/// inode's mode is set before `bind`, which creates the file with it), close-on-exec.
pub(crate) fn listen_unix(path: &Path) -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    fchmod(&fd, Mode::from_bits_truncate(0o600))?;
    let addr = UnixAddr::new(path)?;
    bind(fd.as_raw_fd(), &addr)?;
    listen(&fd, Backlog::new(128)?)?;
    Ok(fd)
}

/// Most fds [`pass_fds`] hands on.
pub(crate) const MAX_PASSED_FDS: usize = 4;

/// Arranges for `fds[i]` to be fd `3 + i` (without close-on-exec) in the child `cmd` spawns,
/// and for the child's RLIMIT_NOFILE to be `nofile` (soft and hard), so that runc can hand
/// them all to the container (`--preserve-fds fds.len()`): raising a hard limit needs
/// CAP_SYS_RESOURCE in the initial user namespace, which runc's init no longer has once it
/// is inside the sandbox's user namespace.
pub(crate) fn pass_fds(cmd: &mut Command, fds: &[RawFd], nofile: u64) -> io::Result<()> {
    if fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // A fixed array, copied into the closure: nothing is allocated after fork.
    let mut src = [-1 as RawFd; MAX_PASSED_FDS];
    src[..fds.len()].copy_from_slice(fds);
    let n = fds.len();
    let lim = libc::rlimit {
        rlim_cur: nofile,
        rlim_max: nofile,
    };
    // SAFETY: the closure runs between fork and exec, so it only makes async-signal-safe
    // system calls (fcntl, dup2, setrlimit) on values captured by copy; it allocates nothing
    // and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            const FIRST: RawFd = 3;
            // First move every source above the target range (close-on-exec copies), so that
            // no dup2 below overwrites a source that is still to be moved.
            let mut tmp = [-1 as RawFd; MAX_PASSED_FDS];
            for i in 0..n {
                tmp[i] = libc::fcntl(src[i], libc::F_DUPFD_CLOEXEC, FIRST + MAX_PASSED_FDS as RawFd);
                if tmp[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, &fd) in tmp.iter().enumerate().take(n) {
                // dup2 leaves the new descriptor without FD_CLOEXEC; the temporary copy is
                // closed by exec.
                if libc::dup2(fd, FIRST + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Best effort: when it fails, runc reports the rlimit error itself.
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    Ok(())
}

/// The host's open-file table size (`fs.file-max`), if readable.
pub(crate) fn file_max() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/file-max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The largest RLIMIT_NOFILE this process can hand to runc: the kernel's maximum
/// (`fs.nr_open`) with CAP_SYS_RESOURCE, else our own hard limit.
pub(crate) fn max_nofile() -> u64 {
    const CAP_SYS_RESOURCE: u32 = 24;
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024 * 1024);
    let can_raise = std::fs::read_to_string("/proc/self/status")
        .ok()
        .is_some_and(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
        });
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) if !can_raise => hard.min(nr_open),
        _ => nr_open,
    }
}

/// Whether `/sys/fs/cgroup` is a pure cgroup v2 (unified) hierarchy.
pub(crate) fn is_cgroup2_unified(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// `struct pidfd_info` of `<linux/pidfd.h>`, its first version (64 bytes, Linux 6.13+).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
}

/// `PIDFD_INFO_EXIT` (Linux 6.15+): the wait status of a process that has been reaped.
const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `PIDFD_GET_INFO` = `_IOWR(0xFF, 11, struct pidfd_info)` with the 64-byte first version.
const PIDFD_GET_INFO: u64 = (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as u64) << 16) | (0xFF << 8) | 11;

/// The wait status (as `waitpid` gives it) of the exited process behind `pidfd`, when the
/// kernel keeps it (Linux 6.15+, once the process is reaped; the process need not be our
/// child). `None` on older kernels or while it is not reaped yet.
pub(crate) fn pidfd_exit_status(pidfd: &OwnedFd) -> Option<i32> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..Default::default()
    };
    // SAFETY: PIDFD_GET_INFO writes at most the size encoded in the request (that of
    // `PidfdInfo`) into the struct we pass, which lives across the call.
    let ret = unsafe {
        libc::ioctl(
            pidfd.as_raw_fd(),
            PIDFD_GET_INFO as _,
            &mut info as *mut PidfdInfo,
        )
    };
    (ret == 0 && info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code)
}

/// The wait status of the exited, not yet reaped (zombie) process behind `pidfd`, from
/// `/proc/<pid>/stat` (its 52nd field). The pid is read from the pidfd before and after, so
/// the numbers are those of this process: a zombie's pid cannot be reused.
pub(crate) fn zombie_exit_status(pidfd: &OwnedFd) -> Option<i32> {
    let pid_of = || {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|p| *p > 0)
    };
    let pid = pid_of()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces and parentheses): 3 (state) onwards.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() != Some(&"Z") {
        return None;
    }
    let status = fields.get(52 - 3)?.parse::<i32>().ok()?;
    (pid_of() == Some(pid)).then_some(status)
}

/// A wait status in words: "killed by signal 9 (SIGKILL)", "exited with status 1".
pub(crate) fn describe_wait_status(status: i32) -> String {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("killed by signal {sig} ({})", s.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    }
}
