//! The jail around a VM's QEMU, end to end through a real daemon: its own cgroup with the
//! sandbox's limits (removed with QEMU), its own mount namespace holding only its files;
//! and what the host still changes under a running VM (its disk, grown online).
//! Guests boot in seconds under TCG: each test shares one VM across its checks.

use std::path::{Path, PathBuf};

use burrow_api::{CreateSandbox, EngineKind, PatchSandbox, SandboxName};
use burrow_engine::vm::cgroup;
use burrow_testkit::burrow_client::Client;
use burrow_testkit::fixtures::{sh_ok, vm_available};
use burrow_testkit::{Daemon, unique_name};

fn vm_req(name: &str) -> CreateSandbox {
    CreateSandbox {
        name: SandboxName::parse(name).unwrap(),
        engine: Some(EngineKind::Vm),
        memory_mb: Some(512),
        ..Default::default()
    }
}

/// The pid of the QEMU that runs sandbox `id`.
fn qemu_pid(id: &str) -> Option<u32> {
    let needle = format!("burrow-{id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == needle.as_bytes()))
        })
}

/// Whether `/sys/fs/cgroup` is the unified (v2) hierarchy.
fn unified() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// `/proc/<pid>/cgroup` as (controllers, path) pairs.
fn cgroups_of(pid: u32) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((ctrl.to_owned(), path.to_owned()))
        })
        .collect()
}

/// The directory of `pid`'s cgroup for `controller` (v1), or its v2 cgroup.
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let all = cgroups_of(pid);
    if unified() {
        let (_, path) = all.iter().find(|(c, _)| c.is_empty()).expect("a v2 line");
        return Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    }
    let (_, path) = all
        .iter()
        .find(|(c, _)| c.split(',').any(|c| c == controller))
        .unwrap_or_else(|| panic!("no {controller} line in {all:?}"));
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'))
}

fn read_trim(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// QEMU runs in its own cgroup under the daemon's parent, with guest RAM plus the bounded
/// overhead, its threads and its cpus as limits; a daemon restart removes a leftover cgroup
/// of a VM that is gone and keeps a running VM's (the control); sleep, a start that fails
/// after QEMU ran, and stop remove it.
#[tokio::test(flavor = "multi_thread")]
async fn qemu_runs_in_its_own_cgroup_with_the_sandboxs_limits() {
    let d = Daemon::start();
    let c = d.client();
    if !vm_available(&c).await {
        return;
    }
    let name = unique_name("vmcg");
    let sb = c
        .create_sandbox(&CreateSandbox {
            cpus: Some(1.5),
            ..vm_req(&name)
        })
        .await
        .unwrap();
    assert_eq!(sh_ok(&c, &name, "echo up").await, "up\n");
    let pid = qemu_pid(&sb.id).expect("QEMU runs");
    // 1.5 cpus are two vCPUs on KVM, one under TCG (where more can hang a boot); the guest
    // sees what QEMU was given.
    let detail = c
        .get_sandbox(&name)
        .await
        .unwrap()
        .engine_detail
        .unwrap_or_default();
    let vcpus: u64 = if detail.contains("accel tcg") { 1 } else { 2 };
    assert!(
        detail.contains("accel "),
        "the engine names its accelerator: {detail}"
    );
    assert_eq!(sh_ok(&c, &name, "nproc").await, format!("{vcpus}\n"));

    // Its cgroup is its own: `<parent>/vm/<id>` in every controller.
    let controllers: &[&str] = if unified() {
        &[""]
    } else {
        &["memory", "pids", "cpu"]
    };
    let mut dirs = Vec::new();
    for ctrl in controllers {
        let dir = cgroup_dir(pid, ctrl);
        assert!(
            dir.ends_with(Path::new("vm").join(&sb.id)),
            "QEMU's {ctrl} cgroup is {}",
            dir.display()
        );
        let parent = dir.parent().unwrap().parent().unwrap();
        assert!(
            parent
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("burrow-"),
            "not under the daemon's cgroup parent: {}",
            dir.display()
        );
        let procs = read_trim(&dir.join("cgroup.procs"));
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "QEMU ({pid}) is not in {}: {procs}",
            dir.display()
        );
        dirs.push(dir);
    }
    // Control for the probe: this test's own process is not in a VM's cgroup.
    let me = cgroups_of(std::process::id());
    assert!(
        me.iter().all(|(_, p)| !p.contains(&sb.id)),
        "the probe finds the VM's id everywhere: {me:?}"
    );

    // Its limits: guest RAM + the overhead allowance, its threads, its cpus.
    let want_mem = (512 + cgroup::QEMU_OVERHEAD_MIB) << 20;
    let want_pids = 1 + vcpus + u64::from(cgroup::THREAD_POOL_MAX) + cgroup::PIDS_MARGIN;
    let (mem, pids, cpu) = if unified() {
        let d = &dirs[0];
        (
            read_trim(&d.join("memory.max")),
            read_trim(&d.join("pids.max")),
            read_trim(&d.join("cpu.max")),
        )
    } else {
        (
            read_trim(&dirs[0].join("memory.limit_in_bytes")),
            read_trim(&dirs[1].join("pids.max")),
            format!(
                "{} {}",
                read_trim(&dirs[2].join("cpu.cfs_quota_us")),
                read_trim(&dirs[2].join("cpu.cfs_period_us"))
            ),
        )
    };
    assert_eq!(mem, want_mem.to_string(), "memory limit");
    assert_eq!(pids, want_pids.to_string(), "pids limit");
    assert_eq!(cpu, "150000 100000", "cpu quota of 1.5 cpus");
    // QEMU's threads fit under the pids limit with room (it aborts when it cannot start one).
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count() as u64;
    assert!(
        threads < want_pids,
        "QEMU runs {threads} threads, limit {want_pids}"
    );

    // A leftover VM cgroup (its QEMU gone while no daemon ran) is removed at the next
    // start; the running VM's cgroup is kept (the control), with QEMU in it.
    let leftovers: Vec<PathBuf> = dirs
        .iter()
        .map(|d| d.parent().unwrap().join("sb-leftover0000"))
        .collect();
    d.kill9();
    for l in &leftovers {
        std::fs::create_dir(l).unwrap();
    }
    d.restart();
    let c = d.client();
    for l in &leftovers {
        assert!(!l.exists(), "{} is left", l.display());
    }
    for dir in &dirs {
        assert!(dir.is_dir(), "the running VM's {} was removed", dir.display());
    }
    assert_eq!(qemu_pid(&sb.id), Some(pid), "the VM went on across the restart");
    assert_eq!(sh_ok(&c, &name, "echo still").await, "still\n");

    // Sleep ends QEMU and removes its cgroup. A wake that fails once QEMU runs (a saved
    // state it cannot load, under a manifest that matches it, so only QEMU can refuse it)
    // leaves none behind either.
    c.sandbox_action(&name, "sleep").await.unwrap();
    for dir in &dirs {
        assert!(!dir.exists(), "{} outlived a sleeping VM's QEMU", dir.display());
    }
    let volume = d.data_dir.join("pool/sandboxes").join(&sb.id);
    let garbage = vec![0x5au8; 4096];
    std::fs::write(volume.join("state.bin"), &garbage).unwrap();
    let manifest = volume.join("state.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["state_bytes"] = garbage.len().into();
    m["state_sha256"] = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(&garbage)).into()
    };
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let e = c.sandbox_action(&name, "wake").await.unwrap_err();
    assert!(
        e.to_string().contains("QMP"),
        "QEMU did not get to refuse the state: {e}"
    );
    assert_eq!(qemu_pid(&sb.id), None);
    for dir in &dirs {
        assert!(!dir.exists(), "{} outlived a failed start", dir.display());
    }
    // Control: the next start makes the cgroup again, with the new QEMU in it.
    c.sandbox_action(&name, "stop").await.unwrap();
    c.sandbox_action(&name, "start").await.unwrap();
    let pid = qemu_pid(&sb.id).expect("QEMU runs again");
    for dir in &dirs {
        let procs = read_trim(&dir.join("cgroup.procs"));
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "{}: {procs}",
            dir.display()
        );
    }

    // Stop: QEMU is gone, and its cgroup with it.
    c.sandbox_action(&name, "stop").await.unwrap();
    assert_eq!(qemu_pid(&sb.id), None);
    for dir in &dirs {
        assert!(!dir.exists(), "{} outlived QEMU", dir.display());
    }
}

/// QEMU's root holds only its own files: through `/proc/<qemu>/root` its socket directory
/// (with its sockets) and the initramfs are there, while the daemon's data dir, the pool's
/// volumes (another sandbox's and its own), other run dirs, `/root`, `/home`, `/tmp` and
/// `/etc` are not, each of which the host has (the control). The VM boots and runs.
#[tokio::test(flavor = "multi_thread")]
async fn qemu_sees_only_its_own_files() {
    let d = Daemon::start();
    let c = d.client();
    if !vm_available(&c).await {
        return;
    }
    let other = unique_name("ctr");
    let other_id = c
        .create_sandbox(&CreateSandbox {
            name: SandboxName::parse(&other).unwrap(),
            engine: Some(EngineKind::Container),
            ..Default::default()
        })
        .await
        .unwrap()
        .id;
    let name = unique_name("vmns");
    let sb = c.create_sandbox(&vm_req(&name)).await.unwrap();
    assert_eq!(sh_ok(&c, &name, "echo up").await, "up\n");
    let pid = qemu_pid(&sb.id).expect("QEMU runs");
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap());

    // What it needs is there (the control for the probe through its root).
    let own = d.data_dir.join("run").join(&sb.id).join("vm");
    for sock in ["qmp.sock", "agent.sock"] {
        assert!(
            inside(&own.join(sock)).exists(),
            "its own {sock} is not visible to QEMU"
        );
    }
    let initramfs = std::fs::read_dir("/var/cache/burrow/vm")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| inside(p).is_file());
    assert!(initramfs.is_some(), "QEMU sees no initramfs");
    assert!(inside(Path::new("/usr/lib")).is_dir());

    // What it must not see, each present on the host.
    let hidden = [
        d.data_dir.join("state.db"),
        d.data_dir.join("pool/sandboxes").join(&other_id),
        d.data_dir.join("pool/sandboxes").join(&sb.id),
        d.data_dir.join("run").join(&other_id),
        d.data_dir.join("run").join(&sb.id).join("agent.log"),
        PathBuf::from("/root"),
        PathBuf::from("/home"),
        PathBuf::from("/tmp"),
        PathBuf::from("/var/lib"),
        PathBuf::from("/etc/passwd"),
    ];
    for p in &hidden {
        assert!(p.exists(), "control: {} exists on the host", p.display());
        assert!(
            !inside(p).exists(),
            "QEMU sees {} (as {})",
            p.display(),
            inside(p).display()
        );
    }
    // On the way to its socket directory, each directory holds only the next step (the
    // data dir shows `run` alone, the run dir this VM's alone).
    let mut at = own.clone();
    while at != d.data_dir {
        let parent = at.parent().unwrap();
        let names: Vec<String> = std::fs::read_dir(inside(parent))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let next = at.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(names, [next], "QEMU sees more of {}", parent.display());
        at = parent.to_owned();
    }
    // Its root is read-only but for its socket directory.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let rw: Vec<&str> = mountinfo
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(5)
                .is_some_and(|o| o.split(',').any(|f| f == "rw"))
        })
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    let own_s = own.to_string_lossy();
    assert!(
        rw.iter()
            .all(|m| *m == own_s || m.starts_with("/dev/") || *m == "/proc"),
        "writable mounts in QEMU's root: {rw:?}"
    );
    assert!(
        rw.contains(&own_s.as_ref()),
        "its socket dir is not writable: {rw:?}"
    );

    // The VM works in its jail: the agent answers, sleep and wake go through.
    c.sandbox_action(&name, "sleep").await.unwrap();
    assert_eq!(qemu_pid(&sb.id), None);
    assert_eq!(sh_ok(&c, &name, "echo woke").await, "woke\n");
}

/// The size of `/` in the guest, in MiB.
async fn root_mb(c: &Client, name: &str) -> u64 {
    sh_ok(c, name, "df -B1M --output=size / | tail -1")
        .await
        .trim()
        .parse()
        .unwrap()
}

/// A larger `disk_gb` reaches a running VM at once: the guest's `/` is that big right after
/// the PATCH, with no restart (the same QEMU) and its files intact; a smaller one is refused
/// with 409 and changes nothing (the growth before is the control).
#[tokio::test(flavor = "multi_thread")]
async fn a_running_vms_disk_grows_online_and_never_shrinks() {
    let d = Daemon::start();
    let c = d.client();
    if !vm_available(&c).await {
        return;
    }
    let name = unique_name("vmdisk");
    let sb = c
        .create_sandbox(&CreateSandbox {
            disk_gb: Some(2),
            ..vm_req(&name)
        })
        .await
        .unwrap();
    let before = root_mb(&c, &name).await;
    assert!(before <= 2048 && before > 2048 * 9 / 10, "/ is {before} MiB");
    sh_ok(&c, &name, "echo kept > /root/keep && sync").await;
    let pid = qemu_pid(&sb.id).expect("QEMU runs");

    let patched = c
        .patch_sandbox(
            &name,
            &PatchSandbox {
                disk_gb: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(patched.config.disk_gb, 3);
    let after = root_mb(&c, &name).await;
    assert!(
        after <= 3072 && after > 3072 * 9 / 10,
        "/ is {after} MiB after growing to 3 GB (was {before})"
    );
    assert_eq!(qemu_pid(&sb.id), Some(pid), "the VM was restarted");
    assert_eq!(sh_ok(&c, &name, "cat /root/keep").await, "kept\n");
    // The guest can use the new room.
    sh_ok(&c, &name, "fallocate -l 2600M /root/big && rm /root/big").await;

    let e = c
        .patch_sandbox(
            &name,
            &PatchSandbox {
                disk_gb: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("cannot shrink"), "{e}");
    assert_eq!(c.get_sandbox(&name).await.unwrap().config.disk_gb, 3);
    assert_eq!(root_mb(&c, &name).await, after);
}
