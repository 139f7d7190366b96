//! What a sandbox cannot do, checked from inside a real sandbox (docs/threat-model.md).

use burrow_api::{CreateSandbox, ExecRequest, ExecResult, SandboxName};
use burrow_testkit::burrow_client::Client;
use burrow_testkit::{shared, unique_name};

async fn make(c: &Client, f: impl FnOnce(&mut CreateSandbox)) -> burrow_api::Sandbox {
    let mut req = CreateSandbox {
        name: SandboxName::parse(&unique_name("iso")).unwrap(),
        ..Default::default()
    };
    f(&mut req);
    c.create_sandbox(&req).await.expect("create")
}

async fn sh(c: &Client, name: &str, script: &str) -> ExecResult {
    let req = ExecRequest {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    };
    c.exec(name, &req)
        .await
        .unwrap_or_else(|e| panic!("exec {script}: {e}"))
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
    let r = sh(
        &c,
        &sb.name,
        "cat /proc/1/root/etc/hostname; ls /sys/fs/btrfs 2>&1 | head -1",
    )
    .await;
    assert_eq!(r.stdout.lines().next(), Some(sb.name.as_str()));
    c.delete_sandbox(&sb.name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn kernel_interfaces_are_not_writable() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |_| {}).await;
    for (what, script) in [
        ("sysrq", "echo h > /proc/sysrq-trigger"),
        (
            "sys/kernel",
            "echo 1 > /sys/kernel/profiling || touch /sys/kernel/x",
        ),
        ("proc/sys", "echo 1 > /proc/sys/kernel/sysrq"),
        ("mknod block", "mknod /tmp/sda b 8 0 && head -c1 /tmp/sda"),
        ("mount", "mount -t tmpfs none /mnt"),
        ("unshare", "unshare -U true"),
        ("kernel modules", "echo > /proc/sys/kernel/modprobe"),
        ("hostname", "hostname evil"),
        (
            "keyring",
            "python3 -c 'import ctypes,sys; l=ctypes.CDLL(None); sys.exit(0 if l.syscall(250, b\"user\", b\"k\", b\"v\", 1, -4) >= 0 else 1)'",
        ),
        (
            "bpf",
            "python3 -c 'import ctypes,sys; l=ctypes.CDLL(None); sys.exit(0 if l.syscall(321, 0, 0, 0) >= 0 else 1)'",
        ),
    ] {
        let r = sh(&c, &sb.name, script).await;
        assert_ne!(r.exit_code, 0, "{what} succeeded inside the sandbox: {r:?}");
    }
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
