//! Checkpoints, restore, forks and templates end to end against a real daemon (btrfs
//! snapshots, runc), including crash safety with `kill -9` at exact steps.

use std::path::Path;

use burrow_api::{CreateImage, CreateSandbox, ExecRequest, ForkSource, SandboxName, SandboxStatus};
use burrow_testkit::burrow_client::{Client, ClientError, ExecEvent, ExecStreamOptions, Method};
use burrow_testkit::fixtures::{fork_req, sh_ok, volume_limit};
use burrow_testkit::{Daemon, raw_unix, shared, unique_name};

fn req(name: &str) -> CreateSandbox {
    CreateSandbox {
        name: SandboxName::parse(name).unwrap(),
        ..Default::default()
    }
}

async fn checkpoint(c: &Client, name: &str, comment: &str) -> String {
    let v: serde_json::Value = c
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{name}/checkpoints"),
            Some(&serde_json::json!({ "comment": comment })),
        )
        .await
        .unwrap();
    v["id"].as_str().unwrap().to_owned()
}

async fn restore(c: &Client, name: &str, id: &str) -> Result<serde_json::Value, ClientError> {
    c.request_json::<serde_json::Value, ()>(
        Method::POST,
        &format!("/v1/sandboxes/{name}/checkpoints/{id}/restore"),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_brings_back_the_checkpoint_and_keeps_the_replaced_state() {
    let c = shared().client();
    let name = unique_name("cp");
    c.create_sandbox(&req(&name)).await.unwrap();
    sh_ok(
        &c,
        &name,
        "echo before > /root/data; mkdir -p /srv && echo kept > /srv/x",
    )
    .await;
    // A background process survives a live checkpoint untouched.
    let pid = sh_ok(
        &c,
        &name,
        "setsid sleep 1000 >/dev/null 2>&1 < /dev/null & echo $!",
    )
    .await;
    let v0 = checkpoint(&c, &name, "first").await;
    assert_eq!(v0, "v0");
    assert_eq!(
        sh_ok(&c, &name, &format!("kill -0 {} && echo alive", pid.trim())).await,
        "alive\n"
    );
    sh_ok(&c, &name, "echo after > /root/data; echo new > /root/only-after").await;

    let r = restore(&c, &name, &v0).await.unwrap();
    assert_eq!(r["restored"], "v0");
    let backup = r["backup"].as_str().unwrap().to_owned();
    assert_eq!(backup, "v1");
    assert_eq!(c.get_sandbox(&name).await.unwrap().status, SandboxStatus::Running);
    assert_eq!(sh_ok(&c, &name, "cat /root/data /srv/x").await, "before\nkept\n");
    assert_eq!(
        sh_ok(&c, &name, "test -e /root/only-after || echo gone").await,
        "gone\n"
    );
    // The replaced state is in the backup, readable from inside.
    assert_eq!(
        sh_ok(
            &c,
            &name,
            "cat /.burrow/checkpoints/v1/root/data /.burrow/checkpoints/v1/root/only-after"
        )
        .await,
        "after\nnew\n"
    );
    // And restoring the backup brings it back (ids keep growing, never reused).
    let r = restore(&c, &name, &backup).await.unwrap();
    assert_eq!(r["backup"], "v2");
    assert_eq!(sh_ok(&c, &name, "cat /root/data").await, "after\n");

    let list: serde_json::Value = c
        .get_json(&format!("/v1/sandboxes/{name}/checkpoints"))
        .await
        .unwrap();
    let ids: Vec<&str> = list["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["v0", "v1", "v2"]);
    assert_eq!(list["checkpoints"][1]["source"], "restore-backup");
    assert_eq!(list["checkpoints"][0]["comment"], "first");
    // Delete a checkpoint; ids are not reused.
    c.request_json::<serde_json::Value, ()>(
        Method::DELETE,
        &format!("/v1/sandboxes/{name}/checkpoints/v2"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(checkpoint(&c, &name, "").await, "v3");
    c.delete_sandbox(&name).await.unwrap();
}

/// The start time of the sandbox's PID 1 (its agent), which an exec keeps and a restart
/// changes.
async fn init_started(c: &Client, name: &str) -> String {
    sh_ok(c, name, "cut -d' ' -f22 /proc/1/stat").await
}

/// A running container's restore puts the checkpoint under it in place: no new container
/// (its init is the same process: the agent re-executed itself), every process of before
/// gone, and the sandbox's mounts exactly as a boot makes them, none shared with the host,
/// nothing of the swap left in sight. The control: a stop and start is seen as a restart by
/// the same probe.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_swaps_the_root_under_the_running_sandbox() {
    let c = shared().client();
    let name = unique_name("inplace");
    let id = c
        .create_sandbox(&CreateSandbox {
            memory_mb: Some(300),
            disk_gb: Some(2),
            ..req(&name)
        })
        .await
        .unwrap()
        .id;
    let volume = shared().data_dir.join("pool/sandboxes").join(&id);
    // The probe of the disk limit reads it where a create set it (the control for after).
    assert_eq!(volume_limit(&volume), Some(2 << 30));
    // What a boot gives it: the mount points and what lxcfs says of its memory.
    let mounts = "awk '{print $5}' /proc/self/mountinfo | sort";
    let booted = sh_ok(&c, &name, mounts).await;
    let meminfo = "awk '/MemTotal/ {print $2}' /proc/meminfo";
    let mem = sh_ok(&c, &name, meminfo).await;
    sh_ok(&c, &name, "echo before > /root/data").await;
    let v0 = checkpoint(&c, &name, "").await;
    sh_ok(&c, &name, "echo after > /root/data").await;
    let pid = sh_ok(
        &c,
        &name,
        "setsid sleep 1000 >/dev/null 2>&1 < /dev/null & echo $!",
    )
    .await;
    let init = init_started(&c, &name).await;

    restore(&c, &name, &v0).await.unwrap();
    assert_eq!(sh_ok(&c, &name, "cat /root/data").await, "before\n");
    assert_eq!(
        init_started(&c, &name).await,
        init,
        "the sandbox was restarted, not restored in place"
    );
    assert_eq!(
        sh_ok(
            &c,
            &name,
            &format!("kill -0 {} 2>/dev/null || echo gone", pid.trim())
        )
        .await,
        "gone\n",
        "a process of the replaced state survived the restore"
    );
    assert_eq!(
        sh_ok(&c, &name, mounts).await,
        booted,
        "the mounts differ from a boot's"
    );
    assert_eq!(sh_ok(&c, &name, meminfo).await, mem);
    assert_eq!(
        volume_limit(&volume),
        Some(2 << 30),
        "the restored volume has no disk limit"
    );
    // No mount propagates to or from the host's (the control: the host's own tree has
    // shared mounts, so the probe finds them where they are).
    let shared_mounts = "grep -c ' shared:' /proc/self/mountinfo || true";
    assert_eq!(sh_ok(&c, &name, shared_mounts).await, "0\n");
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        host.contains(" shared:"),
        "the host has no shared mount: the probe proves nothing"
    );
    assert_eq!(
        sh_ok(&c, &name, "ls -a / | grep -c newroot || true").await,
        "0\n",
        "the swap's mount point is in sight"
    );
    // Everything works as after a boot: a file written, a process started, the hostname.
    assert_eq!(
        sh_ok(&c, &name, "echo x > /root/y && cat /root/y && hostname").await,
        format!("x\n{name}\n")
    );

    // The control: a stop and a start is a new init.
    c.sandbox_action(&name, "stop").await.unwrap();
    c.sandbox_action(&name, "start").await.unwrap();
    assert_ne!(
        init_started(&c, &name).await,
        init,
        "the probe does not see a restart"
    );
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoint_during_heavy_writes_restores_a_prefix_without_torn_lines() {
    let c = shared().client();
    let name = unique_name("log");
    c.create_sandbox(&req(&name)).await.unwrap();
    // A writer appends numbered, fsynced lines as fast as it can, forever.
    let writer = r#"
import os
fd = os.open("/root/log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
i = 0
while True:
    os.write(fd, ("%08d %s\n" % (i, "x" * 100)).encode())
    os.fsync(fd)
    i += 1
"#;
    sh_ok(
        &c,
        &name,
        &format!(
            "cat > /root/w.py <<'EOF'\n{writer}\nEOF\nsetsid python3 /root/w.py >/dev/null 2>&1 < /dev/null &"
        ),
    )
    .await;
    sh_ok(
        &c,
        &name,
        "while [ $(wc -l < /root/log 2>/dev/null || echo 0) -lt 200 ]; do sleep 0.01; done",
    )
    .await;
    let cp = checkpoint(&c, &name, "mid-write").await;
    sh_ok(
        &c,
        &name,
        "n=$(wc -l < /root/log); while [ $(wc -l < /root/log) -lt $((n+200)) ]; do sleep 0.01; done",
    )
    .await;
    restore(&c, &name, &cp).await.unwrap();
    let check = r#"
import sys
data = open("/root/log", "rb").read()
assert data.endswith(b"\n"), "torn last line"
lines = data.split(b"\n")[:-1]
for i, l in enumerate(lines):
    assert l == b"%08d %s" % (i, b"x" * 100), "line %d is %r" % (i, l[:20])
print(len(lines))
"#;
    let n: u64 = sh_ok(&c, &name, &format!("python3 -c '{check}'"))
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(n >= 200, "restored log has {n} lines");
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn forks_are_independent_and_parallel() {
    let c = shared().client();
    let parent = unique_name("parent");
    c.create_sandbox(&req(&parent)).await.unwrap();
    sh_ok(&c, &parent, "echo base > /root/f").await;
    let cp = checkpoint(&c, &parent, "").await;
    sh_ok(&c, &parent, "echo parent-after > /root/f").await;
    // Ten forks of one checkpoint at once.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let c = c.clone();
        let (parent, cp) = (parent.clone(), cp.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("{parent}-f{i}");
            let sb = c
                .create_sandbox(&fork_req(&name, &parent, Some(&cp)))
                .await
                .unwrap();
            assert_eq!(sb.parent.unwrap().checkpoint.as_deref(), Some(cp.as_str()));
            assert_eq!(sh_ok(&c, &name, "cat /root/f").await, "base\n");
            sh_ok(&c, &name, &format!("echo fork-{i} > /root/f")).await;
            name
        }));
    }
    let mut forks = Vec::new();
    for t in tasks {
        forks.push(t.await.unwrap());
    }
    // No fork's write shows in its parent or siblings.
    assert_eq!(sh_ok(&c, &parent, "cat /root/f").await, "parent-after\n");
    for (i, f) in forks.iter().enumerate() {
        assert_eq!(sh_ok(&c, f, "cat /root/f").await, format!("fork-{i}\n"));
    }
    // A fork of the live state sees the parent's current files, from another sandbox too.
    let live = unique_name("live");
    c.create_sandbox(&fork_req(&live, &parent, None)).await.unwrap();
    assert_eq!(sh_ok(&c, &live, "cat /root/f").await, "parent-after\n");
    // Deleting the parent never breaks its forks.
    c.delete_sandbox(&parent).await.unwrap();
    assert_eq!(sh_ok(&c, &forks[3], "cat /root/f").await, "fork-3\n");
    for f in forks.iter().chain([&live]) {
        c.delete_sandbox(f).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_checkpoint_requests() {
    let d = shared();
    let c = d.client();
    let name = unique_name("bad");
    c.create_sandbox(&req(&name)).await.unwrap();
    let e = restore(&c, &name, "v9").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("v9"), "{e}");
    assert_eq!(
        restore(&c, &name, "latest").await.unwrap_err().status(),
        Some(400)
    );
    assert_eq!(
        c.get_json::<serde_json::Value>(&format!("/v1/sandboxes/{name}/checkpoints/v0"))
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    // Fork onto an existing name, or from a missing checkpoint / sandbox.
    checkpoint(&c, &name, "").await;
    assert_eq!(
        c.create_sandbox(&fork_req(&name, &name, Some("v0")))
            .await
            .unwrap_err()
            .status(),
        Some(409)
    );
    let other = unique_name("other");
    assert_eq!(
        c.create_sandbox(&fork_req(&other, &name, Some("v7")))
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    assert_eq!(
        c.create_sandbox(&fork_req(&other, "no-such-sb", None))
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
    assert_eq!(
        c.get_sandbox(&other).await.unwrap_err().status(),
        Some(404),
        "failed fork left a sandbox"
    );
    // A comment that is too long, and a body that is not JSON.
    let long = "x".repeat(2000);
    let e = c
        .request_json::<serde_json::Value, _>(
            Method::POST,
            &format!("/v1/sandboxes/{name}/checkpoints"),
            Some(&serde_json::json!({"comment": long})),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(422));
    let r = raw_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{name}/checkpoints"),
        &[("content-type", "application/json")],
        b"nope".to_vec(),
    )
    .await;
    assert_eq!(r.status, 400);
    // A checkpoint of a deleted sandbox: 404.
    c.delete_sandbox(&name).await.unwrap();
    let e = c
        .request_json::<serde_json::Value, ()>(
            Method::POST,
            &format!("/v1/sandboxes/{name}/checkpoints"),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_from_inside_the_sandbox() {
    let c = shared().client();
    let name = unique_name("inside");
    c.create_sandbox(&req(&name)).await.unwrap();
    sh_ok(&c, &name, "echo inside > /root/f").await;
    let out = sh_ok(&c, &name, "curl -sf --unix-socket /.burrow/api.sock -X POST http://burrow/checkpoints -H 'content-type: application/json' -d '{\"comment\":\"from inside\"}'").await;
    let cp: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (cp["id"].as_str(), cp["source"].as_str()),
        (Some("v0"), Some("inside"))
    );
    let out = sh_ok(
        &c,
        &name,
        "curl -sf --unix-socket /.burrow/api.sock http://burrow/checkpoints",
    )
    .await;
    assert!(out.contains("from inside"), "{out}");
    assert_eq!(
        sh_ok(&c, &name, "cat /.burrow/checkpoints/v0/root/f").await,
        "inside\n"
    );
    // Checkpoints are read-only inside: the write fails for that reason, and the file is
    // unchanged. Control: the same write to the sandbox's own file works.
    let r = c
        .exec(
            &name,
            &ExecRequest {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo x > /.burrow/checkpoints/v0/root/f".into(),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_ne!(r.exit_code, 0, "{r:?}");
    assert!(r.stderr.contains("Read-only file system"), "{r:?}");
    assert_eq!(
        sh_ok(&c, &name, "cat /.burrow/checkpoints/v0/root/f").await,
        "inside\n"
    );
    assert_eq!(
        sh_ok(&c, &name, "echo x > /root/g && cat /root/g").await,
        "x\n",
        "control"
    );
    // The inside API reaches only this sandbox: no route to other sandboxes or the admin API.
    let out = sh_ok(
        &c,
        &name,
        "curl -s -o /dev/null -w '%{http_code}' --unix-socket /.burrow/api.sock http://burrow/v1/sandboxes",
    )
    .await;
    assert_eq!(out, "404");
    // Restore from inside: accepted, then the sandbox comes back on the checkpoint.
    sh_ok(&c, &name, "echo changed > /root/f").await;
    // The restore ends every process, the caller too: its exec may be cut off before the
    // answer comes back (then the restore below shows it was accepted).
    let asked = c
        .exec(
            &name,
            &ExecRequest {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "curl -s -o /dev/null -w '%{http_code}' --unix-socket /.burrow/api.sock -X POST http://burrow/checkpoints/v0/restore".into(),
                ],
                ..Default::default()
            },
        )
        .await;
    if let Ok(r) = &asked {
        assert_eq!(r.stdout, "202", "{r:?}");
    }
    // Wait (bounded) for the restore to finish: the backup checkpoint appears.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let list: serde_json::Value = c
            .get_json(&format!("/v1/sandboxes/{name}/checkpoints"))
            .await
            .unwrap();
        let sb = c.get_sandbox(&name).await.unwrap();
        let ready = list["checkpoints"].as_array().unwrap().len() == 2 && sb.status == SandboxStatus::Running;
        let cat = ExecRequest {
            cmd: vec!["cat".into(), "/root/f".into()],
            ..Default::default()
        };
        if ready && c.exec(&name, &cat).await.is_ok_and(|r| r.stdout == "inside\n") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "restore from inside did not complete"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_make_new_sandboxes_and_are_protected_while_used() {
    let c = shared().client();
    let name = unique_name("tpl-src");
    c.create_sandbox(&req(&name)).await.unwrap();
    sh_ok(&c, &name, "echo toolchain > /opt/tool").await;
    let cp = checkpoint(&c, &name, "deps installed").await;
    let image = unique_name("tpl");
    let img: serde_json::Value = c
        .request_json(
            Method::POST,
            "/v1/images",
            Some(&CreateImage {
                name: image.clone(),
                from: ForkSource {
                    sandbox: SandboxName::parse(&name).unwrap(),
                    checkpoint: Some(cp),
                    memory: false,
                },
            }),
        )
        .await
        .unwrap();
    assert_eq!(img["status"], "ready");
    let user = unique_name("tpl-user");
    let mut r = req(&user);
    r.image = Some(image.clone());
    c.create_sandbox(&r).await.unwrap();
    assert_eq!(sh_ok(&c, &user, "cat /opt/tool").await, "toolchain\n");
    // The source can go; the template and its sandbox stay intact.
    c.delete_sandbox(&name).await.unwrap();
    assert_eq!(sh_ok(&c, &user, "cat /opt/tool").await, "toolchain\n");
    // In use: 409. Unused: 204. base: 409.
    let path = format!("/v1/images/{image}");
    let e = c
        .request_json::<serde_json::Value, ()>(Method::DELETE, &path, None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert!(e.to_string().contains(&user), "{e}");
    c.delete_sandbox(&user).await.unwrap();
    c.request_json::<serde_json::Value, ()>(Method::DELETE, &path, None)
        .await
        .unwrap();
    assert_eq!(
        c.request_json::<serde_json::Value, ()>(Method::DELETE, "/v1/images/base", None)
            .await
            .unwrap_err()
            .status(),
        Some(409)
    );
    assert_eq!(
        c.request_json::<serde_json::Value, ()>(Method::DELETE, &path, None)
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_ends_running_sessions_with_a_reason() {
    let c = shared().client();
    let name = unique_name("sess");
    c.create_sandbox(&req(&name)).await.unwrap();
    let cp = checkpoint(&c, &name, "").await;
    let mut s = c
        .exec_stream(&name, ExecStreamOptions::new(["sleep", "1000"]))
        .await
        .unwrap();
    assert!(matches!(
        s.next_event().await.unwrap(),
        Some(ExecEvent::Session { .. })
    ));
    restore(&c, &name, &cp).await.unwrap();
    let out = s
        .collect()
        .await
        .expect("an exit frame, not a dropped connection");
    let reason = out.reason.expect("the exit frame says why");
    assert!(reason.contains("restored"), "{reason}");
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn ndjson_progress_when_asked() {
    let d = shared();
    let name = unique_name("nd");
    d.client().create_sandbox(&req(&name)).await.unwrap();
    let r = raw_unix(
        &d.socket,
        "POST",
        &format!("/v1/sandboxes/{name}/checkpoints"),
        &[("accept", "application/x-ndjson")],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.first().unwrap()["type"], "info");
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "complete");
    assert_eq!(last["data"]["id"], "v0");
    assert!(last["time"].as_str().unwrap().ends_with('Z'));
    d.client().delete_sandbox(&name).await.unwrap();
}

// ----- crash safety -------------------------------------------------------------------

fn volumes(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn crash_at(d: &Daemon, point: &str, op: impl std::future::Future<Output = ()>) {
    d.set_env(&[("BURROW_FAULT", point)]);
    d.kill9();
    d.restart();
    op.await;
    assert!(
        !d.wait_exit().expect("exit status").success(),
        "daemon did not abort at {point}"
    );
    d.set_env(&[]);
    d.restart();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_checkpoint_leaves_no_half_checkpoint() {
    let d = Daemon::start();
    let name = unique_name("crash-cp");
    let id = d.client().create_sandbox(&req(&name)).await.unwrap().id;
    crash_at(&d, "checkpoint.after_snapshot", async {
        assert!(
            d.client()
                .request_json::<serde_json::Value, ()>(
                    Method::POST,
                    &format!("/v1/sandboxes/{name}/checkpoints"),
                    None
                )
                .await
                .is_err_and(|e| e.status().is_none()),
            "the daemon died at the fault point (no answer), it did not refuse"
        );
    })
    .await;
    let c = d.client();
    let list: serde_json::Value = c
        .get_json(&format!("/v1/sandboxes/{name}/checkpoints"))
        .await
        .unwrap();
    assert_eq!(
        list["checkpoints"].as_array().unwrap().len(),
        0,
        "half-made checkpoint visible"
    );
    assert!(
        volumes(&d.data_dir.join("pool/checkpoints").join(&id)).is_empty(),
        "orphan checkpoint volume"
    );
    // The next checkpoint does not reuse the number of the lost one.
    assert_eq!(checkpoint(&c, &name, "").await, "v1");
    // The sandbox still runs (it was thawed or restarted).
    assert_eq!(sh_ok(&c, &name, "echo ok").await, "ok\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_restore_leaves_old_or_new_state_and_says_which() {
    for (point, expect_new) in [
        ("restore.after_backup", false),
        ("restore.before_swap", false),
        ("restore.mid_swap", true),
    ] {
        let d = Daemon::start();
        let name = unique_name("crash-rs");
        let id = d.client().create_sandbox(&req(&name)).await.unwrap().id;
        let c = d.client();
        sh_ok(&c, &name, "echo old-state > /root/f").await;
        let cp = checkpoint(&c, &name, "").await;
        sh_ok(&c, &name, "echo current-state > /root/f").await;
        crash_at(&d, point, async {
            assert!(
                restore(&d.client(), &name, &cp)
                    .await
                    .is_err_and(|e| e.status().is_none()),
                "the daemon died at {point} (no answer), it did not refuse"
            )
        })
        .await;
        let c = d.client();
        let sb = c.get_sandbox(&name).await.unwrap();
        assert_eq!(sb.status, SandboxStatus::Running, "{point}");
        let notice = sb.notice.unwrap_or_else(|| panic!("{point}: no notice"));
        let got = sh_ok(&c, &name, "cat /root/f").await;
        if expect_new {
            assert_eq!(got, "old-state\n", "{point}: expected the restored state");
            assert!(notice.contains("completed"), "{point}: {notice}");
        } else {
            assert_eq!(got, "current-state\n", "{point}: expected the previous state");
            assert!(notice.contains("kept its previous state"), "{point}: {notice}");
        }
        // No stray volumes: exactly this sandbox's one.
        assert_eq!(
            volumes(&d.data_dir.join("pool/sandboxes")),
            std::slice::from_ref(&id),
            "{point}"
        );
    }
}

/// A stopped sandbox whose restore a crash interrupts comes back stopped, with the restored
/// disk (the running case above is the control: it comes back running).
#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_restore_of_a_stopped_sandbox_keeps_it_stopped() {
    let d = Daemon::start();
    let name = unique_name("crash-st");
    let c = d.client();
    c.create_sandbox(&req(&name)).await.unwrap();
    sh_ok(&c, &name, "echo old-state > /root/f").await;
    let cp = checkpoint(&c, &name, "").await;
    sh_ok(&c, &name, "echo current-state > /root/f").await;
    c.sandbox_action(&name, "stop").await.unwrap();
    crash_at(&d, "restore.mid_swap", async {
        assert!(
            restore(&d.client(), &name, &cp)
                .await
                .is_err_and(|e| e.status().is_none()),
            "the daemon died mid-swap (no answer), it did not refuse"
        )
    })
    .await;
    let c = d.client();
    let sb = c.get_sandbox(&name).await.unwrap();
    assert_eq!(
        sb.status,
        SandboxStatus::Stopped,
        "it was stopped before the restore"
    );
    assert!(sb.notice.unwrap_or_default().contains("completed"));
    c.sandbox_action(&name, "start").await.unwrap();
    assert_eq!(sh_ok(&c, &name, "cat /root/f").await, "old-state\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn second_restore_while_one_runs_is_409() {
    let d = Daemon::start();
    let pause = d.pause_at("restore.after_stop");
    let c = d.client();
    let name = unique_name("twice");
    c.create_sandbox(&req(&name)).await.unwrap();
    let cp = checkpoint(&c, &name, "").await;
    let first = {
        let (c, name, cp) = (c.clone(), name.clone(), cp.clone());
        tokio::spawn(async move { restore(&c, &name, &cp).await })
    };
    // Wait (bounded) until the first restore is provably in progress.
    d.wait_paused(&pause, "the first restore").await;
    let e = restore(&c, &name, &cp).await.unwrap_err();
    assert_eq!(e.status(), Some(409), "{e}");
    std::fs::remove_file(&pause).unwrap();
    first.await.unwrap().unwrap();
    assert_eq!(sh_ok(&c, &name, "echo back").await, "back\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_mid_fork_is_cleaned_up() {
    let d = Daemon::start();
    let parent = unique_name("fp");
    let pid = d.client().create_sandbox(&req(&parent)).await.unwrap().id;
    let child = unique_name("fc");
    crash_at(&d, "create.after_snapshot", async {
        assert!(
            d.client()
                .create_sandbox(&fork_req(&child, &parent, None))
                .await
                .is_err_and(|e| e.status().is_none()),
            "the daemon died at the fault point (no answer), it did not refuse"
        );
    })
    .await;
    let c = d.client();
    assert_eq!(c.get_sandbox(&child).await.unwrap_err().status(), Some(404));
    assert_eq!(volumes(&d.data_dir.join("pool/sandboxes")), [pid]);
    assert_eq!(sh_ok(&c, &parent, "echo parent-ok").await, "parent-ok\n");
}
