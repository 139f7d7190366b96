//! One scenario, every engine: what a user does with a burrow must behave the same whether a
//! container or a VM runs it, so the engines cannot drift apart. Each engine gets the same
//! steps and the same assertions: exec (output, exit codes, stdin, a terminal), the limits
//! and the isolation it sees, a session that outlives its connection, files, a service
//! reached through ingress, checkpoint and restore, forks of a checkpoint and of the live
//! state, sleep and wake.

use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, EngineKind, ForkSource, SandboxName, SandboxStatus};
use burrow_testkit::burrow_client::{Client, ExecEvent, ExecStreamOptions, Method};
use burrow_testkit::fixtures::{PATIENCE, poll, sh};
use burrow_testkit::{Daemon, raw_unix, require, unique_name};

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

/// Reads a session's output until it counted past `above`; returns the last count.
async fn read_ticks(s: &mut burrow_testkit::burrow_client::ExecStream, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), s.next_event())
            .await
            .unwrap_or_else(|_| panic!("no tick past {above} in time: {seen:?}"))
            .unwrap();
        match ev {
            Some(ExecEvent::Stdout(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(_) => {}
            None => panic!("the session ended: {seen:?}"),
        }
        let last = seen
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("tick-")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        if last > above {
            return last;
        }
    }
}

/// Polls (bounded) the session list until session `id` satisfies `cond`.
async fn wait_listed(
    c: &Client,
    name: &str,
    id: &str,
    cond: impl Fn(&burrow_api::SessionInfo) -> bool,
) -> burrow_api::SessionInfo {
    let cond = &cond;
    poll(
        &format!("session {id} to reach the state"),
        PATIENCE,
        || async move {
            let found = c
                .list_sessions(name)
                .await
                .unwrap()
                .sessions
                .into_iter()
                .find(|s| s.id == id);
            match found {
                Some(s) if cond(&s) => Ok(s),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

async fn scenario(engine: EngineKind) {
    // With pre-started sandboxes on: a container create takes one (`prestart.rs`), so the
    // scenario checks that a sandbox from the pool behaves like a booted one.
    let d = Daemon::start_with(&["--prestart", "1"]);
    let c = d.client();
    let v = c.version().await.unwrap();
    let info = v.engines.iter().find(|e| e.kind == engine).unwrap();
    require!(
        info.available,
        "engine {} is unavailable here: {}",
        engine.as_str(),
        info.detail.clone().unwrap_or_default()
    );
    if engine == EngineKind::Container {
        let deadline = Instant::now() + Duration::from_secs(120);
        while c.version().await.unwrap().prestart.is_none_or(|p| p.ready == 0) {
            assert!(Instant::now() < deadline, "no pre-started sandbox in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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
    assert_eq!(
        d.log_text().contains("created (pre-started)"),
        engine == EngineKind::Container,
        "a container comes from the pool, a VM boots"
    );

    // Exec: output on both streams, the exit code, stdin, a terminal.
    let r = sh(&c, &name, "echo out; echo err >&2; exit 3").await;
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

    // Limits as the sandbox sees them: its CPUs and its memory, not the host's.
    let seen = sh(
        &c,
        &name,
        "grep -c ^processor /proc/cpuinfo; awk '/^MemTotal/ {print int($2/1024)}' /proc/meminfo",
    )
    .await;
    let mut lines = seen.stdout.lines().map(|l| l.trim().parse::<u64>().unwrap_or(0));
    let (cpus, mem_mb) = (lines.next().unwrap_or(0), lines.next().unwrap_or(0));
    assert_eq!(cpus, sb.config.cpus.ceil() as u64, "{seen:?}");
    assert!(
        (300..=512).contains(&mem_mb),
        "MemTotal {mem_mb} MiB for a 512 MiB sandbox"
    );
    // No host process is visible (the control: the host sees its burrowd).
    let host_sees = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("burrowd"))
    });
    assert!(host_sees, "the probe does not find burrowd on the host");
    let inside = sh(
        &c,
        &name,
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c 'burrow[d]' || true",
    )
    .await;
    assert_eq!(inside.stdout.trim(), "0", "burrowd is visible inside: {inside:?}");

    // A session outlives its connection; attaching replays what was missed, then goes on.
    let mut s = c
        .exec_stream(
            &name,
            ExecStreamOptions {
                detach_timeout_s: Some(300),
                ..ExecStreamOptions::new([
                    "sh",
                    "-c",
                    "i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.05; done",
                ])
            },
        )
        .await
        .unwrap();
    let id = match s.next_event().await.unwrap() {
        Some(ExecEvent::Session { id, .. }) => id,
        other => panic!("first event was not the session: {other:?}"),
    };
    let seen = read_ticks(&mut s, 3).await;
    drop(s);
    let listed = wait_listed(&c, &name, &id, |s| !s.attached).await;
    assert!(listed.exit_code.is_none(), "{listed:?}");
    let mut a = c.attach_session(&name, &id).await.unwrap();
    assert!(matches!(
        a.next_event().await.unwrap(),
        Some(ExecEvent::Session { .. })
    ));
    read_ticks(&mut a, seen + 3).await;
    c.kill_session(&name, &id, None).await.unwrap();
    let ended = wait_listed(&c, &name, &id, |s| s.exit_code.is_some()).await;
    assert_eq!(ended.signal.as_deref(), Some("KILL"), "{ended:?}");

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
    sh(&c, &name, "echo version two > /srv/a.txt").await;
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
    assert_eq!(sh(&c, &fork, "cat /srv/a.txt").await.stdout, "version one\n");
    // A fork of the live state has what was written just before (a VM's page cache too).
    sh(&c, &name, "echo just now > /srv/live.txt").await;
    let live = unique_name("conf-live");
    c.create_sandbox(&CreateSandbox {
        name: SandboxName::parse(&live).unwrap(),
        from: Some(ForkSource {
            sandbox: SandboxName::parse(&name).unwrap(),
            checkpoint: None,
            memory: false,
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(sh(&c, &live, "cat /srv/live.txt").await.stdout, "just now\n");
    c.delete_sandbox(&live).await.unwrap();

    // Sleep, then any request wakes it; what ran before still answers.
    let slept = c.sandbox_action(&name, "sleep").await.unwrap();
    assert_eq!(slept.status, SandboxStatus::Sleeping);
    assert_eq!(sh(&c, &name, "echo awake").await.stdout, "awake\n");
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
