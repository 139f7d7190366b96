//! What a process inside a container sandbox can and cannot do, checked through the real
//! agent (exec over the agent channel). Needs root, runc, busybox-static and the static
//! agent build.

mod support;

use std::time::{Duration, Instant};

use burrow_engine::{Engine, Resources};
use support::*;

/// Host pids of every process in the pid namespace of `init_pid`.
fn sandbox_pids(init_pid: u32) -> Vec<u32> {
    let ns = std::fs::read_link(format!("/proc/{init_pid}/ns/pid")).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|l| l == ns))
        .collect()
}

#[test]
fn root_inside_is_unprivileged_outside() {
    let Some(t) = agent_engine() else { return };
    let sb = t.start(t.spec("ids", SMALL));
    let mut a = sb.agent();
    assert_eq!(a.conn.hello.pid, 1);
    let r = a.exec(&["id", "-u"]);
    assert_eq!(r.stdout.trim(), "0", "{r:?}");
    // A long-lived process, reparented to the agent: owned by uid_base on the host.
    assert!(a.sh("sleep 1000 </dev/null >/dev/null 2>&1 &").ok());
    let pids = sandbox_pids(sb.pid());
    assert!(pids.len() >= 2, "{pids:?}");
    for pid in pids {
        assert_eq!(host_uids(pid), vec![UID_BASE; 4], "pid {pid}");
    }
    // Seccomp filter on, no new privileges, Docker's capability set.
    let status = a.exec(&["cat", "/proc/self/status"]).stdout;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(field("Seccomp:"), "2");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("CapEff:"), "00000000a80425fb");
    assert_eq!(field("CapBnd:"), "00000000a80425fb");
}

#[test]
fn host_processes_are_invisible() {
    let Some(t) = agent_engine() else { return };
    let sb = t.start(t.spec("pidns", SMALL));
    let mut a = sb.agent();
    let cmdline = a.exec(&["cat", "/proc/1/cmdline"]).stdout;
    assert!(cmdline.starts_with("/.burrow/agent"), "{cmdline:?}");
    let pids = a.sh("ls /proc | grep -E '^[0-9]+$'").stdout;
    let pids: Vec<u32> = pids.lines().map(|l| l.parse().unwrap()).collect();
    // The agent, the shell, ls and grep at most.
    assert!(pids.len() <= 4, "{pids:?}");
    let comms = a.sh("cat /proc/[0-9]*/comm").stdout;
    let ours = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert!(!comms.contains(ours.trim()), "host process visible: {comms}");
}

#[test]
fn kernel_interfaces_are_read_only() {
    let Some(t) = agent_engine() else { return };
    let sb = t.start(t.spec("kernel", SMALL));
    let mut a = sb.agent();
    for script in [
        "echo h > /proc/sysrq-trigger",
        "echo 1 > /proc/sys/kernel/panic",
        "echo x > /sys/kernel/uevent_helper",
        "touch /sys/kernel/burrow",
        // Masked: empty (or absent) inside, whatever the host has.
        "grep -q . /proc/timer_list",
        "grep -q . /proc/keys",
        "grep -q . /proc/sched_debug",
        "head -c 1 /proc/kcore | grep -q .",
        "ls -A /sys/firmware | grep -q .",
    ] {
        let r = a.sh(script);
        assert!(!r.ok(), "`{script}` succeeded: {r:?}");
    }
    // Writing to the sandbox's own files works.
    assert!(a.sh("echo hi > /tmp/x && cat /tmp/x").ok());
}

#[test]
fn devices_and_disks_are_out_of_reach() {
    let Some(t) = agent_engine() else { return };
    let sb = t.start(t.spec("devices", SMALL));
    let mut a = sb.agent();
    assert!(!a.exec(&["mknod", "/tmp/sda", "b", "8", "0"]).ok());
    assert!(!a.exec(&["mknod", "/tmp/mem", "c", "1", "1"]).ok());
    let devs = a.exec(&["ls", "/dev"]).stdout;
    for dev in devs.split_whitespace() {
        assert!(
            [
                "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue", "fd",
                "stdin", "stdout", "stderr", "core", "console"
            ]
            .contains(&dev),
            "unexpected /dev/{dev}"
        );
    }
    for disk in ["/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/mem"] {
        assert!(!a.exec(&["head", "-c", "1", disk]).ok(), "{disk} readable");
    }
}

#[test]
fn host_files_are_not_visible() {
    let Some(t) = agent_engine() else { return };
    let marker_dir = tempfile::tempdir().unwrap();
    let name = format!("burrow-marker-{}", std::process::id());
    let marker = marker_dir.path().join(&name);
    std::fs::write(&marker, "secret").unwrap();
    let sb = t.start(t.spec("files", SMALL));
    let mut a = sb.agent();
    assert!(!a.exec(&["cat", marker.to_str().unwrap()]).ok());
    let found = a.exec(&["find", "/", "-xdev", "-name", &name]);
    assert!(found.stdout.trim().is_empty(), "{found:?}");
    // Nor the host's root tree: this test binary's path does not exist inside.
    let exe = std::env::current_exe().unwrap();
    assert!(!a.exec(&["test", "-e", exe.to_str().unwrap()]).ok());
}

#[test]
fn namespaces_and_mounts_cannot_be_created() {
    let Some(t) = agent_engine() else { return };
    let sb = t.start(t.spec("nsdeny", SMALL));
    let mut a = sb.agent();
    for argv in [
        &["unshare", "-U", "true"][..],
        &["unshare", "-n", "true"],
        &["unshare", "-m", "true"],
        &["mount", "-t", "tmpfs", "none", "/mnt"],
        &["mount", "-o", "remount,rw", "/sys"],
        &["umount", "/proc"],
        &["hostname", "other"],
    ] {
        let r = a.exec(argv);
        assert!(!r.ok(), "{argv:?} succeeded: {r:?}");
    }
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    let Some(t) = agent_engine() else { return };
    let sb = t.start(t.spec(
        "forky",
        Resources {
            cpus: 1.0,
            memory_mb: 256,
            pids: 64,
        },
    ));
    let mut a = sb.agent();
    // Bounded: 200 sleepers, most of which cannot be forked.
    a.sh("i=0; while [ $i -lt 200 ]; do sleep 1000 </dev/null >/dev/null 2>&1 & i=$((i+1)); done");
    let init = sb.pid();
    let sleepers: Vec<u32> = sandbox_pids(init)
        .into_iter()
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep"))
        .collect();
    assert!(
        !sleepers.is_empty() && sleepers.len() < 64,
        "{} sleepers",
        sleepers.len()
    );
    assert!(sandbox_pids(init).len() <= 64);
    // The host is fine.
    assert!(std::process::Command::new("true").status().unwrap().success());
    for p in &sleepers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Killed sleepers go once the agent reaps them; then the agent can fork again.
    wait_for("sleepers reaped", Duration::from_secs(30), || {
        sandbox_pids(init).len() < 8
    });
    assert!(a.exec(&["true"]).ok());
}

#[test]
fn memory_limit_kills_the_hog_not_the_agent() {
    let Some(t) = agent_engine() else { return };
    let sb = t.start(t.spec(
        "hog",
        Resources {
            cpus: 1.0,
            memory_mb: 64,
            pids: 128,
        },
    ));
    let mut a = sb.agent();
    // dd fills a 200 MB buffer from /dev/zero.
    let r = a.exec(&["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"]);
    assert_eq!(r.signal, 9, "{r:?}");
    let r = a.exec(&["echo", "alive"]);
    assert_eq!(r.stdout.trim(), "alive");
}

#[test]
fn hostname_is_the_sandbox_name() {
    let Some(t) = agent_engine() else { return };
    let sb = t.start(t.spec("my-burrow", SMALL));
    let mut a = sb.agent();
    assert_eq!(a.exec(&["hostname"]).stdout.trim(), "my-burrow");
    assert_eq!(a.exec(&["cat", "/etc/hostname"]).stdout.trim(), "my-burrow");
    assert!(a.exec(&["cat", "/etc/hosts"]).stdout.contains("my-burrow"));
    // Loopback only.
    let links = a.exec(&["ls", "/sys/class/net"]).stdout;
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["lo"]);
}

#[test]
fn sandboxes_cannot_see_each_other() {
    let Some(t) = agent_engine() else { return };
    let one = t.start(t.spec("one", SMALL));
    let two = t.start(t.spec("two", SMALL));
    let mut a = one.agent();
    let mut b = two.agent();
    assert!(a.sh("sleep 4242 </dev/null >/dev/null 2>&1 &").ok());
    let seen = b.sh("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout;
    assert!(!seen.contains("4242"), "{seen}");
    assert!(!b.exec(&["kill", "-0", &one.pid().to_string()]).ok());
}

#[test]
fn stop_through_the_agent_and_start_again() {
    let Some(t) = agent_engine() else { return };
    let spec = t.spec("phoenix", SMALL);
    let sb = t.start(spec.clone());
    assert!(sb.agent().sh("echo kept > /root/file").ok());
    t.engine.stop(sb.id(), Duration::from_secs(30)).unwrap();
    for dir in t.engine.cgroup_dirs(sb.id()) {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    drop(sb);
    let sb = t.start(spec);
    assert_eq!(sb.agent().exec(&["cat", "/root/file"]).stdout.trim(), "kept");
}

/// start() → agent answers Hello, median over 20 runs. Prints, asserts nothing.
#[test]
#[ignore = "benchmark: cargo test -p burrow-engine --test container_isolation -- --ignored --nocapture"]
fn bench_start_to_hello() {
    let Some(t) = agent_engine() else { return };
    let mut times = Vec::new();
    for _ in 0..20 {
        let spec = t.spec("bench", SMALL);
        let t0 = Instant::now();
        let sb = t.start(spec);
        let a = support::agent::Agent::connect(t.engine.agent_dialer(&sb.spec.run_dir).endpoint());
        times.push(t0.elapsed());
        assert_eq!(a.conn.hello.pid, 1);
        drop(a);
        let t1 = Instant::now();
        t.engine.stop(sb.id(), Duration::from_secs(5)).unwrap();
        eprintln!("start→hello {:?}, stop {:?}", times.last().unwrap(), t1.elapsed());
    }
    times.sort();
    eprintln!(
        "start→hello median {:?} (min {:?}, max {:?})",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}
