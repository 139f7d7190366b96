//! The idle policy and events end to end: warm sleep after `idle_timeout_s`, cold after
//! `cold_after_s`, transparent wake on the next request, live sessions keep a burrow awake,
//! and sleeping survives a daemon restart. Waits are bounded polls for a condition.

use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, ExecRequest, SandboxName, SandboxStatus};
use burrow_testkit::burrow_client::{Client, ExecEvent, ExecStreamOptions};
use burrow_testkit::fixtures::wait_for;
use burrow_testkit::{Daemon, shared, unique_name};

fn req(name: &str, idle: u64, cold: u64) -> CreateSandbox {
    CreateSandbox {
        name: SandboxName::parse(name).unwrap(),
        idle_timeout_s: Some(idle),
        cold_after_s: Some(cold),
        ..Default::default()
    }
}

async fn echo(c: &Client, name: &str, text: &str) -> String {
    let r = c
        .exec(
            name,
            &ExecRequest {
                cmd: vec!["echo".into(), text.into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    r.stdout
}

/// Reads the SSE stream until `n` events arrived; returns their kinds and data.
async fn events(d: &Daemon, name: &str, n: usize) -> Vec<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    s.write_all(format!("GET /v1/sandboxes/{name}/events HTTP/1.1\r\nHost: burrow\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        let found: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if found.len() >= n {
            return found;
        }
        let mut chunk = [0u8; 4096];
        let got = tokio::time::timeout_at(deadline.into(), s.read(&mut chunk))
            .await
            .expect("events in time")
            .unwrap();
        assert!(got > 0, "event stream closed: {text}");
        buf.extend_from_slice(&chunk[..got]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_burrow_sleeps_warm_then_cold_and_wakes_on_request() {
    let d = shared();
    let c = d.client();
    let name = unique_name("idle");
    c.create_sandbox(&req(&name, 1, 2)).await.unwrap();
    // A background process that must survive warm sleep (its pid stays) .
    let pid = c
        .exec(
            &name,
            &ExecRequest {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "setsid sleep 1000 >/dev/null 2>&1 < /dev/null & echo $!".into(),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .stdout;
    let sb = wait_for(&c, &name, "warm asleep", |s| s.status == SandboxStatus::Sleeping).await;
    assert_eq!(sb.sleep.as_deref(), Some("warm"));
    let sb = wait_for(&c, &name, "cold", |s| s.sleep.as_deref() == Some("cold")).await;
    assert_eq!(sb.status, SandboxStatus::Sleeping);
    // A request wakes it transparently (a cold wake boots it again: the sleeper is gone).
    assert_eq!(echo(&c, &name, "awake").await, "awake\n");
    let sb = c.get_sandbox(&name).await.unwrap();
    assert_eq!((sb.status, sb.sleep), (SandboxStatus::Running, None));
    let r = c
        .exec(
            &name,
            &ExecRequest {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    format!(
                        "pgrep -x sleep >/dev/null && echo alive || echo gone # {}",
                        pid.trim()
                    ),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "gone\n", "processes do not survive a cold sleep");
    // The events tell the story, in order.
    let evs = events(d, &name, 5).await;
    let kinds: Vec<String> = evs
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    let pos = |k: &str, mode: &str| {
        evs.iter()
            .position(|e| {
                e["kind"] == k && (mode.is_empty() || e["data"]["mode"] == mode || e["data"]["from"] == mode)
            })
            .unwrap_or_else(|| panic!("no {k} {mode} in {kinds:?}"))
    };
    assert!(pos("created", "") < pos("sleeping", "warm"));
    assert!(pos("sleeping", "warm") < pos("sleeping", "cold"));
    assert!(pos("sleeping", "cold") < pos("woke", "cold"));
    // This daemon keeps no pre-started sandboxes: the cold wake booted it.
    assert_eq!(evs[pos("woke", "cold")]["data"]["via"], "boot", "{evs:?}");
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_wake_keeps_processes_and_a_live_session_keeps_it_awake() {
    let c = shared().client();
    let name = unique_name("warm");
    c.create_sandbox(&req(&name, 1, 0)).await.unwrap();
    let pid = c
        .exec(
            &name,
            &ExecRequest {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "setsid sleep 1000 >/dev/null 2>&1 < /dev/null & echo $!".into(),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .stdout;
    wait_for(&c, &name, "asleep", |s| s.status == SandboxStatus::Sleeping).await;
    let r = c
        .exec(
            &name,
            &ExecRequest {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    format!(
                        "kill -0 {} && pgrep -x sleep >/dev/null && echo alive",
                        pid.trim()
                    ),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "alive\n", "a warm sleep keeps every process");
    // While a session is open the burrow does not sleep, however long it lasts.
    let mut s = c
        .exec_stream(
            &name,
            ExecStreamOptions::new(["sh", "-c", "for i in 1 2 3 4; do sleep 1; echo tick; done"]),
        )
        .await
        .unwrap();
    let mut ticks = 0;
    while let Some(ev) = s.next_event().await.unwrap() {
        match ev {
            ExecEvent::Stdout(_) => {
                ticks += 1;
                assert_eq!(
                    c.get_sandbox(&name).await.unwrap().status,
                    SandboxStatus::Running,
                    "slept during a session"
                );
            }
            ExecEvent::Exit { .. } => break,
            _ => {}
        }
    }
    assert_eq!(ticks, 4);
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sleeping_survives_a_daemon_restart() {
    let d = Daemon::start();
    let c = d.client();
    let (warm, cold) = (unique_name("rw"), unique_name("rc"));
    c.create_sandbox(&req(&warm, 0, 0)).await.unwrap();
    c.create_sandbox(&req(&cold, 0, 0)).await.unwrap();
    c.sandbox_action(&warm, "sleep").await.unwrap();
    c.sandbox_action(&cold, "sleep").await.unwrap();
    d.kill9();
    d.restart();
    let c = d.client();
    let w = c.get_sandbox(&warm).await.unwrap();
    assert_eq!(
        (w.status, w.sleep.as_deref()),
        (SandboxStatus::Sleeping, Some("warm"))
    );
    assert_eq!(echo(&c, &warm, "w").await, "w\n");
    let k = c.get_sandbox(&cold).await.unwrap();
    assert_eq!(k.status, SandboxStatus::Sleeping);
    assert_eq!(echo(&c, &cold, "k").await, "k\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_timeout_zero_never_sleeps_and_patch_changes_the_policy() {
    let c = shared().client();
    let name = unique_name("never");
    c.create_sandbox(&req(&name, 0, 0)).await.unwrap();
    let p = burrow_api::PatchSandbox {
        idle_timeout_s: Some(1),
        ..Default::default()
    };
    let sb = c.patch_sandbox(&name, &p).await.unwrap();
    assert_eq!(sb.config.idle_timeout_s, 1);
    wait_for(&c, &name, "asleep after the patch", |s| {
        s.status == SandboxStatus::Sleeping
    })
    .await;
    c.delete_sandbox(&name).await.unwrap();
}

/// Restoring a sleeping burrow is activity: it wakes and then gets its full idle timeout
/// before it sleeps again. Before, the idle loop still saw the time since it fell asleep and
/// put it back to sleep at its next tick (0.75 s after the restore in the report). The
/// bound below cannot be broken by a slow machine: slowness only adds to the time awake.
#[tokio::test(flavor = "multi_thread")]
async fn restoring_a_sleeping_burrow_counts_as_activity() {
    let c = shared().client();
    let name = unique_name("rest");
    let idle = 4;
    c.create_sandbox(&req(&name, idle, 0)).await.unwrap();
    let cp: serde_json::Value = c
        .request_json(
            burrow_testkit::burrow_client::Method::POST,
            &format!("/v1/sandboxes/{name}/checkpoints"),
            Some(&serde_json::json!({ "comment": "before sleep" })),
        )
        .await
        .unwrap();
    let id = cp["id"].as_str().unwrap().to_owned();
    wait_for(&c, &name, "asleep", |s| s.status == SandboxStatus::Sleeping).await;

    c.request_json::<serde_json::Value, ()>(
        burrow_testkit::burrow_client::Method::POST,
        &format!("/v1/sandboxes/{name}/checkpoints/{id}/restore"),
        None,
    )
    .await
    .unwrap();
    let restored = Instant::now();
    let sb = c.get_sandbox(&name).await.unwrap();
    assert_eq!(
        sb.status,
        SandboxStatus::Running,
        "restore of a sleeping burrow runs it: {sb:?}"
    );
    // The control: it does fall asleep again, once its idle timeout has passed.
    wait_for(&c, &name, "asleep again", |s| s.status == SandboxStatus::Sleeping).await;
    let awake = restored.elapsed();
    assert!(
        awake >= Duration::from_secs(idle - 1),
        "asleep again {awake:?} after the restore, before its idle timeout of {idle} s"
    );
    c.delete_sandbox(&name).await.unwrap();
}

/// The daemon's own work inside a new sandbox (installing its CA into the trust store, in
/// the background after the create) never wakes a sandbox its user put to sleep meanwhile.
/// The install is held at a pause point until the sandbox sleeps; the control: the same
/// status probe reads `running` once a request wakes it.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemons_own_work_never_wakes_a_sleeping_sandbox() {
    let d = Daemon::start();
    let pause = d.pause_at("net_files.before_write");
    let c = d.client();
    let name = unique_name("nowake");
    c.create_sandbox(&req(&name, 0, 0)).await.unwrap();
    d.wait_paused(&pause, "the CA install").await;
    c.sandbox_action(&name, "sleep").await.unwrap();
    std::fs::remove_file(&pause).unwrap();
    // The install ends (bounded) and says why it stopped.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d
        .log_text()
        .contains("sandbox no longer running; network files not installed")
    {
        assert!(Instant::now() < deadline, "the install never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        c.get_sandbox(&name).await.unwrap().status,
        SandboxStatus::Sleeping
    );
    // Control: a request does wake it, and the probe sees that.
    assert_eq!(echo(&c, &name, "up").await, "up\n");
    assert_eq!(c.get_sandbox(&name).await.unwrap().status, SandboxStatus::Running);
}
