//! One scenario, every engine: what a user does with a burrow must behave the same whether a
//! container or a VM runs it, so the engines cannot drift apart. Each engine gets the same
//! steps and the same assertions: exec (output, exit codes, stdin, a terminal), files, a
//! service reached through ingress, checkpoint and restore, fork, sleep and wake.

use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, EngineKind, ExecRequest, ForkSource, SandboxName, SandboxStatus};
use burrow_testkit::burrow_client::{Client, ExecEvent, ExecStreamOptions, Method};
use burrow_testkit::{Daemon, raw_unix, require, unique_name};

async fn exec(c: &Client, name: &str, script: &str) -> burrow_api::ExecResult {
    c.exec(
        name,
        &ExecRequest {
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("exec in {name}: {e}"))
}

/// GET `path` of the sandbox's web app through ingress (the agent channel), retried while
/// its service starts; returns status and body.
async fn http_get(d: &Daemon, name: &str, path: &str) -> (u16, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = raw_unix(
            &d.socket,
            "GET",
            &format!("/v1/sandboxes/{name}/http/{path}"),
            &[],
            vec![],
        )
        .await;
        if r.status == 200 || Instant::now() >= deadline {
            return (r.status, r.body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn scenario(engine: EngineKind) {
    let d = Daemon::start();
    let c = d.client();
    let v = c.version().await.unwrap();
    let info = v.engines.iter().find(|e| e.kind == engine).unwrap();
    require!(
        info.available,
        "engine {} is unavailable here: {}",
        engine.as_str(),
        info.detail.clone().unwrap_or_default()
    );
    let name = unique_name(&format!("conf-{}", engine.as_str()));
    let sb = c
        .create_sandbox(&CreateSandbox {
            name: SandboxName::parse(&name).unwrap(),
            engine: Some(engine),
            memory_mb: Some(512),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((sb.engine, sb.status), (engine, SandboxStatus::Running));

    // Exec: output on both streams, the exit code, stdin, a terminal.
    let r = exec(&c, &name, "echo out; echo err >&2; exit 3").await;
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
        ("out\n", "err\n", 3)
    );
    let s = c
        .exec_stream(
            &name,
            ExecStreamOptions {
                cmd: vec!["cat".into()],
                stdin: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    s.send_stdin(b"through stdin\n").await.unwrap();
    s.close_stdin().await.unwrap();
    let out = s.collect().await.unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.exit_code),
        (&b"through stdin\n"[..], 0)
    );
    let mut t = c
        .exec_stream(
            &name,
            ExecStreamOptions {
                cmd: vec!["sh".into(), "-c".into(), "tty; stty size".into()],
                tty: true,
                cols: Some(91),
                rows: Some(27),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut text = Vec::new();
    while let Some(ev) = t.next_event().await.unwrap() {
        match ev {
            ExecEvent::Stdout(b) => text.extend_from_slice(&b),
            ExecEvent::Exit { .. } => break,
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("/dev/pts/") && text.contains("27 91"), "{text:?}");

    // Files, then a service that serves them, reached through ingress.
    c.write_file_bytes(&name, "/srv/a.txt", Default::default(), b"version one\n".to_vec())
        .await
        .unwrap();
    assert_eq!(
        c.read_file_bytes(&name, "/srv/a.txt").await.unwrap(),
        b"version one\n"
    );
    let svc: serde_json::Value = c
        .request_json(
            Method::PUT,
            &format!("/v1/sandboxes/{name}/services/web"),
            Some(&serde_json::json!({
                "cmd": ["python3", "-m", "http.server", "8080", "--directory", "/srv"],
                "http_port": 8080
            })),
        )
        .await
        .unwrap();
    assert_eq!(svc["name"], "web", "{svc}");
    assert_eq!(
        http_get(&d, &name, "a.txt").await,
        (200, b"version one\n".to_vec())
    );

    // Checkpoint, change, restore: the file is back, and the service serves it again.
    let cp: burrow_api::Checkpoint = c
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{name}/checkpoints"),
            Some(&serde_json::json!({})),
        )
        .await
        .unwrap();
    exec(&c, &name, "echo version two > /srv/a.txt").await;
    assert_eq!(http_get(&d, &name, "a.txt").await.1, b"version two\n");
    c.request_json::<serde_json::Value, ()>(
        Method::POST,
        &format!("/v1/sandboxes/{name}/checkpoints/{}/restore", cp.id),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        http_get(&d, &name, "a.txt").await,
        (200, b"version one\n".to_vec())
    );

    // A fork of the checkpoint has the file, on the same engine.
    let fork = unique_name("conf-fork");
    let f = c
        .create_sandbox(&CreateSandbox {
            name: SandboxName::parse(&fork).unwrap(),
            from: Some(ForkSource {
                sandbox: SandboxName::parse(&name).unwrap(),
                checkpoint: Some(cp.id.clone()),
                memory: false,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(f.engine, engine);
    assert_eq!(exec(&c, &fork, "cat /srv/a.txt").await.stdout, "version one\n");

    // Sleep, then any request wakes it; what ran before still answers.
    let slept = c.sandbox_action(&name, "sleep").await.unwrap();
    assert_eq!(slept.status, SandboxStatus::Sleeping);
    assert_eq!(exec(&c, &name, "echo awake").await.stdout, "awake\n");
    assert_eq!(c.get_sandbox(&name).await.unwrap().status, SandboxStatus::Running);
    assert_eq!(
        http_get(&d, &name, "a.txt").await,
        (200, b"version one\n".to_vec())
    );

    for n in [&fork, &name] {
        c.delete_sandbox(n).await.unwrap();
        assert_eq!(c.get_sandbox(n).await.unwrap_err().status(), Some(404));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_container_engine_conforms() {
    scenario(EngineKind::Container).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vm_engine_conforms() {
    scenario(EngineKind::Vm).await;
}
