//! The container engine against real runc, with a busybox init instead of the agent:
//! start/status/stop/list, freeze/thaw, the agent socket hand-over, cgroups, failures.
//! Needs root, runc and busybox-static.

mod support;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use burrow_engine::container::CgroupVersion;
use burrow_engine::{Engine, EngineError, Resources, RuntimeStatus};
use support::*;

/// An init that exits on TERM (a PID 1 without a handler ignores it).
const GRACEFUL_INIT: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 1000 & wait $!; done",
];

/// Waits until GRACEFUL_INIT has installed its TERM trap (it has forked its first sleep);
/// a TERM before that would be ignored and the stop would have to wait out its grace.
fn wait_graceful(sb: &Running) {
    let pid = sb.pid();
    let children = format!("/proc/{pid}/task/{pid}/children");
    wait_for("init's trap", Duration::from_secs(30), || {
        std::fs::read_to_string(&children).is_ok_and(|c| !c.trim().is_empty())
    });
}

#[test]
fn start_status_stop() {
    if !host_ready() {
        return;
    }
    let t = TestEngine::with_init(GRACEFUL_INIT);
    let sb = t.start(t.spec("alpha", SMALL));
    wait_graceful(&sb);
    let pid = sb.pid();

    // Root inside is uid_base outside.
    assert_eq!(host_uids(pid), vec![UID_BASE; 4]);
    assert!(t.engine.list().unwrap().contains(&sb.spec.id));
    // The init is not our child and does not die with us: its parent is not this process.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(ppid, std::process::id());

    let sock = sb.spec.run_dir.join("agent.sock");
    t.engine.stop(sb.id(), Duration::from_secs(30)).unwrap();
    assert_eq!(t.engine.status(sb.id()).unwrap(), RuntimeStatus::Missing);
    assert!(!t.engine.list().unwrap().contains(&sb.spec.id));
    assert!(!sock.exists(), "agent socket removed");
    for dir in t.engine.cgroup_dirs(sb.id()) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    // Idempotent.
    t.engine.stop(sb.id(), Duration::from_secs(1)).unwrap();
}

#[test]
fn stop_kills_an_init_that_ignores_term() {
    if !host_ready() {
        return;
    }
    let t = TestEngine::with_init(&["/bin/sleep", "100000"]);
    let sb = t.start(t.spec("stubborn", SMALL));
    sb.pid();
    t.engine.stop(sb.id(), Duration::from_millis(200)).unwrap();
    assert_eq!(t.engine.status(sb.id()).unwrap(), RuntimeStatus::Missing);
}

#[test]
fn unknown_ids_are_missing_and_stop_is_ok() {
    if !host_ready() {
        return;
    }
    let t = TestEngine::with_init(GRACEFUL_INIT);
    assert_eq!(
        t.engine.status("sb-never-created").unwrap(),
        RuntimeStatus::Missing
    );
    t.engine.stop("sb-never-created", Duration::from_secs(1)).unwrap();
    assert!(t.engine.list().unwrap().is_empty());
}

#[test]
fn start_stop_start_again() {
    if !host_ready() {
        return;
    }
    let t = TestEngine::with_init(GRACEFUL_INIT);
    let spec = t.spec("again", SMALL);
    let first = t.start(spec.clone());
    wait_graceful(&first);
    let pid1 = first.pid();
    t.engine.stop(first.id(), Duration::from_secs(30)).unwrap();
    drop(first);
    let second = t.start(spec);
    assert_ne!(second.pid(), pid1);
    // Starting a running sandbox again is refused, and leaves it running.
    assert!(matches!(
        t.engine.start(&second.spec),
        Err(EngineError::Command { .. })
    ));
    second.pid();
}

#[test]
fn freeze_and_thaw() {
    if !host_ready() {
        return;
    }
    let t = TestEngine::with_init(GRACEFUL_INIT);
    let sb = t.start(t.spec("frosty", SMALL));
    wait_graceful(&sb);
    let pid = sb.pid();
    t.engine.freeze(sb.id()).unwrap();
    assert_eq!(t.engine.status(sb.id()).unwrap(), RuntimeStatus::Paused { pid });
    t.engine.thaw(sb.id()).unwrap();
    assert_eq!(t.engine.status(sb.id()).unwrap(), RuntimeStatus::Running { pid });
    // Stopping a frozen sandbox works too (it is thawed to get its TERM).
    t.engine.freeze(sb.id()).unwrap();
    t.engine.stop(sb.id(), Duration::from_secs(30)).unwrap();
    assert_eq!(t.engine.status(sb.id()).unwrap(), RuntimeStatus::Missing);
}

/// A stop without grace (delete, restore) kills through the init's pidfd and one `runc
/// delete`: everything in the sandbox ends (the init's child too, with its PID namespace),
/// frozen or not, and nothing is left behind.
#[test]
fn stop_without_grace_ends_everything_frozen_or_not() {
    if !host_ready() {
        return;
    }
    let t = TestEngine::with_init(GRACEFUL_INIT);
    for frozen in [false, true] {
        let sb = t.start(t.spec(if frozen { "icy" } else { "quick" }, SMALL));
        wait_graceful(&sb);
        let pid = sb.pid();
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        let child: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
        let sock = sb.spec.run_dir.join("agent.sock");
        assert!(sock.exists());
        if frozen {
            t.engine.freeze(sb.id()).unwrap();
            assert_eq!(t.engine.status(sb.id()).unwrap(), RuntimeStatus::Paused { pid });
        }
        t.engine.stop(sb.id(), Duration::ZERO).unwrap();
        assert_eq!(
            t.engine.status(sb.id()).unwrap(),
            RuntimeStatus::Missing,
            "frozen: {frozen}"
        );
        assert!(!t.engine.list().unwrap().contains(&sb.spec.id));
        for p in [pid, child] {
            // Gone, or at most a zombie waiting for its reaper.
            let state = std::fs::read_to_string(format!("/proc/{p}/stat")).ok();
            let state = state
                .as_deref()
                .and_then(|s| s.rsplit(')').next()?.split_whitespace().next());
            assert!(
                matches!(state, None | Some("Z")),
                "pid {p} is {state:?} (frozen: {frozen})"
            );
        }
        assert!(!sock.exists(), "agent socket removed");
        for dir in t.engine.cgroup_dirs(sb.id()) {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        t.engine.stop(sb.id(), Duration::ZERO).unwrap();
    }
}

#[test]
fn init_holds_the_listening_socket_at_fd_3() {
    if !host_ready() {
        return;
    }
    let t = TestEngine::with_init(GRACEFUL_INIT);
    let sb = t.start(t.spec("sock", SMALL));
    let pid = sb.pid();
    let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap();
    assert!(
        fd3.to_string_lossy().starts_with("socket:["),
        "fd 3 is {}",
        fd3.display()
    );
    let sock = sb.spec.run_dir.join("agent.sock");
    let mode = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // The socket is the one the init holds: connecting succeeds (queued in its backlog).
    UnixStream::connect(&sock).unwrap();
    // The host keeps no copy of it.
    let ours = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok());
    let inode = fd3.to_string_lossy().into_owned();
    assert!(ours.into_iter().all(|l| l.to_string_lossy() != inode));
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_owned()
}

#[test]
fn cgroup_limits_are_applied() {
    if !host_ready() {
        return;
    }
    let t = TestEngine::with_init(GRACEFUL_INIT);
    let sb = t.start(t.spec(
        "limited",
        Resources {
            cpus: 0.5,
            memory_mb: 64,
            pids: 64,
        },
    ));
    sb.pid();
    let dirs = t.engine.cgroup_dirs(sb.id());
    let file = |ctrl: &str, name: &str| match t.engine.cgroup_version() {
        CgroupVersion::V2 => dirs[0].join(name),
        CgroupVersion::V1 => dirs
            .iter()
            .find(|d| d.starts_with(format!("/sys/fs/cgroup/{ctrl}")))
            .unwrap()
            .join(name),
    };
    match t.engine.cgroup_version() {
        CgroupVersion::V1 => {
            assert_eq!(
                read_trim(&file("memory", "memory.limit_in_bytes")),
                (64 << 20).to_string()
            );
            assert_eq!(read_trim(&file("cpu", "cpu.cfs_quota_us")), "50000");
            assert_eq!(read_trim(&file("cpu", "cpu.cfs_period_us")), "100000");
        }
        CgroupVersion::V2 => {
            assert_eq!(read_trim(&file("memory", "memory.max")), (64 << 20).to_string());
            assert_eq!(read_trim(&file("cpu", "cpu.max")), "50000 100000");
        }
    }
    assert_eq!(read_trim(&file("pids", "pids.max")), "64");
}

#[test]
fn failed_start_reports_runcs_error_and_leaves_nothing() {
    if !host_ready() {
        return;
    }
    let t = TestEngine::with_init(&["/no/such/init"]);
    let spec = t.spec("broken", SMALL);
    let err = t.engine.start(&spec).unwrap_err();
    let EngineError::Command { detail, .. } = &err else {
        panic!("unexpected error {err}")
    };
    assert!(
        detail.contains("/no/such/init"),
        "error lacks runc's reason: {detail}"
    );
    assert_eq!(t.engine.status(&spec.id).unwrap(), RuntimeStatus::Missing);
    assert!(!spec.run_dir.join("agent.sock").exists());
}

#[test]
fn two_sandboxes_run_at_once() {
    if !host_ready() {
        return;
    }
    let t = TestEngine::with_init(GRACEFUL_INIT);
    let a = t.start(t.spec("one", SMALL));
    let b = t.start(t.spec("two", SMALL));
    assert_ne!(a.pid(), b.pid());
    let mut ids = t.engine.list().unwrap();
    ids.sort();
    let mut want = vec![a.spec.id.clone(), b.spec.id.clone()];
    want.sort();
    assert_eq!(ids, want);
    // Different pid namespaces.
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_ne!(ns(a.pid()), ns(b.pid()));
    assert_ne!(ns(a.pid()), std::fs::read_link("/proc/self/ns/pid").unwrap());
}

/// The most agent output the host keeps (`agent_log::MAX_BYTES`): `agent.log` and the
/// `agent.log.1` it rotates to, together.
const AGENT_LOG_CAP: u64 = 1 << 20;

fn log_bytes(run_dir: &Path) -> u64 {
    ["agent.log", "agent.log.1"]
        .iter()
        .map(|f| std::fs::metadata(run_dir.join(f)).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// An init that writes 4 MiB to its stdout leaves at most the cap on the host, and the
/// newest output is what is kept. (Its writes may fail with EAGAIN when the pipe is full:
/// the init retries its last line until it is through.)
#[test]
fn init_output_is_capped_on_the_host() {
    if !host_ready() {
        return;
    }
    let line = "x".repeat(1000);
    let script = format!(
        "i=0; while [ $i -lt 4096 ]; do echo \"$i {line}\"; i=$((i+1)); done; \
         until echo finished; do sleep 0.01; done; exec sleep 100000"
    );
    let t = TestEngine::with_init(&["/bin/sh", "-c", &script]);
    let sb = t.start(t.spec("chatty", SMALL));
    sb.pid();
    let run_dir = sb.spec.run_dir.clone();
    wait_for("the last line in agent.log", Duration::from_secs(120), || {
        sb.log().contains("finished\n")
    });
    let kept = log_bytes(&run_dir);
    assert!(kept <= AGENT_LOG_CAP, "{kept} bytes of init output on the host");
    // It did write past the cap: the log was rotated.
    assert!(run_dir.join("agent.log.1").exists(), "no rotation after 4 MiB");
    // The init never blocked on its output and still runs.
    sb.pid();
}
