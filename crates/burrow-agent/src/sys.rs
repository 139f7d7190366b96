//! Every raw syscall and ioctl the agent makes: ptys, terminal size, sessions, credentials,
//! `waitpid`, `kill`, `sync`, adopting the listening socket handed over by the host, and the
//! network ioctls of a VM guest's init (address, link up, default route).
//!
//! This is the only module allowed to contain `unsafe`; everything above it is safe code.
//! It owns no state and makes no policy decisions (who to kill, when to reap).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::socket::{getsockopt, sockopt};
use nix::sys::stat::{Mode, SFlag, fstat};

/// How a process ended, as reported by `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// Reaps one terminated child without blocking.
///
/// `Ok(None)` means no child has terminated yet; `ECHILD` (no children at all) is also
/// reported as `Ok(None)`.
pub fn reap_one() -> io::Result<Option<(i32, ExitStatus)>> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid, writable c_int for the duration of the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            let exit = if libc::WIFSIGNALED(status) {
                ExitStatus::Signaled(libc::WTERMSIG(status))
            } else {
                ExitStatus::Exited(libc::WEXITSTATUS(status))
            };
            return Ok(Some((pid, exit)));
        }
        if pid == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return Ok(None),
            _ => return Err(err),
        }
    }
}

fn kill_raw(target: libc::pid_t, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(target, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `signal` to every process of process group `pgid`.
pub fn kill_group(pgid: i32, signal: i32) -> io::Result<()> {
    if pgid <= 1 {
        // -0 and -1 would mean "our own group" and "every process": never what a caller wants.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    kill_raw(-pgid, signal)
}

/// Whether process group `pgid` still has at least one member (zombies included).
pub fn group_alive(pgid: i32) -> bool {
    !matches!(kill_group(pgid, 0), Err(e) if e.raw_os_error() == Some(libc::ESRCH))
}

/// Sends `signal` to every process this process may signal except itself (`kill(-1)`).
///
/// Only sensible when the agent is PID 1 of its own pid namespace (or a VM's init).
pub fn kill_all(signal: i32) -> io::Result<()> {
    kill_raw(-1, signal)
}

/// Whether any process other than ourselves is left to signal (see [`kill_all`]).
pub fn any_other_process() -> bool {
    if matches!(kill_all(0), Err(e) if e.raw_os_error() == Some(libc::ESRCH)) {
        return false;
    }
    // In a VM the agent shares its pid namespace with the guest kernel's threads, which
    // `kill(-1, 0)` counts too: look for a process that is not one.
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    let me = std::process::id();
    entries.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            return false;
        };
        pid != me && pid != 1 && !is_kernel_thread(pid)
    })
}

/// Whether `pid` is a kernel thread (`PF_KTHREAD` in its flags); a process that is gone
/// counts as one (nothing to wait for).
fn is_kernel_thread(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // Fields after the command (which may hold spaces): state is the 3rd, flags the 9th.
    let flags = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6))
        .and_then(|f| f.parse::<u64>().ok());
    flags.is_some_and(|f| f & PF_KTHREAD != 0)
}

/// Whether `signal` is a signal number the kernel accepts (0 excluded).
pub fn valid_signal(signal: i32) -> bool {
    (1..=libc::SIGRTMAX()).contains(&signal)
}

/// Grows the ext4 filesystem mounted at `dir` to `blocks` blocks of its block size, online
/// (`EXT4_IOC_RESIZE_FS`). Asking for its current size is a no-op.
pub fn ext4_resize(dir: &std::path::Path, blocks: u64) -> io::Result<()> {
    /// `_IOW('f', 16, __u64)`.
    const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;
    let f = std::fs::File::open(dir)?;
    // SAFETY: the ioctl reads one u64 from the pointer, which points at a live local.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), EXT4_IOC_RESIZE_FS as _, &blocks as *const u64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mixes `bytes` into the kernel's random pool and reseeds the generator from it at once
/// (`RNDRESEEDCRNG`), so output after this differs from that of any other copy of this
/// memory (a forked VM).
pub fn reseed_random(bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    /// `_IO('R', 0x07)`.
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    let mut f = std::fs::OpenOptions::new().write(true).open("/dev/urandom")?;
    f.write_all(bytes)?;
    // SAFETY: RNDRESEEDCRNG takes no argument and touches no memory of ours.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Flushes all filesystems.
pub fn sync() {
    nix::unistd::sync();
}

/// Makes orphaned descendants re-parent to us (so we reap them) when we are not PID 1.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The fds the agent was handed and keeps for its whole life (its listening socket, the
/// payload cgroup's `cgroup.procs`): a re-exec ([`reexec`]) hands them on, by number.
static KEPT_FDS: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());

/// Whether the agent serves on a socket it was handed (a container's agent; a VM's serves
/// on its virtio port and never re-executes).
pub fn serves_inherited_socket() -> bool {
    !KEPT_FDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_empty()
}

fn keep_fd(fd: RawFd) {
    KEPT_FDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(fd);
}

/// Replaces the agent with a fresh copy of its binary, same arguments, same environment
/// but HOSTNAME (when `hostname` is not empty), handing on only the fds it was started
/// with (stdio, [`KEPT_FDS`]): every other fd is close-on-exec. Returns only on failure.
pub fn reexec(hostname: &str) -> io::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    for &fd in KEPT_FDS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        // SAFETY: F_SETFD on an fd this process owns for its whole life; flags only.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return io::Error::last_os_error();
        }
    }
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let build = || -> io::Result<(Vec<CString>, Vec<CString>)> {
        let argv = std::env::args_os()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os() {
            if k == "HOSTNAME" && !hostname.is_empty() {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(cstr(&kv)?);
        }
        if !hostname.is_empty() {
            envp.push(cstr(format!("HOSTNAME={hostname}").as_bytes())?);
        }
        Ok((argv, envp))
    };
    let (argv, envp) = match build() {
        Ok(v) => v,
        Err(e) => return e,
    };
    let exe = c"/proc/self/exe";
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: every pointer is to a NUL-terminated string that lives until the call, both
    // arrays end with NULL; execve returns only on failure.
    unsafe { libc::execve(exe.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    io::Error::last_os_error()
}

/// Takes ownership of an inherited, already listening unix socket (`--listen-fd`).
///
/// Verifies it really is a listening socket and marks it close-on-exec so that no
/// sandbox process inherits the agent channel.
pub fn adopt_listener(fd: RawFd) -> io::Result<std::os::unix::net::UnixListener> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: only borrowed for the checks below; fcntl(F_GETFD) proves it is open first.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD)?;
    let st = fstat(borrowed)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a socket"));
    }
    if !getsockopt(&borrowed, sockopt::AcceptConn)? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket is not listening",
        ));
    }
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    // SAFETY: the fd is open (checked above), was handed to us by our parent for our
    // exclusive use, and nothing else in this process owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    keep_fd(fd);
    let listener = std::os::unix::net::UnixListener::from(owned);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Takes ownership of an inherited fd that must be an open regular file (`--cgroup-fd`: a
/// cgroup's `cgroup.procs`, opened for writing by the host), close-on-exec.
pub fn adopt_file_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd <= 2 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: only borrowed for the checks below; fcntl(F_GETFD) proves it is open first.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    fcntl(borrowed, FcntlArg::F_GETFD)?;
    let st = fstat(borrowed)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file"));
    }
    let mode = OFlag::from_bits_truncate(fcntl(borrowed, FcntlArg::F_GETFL)?) & OFlag::O_ACCMODE;
    if mode == OFlag::O_RDONLY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not open for writing",
        ));
    }
    fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    keep_fd(fd);
    // SAFETY: the fd is open (checked above), was handed to us by our parent for our
    // exclusive use, and nothing else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Puts a file descriptor in non-blocking mode (for tokio's `AsyncFd`).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Reads up to `max` bytes from `fd` into a new vector, without zero-filling it first
/// (output is forwarded at hundreds of MB/s; a memset per chunk is measurable).
pub fn read_chunk(fd: BorrowedFd<'_>, max: usize) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::with_capacity(max);
    // SAFETY: the pointer and length describe the vector's allocated, uninitialised spare
    // capacity; read(2) writes at most `max` bytes there and we only expose what it wrote.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), max) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // SAFETY: read(2) initialised exactly `n <= max` bytes at the start of the buffer.
    unsafe { buf.set_len(n) };
    Ok(buf)
}

/// Grows a pipe's kernel buffer so a fast writer is not stopped at every 64 KiB while the
/// agent forwards the previous chunk. Best effort: the size is only a throughput hint.
pub fn grow_pipe(fd: BorrowedFd<'_>, bytes: i32) {
    let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(bytes));
}

/// Bytes that can be read from `fd` right now without blocking (`FIONREAD`).
pub fn readable_bytes(fd: BorrowedFd<'_>) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid and writable.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

/// A new pseudo-terminal pair, both ends close-on-exec.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a pty pair and sets its initial window size.
pub fn open_pty(cols: u16, rows: u16) -> io::Result<Pty> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let master = OwnedFd::from(master);
    set_window_size(master.as_fd(), cols, rows)?;
    Ok(Pty { master, slave })
}

/// Sets a terminal's window size (`TIOCSWINSZ`); the kernel sends SIGWINCH to its foreground group.
pub fn set_window_size(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points to a live value.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The terminal's current end-of-file character (VEOF, normally ^D).
pub fn eof_char(fd: BorrowedFd<'_>) -> u8 {
    nix::sys::termios::tcgetattr(fd)
        .map(|t| t.control_chars[libc::VEOF])
        .unwrap_or(0x04)
}

/// Credentials a child switches to before exec.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Arranges for the child of `cmd` to start its own session (so it leads its own process
/// group), optionally take its stdin as controlling terminal, and drop to `creds`.
///
/// Runs in the forked child after std has set up stdio and the working directory.
///
/// With `cgroup_procs` (a cgroup's `cgroup.procs`, open for writing) the child first moves
/// itself into that cgroup, before it drops privileges or runs anything; if it cannot, the
/// spawn fails rather than run the process outside.
pub fn configure_child(
    cmd: &mut Command,
    controlling_tty: bool,
    creds: Option<Credentials>,
    cgroup_procs: Option<RawFd>,
) {
    let setup = move || -> io::Result<()> {
        // Only async-signal-safe calls below: this runs between fork and exec.
        if let Some(fd) = cgroup_procs {
            // "0" is the writing process itself.
            // SAFETY: write(2) of a static 1-byte buffer to an fd the agent keeps open for
            // its whole life; it touches no other memory.
            if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        // The agent runs with oom_score_adj -1000 so a memory hog never takes it down; the
        // processes it starts go back to 0 (raising it needs no privilege). Best effort.
        // SAFETY: a static NUL-terminated path, a 1-byte buffer that outlives the calls, and
        // the fd is closed by us; open/write/close are async-signal-safe.
        unsafe {
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
        }
        // SAFETY: setsid takes no arguments.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: TIOCSCTTY on fd 0 (the pty slave, dup'ed there by std) takes an int argument.
        if controlling_tty && unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(c) = &creds {
            // SAFETY: the pointer and length describe `c.groups`, which outlives the call;
            // gid_t is u32 on Linux.
            if unsafe { libc::setgroups(c.groups.len(), c.groups.as_ptr()) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: setgid takes a plain integer.
            if unsafe { libc::setgid(c.gid) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: setuid takes a plain integer.
            if unsafe { libc::setuid(c.uid) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe syscalls and does not allocate
    // (the groups vector was built before fork), as required between fork and exec.
    unsafe {
        cmd.pre_exec(setup);
    }
}

/// Effective uid of the agent.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Registers an owned fd (already non-blocking) with tokio's reactor.
pub fn async_fd(fd: OwnedFd, interest: tokio::io::Interest) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open, owned exclusively, and always returns the same raw fd
    // until it is dropped together with the `AsyncFd`.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }.map_err(io::Error::from)
}

/// Marks every inherited fd above stderr close-on-exec, so nothing the agent was started
/// with (other than stdio) reaches sandbox processes. Call before creating any fd.
pub fn cloexec_inherited_fds() {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only changes fd flags; it reads no
    // memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11: walk /proc/self/fd instead (best effort; no /proc, nothing to do).
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a number that may or may not be open is harmless (EBADF at worst).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// `struct rtentry` of `<net/route.h>` (libc has it for musl only; the layout is the
/// kernel's and the same for both C libraries).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_in(addr: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain integers; this is the
    // reinterpretation the socket API is designed around.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn inet_socket() -> io::Result<OwnedFd> {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: ifreq is plain data (integers, arrays, a union of such); all zeroes is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn ioctl_ifreq(sock: &OwnedFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every request passed here (SIOC[GS]IF*) reads or writes one `struct ifreq`,
    // which `req` points to and which lives for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Brings network interface `name` up, first giving it `addr`/`prefix` when asked.
pub fn configure_interface(name: &str, addr: Option<(std::net::Ipv4Addr, u8)>) -> io::Result<()> {
    let sock = inet_socket()?;
    if let Some((ip, prefix)) = addr {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr_in(ip);
        ioctl_ifreq(&sock, libc::SIOCSIFADDR as _, &mut req)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_netmask = sockaddr_in(std::net::Ipv4Addr::from(mask));
        ioctl_ifreq(&sock, libc::SIOCSIFNETMASK as _, &mut req)?;
    }
    let mut req = ifreq(name)?;
    ioctl_ifreq(&sock, libc::SIOCGIFFLAGS as _, &mut req)?;
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl_ifreq(&sock, libc::SIOCSIFFLAGS as _, &mut req)
}

/// Adds the IPv4 default route via `gateway`.
pub fn add_default_route(gateway: std::net::Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    let any = sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED);
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: any,
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: any,
        rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads one `struct rtentry`, which `rt` is (same layout) and which
    // lives for the duration of the call; its pointers are null (no device name).
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT as _, &mut rt as *mut RtEntry) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
