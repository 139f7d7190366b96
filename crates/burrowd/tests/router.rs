//! In-process tests of the API router: burrowd's real router and a real `Manager`, built from
//! parts (`Manager::new`) with an engine that runs nothing and a `dir` pool in a temp dir, and
//! driven with `tower::ServiceExt::oneshot`. No socket, no runc, no btrfs, no root.
//!
//! Bad input, unknown names and routes, and the lifecycle's refusals live here: they need no
//! running sandbox. What does (exec, files, sleep) is tested against a real daemon in the
//! other files.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use burrow_api::{EngineKind, SandboxConfig, SandboxStatus, UrlAuth};
use burrow_core::engines::Engines;
use burrow_core::store::{SandboxRecord, Store};
use burrow_core::{Config, Manager};
use burrow_engine::fake::FakeEngine;
use burrowd::api::{AppState, DEFAULT_EXEC_BUFFER_BUDGET_MB, ExecBudget, ROUTES, Transport, Verb};
use http_body_util::BodyExt;
use tower::ServiceExt;

const JSON: (&str, &str) = ("content-type", "application/json");

/// A manager from parts, with burrowd's router over it (the unix socket's: no token).
struct App {
    router: Router,
    store: Arc<Store>,
    engine: Arc<FakeEngine>,
    _dir: tempfile::TempDir,
}

async fn app() -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = Config::with_data_dir(dir.path().to_owned());
    let pool_root = dir.path().join("pool");
    std::fs::create_dir_all(&pool_root).unwrap();
    let pool = Arc::from(burrow_storage::dir_pool(&pool_root).expect("dir pool"));
    let store = Arc::new(Store::open_in_memory().expect("store"));
    let engine = Arc::new(FakeEngine::default());
    let engines = Engines::new(EngineKind::Container)
        .with(engine.clone())
        .without(EngineKind::Vm, "not in these tests");
    let keys = burrow_core::keys::Keys::open(dir.path()).expect("keys");
    let mgr = Manager::new(cfg, store.clone(), pool, engines, keys, None, None);
    mgr.reconcile().await.expect("reconcile");
    let state = AppState {
        mgr,
        admin_token: Arc::new("unused on the unix socket".into()),
        exec_budget: Arc::new(ExecBudget::new((DEFAULT_EXEC_BUFFER_BUDGET_MB << 20) as usize)),
        mcp: Arc::new(burrowd::api::mcp::McpEndpoint::new(
            dir.path().join("burrowd.sock"),
            "127.0.0.1:9".parse().unwrap(),
        )),
        apps: Arc::default(),
    };
    App {
        router: burrowd::router(state, Transport::Unix),
        store,
        engine,
        _dir: dir,
    }
}

#[derive(Debug)]
struct Resp {
    status: StatusCode,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    /// Status and error code, for one assertion.
    fn error(&self) -> (u16, String) {
        (self.status.as_u16(), self.code())
    }
}

impl App {
    /// One request, with a `Content-Length` as a real client sends.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_empty() {
            req = req.header("content-length", body.len());
        }
        let resp = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .expect("the router answers");
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec();
        Resp { status, body }
    }

    async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], vec![]).await
    }

    async fn post_json(&self, path: &str, body: &str) -> Resp {
        self.send("POST", path, &[JSON], body.as_bytes().to_vec()).await
    }

    /// A sandbox record put straight into the store, as if it had been made and left in
    /// `status` (nothing of it exists on disk or in a runtime).
    fn insert(&self, name: &str, status: SandboxStatus) -> SandboxRecord {
        let now = "2026-01-01T00:00:00Z".to_owned();
        let rec = SandboxRecord {
            id: format!("sb-{name}"),
            name: name.to_owned(),
            status,
            intent: None,
            engine: EngineKind::Container,
            image: "base".into(),
            created_at: now.clone(),
            updated_at: now.clone(),
            last_active_at: now,
            config: SandboxConfig {
                cpus: 1.0,
                memory_mb: 256,
                disk_gb: 1,
                pids: 256,
                idle_timeout_s: 0,
                cold_after_s: 0,
                url_auth: UrlAuth::Private,
                restart: Default::default(),
            },
            env: Default::default(),
            labels: Default::default(),
            parent: None,
            failure_reason: None,
            next_checkpoint: 0,
            notice: None,
            instance: None,
        };
        self.store.insert_sandbox(&rec).expect("insert record");
        rec
    }
}

/// Every route of the table is served (none falls to the 404/405 fallbacks); an unknown path
/// is 404 `route_not_found` and a known path with another method 405 `method_not_allowed`,
/// each saying what was asked.
#[tokio::test]
async fn every_route_is_served_and_others_are_404_or_405() {
    let app = app().await;
    for route in ROUTES {
        let method = match route.verb {
            Verb::Any => "GET".to_owned(),
            v => v.as_str().to_uppercase(),
        };
        let path = route.path.replace("{name}", "no-such-sandbox-x");
        let r = app.send(&method, &path, &[JSON], b"{}".to_vec()).await;
        let code = serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default();
        assert!(
            code != "route_not_found" && code != "method_not_allowed",
            "{method} {path} is not served: {} {code}",
            r.status
        );
    }
    let r = app.get("/v1/nope").await;
    assert_eq!(r.error(), (404, "route_not_found".into()));
    assert_eq!(r.message(), "no such endpoint: /v1/nope");
    let r = app.send("PUT", "/v1/sandboxes", &[], vec![]).await;
    assert_eq!(r.error(), (405, "method_not_allowed".into()));
    assert_eq!(r.message(), "PUT is not allowed on /v1/sandboxes");
    let r = app.send("DELETE", "/v1/version", &[], vec![]).await;
    assert_eq!(r.error(), (405, "method_not_allowed".into()));
    // Control: a served route answers.
    let r = app.get("/healthz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "ok");
}

#[tokio::test]
async fn bad_bodies_get_clear_errors() {
    let app = app().await;
    // No content type: 415 that says so (not "name is required").
    let r = app
        .send("POST", "/v1/sandboxes", &[], br#"{"name":"x"}"#.to_vec())
        .await;
    assert_eq!(r.error(), (415, "unsupported_media_type".into()));
    assert!(
        r.message().contains("Content-Type: application/json") && r.message().contains("none was sent"),
        "{}",
        r.message()
    );
    let r = app
        .send(
            "POST",
            "/v1/sandboxes",
            &[("content-type", "text/plain")],
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r.error(), (415, "unsupported_media_type".into()));
    assert!(r.message().contains("got 'text/plain'"), "{}", r.message());
    // Not JSON: 400.
    let r = app.post_json("/v1/sandboxes", "{name: x").await;
    assert_eq!(r.error(), (400, "bad_request".into()));
    assert!(r.message().contains("not valid JSON"), "{}", r.message());
    let r = app.post_json("/v1/sandboxes", "").await;
    assert_eq!(r.error(), (400, "bad_request".into()));
    assert!(r.message().contains("request body is empty"), "{}", r.message());
    // Valid JSON, invalid values or types: 422 naming the problem.
    let r = app.post_json("/v1/sandboxes", "{}").await;
    assert_eq!(r.error(), (422, "invalid".into()));
    assert!(r.message().contains("missing field `name`"), "{}", r.message());
    let r = app
        .post_json("/v1/sandboxes", r#"{"name":"ok-name","colour":"red"}"#)
        .await;
    assert_eq!(r.error(), (422, "invalid".into()));
    assert!(r.message().contains("colour"), "{}", r.message());
    let r = app
        .post_json("/v1/sandboxes", r#"{"name":"ok-name","memory_mb":"lots"}"#)
        .await;
    assert_eq!(r.error(), (422, "invalid".into()));
    assert!(r.message().contains("invalid type"), "{}", r.message());
    let r = app.post_json("/v1/sandboxes", r#"{"name":42}"#).await;
    assert_eq!(r.error(), (422, "invalid".into()));
    // Past the body limit: 413.
    let mut huge = br#"{"name":"x","labels":{"a":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 40 << 20));
    huge.extend(br#""}}"#);
    let r = app.send("POST", "/v1/sandboxes", &[JSON], huge).await;
    assert_eq!(r.error(), (413, "too_large".into()));
    assert!(r.message().contains("larger than the limit"), "{}", r.message());
    // Bad query values: 400.
    let r = app.get("/v1/sandboxes?limit=lots").await;
    assert_eq!(r.error(), (400, "bad_request".into()));
    assert_eq!(r.message(), "limit 'lots' is not a number");
    let r = app.get("/v1/sandboxes?colour=red").await;
    assert_eq!(r.error(), (400, "bad_request".into()));
    assert_eq!(r.message(), "unknown query parameter 'colour'");
    // Control: the same route with good values answers.
    let r = app.get("/v1/sandboxes?limit=5").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["sandboxes"], serde_json::json!([]));
}

#[tokio::test]
async fn invalid_names_are_refused() {
    let app = app().await;
    for bad in ["Dev", "../x", "", "-a", "a_b", &"a".repeat(64), "a.b", "ü"] {
        let body = serde_json::json!({ "name": bad }).to_string();
        let r = app.post_json("/v1/sandboxes", &body).await;
        assert_eq!(r.error(), (422, "invalid".into()), "name {bad:?}");
        assert!(r.message().contains("name"), "{}", r.message());
    }
    // Bad names in paths: 400, never a lookup.
    for (method, path) in [
        ("GET", "/v1/sandboxes/UPPER"),
        ("POST", "/v1/sandboxes/a_b/start"),
        ("GET", "/v1/sandboxes/..%2Fetc"),
        ("DELETE", "/v1/sandboxes/..%2F..%2Fetc"),
        ("GET", "/v1/sandboxes/..%2Fetc/files?path=/etc/passwd"),
    ] {
        let r = app.send(method, path, &[], vec![]).await;
        assert_eq!(r.error(), (400, "bad_request".into()), "{method} {path}");
        assert!(r.message().contains("name"), "{path}: {}", r.message());
    }
    // Control: a valid name that names nothing is a lookup (404), not a refusal.
    let r = app.get("/v1/sandboxes/valid-but-absent").await;
    assert_eq!(r.error(), (404, "not_found".into()));
}

#[tokio::test]
async fn unknown_sandbox_is_404_everywhere() {
    let app = app().await;
    let name = "ghost-sandbox";
    let base = format!("/v1/sandboxes/{name}");
    let mut asked = vec![
        ("GET", base.clone(), String::new()),
        ("DELETE", base.clone(), String::new()),
        ("PATCH", base.clone(), "{}".to_owned()),
        ("POST", format!("{base}/exec"), r#"{"cmd":["true"]}"#.to_owned()),
        ("GET", format!("{base}/files?path=/etc/hostname"), String::new()),
        ("GET", format!("{base}/files/list?path=/"), String::new()),
        ("GET", format!("{base}/events"), String::new()),
        ("GET", format!("{base}/checkpoints"), String::new()),
        ("GET", format!("{base}/sessions"), String::new()),
        ("GET", format!("{base}/services"), String::new()),
        ("GET", format!("{base}/policy/network"), String::new()),
    ];
    for action in ["start", "stop", "restart", "sleep", "wake"] {
        asked.push(("POST", format!("{base}/{action}"), String::new()));
    }
    for (method, path, body) in asked {
        let headers: &[(&str, &str)] = if body.is_empty() { &[] } else { &[JSON] };
        let r = app.send(method, &path, headers, body.into_bytes()).await;
        assert_eq!(r.error(), (404, "not_found".into()), "{method} {path}");
        assert!(r.message().contains(name), "{method} {path}: {}", r.message());
    }
    // Control: once it exists, the same lookup finds it.
    app.insert(name, SandboxStatus::Stopped);
    let r = app.get(&base).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "stopped");
}

/// File paths must be absolute and free of NULs, checked before the sandbox is even looked
/// at; a relative path (`../etc/passwd`) is never resolved against anything.
#[tokio::test]
async fn escaping_and_malformed_file_paths_are_refused() {
    let app = app().await;
    app.insert("files-box", SandboxStatus::Stopped);
    let base = "/v1/sandboxes/files-box";
    for (method, endpoint) in [
        ("GET", "files"),
        ("PUT", "files"),
        ("DELETE", "files"),
        ("GET", "files/list"),
        ("GET", "files/archive"),
        ("PUT", "files/archive"),
    ] {
        for path in ["../etc/passwd", "etc/../../x", "..", "%2Fetc%00x"] {
            let uri = format!("{base}/{endpoint}?path={path}");
            let r = app.send(method, &uri, &[], vec![]).await;
            assert_eq!(r.error(), (400, "bad_path".into()), "{method} {uri}");
            let why = if path.contains("%00") {
                "NUL"
            } else {
                "must be absolute"
            };
            assert!(r.message().contains(why), "{method} {uri}: {}", r.message());
        }
        // Control: an absolute path gets past the check, to the sandbox, which is stopped.
        let r = app
            .send(method, &format!("{base}/{endpoint}?path=/etc"), &[], vec![])
            .await;
        assert_eq!(
            r.error(),
            (409, "illegal_transition".into()),
            "{method} {endpoint}"
        );
    }
    let r = app
        .post_json(&format!("{base}/files/rename"), r#"{"from":"../a","to":"/b"}"#)
        .await;
    assert_eq!(r.error(), (400, "bad_path".into()));
    let r = app
        .post_json(
            &format!("{base}/files/rename"),
            r#"{"from":"/a","to":"b/../../c"}"#,
        )
        .await;
    assert_eq!(r.error(), (400, "bad_path".into()));
    let r = app.get(&format!("{base}/files")).await;
    assert_eq!(r.error(), (400, "bad_request".into()));
    assert!(r.message().contains("'path' is required"), "{}", r.message());
}

/// What the state machine refuses is refused before any engine is asked, with the sandbox,
/// the verb and the status it is in.
#[tokio::test]
async fn illegal_transitions_are_409() {
    let app = app().await;
    app.insert("stopped-box", SandboxStatus::Stopped);
    let base = "/v1/sandboxes/stopped-box";
    for action in ["sleep", "wake"] {
        let r = app.send("POST", &format!("{base}/{action}"), &[], vec![]).await;
        assert_eq!(r.error(), (409, "illegal_transition".into()), "{action}");
        assert!(
            r.message().contains("stopped-box")
                && r.message().contains(action)
                && r.message().contains("stopped"),
            "{action}: {}",
            r.message()
        );
    }
    let r = app
        .post_json(&format!("{base}/exec"), r#"{"cmd":["true"]}"#)
        .await;
    assert_eq!(r.error(), (409, "illegal_transition".into()));
    // Control: stop is allowed (and idempotent) in the same state.
    let r = app.send("POST", &format!("{base}/stop"), &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "stopped");
    // A sandbox still being created takes no verb at all.
    app.insert("creating-box", SandboxStatus::Creating);
    for action in ["start", "stop", "restart", "sleep", "wake"] {
        let r = app
            .send(
                "POST",
                &format!("/v1/sandboxes/creating-box/{action}"),
                &[],
                vec![],
            )
            .await;
        assert_eq!(r.error(), (409, "illegal_transition".into()), "{action}");
        assert!(r.message().contains("creating"), "{action}: {}", r.message());
    }
    assert_eq!(app.engine.starts(), 0, "no verb reached the engine");
}

/// A start the engine refuses leaves the sandbox `failed` with the engine's reason, and
/// anything that needs it running then says so.
#[tokio::test]
async fn a_refused_start_leaves_the_sandbox_failed_with_the_reason() {
    let app = app().await;
    app.insert("doomed", SandboxStatus::Stopped);
    let r = app.send("POST", "/v1/sandboxes/doomed/start", &[], vec![]).await;
    assert_eq!(r.error(), (500, "engine_error".into()));
    assert!(r.message().contains(FakeEngine::REFUSAL), "{}", r.message());
    assert_eq!(app.engine.starts(), 1);
    let r = app.get("/v1/sandboxes/doomed").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "failed");
    let reason = r.json()["failure_reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains(FakeEngine::REFUSAL), "{reason}");
    let r = app
        .post_json("/v1/sandboxes/doomed/exec", r#"{"cmd":["true"]}"#)
        .await;
    assert_eq!(r.error(), (409, "illegal_transition".into()));
    assert!(r.message().contains(FakeEngine::REFUSAL), "{}", r.message());
    // Deleting it works without an engine that ever ran it.
    let r = app.send("DELETE", "/v1/sandboxes/doomed", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get("/v1/sandboxes/doomed").await.error(),
        (404, "not_found".into())
    );
}

/// Found by schemathesis: serde reads a struct from a JSON array of its fields, so
/// `PATCH …` with `[null, null]` changed nothing and answered 200, and `POST /v1/tokens` with
/// `{"caveats": [null, null]}` minted a token. An array where the API wants an object is 422
/// naming where; the same bodies as objects are served (the control).
#[tokio::test]
async fn an_array_in_place_of_an_object_is_422() {
    let app = app().await;
    app.insert("arr", SandboxStatus::Stopped);
    let patch = |body: &str| app.send("PATCH", "/v1/sandboxes/arr", &[JSON], body.as_bytes().to_vec());
    let r = patch("[null, null]").await;
    assert_eq!(r.error(), (422, "invalid".into()));
    assert_eq!(
        r.message(),
        "invalid request: expected an object at '(body)', got an array"
    );
    let r = app.post_json("/v1/tokens", r#"{"caveats": [null, null]}"#).await;
    assert_eq!(r.error(), (422, "invalid".into()));
    assert_eq!(
        r.message(),
        "invalid request: expected an object at 'caveats', got an array"
    );
    let r = app
        .post_json("/v1/sandboxes", r#"{"name": "arr-2", "from": ["arr"]}"#)
        .await;
    assert_eq!(r.error(), (422, "invalid".into()));
    assert!(r.message().contains("at 'from'"), "{}", r.message());
    // Control: objects, and arrays where arrays belong.
    let r = patch(r#"{"labels": {"k": "v"}}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["labels"]["k"], "v");
    let r = app
        .post_json(
            "/v1/tokens",
            r#"{"caveats": {"sandboxes": ["arr"], "actions": ["read"]}}"#,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.json()["token"].as_str().is_some_and(|t| !t.is_empty()));
}

/// Found by schemathesis: a checkpoint comment's limit (1024) counted bytes while the
/// OpenAPI document's `maxLength` counts characters, so 1000 'é' were refused. The limit is
/// checked before the sandbox is looked up: within it, the answer is the unknown sandbox's 404.
#[tokio::test]
async fn a_checkpoint_comment_is_limited_in_characters() {
    let app = app().await;
    let body = |n: usize| format!(r#"{{"comment": "{}"}}"#, "é".repeat(n));
    let r = app
        .post_json("/v1/sandboxes/no-such-sb/checkpoints", &body(1024))
        .await;
    assert_eq!(r.error(), (404, "not_found".into()));
    let r = app
        .post_json("/v1/sandboxes/no-such-sb/checkpoints", &body(1025))
        .await;
    assert_eq!(r.error(), (422, "invalid".into()));
    assert_eq!(r.message(), "comment is longer than 1024 characters");
}
