//! The sandbox's seccomp filter: an allowlist modelled on Docker's default profile
//! (moby `profiles/seccomp/default.json`) for a process holding Docker's default
//! capabilities, so without CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_BPF, ... .
//!
//! Everything not listed fails with EPERM. Notably denied: the keyring (`keyctl`, `add_key`,
//! `request_key`), `bpf`, kernel modules, `kexec_*`, `perf_event_open`, mount and namespace
//! calls (`mount`, `umount2`, `pivot_root`, `unshare`, `setns`, the new mount API), `clone`
//! with namespace flags, `open_by_handle_at`, `userfaultfd`, `reboot`, clock setting, `swapon`,
//! `iopl`/`ioperm`, `syslog`, `acct`, `quotactl`, `lookup_dcookie`, `vhangup`, `kcmp`,
//! `pidfd_getfd`, `process_madvise`, NUMA policy calls, and AF_VSOCK sockets.
//!
//! Also denied: calls that perform other calls' work out of the filter's sight. io_uring
//! (`io_uring_setup`, `io_uring_enter`, `io_uring_register`; Docker denies them since moby
//! 25): its `IORING_OP_SOCKET` creates sockets without a `socket(2)` call, AF_VSOCK ones
//! included. And the i386 multiplexer `socketcall`, reachable from any x86-64 process through
//! `int 0x80`: its arguments are in memory, where the filter cannot read the address family,
//! and libseccomp turns every rule on `socket` into an unconditional allow of
//! `socketcall(SYS_SOCKET)` on i386. It answers ENOSYS (like `clone3`): 32-bit libcs use the
//! direct socket calls, filtered like the 64-bit ones, on the kernels we support (>= 4.3).
//!
//! Architectures: x86-64 and i386 (32-bit programs keep working). Not x32: Debian's and this
//! project's kernels are built without the x32 ABI, and each architecture makes runc's
//! compile of the filter (libseccomp, at every container start) longer: without x32 a start
//! took about 5 ms less here. An x32 call meets the filter's bad-architecture action.
//!
//! This module only describes the filter; runc compiles and installs it.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall,
};

/// Syscalls allowed unconditionally. Docker's default list without io_uring and `socketcall`
/// (see above), plus `ptrace`, `process_vm_readv`/`writev` (safe inside a user+pid namespace
/// on kernels >= 4.8, as Docker does; the agent, PID 1, makes itself non-dumpable so they do
/// not reach it), `arch_prctl`/`modify_ldt` (x86) and `chroot` (we keep CAP_SYS_CHROOT).
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset", "chdir",
    "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list",
    "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday",
    "getuid", "getuid32", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link",
    "linkat", "listen", "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr",
    "lstat", "lstat64", "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret",
    "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap",
    "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2",
    "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev",
    "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom",
    "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename",
    "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg",
    "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack",
    "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketpair", "splice",
    "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
    "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname",
    "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice",
    "wait4", "waitid", "waitpid", "write", "writev",
    // Docker allows these from kernel 4.8 on: ptrace can no longer bypass seccomp there, and
    // the user and pid namespaces confine what can be traced.
    "ptrace", "process_vm_readv", "process_vm_writev",
    // x86 only.
    "arch_prctl", "modify_ldt",
    // CAP_SYS_CHROOT is in our capability set.
    "chroot",
];

/// `personality(2)` personas allowed (Docker's list): PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32, and 0xffffffff (query).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET: a `clone` with any
/// of them set is refused (same mask as Docker; CLONE_NEWTIME only exists for `unshare` and
/// `clone3`, both refused).
pub const CLONE_NAMESPACE_MASK: u64 = 0x7E02_0000;

/// `socket(2)` address family refused: AF_VSOCK, a channel to the host's hypervisor.
const AF_VSOCK: u64 = 40;

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn rule(names: &[&str], action: LinuxSeccompAction) -> LinuxSyscall {
    let mut s = LinuxSyscall::default();
    s.set_names(names.iter().map(|n| (*n).to_owned()).collect());
    s.set_action(action);
    s
}

/// Allows `name` when its argument `index` compares `op` to `value` (for MASKED_EQ:
/// `arg & value == value_two`).
fn allow_if(name: &str, index: usize, op: LinuxSeccompOperator, value: u64, value_two: u64) -> LinuxSyscall {
    let mut arg = LinuxSeccompArgBuilder::default().index(index).value(value).op(op);
    if op == LinuxSeccompOperator::ScmpCmpMaskedEq {
        arg = arg.value_two(value_two);
    }
    let arg = arg.build().expect(super::oci::BUILDER_INFALLIBLE);
    let mut s = rule(&[name], LinuxSeccompAction::ScmpActAllow);
    s.set_args(Some(vec![arg]));
    s
}

/// The filter for a sandbox's processes.
pub fn profile() -> LinuxSeccomp {
    let mut syscalls = vec![rule(ALLOWED, LinuxSeccompAction::ScmpActAllow)];
    syscalls.push(allow_if(
        "socket",
        0,
        LinuxSeccompOperator::ScmpCmpNe,
        AF_VSOCK,
        0,
    ));
    for &p in PERSONALITIES {
        syscalls.push(allow_if("personality", 0, LinuxSeccompOperator::ScmpCmpEq, p, 0));
    }
    // clone without namespace flags only: (flags & MASK) == 0.
    syscalls.push(allow_if(
        "clone",
        0,
        LinuxSeccompOperator::ScmpCmpMaskedEq,
        CLONE_NAMESPACE_MASK,
        0,
    ));
    // clone3 passes its flags in memory, out of seccomp's reach: answer ENOSYS so that libcs
    // fall back to clone, whose flags we can check.
    // socketcall (i386 only) hides the address family from the filter: ENOSYS too, so that
    // 32-bit libcs use the direct socket calls. (An EPERM rule would be dropped by runc, as it
    // equals the default action, and lose to libseccomp's allow derived from `socket`.)
    let mut enosys = rule(&["clone3", "socketcall"], LinuxSeccompAction::ScmpActErrno);
    enosys.set_errno_ret(Some(ENOSYS));
    syscalls.push(enosys);

    let mut seccomp = LinuxSeccomp::default();
    seccomp.set_default_action(LinuxSeccompAction::ScmpActErrno);
    seccomp.set_default_errno_ret(Some(EPERM));
    seccomp.set_architectures(Some(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86]));
    seccomp.set_syscalls(Some(syscalls));
    seccomp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How the filter treats a call to `name` with first argument `arg0`: Allow, Errno(n), or
    /// the default (EPERM). Mirrors libseccomp's semantics for the rules we generate.
    fn verdict(p: &LinuxSeccomp, name: &str, arg0: u64) -> Result<(), u32> {
        for s in p.syscalls().as_deref().unwrap_or_default() {
            if !s.names().iter().any(|n| n == name) {
                continue;
            }
            let matches = s.args().as_deref().unwrap_or_default().iter().all(|a| {
                assert_eq!(a.index(), 0, "test only models argument 0");
                match a.op() {
                    LinuxSeccompOperator::ScmpCmpEq => arg0 == a.value(),
                    LinuxSeccompOperator::ScmpCmpNe => arg0 != a.value(),
                    LinuxSeccompOperator::ScmpCmpMaskedEq => arg0 & a.value() == a.value_two().unwrap_or(0),
                    op => panic!("operator {op:?} not modelled"),
                }
            });
            if matches {
                return match s.action() {
                    LinuxSeccompAction::ScmpActAllow => Ok(()),
                    LinuxSeccompAction::ScmpActErrno => Err(s.errno_ret().unwrap_or(EPERM)),
                    a => panic!("action {a:?} not modelled"),
                };
            }
        }
        Err(p.default_errno_ret().unwrap_or(EPERM))
    }

    #[test]
    fn default_is_eperm_on_x86_family() {
        let p = profile();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), Some(EPERM));
        assert_eq!(
            p.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86][..])
        );
    }

    #[test]
    fn dangerous_syscalls_are_denied() {
        let p = profile();
        for name in [
            "keyctl",
            "add_key",
            "request_key",
            "bpf",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "perf_event_open",
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "open_by_handle_at",
            "userfaultfd",
            "reboot",
            "swapon",
            "swapoff",
            "iopl",
            "ioperm",
            "syslog",
            "acct",
            "settimeofday",
            "clock_settime",
            "sethostname",
            "setdomainname",
            "fsopen",
            "fsmount",
            "move_mount",
            "open_tree",
            "quotactl",
            "lookup_dcookie",
            "vhangup",
            "kcmp",
            "pidfd_getfd",
            "nfsservctl",
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "get_kernel_syms",
            "query_module",
            "create_module",
            "mbind",
            "set_mempolicy",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "name_not_a_syscall",
        ] {
            assert_eq!(verdict(&p, name, 0), Err(EPERM), "{name} must be denied");
        }
    }

    #[test]
    fn common_syscalls_are_allowed() {
        let p = profile();
        for name in [
            "read",
            "write",
            "openat",
            "close",
            "execve",
            "fork",
            "vfork",
            "wait4",
            "mmap",
            "futex",
            "epoll_wait",
            "ptrace",
            "chroot",
            "socketpair",
            "setuid",
            "getdents64",
            "statx",
            "kill",
            "prctl",
            "pidfd_open",
        ] {
            assert_eq!(verdict(&p, name, 0), Ok(()), "{name} must be allowed");
        }
    }

    #[test]
    fn clone_is_allowed_without_namespace_flags_only() {
        let p = profile();
        // What glibc's fork and pthread_create pass.
        let fork_flags = libc::CLONE_CHILD_CLEARTID | libc::CLONE_CHILD_SETTID | libc::SIGCHLD;
        let thread_flags = libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID;
        for flags in [fork_flags, thread_flags] {
            assert_eq!(verdict(&p, "clone", flags as u64), Ok(()));
        }
        for ns in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWCGROUP,
        ] {
            assert_eq!(
                verdict(&p, "clone", (fork_flags | ns) as u64),
                Err(EPERM),
                "clone with {ns:#x}"
            );
        }
        assert_eq!(verdict(&p, "clone3", 0), Err(ENOSYS));
    }

    #[test]
    fn personality_and_socket_are_argument_checked() {
        let p = profile();
        assert_eq!(verdict(&p, "personality", 0), Ok(()));
        assert_eq!(verdict(&p, "personality", 0xffff_ffff), Ok(()));
        // ADDR_NO_RANDOMIZE would turn off ASLR.
        assert_eq!(verdict(&p, "personality", 0x0040000), Err(EPERM));
        assert_eq!(verdict(&p, "socket", libc::AF_INET as u64), Ok(()));
        assert_eq!(verdict(&p, "socket", libc::AF_UNIX as u64), Ok(()));
        assert_eq!(verdict(&p, "socket", AF_VSOCK), Err(EPERM));
        // socketcall does not exist (SYS_SOCKET = 1 would hide the family).
        for call in [1, 3, 9] {
            assert_eq!(verdict(&p, "socketcall", call), Err(ENOSYS), "socketcall {call}");
        }
    }

    #[test]
    fn serializes_like_an_oci_profile() {
        let json = serde_json::to_value(profile()).expect("serialize");
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], 1);
        let clone = json["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .find(|s| s["names"][0] == "clone")
            .expect("clone rule");
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], CLONE_NAMESPACE_MASK);
        assert_eq!(clone["args"][0]["valueTwo"], 0);
    }
}
