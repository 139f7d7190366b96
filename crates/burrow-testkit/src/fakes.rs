//! API answers for fake daemons in client and CLI tests, built from the `burrow-api` types and
//! serialised, so a fake cannot drift from what burrowd really sends.

use burrow_client::api::{
    EngineKind, ErrorBody, ErrorDetail, ExecResult, Sandbox, SandboxConfig, SandboxList, SandboxStatus,
    UrlAuth,
};
use serde_json::Value;

/// A sandbox record as `GET /v1/sandboxes/{name}` returns it.
pub fn sandbox(name: &str, status: SandboxStatus) -> Sandbox {
    let t = "2025-01-01T00:00:00Z".to_owned();
    Sandbox {
        id: format!("sb-{name}"),
        name: name.to_owned(),
        status,
        engine: EngineKind::Container,
        image: "base".to_owned(),
        created_at: t.clone(),
        updated_at: t.clone(),
        last_active_at: t,
        url: format!("http://{name}.localhost:7440/"),
        config: SandboxConfig {
            cpus: 1.0,
            memory_mb: 512,
            disk_gb: 10,
            pids: 1024,
            idle_timeout_s: 60,
            cold_after_s: 600,
            url_auth: UrlAuth::Private,
            restart: Default::default(),
        },
        env: Default::default(),
        labels: Default::default(),
        parent: None,
        failure_reason: None,
        notice: None,
        sleep: None,
        engine_detail: None,
        usage: None,
    }
}

/// [`sandbox`] as JSON.
pub fn sandbox_json(name: &str, status: SandboxStatus) -> Value {
    serde_json::to_value(sandbox(name, status)).expect("a Sandbox serialises")
}

/// `GET /v1/sandboxes`: these sandboxes, no further page.
pub fn sandbox_list(sandboxes: Vec<Sandbox>) -> Value {
    serde_json::to_value(SandboxList {
        sandboxes,
        next_cursor: None,
    })
    .expect("a SandboxList serialises")
}

/// The error envelope `{"error": {"code", "message"}}`.
pub fn error(code: &str, message: &str) -> Value {
    serde_json::to_value(ErrorBody {
        error: ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
            caveat: None,
        },
    })
    .expect("an ErrorBody serialises")
}

/// A one-shot exec's answer.
pub fn exec_result(exit_code: i32, stdout: &str) -> Value {
    serde_json::to_value(ExecResult {
        exit_code,
        signal: None,
        stdout: stdout.to_owned(),
        stderr: String::new(),
        stdout_b64: None,
        stderr_b64: None,
        stdout_truncated: false,
        stderr_truncated: false,
        timed_out: false,
        duration_ms: 1,
    })
    .expect("an ExecResult serialises")
}
