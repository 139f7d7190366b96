//! The vm engine end to end, through a real daemon: QEMU microVMs (TCG on hosts without a
//! working KVM) with the same agent, API and CLI as containers. Guests boot in seconds
//! under TCG, so this file keeps its VM count small: every test shares what it can.

use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, EngineKind, ExecRequest, SandboxName, SandboxStatus};
use burrow_testkit::burrow_client::{Client, Method};
use burrow_testkit::fixtures::{sh, sh_ok, vm_available};
use burrow_testkit::{Daemon, unique_name};

fn vm_req(name: &str) -> CreateSandbox {
    CreateSandbox {
        name: SandboxName::parse(name).unwrap(),
        engine: Some(EngineKind::Vm),
        memory_mb: Some(512),
        ..Default::default()
    }
}

/// QEMU processes on the host that run sandbox `id`.
fn qemu_of(id: &str) -> usize {
    let needle = format!("burrow-{id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == needle.as_bytes()))
        })
        .count()
}

/// `/proc/<pid>/status` of the QEMU that runs sandbox `id`.
fn qemu_status(id: &str) -> String {
    let needle = format!("burrow-{id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == needle.as_bytes()))
        })
        .and_then(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .unwrap_or_default()
}

fn host_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A VM runs its own kernel and serves exec, files and the CLI like a container; `info`
/// names the accelerator and guest kernel; a VM that sleeps keeps its processes with no
/// QEMU left on the host, across a kill -9 of the daemon, and wakes with the right time.
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_runs_its_own_kernel_and_sleeps_with_its_processes_across_a_daemon_kill() {
    let d = Daemon::start();
    let c = d.client();
    if !vm_available(&c).await {
        return;
    }
    let kit = std::fs::read_to_string("/usr/local/lib/burrow/guest/kernel.release").unwrap();
    let name = unique_name("vm");
    let sb = c.create_sandbox(&vm_req(&name)).await.unwrap();
    assert_eq!(sb.engine, EngineKind::Vm);
    assert_eq!(sb.status, SandboxStatus::Running);

    // Its own kernel (the guest kit's, not the host's), its own hostname.
    let uname = sh_ok(&c, &name, "uname -r").await;
    assert_eq!(uname.trim(), kit.trim());
    let host = nix::sys::utsname::uname().unwrap();
    assert_ne!(uname.trim(), host.release().to_str().unwrap());
    assert_eq!(sh_ok(&c, &name, "hostname").await.trim(), name);
    // Its disk is `disk_gb` big (the image's filesystem grown to the device at boot).
    let size_mb: u64 = sh_ok(&c, &name, "df -B1M --output=size / | tail -1")
        .await
        .trim()
        .parse()
        .unwrap();
    let want_mb = sb.config.disk_gb * 1024;
    assert!(
        size_mb > want_mb * 9 / 10 && size_mb <= want_mb,
        "/ is {size_mb} MiB, disk_gb {}",
        sb.config.disk_gb
    );
    let info = c.get_sandbox(&name).await.unwrap();
    let engine = info.engine_detail.unwrap_or_default();
    assert!(
        engine.contains("accel ") && engine.contains(kit.trim()),
        "{engine}"
    );

    // Files through the API land in the guest's filesystem.
    c.write_file_bytes(
        &name,
        "/root/note.txt",
        Default::default(),
        b"from the host\n".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(sh_ok(&c, &name, "cat /root/note.txt").await, "from the host\n");
    // The CLI works the same.
    let out = d
        .cli()
        .args(["exec", &name, "--", "cat", "/root/note.txt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"from the host\n");

    // A counter that runs in the background.
    start_counter(&c, &name).await;
    assert_eq!(qemu_of(&info.id), 1, "one QEMU runs the VM");
    // QEMU is jailed: not root, no capabilities, under its seccomp filter (`-sandbox on`).
    let status = qemu_status(&info.id);
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let uids = field("Uid:");
    assert!(
        !uids.is_empty() && uids.iter().all(|u| *u != "0"),
        "QEMU runs as root: {uids:?}"
    );
    assert_eq!(field("CapEff:"), ["0000000000000000"], "QEMU has capabilities");
    assert_eq!(field("Seccomp:"), ["2"], "QEMU has no seccomp filter");
    // Control: the same probe reads this test's own (root) process as root.
    let me = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(
        me.lines().any(|l| l.starts_with("Uid:\t0\t")),
        "the probe cannot see root"
    );

    // Sleep: memory saved, QEMU gone.
    let slept: serde_json::Value = c
        .request_json(Method::POST, &format!("/v1/sandboxes/{name}/sleep"), None::<&()>)
        .await
        .unwrap();
    assert_eq!(slept["status"], "sleeping", "{slept}");
    assert_eq!(slept["sleep"], "memory", "{slept}");
    assert_eq!(qemu_of(&info.id), 0, "no QEMU left while it sleeps");
    let volume = d.data_dir.join("pool/sandboxes").join(&info.id);
    assert!(
        volume.join("state.json").is_file(),
        "the saved state is in its volume"
    );

    // The daemon dies and comes back; the VM is still asleep. Its runtime directory goes
    // too (sockets, vm.json, console log: what a host restart loses), as only its volume
    // holds what a wake needs.
    d.kill9();
    let run_dir = d.data_dir.join("run").join(&info.id);
    assert!(run_dir.is_dir(), "no runtime dir at {}", run_dir.display());
    std::fs::remove_dir_all(&run_dir).unwrap();
    d.restart();
    let c = d.client();
    let sb = c.get_sandbox(&name).await.unwrap();
    assert_eq!(sb.status, SandboxStatus::Sleeping);
    assert_eq!(sb.sleep.as_deref(), Some("memory"));

    // Wake (any request): the counter kept its value and counts on, so the processes
    // survived; the guest's clock was set to the host's (it stood still while saved).
    let woke_at = host_now();
    let first: u64 = sh_ok(&c, &name, "cat /tmp/n").await.trim().parse().unwrap();
    assert!(first >= 3, "the counter restarted: {first}");
    let guest_now: f64 = sh_ok(&c, &name, "date +%s.%N").await.trim().parse().unwrap();
    assert!(
        guest_now >= woke_at,
        "the guest's clock ({guest_now}) is behind the host's at wake ({woke_at})"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: u64 = sh_ok(&c, &name, "cat /tmp/n").await.trim().parse().unwrap();
        if now > first {
            break;
        }
        assert!(Instant::now() < deadline, "the counter stopped at {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(qemu_of(&info.id), 1);

    // Stop ends it for good: the next start boots afresh (no counter), the disk is kept.
    c.sandbox_action(&name, "stop").await.unwrap();
    assert_eq!(qemu_of(&info.id), 0);
    assert!(
        !volume.join("state.json").exists(),
        "a stop drops the saved memory"
    );
    c.sandbox_action(&name, "start").await.unwrap();
    assert_eq!(sh_ok(&c, &name, "cat /root/note.txt").await, "from the host\n");
    let counter = sh(&c, &name, "pgrep -f 'echo \\$i' || echo none").await;
    assert!(counter.stdout.contains("none"), "{counter:?}");
    c.delete_sandbox(&name).await.unwrap();
    assert_eq!(qemu_of(&info.id), 0);
}

/// A saved state that does not match this host (another QEMU) or is damaged is refused
/// with what is wrong; `stop` then `start` boots afresh (the control).
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_or_foreign_memory_state_is_refused_with_why() {
    let d = Daemon::start();
    let c = d.client();
    if !vm_available(&c).await {
        return;
    }
    let name = unique_name("vmbad");
    let id = c.create_sandbox(&vm_req(&name)).await.unwrap().id;
    let volume = d.data_dir.join("pool/sandboxes").join(&id);
    for (damage, expect) in [("qemu", "saved by QEMU"), ("state", "damaged")] {
        c.sandbox_action(&name, "sleep").await.unwrap();
        match damage {
            "qemu" => {
                let path = volume.join("state.json");
                let mut m: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                m["qemu"] = "1.0.0".into();
                std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
            }
            _ => {
                let path = volume.join("state.bin");
                let mut bytes = std::fs::read(&path).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0xff;
                std::fs::write(&path, bytes).unwrap();
            }
        }
        let e = c.sandbox_action(&name, "wake").await.unwrap_err();
        assert!(e.to_string().contains(expect), "{damage}: {e}");
        let sb = c.get_sandbox(&name).await.unwrap();
        assert_eq!(sb.status, SandboxStatus::Failed, "{damage}");
        assert!(sb.failure_reason.unwrap_or_default().contains(expect));
        // The way out the message names: stop (drops the state), start (boots afresh).
        c.sandbox_action(&name, "stop").await.unwrap();
        c.sandbox_action(&name, "start").await.unwrap();
        assert_eq!(sh_ok(&c, &name, "echo up").await, "up\n", "{damage}");
    }
}

/// A VM is behind the same host rules as a container: it reaches burrowd's proxy on the
/// gateway (the control: the probe detects an open port) but not a service the host runs
/// on the gateway address, which the host itself reaches.
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_cannot_reach_the_hosts_services() {
    let d = Daemon::start();
    let c = d.client();
    if !vm_available(&c).await {
        return;
    }
    let name = unique_name("vmnet");
    c.create_sandbox(&vm_req(&name)).await.unwrap();
    let gw = sh_ok(&c, &name, "awk '/^nameserver/{print $2; exit}' /etc/resolv.conf").await;
    let gw = gw.trim().to_owned();
    assert!(gw.parse::<std::net::Ipv4Addr>().is_ok(), "{gw:?}");
    // A host service listening on every address, the gateway's included.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(
        std::net::TcpStream::connect((gw.as_str(), port)).is_ok(),
        "the host reaches its own service on {gw}:{port}"
    );
    let probe = |p: u16| format!("timeout 5 bash -c 'echo > /dev/tcp/{gw}/{p}' && echo open || echo closed");
    assert_eq!(
        sh_ok(&c, &name, &probe(3128)).await.trim(),
        "open",
        "burrowd's proxy"
    );
    assert_eq!(
        sh_ok(&c, &name, &probe(port)).await.trim(),
        "closed",
        "a host service"
    );
}

async fn counter(c: &Client, name: &str) -> u64 {
    sh_ok(c, name, "cat /tmp/n 2>/dev/null || echo 0")
        .await
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Starts a counter in the background of `name` (`/tmp/n`, ten a second, replaced whole so a
/// reader never sees it empty) and waits until it counts; returns its value then.
async fn start_counter(c: &Client, name: &str) -> u64 {
    sh_ok(
        c,
        name,
        "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/n.t; mv /tmp/n.t /tmp/n; sleep 0.1; done' >/dev/null 2>&1 &",
    )
    .await;
    counts_past(c, name, 2).await
}

/// Waits (bounded) until the counter in `name` passes `above`: its processes run.
async fn counts_past(c: &Client, name: &str, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = counter(c, name).await;
        if now > above {
            return now;
        }
        assert!(Instant::now() < deadline, "{name}: the counter stays at {now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A memory checkpoint keeps disk, memory and devices: the VM goes on after it; two forks
/// of it both run its processes, each with its own hostname and random state; a restore
/// brings the processes back as they were. Containers refuse memory checkpoints (their
/// plain checkpoints are the control).
#[tokio::test(flavor = "multi_thread")]
async fn memory_checkpoints_restore_and_fork_running_processes() {
    let d = Daemon::start();
    let c = d.client();
    if !vm_available(&c).await {
        return;
    }
    let name = unique_name("vmcp");
    c.create_sandbox(&vm_req(&name)).await.unwrap();
    let before = start_counter(&c, &name).await;
    let cp: burrow_api::Checkpoint = c
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{name}/checkpoints"),
            Some(&serde_json::json!({"comment": "warm", "memory": true})),
        )
        .await
        .unwrap();
    assert!(cp.memory, "{cp:?}");
    // The VM went on after its checkpoint.
    let after = counts_past(&c, &name, before).await;
    sh_ok(&c, &name, "echo later > /root/later").await;

    // Two forks of the checkpoint: both run the counter, as their own machines.
    let forks = [unique_name("vmfa"), unique_name("vmfb")];
    let mut randoms = Vec::new();
    for f in &forks {
        let req = CreateSandbox {
            name: SandboxName::parse(f).unwrap(),
            from: Some(burrow_api::ForkSource {
                sandbox: SandboxName::parse(&name).unwrap(),
                checkpoint: Some(cp.id.clone()),
                memory: false,
            }),
            ..Default::default()
        };
        let sb = c.create_sandbox(&req).await.unwrap();
        assert_eq!(sb.engine, EngineKind::Vm, "a fork runs on its source's engine");
        let start = counter(&c, f).await;
        assert!(start >= before, "{f}: the counter restarted ({start} < {before})");
        counts_past(&c, f, start).await;
        assert_eq!(sh_ok(&c, f, "hostname").await.trim(), f.as_str());
        assert!(
            sh(&c, f, "test -e /root/later").await.exit_code != 0,
            "{f} has a later file"
        );
        randoms.push(sh_ok(&c, f, "head -c 16 /dev/urandom | od -An -tx1").await);
    }
    assert_ne!(randoms[0], randoms[1], "two forks share random output");

    // Restore: the processes are back as they were at the checkpoint (the counter goes on
    // from there), and what was written later is gone. Written just before, not synced.
    sh_ok(&c, &name, "echo last > /root/last").await;
    let r: serde_json::Value = c
        .request_json::<serde_json::Value, ()>(
            Method::POST,
            &format!("/v1/sandboxes/{name}/checkpoints/{}/restore", cp.id),
            None,
        )
        .await
        .unwrap();
    let restored = counter(&c, &name).await;
    assert!(restored >= before && restored < after + 1000, "{restored}");
    let restored = counts_past(&c, &name, restored).await;
    assert!(sh(&c, &name, "test -e /root/later").await.exit_code != 0);
    // The replaced state is the backup, with what the guest wrote just before the restore
    // (its page cache went out to its disk first): a fork of it has both files.
    let backup = r["backup"].as_str().unwrap().to_owned();
    let kept = unique_name("vmbk");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&kept).unwrap(),
        from: Some(burrow_api::ForkSource {
            sandbox: SandboxName::parse(&name).unwrap(),
            checkpoint: Some(backup),
            memory: false,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        sh_ok(&c, &kept, "cat /root/later /root/last").await,
        "later\nlast\n"
    );
    c.delete_sandbox(&kept).await.unwrap();

    // A fork of the live machine with its memory: the copy goes on from the source's
    // count, as its own machine, and the source goes on too. Without memory, the copy
    // of the same live state boots afresh (the control: no counter runs in it).
    sh_ok(&c, &name, "echo live > /root/live").await;
    let live = unique_name("vmfl");
    c.create_sandbox(&live_fork(&name, &live, true)).await.unwrap();
    let copied = counter(&c, &live).await;
    assert!(
        copied >= restored,
        "the live fork's counter restarted: {copied} < {restored}"
    );
    counts_past(&c, &live, copied).await;
    counts_past(&c, &name, counter(&c, &name).await).await;
    assert_eq!(sh_ok(&c, &live, "hostname").await.trim(), live.as_str());
    assert_eq!(sh_ok(&c, &live, "cat /root/live").await, "live\n");
    let cold = unique_name("vmfc");
    c.create_sandbox(&live_fork(&name, &cold, false)).await.unwrap();
    assert_eq!(
        sh_ok(&c, &cold, "cat /root/live").await,
        "live\n",
        "the disk was copied"
    );
    // The counter's command line names /tmp/n.t; this probe's own (n\.t) does not match.
    let procs = sh_ok(
        &c,
        &cold,
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c 'n\\.t' || true",
    )
    .await;
    let control = sh_ok(
        &c,
        &live,
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c 'n\\.t' || true",
    )
    .await;
    assert_ne!(
        control.trim(),
        "0",
        "the probe does not see the counter where it runs"
    );
    assert_eq!(procs.trim(), "0", "a fork without memory kept processes");
    for f in [&live, &cold] {
        c.delete_sandbox(f).await.unwrap();
    }

    // A container cannot keep memory in a checkpoint: 409 naming the vm engine.
    let box_name = unique_name("ctr");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&box_name).unwrap(),
        engine: Some(EngineKind::Container),
        ..Default::default()
    })
    .await
    .unwrap();
    let path = format!("/v1/sandboxes/{box_name}/checkpoints");
    let e = c
        .request_json::<serde_json::Value, _>(Method::POST, &path, Some(&serde_json::json!({"memory": true})))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("vm engine"), "{e}");
    let e = c
        .create_sandbox(&live_fork(&box_name, &unique_name("ctrf"), true))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("vm engine"), "{e}");
    c.create_sandbox(&live_fork(&box_name, &unique_name("ctrf"), false))
        .await
        .unwrap();
    let plain: burrow_api::Checkpoint = c
        .request_json(Method::POST, &path, Some(&serde_json::json!({})))
        .await
        .unwrap();
    assert!(!plain.memory);
}

/// A memory hog in a VM meets the guest's own OOM killer: the hog dies, the agent (the
/// guest's init) and the VM go on, and QEMU on the host holds no more than the guest's RAM
/// plus its overhead (the control: the hog did fill the guest's memory first). A console
/// flood from root in the guest stays within the VM's capped log on the host; a fork bomb
/// meets the sandbox's process limit inside the guest; garbage that root makes the agent
/// send down its channel costs the host that connection only.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_guest_stays_in_its_vm() {
    let d = Daemon::start();
    let c = d.client();
    if !vm_available(&c).await {
        return;
    }
    let name = unique_name("vmhog");
    let sb = c
        .create_sandbox(&CreateSandbox {
            pids: Some(128),
            ..vm_req(&name)
        })
        .await
        .unwrap();
    let guest_mb = sb.config.memory_mb;
    let hog = sh(
        &c,
        &name,
        "python3 -c 'import sys\na=[]\nwhile True:\n a.append(bytearray(16<<20)); print(len(a)*16, flush=True)'",
    )
    .await;
    assert_ne!(hog.exit_code, 0, "the hog was not stopped: {hog:?}");
    let reached: u64 = hog
        .stdout
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        reached >= guest_mb / 4,
        "the hog never filled the guest ({reached} MiB of {guest_mb})"
    );
    let dmesg = sh(&c, &name, "dmesg | grep -ci 'out of memory' || true").await;
    assert!(
        dmesg.stdout.trim() != "0",
        "the guest's OOM killer did not act: {dmesg:?}"
    );
    assert_eq!(sh_ok(&c, &name, "echo alive").await, "alive\n");
    let status = qemu_status(&sb.id);
    let kib = |k: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rss_mb = kib("VmRSS:") / 1024;
    assert!(rss_mb > 0, "no QEMU status: {status}");
    assert!(
        rss_mb <= guest_mb + 256,
        "QEMU holds {rss_mb} MiB for a {guest_mb} MiB guest"
    );

    // Root in the guest floods the console (bounded: 15 s): what reaches the host is the
    // VM's capped log, rotated, never more than its cap (the control: the flood did get
    // there and made it rotate), and the VM goes on.
    let flood = sh(
        &c,
        &name,
        "timeout 15 sh -c 'yes FLOODFLOODFLOODFLOODFLOODFLOODFLOODFLOOD > /dev/console'; true",
    )
    .await;
    assert_eq!(flood.exit_code, 0, "{flood:?}");
    let run_dir = d.data_dir.join("run").join(&sb.id);
    let size = |f: &str| std::fs::metadata(run_dir.join(f)).map_or(0, |m| m.len());
    let old = std::fs::read(run_dir.join("agent.log.1")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&old).contains("FLOODFLOOD"),
        "the flood never reached the host's log, so its cap was not tested ({} bytes)",
        old.len()
    );
    let total = size("agent.log") + size("agent.log.1");
    assert!(
        total <= (1 << 20) + (64 << 10),
        "the VM's log holds {total} bytes"
    );
    assert_eq!(sh_ok(&c, &name, "echo alive").await, "alive\n");

    // A fork bomb meets the sandbox's process limit inside the guest (its processes run in
    // a cgroup of their own there): the count stays at the limit, forks fail, the agent
    // (outside that cgroup) still answers, QEMU's threads stay few, and killing the bomb's
    // session frees it (the control: a command that forks works again).
    let mut bomb = c
        .exec_stream(
            &name,
            burrow_testkit::burrow_client::ExecStreamOptions {
                detach_timeout_s: Some(300),
                ..burrow_testkit::burrow_client::ExecStreamOptions::new([
                    "bash",
                    "-c",
                    "f(){ f & f & wait; }; f 2>/dev/null & exec sleep 600",
                ])
            },
        )
        .await
        .unwrap();
    let bomb_id = match bomb.next_event().await.unwrap() {
        Some(burrow_testkit::burrow_client::ExecEvent::Session { id, .. }) => id,
        other => panic!("first event was not the session: {other:?}"),
    };
    let argv = |cmd: &[&str]| ExecRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // `cat` is run without a fork inside: it works while the limit is reached.
        let r = c
            .exec(&name, &argv(&["cat", "/sys/fs/cgroup/payload/pids.current"]))
            .await
            .unwrap();
        if r.stdout.trim() == "128" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fork bomb never reached the limit: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A fork fails at the limit. The bomb's processes come and go, so one probe may find a
    // slot freed for a moment: up to ten tries, one refused fork is the proof (every fork
    // succeeds when the limit does not hold). The kernel counts the refusals as well.
    let mut tries = Vec::new();
    for _ in 0..10 {
        let forks = c
            .exec(&name, &argv(&["sh", "-c", "echo $(echo x)"]))
            .await
            .unwrap();
        let refused = forks.stdout != "x\n";
        tries.push(forks);
        if refused {
            break;
        }
    }
    assert!(
        tries.last().is_some_and(|f| f.stdout != "x\n"),
        "every fork succeeded at the limit: {tries:?}"
    );
    let events = c
        .exec(&name, &argv(&["cat", "/sys/fs/cgroup/payload/pids.events"]))
        .await
        .unwrap();
    let refused: u64 = events
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(refused > 0, "the kernel refused no fork: {events:?}");
    let threads = qemu_status(&sb.id)
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!((1..=64).contains(&threads), "QEMU runs {threads} threads");
    c.kill_session(&name, &bomb_id, Some("KILL")).await.unwrap();
    drop(bomb);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = c
            .exec(&name, &argv(&["sh", "-c", "echo $(echo free)"]))
            .await
            .unwrap();
        if r.stdout == "free\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VM never recovered from the bomb: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Root in the guest takes over the agent and sends garbage (up to 4 MiB of its memory)
    // down the agent channel. The host drops that connection (it parses nothing it did not
    // bound), the daemon goes on, and once the agent serves again the VM answers (the
    // control: the injection did happen and wrote into the channel).
    c.write_file_bytes(
        &name,
        "/root/inject.py",
        Default::default(),
        INJECT_WRITE_FD.as_bytes().to_vec(),
    )
    .await
    .unwrap();
    let fd = sh_ok(
        &c,
        &name,
        "for f in /proc/1/fd/*; do case $(readlink $f) in /dev/vport*) echo ${f##*/}; break;; esac; done",
    )
    .await;
    let fd: u32 = fd
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no agent channel fd in PID 1: {fd:?}"));
    sh_ok(
        &c,
        &name,
        &format!(
            "nohup python3 /root/inject.py 1 {fd} {} > /root/inject.out 2>&1 &",
            4 << 20
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let out = loop {
        if let Ok(r) = c.exec(&name, &argv(&["cat", "/root/inject.out"])).await
            && r.stdout.starts_with("wrote")
        {
            break r.stdout;
        }
        assert!(
            Instant::now() < deadline,
            "the VM never answered after the injection"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The port is non-blocking: the write stops when the channel pushes back or closes.
    let wrote: u64 = out.trim().trim_start_matches("wrote ").parse().unwrap_or(0);
    assert!(wrote >= 4096, "the injection wrote {wrote} bytes: {out:?}");
    assert_eq!(sh_ok(&c, &name, "echo alive").await, "alive\n");
    assert!(c.get_sandbox(&name).await.is_ok(), "the daemon went down");
}

/// Run as root in a guest: makes PID 1 (the agent) write `total` bytes of its own memory to
/// its fd `fd` (ptrace: `write` syscalls run through the `syscall` instruction it is stopped
/// in). Root in a VM owns its kernel, so this works there: what a guest that took over its
/// agent can send.
const INJECT_WRITE_FD: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
NAMES = ("r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
         "fs_base gs_base ds es fs gs").split()
class Regs(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in NAMES]
pid, fd, total = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
WALL = 0x40000000
def pt(req, addr=0, data=0):
    ctypes.set_errno(0)
    r = libc.ptrace(req, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    if r == -1 and ctypes.get_errno():
        raise OSError(ctypes.get_errno(), "ptrace %d" % req)
    return r
# The agent is multithreaded and ptrace stops only its main thread: patching code would
# change it under the other threads too. So the injected write reuses the `syscall`
# instruction the main thread is stopped in (the two bytes before its rip), and the script
# waits for a stop inside a syscall if the first one is not.
import time
for attempt in range(200):
    pt(16)
    os.waitpid(pid, WALL)
    saved = Regs()
    pt(12, 0, ctypes.addressof(saved))
    at = saved.rip - 2
    if pt(1, at) & 0xffff == 0x050f:
        break
    pt(17)
    time.sleep(0.01)
else:
    sys.exit("PID 1 never stopped in a syscall")
start = end = 0
for line in open("/proc/%d/maps" % pid):
    f = line.split()
    a, b = (int(x, 16) for x in f[0].split("-"))
    if f[1].startswith("r") and not line.rstrip().endswith(("[vvar]", "[vsyscall]", "[vvar_vclock]")) \
            and b - a > end - start:
        start, end = a, b
written = 0
while written < total:
    r = Regs.from_buffer_copy(saved)
    r.rip, r.rax, r.orig_rax = at, 1, 2**64 - 1
    r.rdi, r.rsi, r.rdx = fd, start, min(end - start, 1 << 16, total - written)
    pt(13, 0, ctypes.addressof(r))
    pt(9)
    os.waitpid(pid, WALL)
    pt(12, 0, ctypes.addressof(r))
    n = ctypes.c_longlong(r.rax).value
    if n <= 0:
        break
    written += n
pt(13, 0, ctypes.addressof(saved))
pt(17)
print("wrote", written, flush=True)
"#;

/// burrowd killed between saving a VM's memory and recording the sleep: at its next start
/// the VM is found saved but not running, and resumed, its processes intact. The same for a
/// kill between saving the memory for a fork and copying it: the source resumes, and the
/// half-made fork leaves nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_mid_sleep_or_mid_fork_loses_no_process() {
    let d = Daemon::start();
    let c = d.client();
    if !vm_available(&c).await {
        return;
    }
    let name = unique_name("vmkill");
    let id = c.create_sandbox(&vm_req(&name)).await.unwrap().id;
    let before = start_counter(&c, &name).await;
    d.set_env(&[("BURROW_FAULT", "sleep.after_suspend")]);
    d.kill9();
    d.restart();
    let e = d.client().sandbox_action(&name, "sleep").await.unwrap_err();
    assert_eq!(
        e.status(),
        None,
        "the daemon died at the fault point, it did not refuse: {e}"
    );
    assert!(
        !d.wait_exit().expect("exit status").success(),
        "the daemon did not abort"
    );
    assert_eq!(
        qemu_of(&id),
        0,
        "the memory was saved and QEMU ended before the crash"
    );
    d.set_env(&[]);
    d.restart();
    let c = d.client();
    let sb = c.get_sandbox(&name).await.unwrap();
    assert_eq!(sb.status, SandboxStatus::Running, "{sb:?}");
    let after = counter(&c, &name).await;
    assert!(after >= before, "the counter restarted: {after} < {before}");
    let after = counts_past(&c, &name, after).await;

    // Killed mid-fork, after the source's memory was saved.
    d.set_env(&[("BURROW_FAULT", "fork.after_suspend")]);
    d.kill9();
    d.restart();
    let fork = unique_name("vmkf");
    let e = d
        .client()
        .create_sandbox(&live_fork(&name, &fork, true))
        .await
        .unwrap_err();
    assert_eq!(e.status(), None, "the daemon died at the fault point: {e}");
    assert!(!d.wait_exit().expect("exit status").success());
    assert_eq!(qemu_of(&id), 0, "the source's memory was saved before the crash");
    d.set_env(&[]);
    d.restart();
    let c = d.client();
    let sb = c.get_sandbox(&name).await.unwrap();
    assert_eq!(sb.status, SandboxStatus::Running, "{sb:?}");
    let resumed = counter(&c, &name).await;
    assert!(resumed >= after, "the counter restarted: {resumed} < {after}");
    counts_past(&c, &name, resumed).await;
    let e = c.get_sandbox(&fork).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "the half-made fork is still listed: {e}");
    let volumes: Vec<String> = std::fs::read_dir(d.data_dir.join("pool/sandboxes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(volumes, vec![id.clone()], "volumes left behind");
    // The control: the same fork, uninterrupted, is made and runs the processes.
    c.create_sandbox(&live_fork(&name, &fork, true)).await.unwrap();
    let copied = counter(&c, &fork).await;
    assert!(
        copied >= after,
        "the fork's counter restarted: {copied} < {after}"
    );
    counts_past(&c, &fork, copied).await;
}

/// A fork of `src`'s live state named `name`; `memory`: its processes too.
fn live_fork(src: &str, name: &str, memory: bool) -> CreateSandbox {
    CreateSandbox {
        name: SandboxName::parse(name).unwrap(),
        from: Some(burrow_api::ForkSource {
            sandbox: SandboxName::parse(src).unwrap(),
            checkpoint: None,
            memory,
        }),
        ..Default::default()
    }
}
