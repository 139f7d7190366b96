//! A burrow's own view of itself (lxcfs, docs/architecture.md): inside a real sandbox,
//! `/proc/meminfo`, `free`, the CPU count that `getconf`/Python/`/proc/cpuinfo` report,
//! `/proc/uptime` and `/sys/devices/system/cpu` describe the sandbox's limits and its own
//! life, not the host; each sandbox sees its own values; the view survives restarts, sleep,
//! forks and a daemon crash; a sandbox created without lxcfs gets it on its next boot; and
//! without lxcfs sandboxes still start (seeing the host).

use burrow_api::{CreateSandbox, ExecRequest, ForkSource, SandboxName};
use burrow_testkit::burrow_client::Client;
use burrow_testkit::{Daemon, shared, unique_name};

const MIB: u64 = 1024 * 1024;

/// Whether the daemon gives sandboxes the view; without it the test cannot run (a failure
/// under BURROW_TEST_STRICT=1).
async fn has_lxcfs(c: &Client) -> bool {
    burrow_testkit::prerequisite(
        c.version().await.expect("version").lxcfs,
        "lxcfs is not running for this daemon (install Debian's lxcfs: scripts/setup.sh)",
    )
}

async fn make(c: &Client, prefix: &str, memory_mb: u64, cpus: f64) -> String {
    let name = unique_name(prefix);
    let req = CreateSandbox {
        name: SandboxName::parse(&name).unwrap(),
        memory_mb: Some(memory_mb),
        cpus: Some(cpus),
        ..Default::default()
    };
    c.create_sandbox(&req).await.expect("create");
    name
}

async fn sh(c: &Client, name: &str, script: &str) -> String {
    let req = ExecRequest {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        timeout_s: Some(60.0),
        ..Default::default()
    };
    let r = c
        .exec(name, &req)
        .await
        .unwrap_or_else(|e| panic!("exec {script}: {e}"));
    assert_eq!(r.exit_code, 0, "{script}: {}{}", r.stdout, r.stderr);
    r.stdout
}

/// `MemTotal` of a meminfo text, in bytes.
fn mem_total(meminfo: &str) -> u64 {
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {meminfo}"));
    kb * 1024
}

/// The first field of a `/proc/uptime` text, in seconds.
fn uptime(text: &str) -> f64 {
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("uptime {text:?}"))
}

fn host_uptime() -> f64 {
    uptime(&std::fs::read_to_string("/proc/uptime").unwrap())
}

/// What a sandbox says about itself.
#[derive(Debug)]
struct View {
    mem_total: u64,
    free_total: u64,
    cpus_getconf: u64,
    cpus_python: u64,
    cpus_cpuinfo: u64,
    cpus_online: String,
    uptime: f64,
}

async fn view(c: &Client, name: &str) -> View {
    let out = sh(
        c,
        name,
        "cat /proc/meminfo; echo ===; free -b | awk '/^Mem:/ {print $2}'; echo ===; \
         getconf _NPROCESSORS_ONLN; echo ===; python3 -c 'import os; print(os.cpu_count())'; \
         echo ===; grep -c ^processor /proc/cpuinfo; echo ===; cat /sys/devices/system/cpu/online; \
         echo ===; cat /proc/uptime",
    )
    .await;
    let parts: Vec<&str> = out.split("===\n").collect();
    assert_eq!(parts.len(), 7, "{out}");
    let num = |s: &str| -> u64 { s.trim().parse().unwrap_or_else(|_| panic!("{s:?} in {out}")) };
    View {
        mem_total: mem_total(parts[0]),
        free_total: num(parts[1]),
        cpus_getconf: num(parts[2]),
        cpus_python: num(parts[3]),
        cpus_cpuinfo: num(parts[4]),
        cpus_online: parts[5].trim().to_owned(),
        uptime: uptime(parts[6]),
    }
}

/// The sandbox's view matches its limits: memory exactly, CPUs rounded up, and an uptime
/// shorter than the host's was before it was created (`host_before`).
#[track_caller]
fn assert_own(v: &View, memory_mb: u64, cpus: u64, host_before: f64) {
    assert_eq!(v.mem_total, memory_mb * MIB, "{v:?}");
    assert_eq!(v.free_total, memory_mb * MIB, "{v:?}");
    assert_eq!(
        (v.cpus_getconf, v.cpus_python, v.cpus_cpuinfo),
        (cpus, cpus, cpus),
        "{v:?}"
    );
    let online = if cpus == 1 {
        "0".to_owned()
    } else {
        format!("0-{}", cpus - 1)
    };
    assert_eq!(v.cpus_online, online, "{v:?}");
    // The host's uptime only grows: a sandbox reading the kernel's would see at least this.
    assert!(
        v.uptime < host_before,
        "{v:?}: host was up {host_before} s before it started"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_sandbox_sees_its_own_limits_not_the_hosts() {
    let d = shared();
    let c = d.client();
    if !has_lxcfs(&c).await {
        return;
    }
    let host_mem = mem_total(&std::fs::read_to_string("/proc/meminfo").unwrap());
    let host_before = host_uptime();
    // Two sandboxes with different limits (cpus rounds up: 0.5 -> 1, 1.5 -> 2).
    let small = make(&c, "pv-small", 320, 0.5).await;
    let big = make(&c, "pv-big", 448, 1.5).await;
    let (vs, vb) = (view(&c, &small).await, view(&c, &big).await);
    assert_own(&vs, 320, 1, host_before);
    assert_own(&vb, 448, 2, host_before);
    // Controls: the host's own view differs, so the values above are the sandboxes'.
    assert_ne!(host_mem, 320 * MIB);
    assert_ne!(host_mem, 448 * MIB);

    // Exactly these files come from lxcfs (bound read-only), and the tools that read them
    // (with /proc/loadavg, /proc/stat) work.
    let bound = sh(
        &c,
        &small,
        "uptime >/dev/null && top -bn1 >/dev/null && \
         grep ' - fuse.lxcfs ' /proc/self/mountinfo | cut -d' ' -f5,6 | sort",
    )
    .await;
    let want: Vec<String> = [
        "/proc/cpuinfo",
        "/proc/diskstats",
        "/proc/loadavg",
        "/proc/meminfo",
        "/proc/stat",
        "/proc/swaps",
        "/proc/uptime",
        "/sys/devices/system/cpu",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    let got: Vec<&str> = bound.lines().collect();
    assert_eq!(got.len(), want.len(), "{bound}");
    for (line, path) in got.iter().zip(&want) {
        let (dest, opts) = line.split_once(' ').unwrap();
        assert_eq!(dest, path, "{bound}");
        assert!(opts.split(',').any(|o| o == "ro"), "{line}");
    }

    // nproc counts the CPUs a process may run on (sched_getaffinity), which no file
    // changes: sandboxes are limited by CFS quota, not pinned.
    let nproc: u64 = sh(&c, &small, "nproc").await.trim().parse().unwrap();
    let host_cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(nproc, host_cpus);

    // Sleep (frozen) and wake, and a fork: the same view.
    for action in ["sleep", "wake"] {
        c.sandbox_action(&small, action).await.unwrap();
    }
    assert_own(&view(&c, &small).await, 320, 1, host_before);
    let fork = unique_name("pv-fork");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&fork).unwrap(),
        from: Some(ForkSource {
            sandbox: SandboxName::parse(&small).unwrap(),
            checkpoint: None,
            memory: false,
        }),
        memory_mb: Some(384),
        cpus: Some(2.0),
        ..Default::default()
    })
    .await
    .expect("fork");
    // Its own limits, not its source's.
    assert_own(&view(&c, &fork).await, 384, 2, host_before);

    for name in [small, big, fork] {
        c.delete_sandbox(&name).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_view_survives_restarts_and_a_daemon_crash_and_reaches_older_sandboxes() {
    let d = Daemon::start();
    let c = d.client();
    if !has_lxcfs(&c).await {
        return;
    }
    let host_before = host_uptime();
    let a = make(&c, "pv-a", 384, 0.5).await;
    assert_own(&view(&c, &a).await, 384, 1, host_before);
    c.sandbox_action(&a, "restart").await.unwrap();
    assert_own(&view(&c, &a).await, 384, 1, host_before);

    // A crash of the daemon does not take lxcfs with it: the running sandbox keeps reading
    // it (a dead FUSE would fail every read), and the new daemon adopts it.
    d.kill9();
    d.restart();
    let c = d.client();
    assert!(c.version().await.unwrap().lxcfs);
    assert!(d.log_text().contains("adopted a running lxcfs"));
    assert_own(&view(&c, &a).await, 384, 1, host_before);

    // A daemon without lxcfs (the binary is missing, and none is mounted where it looks):
    // sandboxes still start, and see the host, which is also the control that the values
    // above come from lxcfs.
    d.kill9();
    let elsewhere = d.data_dir.with_file_name("no-lxcfs-here");
    d.set_env(&[
        ("BURROW_LXCFS", "/nonexistent/lxcfs"),
        ("BURROW_LXCFS_DIR", elsewhere.to_str().unwrap()),
    ]);
    d.restart();
    let c = d.client();
    assert!(!c.version().await.unwrap().lxcfs);
    assert!(d.log_text().contains("without their own view of /proc"));
    let b = make(&c, "pv-b", 320, 0.5).await;
    let host_mem = mem_total(&std::fs::read_to_string("/proc/meminfo").unwrap());
    assert_eq!(view(&c, &b).await.mem_total, host_mem);
    c.sandbox_action(&b, "stop").await.unwrap();

    // That sandbox, created without the view, gets it on its next boot under a daemon with
    // lxcfs.
    d.kill9();
    d.set_env(&[]);
    d.restart();
    let c = d.client();
    assert!(c.version().await.unwrap().lxcfs);
    c.sandbox_action(&b, "start").await.unwrap();
    assert_own(&view(&c, &b).await, 320, 1, host_before);
    assert_own(&view(&c, &a).await, 384, 1, host_before);
}

/// Whether a lxcfs is mounted at `dir` in our mount namespace.
fn lxcfs_mounted(dir: &std::path::Path) -> bool {
    let want = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want) && l.contains(" - fuse.lxcfs "))
}

#[tokio::test(flavor = "multi_thread")]
async fn lxcfs_is_unmounted_when_its_daemon_leaves_and_no_sandbox_uses_it() {
    let parent = tempfile::Builder::new()
        .prefix("burrow-lxcfs-")
        .tempdir_in("/var/tmp")
        .unwrap();
    // Sandbox root (an unprivileged host uid) traverses to the files it binds.
    std::fs::set_permissions(parent.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let dir = parent.path().join("lxcfs");
    let d = Daemon::start_with(&["--lxcfs-dir", dir.to_str().unwrap()]);
    let c = d.client();
    if !has_lxcfs(&c).await {
        return;
    }
    let a = make(&c, "pv-gone", 288, 0.5).await;
    assert_eq!(view(&c, &a).await.mem_total, 288 * MIB);
    assert!(lxcfs_mounted(&dir));
    let pid: u32 = std::fs::read_to_string(parent.path().join("lxcfs.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The ephemeral daemon deletes its sandboxes on SIGTERM, then nothing uses lxcfs.
    d.shutdown();
    assert!(!lxcfs_mounted(&dir));
    // lxcfs ends by itself once its mount is gone (within seconds): gone, or a zombie left
    // to the host's init. Bounded wait for that.
    let stat = format!("/proc/{pid}/stat");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let state = std::fs::read_to_string(&stat).unwrap_or_default();
        if state.is_empty() || state.contains(") Z ") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lxcfs {pid} still runs: {state}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
