//! End-to-end tests of the REST API against a real daemon (runc, btrfs, SQLite): the
//! contract of `api.md`, lifecycle and exec. Bad input that needs no running sandbox (bodies,
//! names, unknown sandboxes and routes) is tested in process, in `router.rs`.

use std::collections::BTreeMap;

use burrow_api::{ExecRequest, PatchSandbox, SandboxStatus};
use burrow_testkit::burrow_client::ClientError;
use burrow_testkit::fixtures::{create, create_req};
use burrow_testkit::{Daemon, raw_tcp, raw_unix, shared, unique_name};

const JSON: (&str, &str) = ("content-type", "application/json");

fn exec_req(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn api_status(e: &ClientError) -> u16 {
    e.status().unwrap_or_else(|| panic!("not an API error: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_requires_the_token() {
    let d = shared();
    let addr = d.addr();
    let r = raw_tcp(addr, "GET", "/healthz", &[], vec![]).await;
    assert_eq!(r.status, 200);
    let r = raw_tcp(addr, "GET", "/v1/sandboxes", &[], vec![]).await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    let r = raw_tcp(
        addr,
        "GET",
        "/v1/sandboxes",
        &[("authorization", "Bearer nope")],
        vec![],
    )
    .await;
    assert_eq!(r.status, 401);
    let auth = format!("Bearer {}", d.token());
    let r = raw_tcp(addr, "GET", "/v1/sandboxes", &[("authorization", &auth)], vec![]).await;
    assert_eq!(r.status, 200);
    // The token file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.data_dir.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The typed client over TCP works end to end.
    let v = d.tcp_client().version().await.unwrap();
    assert_eq!(v.api, "v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_end_to_end() {
    let d = shared();
    let c = d.client();
    let name = unique_name("life");
    let mut req = create_req(&name);
    req.labels = BTreeMap::from([("team".into(), "core".into())]);
    req.env = BTreeMap::from([("GREETING".into(), "hi".into())]);
    req.memory_mb = Some(256);
    let sb = c.create_sandbox(&req).await.unwrap();
    assert_eq!(sb.status, SandboxStatus::Running);
    assert_eq!(sb.name, name);
    assert_eq!(sb.config.memory_mb, 256);
    assert!(sb.url.contains(&name));
    assert!(sb.id.starts_with("sb-"));

    // Duplicate name: 409.
    let e = c.create_sandbox(&create_req(&name)).await.unwrap_err();
    assert_eq!((api_status(&e), e.code()), (409, Some("name_taken")));

    // Sandbox env reaches processes; hostname is the name.
    let r = c
        .exec(&name, &exec_req(&["sh", "-c", "echo $GREETING; hostname"]))
        .await
        .unwrap();
    assert_eq!(r.stdout, format!("hi\n{name}\n"));

    // List with prefix and label filters.
    let l = c.list_sandboxes(Some(&name), &[], None, None).await.unwrap();
    assert_eq!(l.sandboxes.len(), 1);
    let l = c
        .list_sandboxes(Some(&name), &[("team".into(), "other".into())], None, None)
        .await
        .unwrap();
    assert!(l.sandboxes.is_empty());

    // Patch labels and env.
    let p = PatchSandbox {
        labels: Some(BTreeMap::from([("team".into(), "edge".into())])),
        env: Some(BTreeMap::from([("GREETING".into(), "hello".into())])),
        ..Default::default()
    };
    let sb = c.patch_sandbox(&name, &p).await.unwrap();
    assert_eq!(sb.labels["team"], "edge");
    let r = c
        .exec(&name, &exec_req(&["sh", "-c", "echo $GREETING"]))
        .await
        .unwrap();
    assert_eq!(r.stdout, "hello\n");
    let e = c
        .patch_sandbox(
            &name,
            &PatchSandbox {
                memory_mb: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(api_status(&e), 422);

    // A file written survives stop/start (the disk is kept).
    c.exec(&name, &exec_req(&["sh", "-c", "echo kept > /root/marker"]))
        .await
        .unwrap();
    let sb = c.sandbox_action(&name, "stop").await.unwrap();
    assert_eq!(sb.status, SandboxStatus::Stopped);
    // Exec on a stopped sandbox: 409, illegal transitions: 409.
    let e = c.exec(&name, &exec_req(&["true"])).await.unwrap_err();
    assert_eq!((api_status(&e), e.code()), (409, Some("illegal_transition")));
    assert_eq!(
        api_status(&c.sandbox_action(&name, "sleep").await.unwrap_err()),
        409
    );
    assert_eq!(
        api_status(&c.sandbox_action(&name, "wake").await.unwrap_err()),
        409
    );
    // Stop is idempotent.
    assert_eq!(
        c.sandbox_action(&name, "stop").await.unwrap().status,
        SandboxStatus::Stopped
    );
    let sb = c.sandbox_action(&name, "start").await.unwrap();
    assert_eq!(sb.status, SandboxStatus::Running);
    let r = c.exec(&name, &exec_req(&["cat", "/root/marker"])).await.unwrap();
    assert_eq!(r.stdout, "kept\n");

    // Restart gives a fresh process tree (the agent's start time changes) with the same disk.
    let before = c
        .exec(&name, &exec_req(&["sh", "-c", "cut -d' ' -f22 /proc/1/stat"]))
        .await
        .unwrap()
        .stdout;
    let sb = c.sandbox_action(&name, "restart").await.unwrap();
    assert_eq!(sb.status, SandboxStatus::Running);
    let after = c
        .exec(&name, &exec_req(&["sh", "-c", "cut -d' ' -f22 /proc/1/stat"]))
        .await
        .unwrap()
        .stdout;
    assert_ne!(before, after, "restart must restart PID 1");
    assert_eq!(
        c.exec(&name, &exec_req(&["cat", "/root/marker"]))
            .await
            .unwrap()
            .stdout,
        "kept\n"
    );

    // Sleep freezes, exec wakes transparently.
    assert_eq!(
        c.sandbox_action(&name, "sleep").await.unwrap().status,
        SandboxStatus::Sleeping
    );
    let r = c.exec(&name, &exec_req(&["echo", "awake"])).await.unwrap();
    assert_eq!(r.stdout, "awake\n");
    assert_eq!(c.get_sandbox(&name).await.unwrap().status, SandboxStatus::Running);

    // Delete: 204, then 404, and the disk and runtime are gone.
    let id = sb.id.clone();
    c.delete_sandbox(&name).await.unwrap();
    assert_eq!(api_status(&c.get_sandbox(&name).await.unwrap_err()), 404);
    assert!(
        !d.data_dir.join("pool/sandboxes").join(&id).exists(),
        "volume left behind"
    );
    assert!(!d.data_dir.join("run").join(&id).exists(), "run dir left behind");
    let out = std::process::Command::new("runc")
        .args(["--root", d.data_dir.join("runc").to_str().unwrap(), "list", "-q"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&id),
        "runc container left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn list_paginates() {
    let d = shared();
    let c = d.client();
    let prefix = unique_name("page");
    for i in 0..3 {
        create(&c, &format!("{prefix}-{i}")).await;
    }
    let p1 = c.list_sandboxes(Some(&prefix), &[], Some(2), None).await.unwrap();
    assert_eq!(p1.sandboxes.len(), 2);
    let cursor = p1.next_cursor.clone().expect("a next page");
    let p2 = c
        .list_sandboxes(Some(&prefix), &[], Some(2), Some(&cursor))
        .await
        .unwrap();
    assert_eq!(p2.sandboxes.len(), 1);
    assert_eq!(p2.next_cursor, None);
    let mut names: Vec<_> = p1
        .sandboxes
        .iter()
        .chain(&p2.sandboxes)
        .map(|s| s.name.clone())
        .collect();
    names.dedup();
    assert_eq!(names.len(), 3);
    for i in 0..3 {
        c.delete_sandbox(&format!("{prefix}-{i}")).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_validates_values() {
    let d = shared();
    let c = d.client();
    let name = unique_name("val");
    let mut req = create_req(&name);
    req.image = Some("no-such-image".into());
    let e = c.create_sandbox(&req).await.unwrap_err();
    assert_eq!(api_status(&e), 404);
    assert!(e.to_string().contains("no-such-image"));
    let mut req = create_req(&name);
    req.image = Some("../../etc".into());
    assert_eq!(api_status(&c.create_sandbox(&req).await.unwrap_err()), 422);
    let mut req = create_req(&name);
    req.cpus = Some(-1.0);
    assert_eq!(api_status(&c.create_sandbox(&req).await.unwrap_err()), 422);
    let mut req = create_req(&name);
    req.env = BTreeMap::from([("BAD=NAME".into(), "x".into())]);
    assert_eq!(api_status(&c.create_sandbox(&req).await.unwrap_err()), 422);
    // Nothing was created by any of these.
    assert_eq!(api_status(&c.get_sandbox(&name).await.unwrap_err()), 404);
}

/// `--engine vm` on a host without QEMU: 503 that names the package, nothing created; the
/// container engine still works there (the control).
#[tokio::test(flavor = "multi_thread")]
async fn vm_engine_without_qemu_is_503_naming_the_package() {
    let d = Daemon::start_with(&["--qemu", "/nonexistent/qemu-system-x86_64"]);
    let c = d.client();
    let v = c.version().await.unwrap();
    let vm = v
        .engines
        .iter()
        .find(|e| e.kind == burrow_api::EngineKind::Vm)
        .unwrap();
    assert!(!vm.available);
    let name = unique_name("novm");
    let mut req = create_req(&name);
    req.engine = Some(burrow_api::EngineKind::Vm);
    let e = c.create_sandbox(&req).await.unwrap_err();
    assert_eq!(api_status(&e), 503, "{e}");
    assert!(e.to_string().contains("qemu-system-x86"), "{e}");
    assert_eq!(api_status(&c.get_sandbox(&name).await.unwrap_err()), 404);
    create(&c, &name).await;
    assert_eq!(
        c.get_sandbox(&name).await.unwrap().engine,
        burrow_api::EngineKind::Container
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_side_by_side() {
    // A second daemon with its own data dir, socket and port does not see the first's
    // sandboxes, and both serve at once.
    let a = shared();
    let b = Daemon::start();
    let name = unique_name("side");
    create(&b.client(), &name).await;
    assert_eq!(api_status(&a.client().get_sandbox(&name).await.unwrap_err()), 404);
    assert_eq!(
        b.client().get_sandbox(&name).await.unwrap().status,
        SandboxStatus::Running
    );
    assert_ne!(a.addr(), b.addr());
    b.shutdown();
    assert!(!b.data_dir.exists(), "ephemeral daemon left its data dir");
}

/// Resources and timeouts have one range each, checked in one place (`burrow_api::limits`),
/// with one message: 422 `<field> must be between <min> and <max>, got <value>`, for a create
/// and a patch alike, whatever the client. NaN and infinity (which JSON cannot carry; the
/// typed client, and so the CLI, sends them as strings) are refused, never turned into the
/// default. Control: in-range values are accepted and show in the sandbox's config.
#[tokio::test(flavor = "multi_thread")]
async fn resources_have_one_range_and_one_message() {
    let d = shared();
    let c = d.client();
    let name = unique_name("res");
    let cpus = |got: &str| format!("cpus must be between 0.01 and 256, got {got}");
    let refused = [
        (r#""cpus":"NaN""#, cpus("NaN")),
        (r#""cpus":"inf""#, cpus("inf")),
        (r#""cpus":"-inf""#, cpus("-inf")),
        (r#""cpus":0"#, cpus("0")),
        (r#""cpus":0.001"#, cpus("0.001")),
        (r#""cpus":-1"#, cpus("-1")),
        (r#""cpus":257"#, cpus("257")),
        (
            r#""memory_mb":31"#,
            "memory_mb must be between 32 and 4194304, got 31".into(),
        ),
        (
            r#""disk_gb":0"#,
            "disk_gb must be between 1 and 65536, got 0".into(),
        ),
        (
            r#""pids":15"#,
            "pids must be between 16 and 4194304, got 15".into(),
        ),
        (
            r#""idle_timeout_s":31536001"#,
            "idle_timeout_s must be between 0 and 31536000, got 31536001".into(),
        ),
        (
            r#""cold_after_s":18446744073709551615"#,
            "cold_after_s must be between 0 and 31536000, got 18446744073709551615".into(),
        ),
    ];
    for (field, message) in &refused {
        let body = format!(r#"{{"name":"{name}",{field}}}"#);
        let r = raw_unix(&d.socket, "POST", "/v1/sandboxes", &[JSON], body.into_bytes()).await;
        assert_eq!((r.status, r.error_code().as_str()), (422, "invalid"), "{field}");
        assert_eq!(r.error_message(), *message, "{field}");
    }
    // A bare NaN is not JSON at all.
    let body = format!(r#"{{"name":"{name}","cpus":NaN}}"#);
    let r = raw_unix(&d.socket, "POST", "/v1/sandboxes", &[JSON], body.into_bytes()).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    // What the typed client (and the CLI's `--cpus nan`) sends for a non-finite value.
    for (v, got) in [
        (f64::NAN, "NaN"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
    ] {
        let mut req = create_req(&name);
        req.cpus = Some(v);
        let e = c.create_sandbox(&req).await.unwrap_err();
        assert_eq!(api_status(&e), 422, "{got}");
        assert!(e.to_string().contains(&cpus(got)), "{e}");
    }
    // None of these created anything.
    assert_eq!(api_status(&c.get_sandbox(&name).await.unwrap_err()), 404);

    // Control: in range, accepted and shown as given.
    let mut req = create_req(&name);
    req.cpus = Some(0.01);
    req.memory_mb = Some(256);
    req.pids = Some(16);
    req.idle_timeout_s = Some(31_536_000);
    let sb = c.create_sandbox(&req).await.unwrap();
    assert_eq!(sb.config.cpus, 0.01);
    let sb = c.get_sandbox(&name).await.unwrap();
    assert_eq!(
        (
            sb.config.cpus,
            sb.config.memory_mb,
            sb.config.pids,
            sb.config.idle_timeout_s
        ),
        (0.01, 256, 16, 31_536_000)
    );

    // A patch: the same check and message; the config is unchanged by a refused one.
    let path = format!("/v1/sandboxes/{name}");
    for (field, message) in &refused {
        let body = format!("{{{field}}}");
        let r = raw_unix(&d.socket, "PATCH", &path, &[JSON], body.into_bytes()).await;
        assert_eq!((r.status, r.error_code().as_str()), (422, "invalid"), "{field}");
        assert_eq!(r.error_message(), *message, "{field}");
    }
    let e = c
        .patch_sandbox(
            &name,
            &PatchSandbox {
                cpus: Some(f64::NAN),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&cpus("NaN")), "{e}");
    assert_eq!(c.get_sandbox(&name).await.unwrap().config, sb.config);
    let sb = c
        .patch_sandbox(
            &name,
            &PatchSandbox {
                cpus: Some(256.0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(sb.config.cpus, 256.0);
    assert_eq!(c.get_sandbox(&name).await.unwrap().config.cpus, 256.0);
    c.delete_sandbox(&name).await.unwrap();
}
