//! The tools, one method each, over a [`burrow_client::Client`] per call.
//!
//! Every result is a JSON object (structured content, plus the same as text); every failure is
//! a tool error whose text is the API's message (`ClientError`'s `Display`), so the model can
//! read it and try again. Nothing here panics on input: arguments are checked by their schema
//! (rmcp) and by the API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use burrow_api::{CheckpointList, ExecRequest, RestoreResult};
use burrow_client::{Client, ClientError, ExecEvent, ExecStreamOptions, Method, WriteFileOptions};
use futures::StreamExt as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Extensions, Implementation, ServerCapabilities, ServerConfig,
};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ClientSource;

/// Output kept per stream of a command (and bytes of a file read) when the call names no
/// limit: enough for a model to read, small enough not to flood its context.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 << 10;
/// The largest limit a call may ask for.
const MAX_OUTPUT_BYTES: u64 = 4 << 20;
/// How long a background command may run with nobody attached (a week, the API's maximum).
const BACKGROUND_DETACH_TIMEOUT_S: u64 = 7 * 86_400;
/// The longest a poll waits for a background command to finish.
const MAX_POLL_WAIT_S: f64 = 60.0;

/// The MCP server: the tool table and where each call gets its client.
#[derive(Clone)]
pub struct BurrowTools {
    source: Arc<dyn ClientSource>,
    tool_router: ToolRouter<Self>,
}

impl std::fmt::Debug for BurrowTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurrowTools").finish_non_exhaustive()
    }
}

// ---- arguments ----

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SandboxArg {
    /// The sandbox's name.
    pub sandbox: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ListSandboxesArgs {
    /// Only sandboxes whose name starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, schemars::JsonSchema)]
pub struct CreateSandboxArgs {
    /// The new sandbox's name: a DNS label (lowercase letters, digits, '-').
    pub name: String,
    /// The image to start from (default "base", a Debian system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPUs (fractions allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Environment of every command run in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// Labels, to find it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ExecArgs {
    /// The sandbox to run in.
    pub sandbox: String,
    /// The command as argv, e.g. ["python3", "-c", "print(1)"]. Give this or `shell`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// A shell command line run with `sh -c`, e.g. "cd /srv && make". Give this or `cmd`.
    #[serde(default)]
    pub shell: Option<String>,
    /// Text fed to the command's stdin.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory (absolute).
    #[serde(default)]
    pub cwd: Option<String>,
    /// User to run as (default root).
    #[serde(default)]
    pub user: Option<String>,
    /// Kill the command after this many seconds (foreground only).
    #[serde(default)]
    pub timeout_s: Option<f64>,
    /// Bytes of stdout and of stderr kept (default 65536); the rest is cut and marked truncated.
    #[serde(default)]
    pub max_output_bytes: Option<u64>,
    /// Start the command and return its session id at once; read its output and exit with
    /// `exec_poll`, stop it with `exec_kill`.
    #[serde(default)]
    pub background: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PollArgs {
    /// The sandbox the command runs in.
    pub sandbox: String,
    /// The session id `exec` returned.
    pub session_id: String,
    /// Wait up to this many seconds (at most 60) for the command to finish (default 0:
    /// answer with what is there now).
    #[serde(default)]
    pub wait_s: Option<f64>,
    /// Bytes of output kept, the most recent (default 65536).
    #[serde(default)]
    pub max_output_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct KillArgs {
    /// The sandbox the command runs in.
    pub sandbox: String,
    /// The session id `exec` returned.
    pub session_id: String,
    /// Signal name (default KILL), e.g. TERM, INT.
    #[serde(default)]
    pub signal: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReadFileArgs {
    pub sandbox: String,
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Bytes returned at most (default 65536); a longer file is cut and marked truncated.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WriteFileArgs {
    pub sandbox: String,
    /// Absolute path inside the sandbox; the file is replaced whole.
    pub path: String,
    /// The new content (text; or base64 when `base64` is true).
    pub content: String,
    /// `content` is base64 (for binary files).
    #[serde(default)]
    pub base64: bool,
    /// Permission bits as an octal string, e.g. "0755".
    #[serde(default)]
    pub mode: Option<String>,
    /// Create missing parent directories (default true).
    #[serde(default)]
    pub mkdir: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PathArgs {
    pub sandbox: String,
    /// Absolute path of a directory inside the sandbox.
    pub path: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CheckpointArgs {
    pub sandbox: String,
    /// What this checkpoint is, for later.
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RestoreArgs {
    pub sandbox: String,
    /// The checkpoint id, e.g. "v3".
    pub checkpoint: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ForkArgs {
    /// The sandbox to copy.
    pub sandbox: String,
    /// The new sandbox's name.
    pub name: String,
    /// Copy this checkpoint (e.g. "v2") instead of the current state.
    #[serde(default)]
    pub checkpoint: Option<String>,
}

// ---- results ----

type ToolResult = Result<CallToolResult, rmcp::ErrorData>;

fn ok(value: impl Serialize) -> ToolResult {
    match serde_json::to_value(value) {
        Ok(v @ Value::Object(_)) => Ok(CallToolResult::structured(v)),
        Ok(v) => Ok(CallToolResult::structured(json!({ "result": v }))),
        Err(e) => Ok(fail(format!("cannot encode the result: {e}"))),
    }
}

fn fail(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// A client error as the tool error the model reads: the API's message, with its code.
fn api_error(e: &ClientError) -> CallToolResult {
    match e.code() {
        Some(code) => fail(format!("{e} ({code})")),
        None => fail(e.to_string()),
    }
}

fn result<T: Serialize>(r: Result<T, ClientError>) -> ToolResult {
    match r {
        Ok(v) => ok(v),
        Err(e) => Ok(api_error(&e)),
    }
}

fn output_limit(asked: Option<u64>) -> Result<u64, CallToolResult> {
    match asked {
        None => Ok(DEFAULT_MAX_OUTPUT_BYTES),
        Some(n) if (1..=MAX_OUTPUT_BYTES).contains(&n) => Ok(n),
        Some(n) => Err(fail(format!(
            "max_output_bytes {n} must be between 1 and {MAX_OUTPUT_BYTES}"
        ))),
    }
}

/// Bytes as text when they are UTF-8, else as base64 (`{"text"}` or `{"base64"}`).
fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => json!({ "text": s }),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

/// Gets the call's client, or returns the tool error that says why there is none.
macro_rules! client {
    ($self:ident, $ext:ident) => {
        match $self.source.client(&$ext) {
            Ok(c) => c,
            Err(message) => return Ok(fail(message)),
        }
    };
}

/// Unwraps a `Result<_, CallToolResult>`, answering the call with the error.
macro_rules! check {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(result) => return Ok(result),
        }
    };
}

#[tool_router]
impl BurrowTools {
    pub fn new(source: Arc<dyn ClientSource>) -> Self {
        Self {
            source,
            tool_router: Self::tool_router(),
        }
    }

    /// List sandboxes (name, status, image, URL, labels).
    #[tool(annotations(title = "List sandboxes", read_only_hint = true, open_world_hint = false))]
    async fn list_sandboxes(
        &self,
        ext: Extensions,
        Parameters(a): Parameters<ListSandboxesArgs>,
    ) -> ToolResult {
        let client = client!(self, ext);
        let r = client.list_all_sandboxes(a.prefix.as_deref(), &[]).await;
        result(r.map(|sandboxes| json!({ "sandboxes": sandboxes })))
    }

    /// Show one sandbox: status, image, resources, URL, parent.
    #[tool(annotations(title = "Show a sandbox", read_only_hint = true, open_world_hint = false))]
    async fn get_sandbox(&self, ext: Extensions, Parameters(a): Parameters<SandboxArg>) -> ToolResult {
        let client = client!(self, ext);
        result(client.get_sandbox(&a.sandbox).await)
    }

    /// Create a sandbox: an isolated Linux machine with its own persistent disk, started and
    /// ready for `exec`.
    #[tool(annotations(
        title = "Create a sandbox",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn create_sandbox(
        &self,
        ext: Extensions,
        Parameters(a): Parameters<CreateSandboxArgs>,
    ) -> ToolResult {
        let client = client!(self, ext);
        // Sent as given: the API checks the name and values and says what is wrong.
        let r: Result<burrow_api::Sandbox, _> =
            client.request_json(Method::POST, "/v1/sandboxes", Some(&a)).await;
        result(r)
    }

    /// Delete a sandbox and its disk (its checkpoints go too unless a fork needs them).
    #[tool(annotations(
        title = "Delete a sandbox",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn delete_sandbox(&self, ext: Extensions, Parameters(a): Parameters<SandboxArg>) -> ToolResult {
        let client = client!(self, ext);
        result(
            client
                .delete_sandbox(&a.sandbox)
                .await
                .map(|()| json!({ "deleted": a.sandbox })),
        )
    }

    /// Run a command in a sandbox and return its exit code, stdout and stderr (each cut at
    /// max_output_bytes). With `background: true` it returns a session id at once: read the
    /// output and exit status with `exec_poll`, stop it with `exec_kill`.
    #[tool(annotations(
        title = "Run a command",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = true
    ))]
    async fn exec(&self, ext: Extensions, Parameters(a): Parameters<ExecArgs>) -> ToolResult {
        let client = client!(self, ext);
        let cmd = match (a.cmd, a.shell) {
            (Some(cmd), None) if !cmd.is_empty() => cmd,
            (None, Some(line)) => vec!["sh".into(), "-c".into(), line],
            (Some(_), Some(_)) => return Ok(fail("give either cmd or shell, not both")),
            _ => return Ok(fail("give the command: cmd (argv) or shell (a command line)")),
        };
        let limit = check!(output_limit(a.max_output_bytes));
        if a.background {
            if a.stdin.is_some() || a.timeout_s.is_some() {
                return Ok(fail(
                    "stdin and timeout_s are for foreground commands; stop a background one with exec_kill",
                ));
            }
            let opts = ExecStreamOptions {
                cmd,
                env: a.env.unwrap_or_default().into_iter().collect(),
                cwd: a.cwd,
                user: a.user,
                detach_timeout_s: Some(BACKGROUND_DETACH_TIMEOUT_S),
                ..ExecStreamOptions::default()
            };
            return Ok(start_background(&client, &a.sandbox, opts).await);
        }
        let req = ExecRequest {
            cmd,
            env: a.env.unwrap_or_default(),
            cwd: a.cwd,
            user: a.user,
            stdin: a.stdin,
            timeout_s: a.timeout_s,
            max_output_bytes: Some(limit),
            ..ExecRequest::default()
        };
        let r = client.exec(&a.sandbox, &req).await;
        result(r)
    }

    /// The output so far and, once it has finished, the exit status of a background command.
    #[tool(annotations(
        title = "Poll a background command",
        read_only_hint = true,
        open_world_hint = false
    ))]
    async fn exec_poll(&self, ext: Extensions, Parameters(a): Parameters<PollArgs>) -> ToolResult {
        let client = client!(self, ext);
        let limit = check!(output_limit(a.max_output_bytes));
        let wait = match a.wait_s {
            None => 0.0,
            Some(w) if (0.0..=MAX_POLL_WAIT_S).contains(&w) => w,
            Some(w) => {
                return Ok(fail(format!(
                    "wait_s {w} must be between 0 and {MAX_POLL_WAIT_S}"
                )));
            }
        };
        Ok(poll(
            &client,
            &a.sandbox,
            &a.session_id,
            Duration::from_secs_f64(wait),
            limit,
        )
        .await)
    }

    /// Send a signal (default KILL) to a background command.
    #[tool(annotations(
        title = "Stop a background command",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn exec_kill(&self, ext: Extensions, Parameters(a): Parameters<KillArgs>) -> ToolResult {
        let client = client!(self, ext);
        let r = client
            .kill_session(&a.sandbox, &a.session_id, a.signal.as_deref())
            .await;
        result(r.map(
            |()| json!({ "session_id": a.session_id, "signal": a.signal.unwrap_or_else(|| "KILL".into()) }),
        ))
    }

    /// Read a file from a sandbox (text, or base64 when it is not UTF-8).
    #[tool(annotations(title = "Read a file", read_only_hint = true, open_world_hint = false))]
    async fn read_file(&self, ext: Extensions, Parameters(a): Parameters<ReadFileArgs>) -> ToolResult {
        let client = client!(self, ext);
        let limit = check!(output_limit(a.max_bytes)) as usize;
        let mut stream = match client.read_file(&a.sandbox, &a.path).await {
            Ok(s) => s,
            Err(e) => return Ok(api_error(&e)),
        };
        let mut data = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Ok(api_error(&e)),
            };
            let room = limit - data.len();
            if chunk.len() > room {
                data.extend_from_slice(&chunk[..room]);
                // Enough: the rest is not read (a huge file costs no more than the limit).
                truncated = true;
                break;
            }
            data.extend_from_slice(&chunk);
        }
        if truncated {
            trim_partial_char(&mut data);
        }
        let mut v = bytes_json(&data);
        v["path"] = json!(a.path);
        v["truncated"] = json!(truncated);
        ok(v)
    }

    /// Write a file in a sandbox (replaced whole; parent directories are created).
    #[tool(annotations(
        title = "Write a file",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn write_file(&self, ext: Extensions, Parameters(a): Parameters<WriteFileArgs>) -> ToolResult {
        let client = client!(self, ext);
        let data = if a.base64 {
            match base64::engine::general_purpose::STANDARD.decode(a.content.as_bytes()) {
                Ok(d) => d,
                Err(e) => return Ok(fail(format!("content is not valid base64: {e}"))),
            }
        } else {
            a.content.into_bytes()
        };
        let mode = match a
            .mode
            .as_deref()
            .map(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8))
        {
            None => None,
            Some(Ok(m)) if m <= 0o7777 => Some(m),
            Some(_) => return Ok(fail("mode must be octal permission bits, e.g. \"0644\"")),
        };
        let opts = WriteFileOptions {
            mode,
            mkdir: a.mkdir.unwrap_or(true),
        };
        let size = data.len();
        let r = client.write_file_bytes(&a.sandbox, &a.path, opts, data).await;
        result(r.map(|()| json!({ "path": a.path, "size": size })))
    }

    /// List a directory in a sandbox: name, type, size, mode, mtime of each entry.
    #[tool(annotations(title = "List a directory", read_only_hint = true, open_world_hint = false))]
    async fn list_files(&self, ext: Extensions, Parameters(a): Parameters<PathArgs>) -> ToolResult {
        let client = client!(self, ext);
        result(client.list_files(&a.sandbox, &a.path).await)
    }

    /// Save the sandbox's disk as a checkpoint (v0, v1, …) to restore or fork later.
    #[tool(annotations(
        title = "Checkpoint a sandbox",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn checkpoint(&self, ext: Extensions, Parameters(a): Parameters<CheckpointArgs>) -> ToolResult {
        let client = client!(self, ext);
        let body = json!({ "comment": a.comment });
        let r: Result<burrow_api::Checkpoint, _> = client
            .request_json(Method::POST, &checkpoints_path(&a.sandbox), Some(&body))
            .await;
        result(r)
    }

    /// List a sandbox's checkpoints.
    #[tool(annotations(title = "List checkpoints", read_only_hint = true, open_world_hint = false))]
    async fn list_checkpoints(&self, ext: Extensions, Parameters(a): Parameters<SandboxArg>) -> ToolResult {
        let client = client!(self, ext);
        let r: Result<CheckpointList, _> = client.get_json(&checkpoints_path(&a.sandbox)).await;
        result(r)
    }

    /// Put a sandbox back to a checkpoint. The state it replaces is saved first as a new
    /// checkpoint (returned as `backup`), so nothing is lost; running commands restart.
    #[tool(annotations(
        title = "Restore a checkpoint",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn restore(&self, ext: Extensions, Parameters(a): Parameters<RestoreArgs>) -> ToolResult {
        let client = client!(self, ext);
        let path = format!(
            "{}/{}/restore",
            checkpoints_path(&a.sandbox),
            burrow_client::paths::encode(&a.checkpoint)
        );
        let r: Result<RestoreResult, _> = client.request_json(Method::POST, &path, None::<&()>).await;
        result(r)
    }

    /// Create a new sandbox as a copy of another: of its current state, or of a checkpoint.
    #[tool(annotations(
        title = "Fork a sandbox",
        read_only_hint = false,
        destructive_hint = false,
        idempotent_hint = false,
        open_world_hint = false
    ))]
    async fn fork(&self, ext: Extensions, Parameters(a): Parameters<ForkArgs>) -> ToolResult {
        let client = client!(self, ext);
        let mut from = json!({ "sandbox": a.sandbox });
        if let Some(cp) = a.checkpoint {
            from["checkpoint"] = json!(cp);
        }
        let body = json!({ "name": a.name, "from": from });
        let r: Result<burrow_api::Sandbox, _> = client
            .request_json(Method::POST, "/v1/sandboxes", Some(&body))
            .await;
        result(r)
    }

    /// The web URL of a sandbox: it reaches the service that declares an http_port (default
    /// port 8080). Also the API path that proxies to it.
    #[tool(annotations(
        title = "URL of a sandbox's web service",
        read_only_hint = true,
        open_world_hint = false
    ))]
    async fn service_url(&self, ext: Extensions, Parameters(a): Parameters<SandboxArg>) -> ToolResult {
        let client = client!(self, ext);
        let r = client.get_sandbox(&a.sandbox).await;
        result(r.map(|sb| {
            json!({
                "sandbox": sb.name,
                "url": sb.url,
                "url_auth": sb.config.url_auth,
                "api_path": format!("{}/http/", burrow_client::paths::sandbox(&sb.name)),
            })
        }))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for BurrowTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("burrow", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Burrow sandboxes: isolated Linux machines with persistent disks. Create one, run \
                 commands with exec (background: true for long ones, then exec_poll), read and \
                 write files, checkpoint before risky steps and restore after, fork to try \
                 alternatives side by side.",
            )
    }
}

fn checkpoints_path(sandbox: &str) -> String {
    format!("{}/checkpoints", burrow_client::paths::sandbox(sandbox))
}

/// Drops an incomplete UTF-8 sequence that a cut left at the end, so cut text stays text.
fn trim_partial_char(data: &mut Vec<u8>) {
    if let Err(e) = std::str::from_utf8(data)
        && e.error_len().is_none()
    {
        data.truncate(e.valid_up_to());
    }
}

/// The wrapper a background command runs under: `sh -c WRAPPER BASE CMD…` runs CMD with its
/// stdout and stderr in `BASE.out` and `BASE.err`. A session's buffered output is gone once
/// it exits (attach answers 410), so the files keep it for `exec_poll`; the session list
/// shows the argv, so a poll finds BASE from the session id alone.
const BG_WRAPPER: &str = r#"exec "$@" >"$0.out" 2>"$0.err""#;
/// Where the output files of background commands go (world-writable, any user).
const BG_DIR: &str = "/tmp/burrow-mcp-";

/// Starts a background command: opens an exec stream that may outlive its connection, takes
/// the session id from its first event and leaves.
async fn start_background(client: &Client, sandbox: &str, mut opts: ExecStreamOptions) -> CallToolResult {
    let base = format!("{BG_DIR}{:016x}", random_u64());
    let mut cmd = vec!["sh".to_owned(), "-c".to_owned(), BG_WRAPPER.to_owned(), base];
    cmd.append(&mut opts.cmd);
    opts.cmd = cmd;
    let mut stream = match client.exec_stream(sandbox, opts).await {
        Ok(s) => s,
        Err(e) => return api_error(&e),
    };
    match stream.next_event().await {
        Ok(Some(ExecEvent::Session { id, pid, .. })) => {
            drop(stream);
            CallToolResult::structured(json!({ "session_id": id, "pid": pid, "running": true }))
        }
        Ok(Some(ExecEvent::Error { message, code, .. })) => fail(format!("{message} ({code})")),
        Ok(other) => fail(format!(
            "the exec stream began with {other:?} instead of a session"
        )),
        Err(e) => api_error(&e),
    }
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per instance: unique enough for a file name.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A background command's state: running or its exit, and the last `limit` bytes of its
/// stdout and stderr. Waits up to `wait` for it to exit (attached to its session, so the
/// exit ends the wait at once).
async fn poll(client: &Client, sandbox: &str, id: &str, wait: Duration, limit: u64) -> CallToolResult {
    let mut session = match find_session(client, sandbox, id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if session.exited_at.is_none() && !wait.is_zero() {
        if let Ok(mut stream) = client.attach_session(sandbox, id).await {
            let _ = tokio::time::timeout(wait, async {
                while let Ok(Some(ev)) = stream.next_event().await {
                    if matches!(ev, ExecEvent::Exit { .. }) {
                        break;
                    }
                }
            })
            .await;
        }
        // Attached or not (410: it has just exited), the list has its state now.
        session = match find_session(client, sandbox, id).await {
            Ok(s) => s,
            Err(r) => return r,
        };
    }
    let Some(base) = background_base(&session.cmd) else {
        return fail(format!(
            "session '{id}' was not started by the exec tool with background: true, so its output \
             was not kept; its state: {}",
            if session.exited_at.is_some() {
                "exited"
            } else {
                "running"
            }
        ));
    };
    // The tails, by one exec (the caller may run commands; it may not hold `files`). One byte
    // more than the limit tells whether there was more.
    let n = (limit + 1).to_string();
    let req = ExecRequest {
        cmd: [
            "sh",
            "-c",
            r#"tail -c "$1" "$0.out" 2>/dev/null; tail -c "$1" "$0.err" >&2 2>/dev/null"#,
            base,
            &n,
        ]
        .map(str::to_owned)
        .to_vec(),
        max_output_bytes: Some(limit + 1),
        ..ExecRequest::default()
    };
    let out = match client.exec(sandbox, &req).await {
        Ok(r) => r,
        Err(e) => return api_error(&e),
    };
    let (stdout, cut_out) = tail_text(&out.stdout, &out.stdout_b64, limit);
    let (stderr, cut_err) = tail_text(&out.stderr, &out.stderr_b64, limit);
    let mut v = json!({
        "session_id": id,
        "running": session.exited_at.is_none(),
        "stdout": stdout,
        "stderr": stderr,
        "output_truncated": cut_out || cut_err,
    });
    if session.exited_at.is_some() {
        v["exit_code"] = json!(session.exit_code);
        if let Some(s) = session.signal {
            v["signal"] = json!(s);
        }
    }
    CallToolResult::structured(v)
}

/// Session `id` of the sandbox, or the tool error saying it is unknown.
async fn find_session(
    client: &Client,
    sandbox: &str,
    id: &str,
) -> Result<burrow_api::SessionInfo, CallToolResult> {
    let list = client.list_sessions(sandbox).await.map_err(|e| api_error(&e))?;
    list.sessions.into_iter().find(|s| s.id == id).ok_or_else(|| {
        fail(format!(
            "session '{id}' does not exist in sandbox '{sandbox}' (not_found)"
        ))
    })
}

/// BASE of a command started by [`start_background`].
fn background_base(cmd: &[String]) -> Option<&str> {
    match cmd {
        [sh, c, wrapper, base, ..]
            if sh == "sh" && c == "-c" && wrapper == BG_WRAPPER && base.starts_with(BG_DIR) =>
        {
            Some(base)
        }
        _ => None,
    }
}

/// The last `limit` bytes of an output (`b64` when it was not UTF-8), as text, and whether
/// anything came before them.
fn tail_text(text: &str, b64: &Option<String>, limit: u64) -> (String, bool) {
    let bytes = match b64 {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .unwrap_or_else(|_| text.as_bytes().to_vec()),
        None => text.as_bytes().to_vec(),
    };
    let limit = limit as usize;
    if bytes.len() <= limit {
        return (String::from_utf8_lossy(&bytes).into_owned(), false);
    }
    let tail = &bytes[bytes.len() - limit..];
    (String::from_utf8_lossy(tail).into_owned(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_commands_are_recognised_by_their_wrapper() {
        let cmd = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let base = format!("{BG_DIR}00ff");
        assert_eq!(
            background_base(&cmd(&["sh", "-c", BG_WRAPPER, &base, "sleep", "1"])),
            Some(base.as_str())
        );
        assert_eq!(
            background_base(&cmd(&["sh", "-c", BG_WRAPPER, "/etc/passwd", "x"])),
            None
        );
        assert_eq!(background_base(&cmd(&["sleep", "1"])), None);
    }

    #[test]
    fn tails_keep_the_end_and_say_so() {
        assert_eq!(tail_text("hello", &None, 10), ("hello".into(), false));
        assert_eq!(tail_text("hello", &None, 3), ("llo".into(), true));
        let b64 = Some(base64::engine::general_purpose::STANDARD.encode([0xff, b'a', b'b']));
        assert_eq!(tail_text("", &b64, 2), ("ab".into(), true));
    }

    #[test]
    fn a_cut_keeps_whole_characters() {
        let mut v = "aé".as_bytes()[..2].to_vec();
        trim_partial_char(&mut v);
        assert_eq!(v, b"a");
    }

    #[test]
    fn every_tool_is_annotated() {
        let tools = BurrowTools::tool_router().list_all();
        assert!(tools.len() >= 15);
        for t in tools {
            let a = t
                .annotations
                .as_ref()
                .unwrap_or_else(|| panic!("{} has no annotations", t.name));
            assert!(a.read_only_hint.is_some(), "{}", t.name);
        }
    }
}
