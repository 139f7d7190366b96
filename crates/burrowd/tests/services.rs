//! Services end to end against a real daemon: definitions in burrowd, supervision in the
//! sandbox's agent; restarts, logs, dependency order, and survival across sandbox stop/start,
//! restart and a daemon crash.

use std::time::{Duration, Instant};

use burrow_testkit::burrow_client::{Client, ClientError, Method};
use burrow_testkit::fixtures::{create, poll, sh_parts};
use burrow_testkit::{Daemon, shared, unique_name};
use futures::StreamExt;
use serde_json::{Value, json};

/// Upper bound of every wait-for-condition below (loops exit as soon as it holds).
const PATIENCE: Duration = Duration::from_secs(60);

fn svc_path(name: &str, svc: &str) -> String {
    format!("/v1/sandboxes/{name}/services/{svc}")
}

async fn put(c: &Client, name: &str, svc: &str, body: Value) -> Result<Value, ClientError> {
    c.request_json(Method::PUT, &svc_path(name, svc), Some(&body))
        .await
}

async fn get(c: &Client, name: &str, svc: &str) -> Value {
    c.get_json(&svc_path(name, svc)).await.unwrap()
}

async fn post(c: &Client, name: &str, svc: &str, action: &str) -> Value {
    c.request_json::<Value, ()>(Method::POST, &format!("{}/{action}", svc_path(name, svc)), None)
        .await
        .unwrap()
}

async fn wait_svc(c: &Client, name: &str, svc: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let ok = &ok;
    poll(&format!("{svc} to have {what}"), PATIENCE, || async move {
        let v = get(c, name, svc).await;
        if ok(&v) { Ok(v) } else { Err(v.to_string()) }
    })
    .await
}

async fn wait_running(c: &Client, name: &str, svc: &str) -> u64 {
    let v = wait_svc(c, name, svc, "ran", |v| v["status"] == "running").await;
    v["pid"].as_u64().unwrap()
}

async fn logs(c: &Client, name: &str, svc: &str) -> String {
    let mut s = c
        .get_stream(&format!("{}/logs", svc_path(name, svc)))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Fetches `http://localhost:8080/` from inside the sandbox (curl when the image has it).
async fn fetch_8080(c: &Client, name: &str) -> (i32, String) {
    let (code, out, _) = sh_parts(
        c,
        name,
        "if command -v curl >/dev/null; then curl -sf localhost:8080/; else \
         python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://localhost:8080/\").read().decode())'; fi",
    )
    .await;
    (code, out)
}

#[tokio::test(flavor = "multi_thread")]
async fn http_service_runs_and_survives_stop_start_and_restart() {
    let c = shared().client();
    let name = unique_name("svc");
    create(&c, &name).await;
    sh_parts(
        &c,
        &name,
        "mkdir -p /srv/www && echo hello-from-service > /srv/www/index.html",
    )
    .await;
    let v = put(
        &c,
        &name,
        "web",
        json!({"cmd": ["python3", "-m", "http.server", "8080"], "cwd": "/srv/www", "http_port": 8080}),
    )
    .await
    .unwrap();
    assert_eq!(v["name"], "web");
    assert_eq!(v["restart"], "always");
    let pid = wait_running(&c, &name, "web").await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (code, out) = fetch_8080(&c, &name).await;
        if code == 0 {
            assert!(out.contains("hello-from-service"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "the service never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list: Value = c
        .get_json(&format!("/v1/sandboxes/{name}/services"))
        .await
        .unwrap();
    assert_eq!(list["services"].as_array().unwrap().len(), 1);
    assert_eq!(list["services"][0]["pid"].as_u64(), Some(pid));
    assert!(list["services"][0]["started_at"].is_string());

    // Stopped sandbox: still listed, stopped. Started again: running again (a new boot).
    c.sandbox_action(&name, "stop").await.unwrap();
    assert_eq!(get(&c, &name, "web").await["status"], "stopped");
    c.sandbox_action(&name, "start").await.unwrap();
    wait_running(&c, &name, "web").await;
    c.sandbox_action(&name, "restart").await.unwrap();
    wait_running(&c, &name, "web").await;
    let deadline = Instant::now() + PATIENCE;
    while fetch_8080(&c, &name).await.0 != 0 {
        assert!(Instant::now() < deadline, "not serving after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A replaced definition answers 200; delete stops it.
    let v = put(
        &c,
        &name,
        "web",
        json!({"cmd": ["python3", "-m", "http.server", "8080"], "cwd": "/srv/www", "http_port": 8080, "restart": "on-failure"}),
    )
    .await
    .unwrap();
    assert_eq!(v["restart"], "on-failure");
    c.request_json::<Value, ()>(Method::DELETE, &svc_path(&name, "web"), None)
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while fetch_8080(&c, &name).await.0 == 0 {
        assert!(Instant::now() < deadline, "still serving after delete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_policies_logs_and_stop_start() {
    let c = shared().client();
    let name = unique_name("svc");
    create(&c, &name).await;
    put(
        &c,
        &name,
        "crash",
        json!({"cmd": ["sh", "-c", "echo boom; exit 3"], "restart": "on-failure"}),
    )
    .await
    .unwrap();
    put(
        &c,
        &name,
        "once",
        json!({"cmd": ["sh", "-c", "echo once; exit 3"], "restart": "never"}),
    )
    .await
    .unwrap();
    put(&c, &name, "sleeper", json!({"cmd": ["sleep", "1000"]}))
        .await
        .unwrap();

    let v = wait_svc(&c, &name, "crash", "restarted", |v| {
        v["restarts"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(v["exit_code"], 3);
    let log = logs(&c, &name, "crash").await;
    assert!(log.contains("boom\n"), "{log}");

    let v = wait_svc(&c, &name, "once", "exited", |v| v["status"] == "exited").await;
    assert_eq!(
        (v["exit_code"].as_i64(), v["restarts"].as_u64()),
        (Some(3), Some(0))
    );
    assert!(v.get("pid").is_none(), "{v}");
    assert!(logs(&c, &name, "once").await.starts_with("once\n"));

    let pid = wait_running(&c, &name, "sleeper").await;
    let v = post(&c, &name, "sleeper", "stop").await;
    assert_eq!(v["status"], "stopped");
    let (code, _, _) = sh_parts(&c, &name, &format!("kill -0 {pid}")).await;
    assert_ne!(code, 0, "the stopped service's process is gone");
    // Stopped stays stopped across a sandbox restart, until started.
    c.sandbox_action(&name, "restart").await.unwrap();
    assert_eq!(get(&c, &name, "sleeper").await["status"], "stopped");
    let v = post(&c, &name, "sleeper", "start").await;
    assert_eq!(v["status"], "running");
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn dependencies_start_in_order() {
    let c = shared().client();
    let name = unique_name("svc");
    create(&c, &name).await;
    c.sandbox_action(&name, "stop").await.unwrap();
    // Defined while stopped, dependents first; started in `needs` order at boot. A service
    // with a port counts as up once the port accepts connections (its marker is written
    // before it listens); without one, as soon as it was started.
    put(
        &c,
        &name,
        "db",
        json!({"cmd": ["sh", "-c", "echo db >> /root/order; exec python3 -m http.server 9000"], "http_port": 9000}),
    )
    .await
    .unwrap();
    put(
        &c,
        &name,
        "api",
        json!({"cmd": ["sh", "-c", "echo api >> /root/order; exec python3 -m http.server 9001"], "http_port": 9001, "needs": ["db"]}),
    )
    .await
    .unwrap();
    put(
        &c,
        &name,
        "worker",
        json!({"cmd": ["sh", "-c", "echo worker >> /root/order; exec sleep 1000"], "needs": ["api"]}),
    )
    .await
    .unwrap();
    c.sandbox_action(&name, "start").await.unwrap();
    wait_running(&c, &name, "worker").await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, out, _) = sh_parts(&c, &name, "cat /root/order 2>/dev/null").await;
        if out.lines().count() == 3 {
            assert_eq!(out, "db\napi\nworker\n");
            break;
        }
        assert!(Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_streams_new_lines() {
    let c = shared().client();
    let name = unique_name("svc");
    create(&c, &name).await;
    put(
        &c,
        &name,
        "tick",
        json!({"cmd": ["sh", "-c", "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.1; done"]}),
    )
    .await
    .unwrap();
    wait_running(&c, &name, "tick").await;
    let mut s = c
        .get_stream(&format!("{}/logs?follow=true&tail=1", svc_path(&name, "tick")))
        .await
        .unwrap();
    let mut seen = String::new();
    while seen.lines().count() < 5 {
        let chunk = tokio::time::timeout(PATIENCE, s.next())
            .await
            .expect("new lines keep coming")
            .expect("stream open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let nums: Vec<u64> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("tick")?.parse().ok())
        .collect();
    assert!(
        nums.len() >= 5 && nums.windows(2).all(|w| w[1] == w[0] + 1),
        "{seen}"
    );
    drop(s);
    // Other calls are not held up by the dropped follower.
    assert_eq!(get(&c, &name, "tick").await["status"], "running");
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused() {
    let c = shared().client();
    let name = unique_name("svc");
    create(&c, &name).await;
    let status = |r: Result<Value, ClientError>| match r {
        Err(e) => (e.status().unwrap_or(0), e.to_string()),
        Ok(v) => panic!("accepted: {v}"),
    };
    let (st, _) = status(put(&c, &name, "Bad_Name", json!({"cmd": ["true"]})).await);
    assert_eq!(st, 422);
    let (st, _) = status(put(&c, &name, "x", json!({"cmd": []})).await);
    assert_eq!(st, 422);
    let (st, msg) = status(put(&c, &name, "x", json!({"cmd": ["true"], "needs": ["ghost"]})).await);
    assert_eq!(st, 422);
    assert!(msg.contains("ghost"), "{msg}");
    let (st, _) = status(put(&c, &name, "x", json!({"cmd": ["true"], "restart": "sometimes"})).await);
    assert_eq!(st, 422);
    put(&c, &name, "a", json!({"cmd": ["sleep", "1000"]}))
        .await
        .unwrap();
    put(&c, &name, "b", json!({"cmd": ["sleep", "1000"], "needs": ["a"]}))
        .await
        .unwrap();
    let (st, msg) = status(put(&c, &name, "a", json!({"cmd": ["sleep", "1000"], "needs": ["b"]})).await);
    assert_eq!(st, 422);
    assert!(
        msg.contains("cycle") && msg.contains("'a'") && msg.contains("'b'"),
        "{msg}"
    );
    let r = c
        .request_json::<Value, ()>(Method::DELETE, &svc_path(&name, "a"), None)
        .await;
    assert_eq!(status(r).0, 409);
    let r = c.get_json::<Value>(&svc_path(&name, "nope")).await;
    assert_eq!(status(r).0, 404);
    let r = c
        .request_json::<Value, ()>(Method::POST, &format!("{}/start", svc_path(&name, "nope")), None)
        .await;
    assert_eq!(status(r).0, 404);
    let r = c
        .get_json::<Value>("/v1/sandboxes/no-such-sandbox/services")
        .await;
    assert_eq!(status(r).0, 404);
    let (st, _) = status(put(&c, "no-such-sandbox", "x", json!({"cmd": ["true"]})).await);
    assert_eq!(st, 404);
    c.delete_sandbox(&name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn service_keeps_running_across_a_daemon_crash() {
    let d = Daemon::start();
    let c = d.client();
    let name = unique_name("svc");
    create(&c, &name).await;
    put(&c, &name, "keep", json!({"cmd": ["sleep", "1000"]}))
        .await
        .unwrap();
    let pid = wait_running(&c, &name, "keep").await;
    d.kill9();
    d.restart();
    let c = d.client();
    // Adopted, not rebooted: the agent kept supervising the same process.
    let list: Value = c
        .get_json(&format!("/v1/sandboxes/{name}/services"))
        .await
        .unwrap();
    assert_eq!(list["services"][0]["status"], "running", "{list}");
    assert_eq!(list["services"][0]["pid"].as_u64(), Some(pid), "{list}");
    c.delete_sandbox(&name).await.unwrap();
}
