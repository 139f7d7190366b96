//! What a sandbox cannot do, checked from inside a real sandbox (docs/threat-model.md).

use burrow_api::{CreateSandbox, ExecRequest, ExecResult, SandboxName};
use burrow_testkit::burrow_client::Client;
use burrow_testkit::fixtures::sh;
use burrow_testkit::{shared, unique_name};

async fn make(c: &Client, f: impl FnOnce(&mut CreateSandbox)) -> burrow_api::Sandbox {
    let mut req = CreateSandbox {
        name: SandboxName::parse(&unique_name("iso")).unwrap(),
        ..Default::default()
    };
    f(&mut req);
    c.create_sandbox(&req).await.expect("create")
}

fn host_uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn agent_host_pid(data_dir: &std::path::Path, id: &str) -> u32 {
    let out = std::process::Command::new("runc")
        .args(["--root", data_dir.join("runc").to_str().unwrap(), "state", id])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

#[tokio::test(flavor = "multi_thread")]
async fn root_inside_is_unprivileged_outside() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |_| {}).await;
    let r = sh(&c, &sb.name, "id -u; cat /proc/self/uid_map").await;
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("0"));
    let map: Vec<u64> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(map[0], 0);
    assert!(map[1] >= 100_000, "root maps to host uid {}", map[1]);
    let pid = agent_host_pid(&d.data_dir, &sb.id);
    assert_eq!(
        host_uid_of(pid),
        map[1] as u32,
        "the agent runs as the mapped uid on the host"
    );
    assert_ne!(host_uid_of(pid), 0);
    c.delete_sandbox(&sb.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn host_processes_and_files_are_invisible() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |_| {}).await;
    // PID 1 is the agent; the daemon's pid does not exist in here.
    let r = sh(&c, &sb.name, "tr '\\0' ' ' < /proc/1/cmdline").await;
    assert!(r.stdout.contains("/.burrow/agent"), "{}", r.stdout);
    let r = sh(&c, &sb.name, "ls /proc | grep -E '^[0-9]+$' | wc -l").await;
    let n: u32 = r.stdout.trim().parse().unwrap();
    assert!(n < 10, "sandbox sees {n} processes");
    let daemon_pid = d.pid();
    let r = sh(
        &c,
        &sb.name,
        &format!("test -e /proc/{daemon_pid}/cmdline && cat /proc/{daemon_pid}/cmdline"),
    )
    .await;
    assert!(!r.stdout.contains("burrowd"), "daemon visible: {}", r.stdout);
    // The daemon's data dir and the host's files are not reachable.
    let marker = d.data_dir.join("admin.token");
    let r = sh(&c, &sb.name, &format!("cat {}", marker.display())).await;
    assert_ne!(r.exit_code, 0, "the daemon's data dir is reachable: {}", r.stdout);
    assert!(!r.stdout.contains(&d.token()), "admin token readable from inside");
    let r = sh(&c, &sb.name, "ls -a /var/tmp").await;
    assert!(
        !r.stdout.contains("burrow-test-"),
        "host /var/tmp visible: {}",
        r.stdout
    );
    // (/proc/1/root itself is closed: the agent is not dumpable.)
    let r = sh(&c, &sb.name, "cat /proc/self/root/etc/hostname").await;
    assert_eq!(r.stdout.lines().next(), Some(sb.name.as_str()));
    // The host's btrfs filesystems (UUIDs, every subvolume's quota use: the other sandboxes'
    // disk use) are masked. Control: the host has them, and /sys/fs is there inside.
    assert!(
        std::fs::read_dir("/sys/fs/btrfs").unwrap().count() > 1,
        "the host has btrfs filesystems"
    );
    let r = sh(
        &c,
        &sb.name,
        "ls -A /sys/fs/btrfs | wc -l; ls /sys/fs | grep -c cgroup",
    )
    .await;
    assert_eq!(r.stdout, "0\n1\n", "{r:?}");
    c.delete_sandbox(&sb.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_interfaces_are_not_writable() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |_| {}).await;
    // Each probe must fail for the reason named (a typo, a missing tool or a wrong syscall
    // number fails differently), and the same form of probe succeeds on what is allowed.
    const REFUSED: &[&str] = &[
        "Read-only file system",
        "Permission denied",
        "permission denied",
        "Operation not permitted",
        "Directory nonexistent",
        "must be root",
    ];
    let syscall = |nr: &str, args: &str| {
        format!(
            "python3 -c 'import ctypes; l=ctypes.CDLL(None, use_errno=True); r=l.syscall({nr}{args}); print(\"ok\" if r >= 0 else \"errno=%d\" % ctypes.get_errno())'"
        )
    };
    for (what, script, control) in [
        (
            "sysrq",
            "echo h > /proc/sysrq-trigger".to_owned(),
            "echo h > /tmp/sysrq".to_owned(),
        ),
        (
            "sys/kernel",
            "echo 1 > /sys/kernel/profiling".to_owned(),
            "echo 1 > /tmp/profiling".to_owned(),
        ),
        (
            "sys/kernel (new file)",
            "touch /sys/kernel/x".to_owned(),
            "touch /tmp/x".to_owned(),
        ),
        (
            "proc/sys",
            "echo 1 > /proc/sys/kernel/sysrq".to_owned(),
            "cat /proc/uptime".to_owned(),
        ),
        (
            "mknod block",
            "mknod /tmp/sda b 8 0".to_owned(),
            "mknod /tmp/fifo p".to_owned(),
        ),
        (
            "mount",
            "mount -t tmpfs none /mnt".to_owned(),
            "mount | grep -q ' / '".to_owned(),
        ),
        (
            "unshare",
            "unshare -U true".to_owned(),
            "unshare --help >/dev/null".to_owned(),
        ),
        (
            "kernel modules",
            "echo > /proc/sys/kernel/modprobe".to_owned(),
            "echo > /tmp/modprobe".to_owned(),
        ),
        ("hostname", "hostname evil".to_owned(), "hostname".to_owned()),
    ] {
        let r = sh(&c, &sb.name, &script).await;
        assert_ne!(r.exit_code, 0, "{what} succeeded inside the sandbox: {r:?}");
        assert!(
            REFUSED.iter().any(|m| r.stderr.contains(m)),
            "{what} failed for another reason than a refusal: {r:?}"
        );
        let ok = sh(&c, &sb.name, &control).await;
        assert_eq!(ok.exit_code, 0, "control of {what} ({control}): {ok:?}");
    }
    // Syscalls the seccomp profile refuses: EPERM exactly. Control: the same probe on getpid.
    for (what, nr, args) in [
        ("keyring (add_key)", "250", ", b\"user\", b\"k\", b\"v\", 1, -4"),
        ("bpf", "321", ", 0, 0, 0"),
    ] {
        let r = sh(&c, &sb.name, &syscall(nr, args)).await;
        assert_eq!(r.stdout.trim(), "errno=1", "{what}: {r:?}");
    }
    let r = sh(&c, &sb.name, &syscall("39", "")).await;
    assert_eq!(r.stdout.trim(), "ok", "control (getpid): {r:?}");
    let r = sh(&c, &sb.name, "ls /dev").await;
    for dev in ["sda", "vda", "mem", "kmsg", "kvm"] {
        assert!(
            !r.stdout.lines().any(|l| l == dev),
            "/dev/{dev} exists: {}",
            r.stdout
        );
    }
    c.delete_sandbox(&sb.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn pids_and_memory_limits_contain_the_sandbox() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |r| {
        r.pids = Some(64);
        r.memory_mb = Some(128);
    })
    .await;
    // A fork bomb (bounded: 200 sleepers, from one process that cleans up after itself)
    // hits the pids limit.
    let bomb = r#"
import subprocess
ps = []
try:
    for i in range(200):
        ps.append(subprocess.Popen(["sleep", "30"]))
except OSError as e:
    print("limited", len(ps), e.errno)
for p in ps:
    p.kill()
for p in ps:
    p.wait()
"#;
    let r = sh(&c, &sb.name, &format!("python3 -c '{bomb}'")).await;
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    assert_eq!(
        words.first(),
        Some(&"limited"),
        "the pids limit did not stop the bomb: {r:?}"
    );
    let n: u32 = words[1].parse().unwrap();
    assert!(n < 64, "{n} children under a limit of 64 pids");
    assert_eq!(words[2], "11", "fork fails with EAGAIN");
    // A memory hog is OOM-killed inside (by the kernel, signal 9); the agent survives.
    let r = sh(
        &c,
        &sb.name,
        "exec python3 -c 'x = bytearray(512 << 20); print(len(x))'",
    )
    .await;
    assert_eq!(
        r.signal.as_deref(),
        Some("KILL"),
        "512 MiB under a 128 MiB limit: {r:?}"
    );
    assert_eq!(r.stdout, "");
    // It was the kernel's OOM killer, and the sandbox says so.
    let usage = c
        .get_sandbox(&sb.name)
        .await
        .unwrap()
        .usage
        .expect("usage of a running sandbox");
    assert!(usage.oom_kills >= 1, "{usage:?}");
    assert!(usage.pids >= 1 && usage.memory_bytes > 0, "{usage:?}");
    let r = sh(&c, &sb.name, "echo still here; cat /proc/self/oom_score_adj").await;
    // What the agent starts is never shielded from the OOM killer (the agent itself is, where
    // the host has CAP_SYS_RESOURCE).
    assert_eq!(r.stdout, "still here\n0\n", "{r:?}");
    // The host stays responsive.
    assert!(c.health().await.is_ok());
    c.delete_sandbox(&sb.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_cannot_see_each_other() {
    let d = shared();
    let c = d.client();
    let a = make(&c, |_| {}).await;
    let b = make(&c, |_| {}).await;
    sh(
        &c,
        &a.name,
        "echo secret > /root/a-only; setsid sleep 300 >/dev/null 2>&1 < /dev/null &",
    )
    .await;
    let r = sh(&c, &b.name, "cat /root/a-only 2>&1; ps -e -o comm --no-headers").await;
    assert!(!r.stdout.contains("secret"));
    assert!(!r.stdout.contains("sleep"), "b sees a's processes: {}", r.stdout);
    // Its own network: loopback and its veth only (no other sandbox's device), and the
    // host's network devices are masked in sysfs.
    let r = sh(
        &c,
        &b.name,
        "ip -o link | awk -F': ' '{print $2}' | cut -d@ -f1 | sort | tr '\\n' ' '",
    )
    .await;
    assert_eq!(r.stdout.trim(), "eth0 lo", "{}", r.stdout);
    let r = sh(&c, &b.name, "ls /sys/class/net | wc -l").await;
    assert_eq!(r.stdout.trim(), "0", "{}", r.stdout);
    c.delete_sandbox(&a.name).await.unwrap();
    c.delete_sandbox(&b.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_limit_stops_writes_inside_only() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |r| r.disk_gb = Some(1)).await;
    // The limit counts what the sandbox writes itself: 1.2 GiB must fail with EDQUOT inside.
    let r = c
        .exec(
            &sb.name,
            &ExecRequest {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "head -c 1200M /dev/zero > /root/big && sync; echo rc=$?".into(),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        r.stderr.contains("Disk quota exceeded") || r.stdout.contains("rc=1"),
        "{r:?}"
    );
    // The agent and the sandbox still work; removing the file frees the space.
    let r = sh(
        &c,
        &sb.name,
        "rm -f /root/big; sync; echo ok > /root/small && cat /root/small",
    )
    .await;
    assert_eq!(r.stdout, "ok\n");
    assert!(c.health().await.is_ok());
    c.delete_sandbox(&sb.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_past_the_disk_limit_is_507_and_leaves_nothing() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |r| r.disk_gb = Some(1)).await;
    let big = vec![7u8; 1100 << 20];
    let e = c
        .request_bytes(
            burrow_testkit::burrow_client::Method::PUT,
            &format!("/v1/sandboxes/{}/files?path=/root/upload", sb.name),
            Some("application/octet-stream"),
            big.into(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(507), "{e}");
    assert!(e.to_string().contains("disk"), "{e}");
    let r = sh(&c, &sb.name, "ls -a /root | grep -c upload || true").await;
    assert_eq!(r.stdout.trim(), "0", "a partial upload was left behind");
    c.delete_sandbox(&sb.name).await.unwrap();
}

// ----- The agent and the kernel boundary: probes that a seccomp or agent change must not
// reopen. Each runs the same Python probe inside a sandbox and, as the positive control, where
// the thing is allowed (on the host, or on a process the probe may trace).

/// Runs Python `code` with `args` inside the sandbox.
async fn py(c: &Client, name: &str, code: &str, args: &str) -> ExecResult {
    sh(c, name, &format!("python3 - {args} <<'PY'\n{code}\nPY\n")).await
}

/// Runs Python `code` with `args` on the host, as the test (root, no seccomp filter).
fn host_py(code: &str, args: &[&str]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg("-")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 on the host");
    child.stdin.take().unwrap().write_all(code.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "host probe failed: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// What a process may do to process `pid` (argv): ptrace it (ATTACH, SEIZE), open its memory,
/// read its environment, read its memory with process_vm_readv, follow its descriptors
/// (`/proc/PID/fd/2`, the agent's log).
const TRACE_PROBE: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(IOVec), ctypes.c_ulong,
                                  ctypes.POINTER(IOVec), ctypes.c_ulong, ctypes.c_ulong]
libc.process_vm_readv.restype = ctypes.c_ssize_t
WALL = 0x40000000

def name(e):
    return errno.errorcode.get(e, str(e))

def ptrace(req, pid):
    ctypes.set_errno(0)
    return "ok" if libc.ptrace(req, pid, None, None) == 0 else name(ctypes.get_errno())

def attach(pid):
    r = ptrace(16, pid)                 # PTRACE_ATTACH
    if r == "ok":
        os.waitpid(pid, WALL)
        ptrace(17, pid)                 # PTRACE_DETACH
    return r

def seize(pid):
    r = ptrace(0x4206, pid)             # PTRACE_SEIZE
    if r == "ok":
        ptrace(0x4207, pid)             # PTRACE_INTERRUPT
        os.waitpid(pid, WALL)
        ptrace(17, pid)
    return r

def try_(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return name(e.errno)

def vm_read(pid):
    addr = 0x400000
    try:
        addr = int(open("/proc/%d/maps" % pid).readline().split("-")[0], 16)
    except OSError:
        pass
    buf = ctypes.create_string_buffer(8)
    local, remote = IOVec(ctypes.addressof(buf), 8), IOVec(addr, 8)
    ctypes.set_errno(0)
    n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    return "ok" if n == 8 else name(ctypes.get_errno())

def probe(pid):
    return " ".join([
        "attach=" + attach(pid),
        "seize=" + seize(pid),
        "mem=" + try_(lambda: open("/proc/%d/mem" % pid, "rb").close()),
        "environ=" + try_(lambda: open("/proc/%d/environ" % pid, "rb").read()),
        "vm_read=" + vm_read(pid),
        "fd=" + try_(lambda: os.readlink("/proc/%d/fd/2" % pid)),
    ])

import subprocess
child = subprocess.Popen(["sleep", "300"])
for arg in sys.argv[1:]:
    print(arg, probe(int(arg)))
print("child", probe(child.pid))
child.kill()
child.wait()
"#;

/// The sandbox's code cannot trace its init (the agent) or read its memory, environment or
/// descriptors: the agent is not dumpable. Debuggers still work on the user's own processes:
/// the same probe succeeds on a child of the probe and on an unrelated process of the sandbox.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_cannot_be_traced_or_read_from_inside() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |_| {}).await;
    let r = sh(
        &c,
        &sb.name,
        "setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $!",
    )
    .await;
    let sibling = r.stdout.trim().to_owned();
    assert!(sibling.parse::<u32>().is_ok(), "{r:?}");
    let r = py(&c, &sb.name, TRACE_PROBE, &format!("1 {sibling}")).await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "1 attach=EPERM seize=EPERM mem=EACCES environ=EACCES vm_read=EPERM fd=EACCES",
            &format!("{sibling} attach=ok seize=ok mem=ok environ=ok vm_read=ok fd=ok"),
            "child attach=ok seize=ok mem=ok environ=ok vm_read=ok fd=ok",
        ],
        "{r:?}"
    );
    // Still there and serving.
    assert_eq!(sh(&c, &sb.name, "echo alive").await.stdout, "alive\n");
    c.delete_sandbox(&sb.name).await.unwrap();
}

/// Injects `write(2, buf, n)` calls into process `pid` (argv) through ptrace until `total`
/// (argv) bytes are written, from the largest readable mapping of the process; prints
/// `wrote N` or `attach ERRNO`. The agent's stderr is its host-side log.
const INJECT_WRITE: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
NAMES = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
         "fs_base gs_base ds es fs gs").split()
class Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in NAMES]
pid, total = int(sys.argv[1]), int(sys.argv[2])
WALL = 0x40000000

def pt(req, addr=0, data=0):
    ctypes.set_errno(0)
    r = libc.ptrace(req, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if r == -1 and ctypes.get_errno():
        raise OSError(ctypes.get_errno(), "ptrace %d" % req)
    return r

try:
    pt(16)                                            # PTRACE_ATTACH
except OSError as e:
    print("attach", errno.errorcode[e.errno])
    sys.exit(0)
os.waitpid(pid, WALL)
saved = Regs()
pt(12, 0, ctypes.addressof(saved))                    # PTRACE_GETREGS
start = end = 0
for line in open("/proc/%d/maps" % pid):
    f = line.split()
    a, b = (int(x, 16) for x in f[0].split("-"))
    if f[1].startswith("r") and not line.rstrip().endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")) \
            and b - a > end - start:
        start, end = a, b
chunk = min(end - start, 16 << 20)
word = pt(1, saved.rip) & 0xffffffffffffffff           # PTRACE_PEEKTEXT
pt(4, saved.rip, (word & ~0xffff) | 0x050f)            # POKETEXT: `syscall`
written = 0
while written < total:
    r = Regs.from_buffer_copy(saved)
    r.rax, r.orig_rax, r.rdi, r.rsi, r.rdx = 1, 2**64 - 1, 2, start, min(chunk, total - written)
    pt(13, 0, ctypes.addressof(r))                     # PTRACE_SETREGS
    pt(9)                                              # PTRACE_SINGLESTEP
    os.waitpid(pid, WALL)
    pt(12, 0, ctypes.addressof(r))
    n = ctypes.c_longlong(r.rax).value
    if n <= 0:
        break
    written += n
pt(4, saved.rip, word)
pt(13, 0, ctypes.addressof(saved))
pt(17)                                                 # PTRACE_DETACH
print("wrote", written)
"#;

/// Bytes of agent output kept on the host: `agent.log` and its rotated `agent.log.1`.
fn agent_log_bytes(run_dir: &std::path::Path) -> u64 {
    ["agent.log", "agent.log.1"]
        .iter()
        .map(|f| std::fs::metadata(run_dir.join(f)).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// The agent's output cap (burrow-engine's `agent_log::MAX_BYTES`).
const AGENT_LOG_CAP: u64 = 1 << 20;

/// The attack of issue 8: root in a sandbox injects `write(2, …)` into PID 1 to grow the
/// agent's host-side log past every quota. The injection is refused (the agent is not
/// dumpable) and the host keeps at most the cap of agent output. Positive control: the same
/// injector, on the host, against a process whose stderr is a file, writes what it is told.
#[tokio::test(flavor = "multi_thread")]
async fn code_inside_cannot_grow_the_agents_host_log() {
    let d = shared();
    let c = d.client();

    // Control: the injector works where ptrace is allowed.
    let tmp = tempfile::tempdir().unwrap();
    let target_log = tmp.path().join("stderr");
    let mut target = std::process::Command::new("sleep")
        .arg("600")
        .stderr(std::fs::File::create(&target_log).unwrap())
        .spawn()
        .unwrap();
    let out = host_py(
        INJECT_WRITE,
        &[&target.id().to_string(), &(4u64 << 20).to_string()],
    );
    let _ = target.kill();
    let _ = target.wait();
    assert_eq!(out.trim(), format!("wrote {}", 4u64 << 20));
    assert_eq!(std::fs::metadata(&target_log).unwrap().len(), 4 << 20);

    let sb = make(&c, |_| {}).await;
    let run_dir = d.data_dir.join("run").join(&sb.id);
    assert!(
        run_dir.join("agent.log").exists(),
        "no agent log in {}",
        run_dir.display()
    );
    let r = py(&c, &sb.name, INJECT_WRITE, &format!("1 {}", 64u64 << 20)).await;
    let kept = agent_log_bytes(&run_dir);
    assert_eq!(
        r.stdout.trim(),
        "attach EPERM",
        "{r:?}; host agent log: {kept} bytes"
    );
    assert!(kept <= AGENT_LOG_CAP, "the agent's host log holds {kept} bytes");
    assert_eq!(sh(&c, &sb.name, "echo alive").await.stdout, "alive\n");
    c.delete_sandbox(&sb.name).await.unwrap();
}

/// io_uring performs socket, open and connect operations without the system calls the
/// filter checks: its three calls are refused inside. Control: the same probe on the host
/// (no filter) gets a ring, and EBADF (not EPERM) from the other two on a bad fd.
const IO_URING_PROBE: &str = r#"
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(*args):
    ctypes.set_errno(0)
    r = libc.syscall(*args)
    return r, ctypes.get_errno()
params = ctypes.create_string_buffer(120)
fd, e = call(425, 4, params)                           # io_uring_setup(4, &params)
if fd >= 0:
    os.close(fd)
print("setup=" + ("fd" if fd >= 0 else errno.errorcode[e]), end=" ")
r, e = call(426, 9999, 0, 0, 0, None, 0)                # io_uring_enter(not an fd, ...)
print("enter=" + errno.errorcode.get(e, str(r)), end=" ")
r, e = call(427, 9999, 0, None, 0)                      # io_uring_register(not an fd, ...)
print("register=" + errno.errorcode.get(e, str(r)))
"#;

/// `socket(AF_VSOCK)` directly; through the i386 `socketcall` (reachable with `int 0x80` from
/// any x86-64 process), whose arguments are in memory where seccomp cannot read them; and
/// through the i386 direct `socket` call.
const VSOCK_PROBE: &str = r#"
import ctypes, errno, mmap, os, struct
libc = ctypes.CDLL(None, use_errno=True)
def result(r, e):
    if r >= 0:
        os.close(r)
        return "fd"
    return errno.errorcode.get(e, str(e))
ctypes.set_errno(0)
r = libc.socket(40, 1, 0)                               # socket(AF_VSOCK, SOCK_STREAM, 0)
print("socket=" + result(r, ctypes.get_errno()), end=" ")
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_long]
mem = libc.mmap(None, 4096, 7, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40, -1, 0)  # MAP_32BIT
assert mem and mem < 2**32
ctypes.memmove(mem + 0x800, struct.pack("<III", 40, 1, 0), 12)
# push rbx; mov eax, 102 (socketcall); mov ebx, 1 (SYS_SOCKET); mov ecx, args; int 0x80;
# pop rbx; movsxd rax, eax; ret
code = (b"\x53\xb8" + struct.pack("<I", 102) + b"\xbb" + struct.pack("<I", 1) + b"\xb9"
        + struct.pack("<I", mem + 0x800) + b"\xcd\x80\x5b\x48\x63\xc0\xc3")
ctypes.memmove(mem, code, len(code))
r = ctypes.CFUNCTYPE(ctypes.c_long)(mem)()
print("socketcall=" + result(r, -r if r < 0 else 0), end=" ")
# push rbx; mov eax, 359 (i386 socket); mov ebx, AF_VSOCK; mov ecx, SOCK_STREAM; xor edx, edx;
# int 0x80; pop rbx; movsxd rax, eax; ret
code = (b"\x53\xb8" + struct.pack("<I", 359) + b"\xbb" + struct.pack("<I", 40) + b"\xb9"
        + struct.pack("<I", 1) + b"\x31\xd2\xcd\x80\x5b\x48\x63\xc0\xc3")
ctypes.memmove(mem + 0x100, code, len(code))
r = ctypes.CFUNCTYPE(ctypes.c_long)(mem + 0x100)()
print("i386_socket=" + result(r, -r if r < 0 else 0))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn io_uring_and_socketcall_cannot_get_around_the_filter() {
    let d = shared();
    let c = d.client();
    let host = host_py(IO_URING_PROBE, &[]);
    assert_eq!(
        host.trim(),
        "setup=fd enter=EBADF register=EBADF",
        "control: io_uring on the host (kernel.io_uring_disabled = {:?})",
        std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
    );
    let host = host_py(VSOCK_PROBE, &[]);
    assert_eq!(
        host.trim(),
        "socket=fd socketcall=fd i386_socket=fd",
        "control: AF_VSOCK on the host"
    );
    let sb = make(&c, |_| {}).await;
    let r = py(&c, &sb.name, VSOCK_PROBE, "").await;
    assert_eq!(
        r.stdout.trim(),
        "socket=EPERM socketcall=ENOSYS i386_socket=EPERM",
        "{r:?}"
    );
    let r = py(&c, &sb.name, IO_URING_PROBE, "").await;
    assert_eq!(r.stdout.trim(), "setup=EPERM enter=EPERM register=EPERM", "{r:?}");
    // The filter still lets ordinary sockets through both ways.
    let r = sh(
        &c,
        &sb.name,
        "python3 -c 'import socket; socket.socket(socket.AF_INET); socket.socket(socket.AF_UNIX); print(\"ok\")'",
    )
    .await;
    assert_eq!(r.stdout, "ok\n", "{r:?}");
    c.delete_sandbox(&sb.name).await.unwrap();
}

/// What the host's /proc tells about the host itself and has no use inside reads empty:
/// its boot arguments, kernel configuration and symbols. Control: the host's own are not.
#[tokio::test(flavor = "multi_thread")]
async fn host_boot_arguments_and_kernel_build_are_masked() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |_| {}).await;
    let mut checked = 0;
    for file in [
        "/proc/cmdline",
        "/proc/config.gz",
        "/proc/kallsyms",
        "/proc/modules",
    ] {
        let Ok(host) = std::fs::read(file) else { continue };
        if file == "/proc/cmdline" {
            assert!(!host.is_empty(), "control: the host's {file} is empty");
        }
        if host.is_empty() {
            continue;
        }
        let r = sh(&c, &sb.name, &format!("wc -c < {file}")).await;
        assert_eq!(r.stdout.trim(), "0", "{file} inside: {r:?}");
        checked += 1;
    }
    assert!(checked >= 1);
    c.delete_sandbox(&sb.name).await.unwrap();
}

/// Whether process `pid` holds `path` open.
fn holds_open(pid: u32, path: &std::path::Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .any(|l| l == path)
        })
        .unwrap_or(false)
}

/// The agent's output goes through a FIFO that burrowd drains into the capped log; a
/// restarted daemon drains it again (the sandbox outlived the old one).
#[tokio::test(flavor = "multi_thread")]
async fn agent_output_is_drained_again_after_a_daemon_restart() {
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let d = burrow_testkit::Daemon::start();
    let c = d.client();
    let sb = make(&c, |_| {}).await;
    let run_dir = d.data_dir.join("run").join(&sb.id);
    let fifo = run_dir.join("agent.out");
    let meta = std::fs::symlink_metadata(&fifo).expect("agent.out");
    assert!(meta.file_type().is_fifo(), "{meta:?}");
    // The agent writes into it; the host file is not the agent's.
    let agent = agent_host_pid(&d.data_dir, &sb.id);
    assert!(holds_open(agent, &fifo));
    assert!(!holds_open(agent, &run_dir.join("agent.log")));
    assert!(
        holds_open(d.pid(), &fifo),
        "burrowd does not drain the agent's output"
    );

    d.kill9();
    d.restart();
    let c = d.client();
    assert_eq!(sh(&c, &sb.name, "echo adopted").await.stdout, "adopted\n");
    assert!(
        holds_open(d.pid(), &fifo),
        "the restarted daemon does not drain it"
    );
    // What reaches the FIFO now lands in agent.log (written here as the agent would).
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    w.write_all(b"marker after restart\n").unwrap();
    drop(w);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_to_string(run_dir.join("agent.log"))
        .unwrap_or_default()
        .contains("marker after restart")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not drained after the restart"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    c.delete_sandbox(&sb.name).await.unwrap();
}
