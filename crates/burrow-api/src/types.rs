//! Request and response bodies, as `shared/api.md` lists them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::SandboxName;

/// Lifecycle state of a sandbox as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxStatus {
    Creating,
    Running,
    Sleeping,
    Stopped,
    Failed,
    Destroyed,
}

impl SandboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Sleeping => "sleeping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => Self::Creating,
            "running" => Self::Running,
            "sleeping" => Self::Sleeping,
            "stopped" => Self::Stopped,
            "failed" => Self::Failed,
            "destroyed" => Self::Destroyed,
            _ => return None,
        })
    }
}

impl std::fmt::Display for SandboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which isolation engine runs a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Container,
    Vm,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Vm => "vm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "container" => Some(Self::Container),
            "vm" => Some(Self::Vm),
            _ => None,
        }
    }
}

/// Who may use a sandbox's URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UrlAuth {
    #[default]
    Private,
    Public,
}

/// What burrowd does when a sandbox's agent (PID 1) dies on its own (killed, crashed): not
/// when the sandbox is stopped, deleted or put to sleep through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxRestart {
    /// Boot it again after a backoff (0.5 s, doubling); after 5 deaths each within a minute of
    /// the restart before it, stay `failed` with the reason.
    #[default]
    OnFailure,
    /// Stay `failed` with the reason until `start`.
    Never,
}

impl SandboxRestart {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxRestart::OnFailure => "on-failure",
            SandboxRestart::Never => "never",
        }
    }
}

/// `POST /v1/sandboxes`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    pub name: SandboxName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ForkSource>,
    /// 0.01..=256 ([`crate::limits::CPUS`]); non-finite values travel as strings, to be refused.
    #[serde(
        default,
        with = "crate::limits::cpus_wire",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_after_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_auth: Option<UrlAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<SandboxRestart>,
}

impl Default for SandboxName {
    fn default() -> Self {
        // Only for `..Default::default()` in struct literals; never valid on its own.
        SandboxName::parse("unnamed").expect("valid literal")
    }
}

/// Where a fork comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForkSource {
    pub sandbox: SandboxName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// A fork of a VM's live state takes its memory too: the copy's processes go on
    /// (absent: the copy boots afresh from the disk). A checkpoint source has its own
    /// memory or not; this asks that it has.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory: bool,
}

/// `PATCH /v1/sandboxes/{name}`: every field optional; absent = unchanged.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchSandbox {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_after_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_auth: Option<UrlAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<SandboxRestart>,
    /// 0.01..=256 ([`crate::limits::CPUS`]); non-finite values travel as strings, to be refused.
    #[serde(
        default,
        with = "crate::limits::cpus_wire",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// Resources and policy of a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxConfig {
    pub cpus: f64,
    pub memory_mb: u64,
    pub disk_gb: u64,
    pub pids: u64,
    pub idle_timeout_s: u64,
    /// Seconds asleep (warm) before the sandbox goes cold (processes stopped, disk kept);
    /// 0 = never.
    #[serde(default = "default_cold_after_s")]
    pub cold_after_s: u64,
    pub url_auth: UrlAuth,
    #[serde(default)]
    pub restart: SandboxRestart,
}

fn default_cold_after_s() -> u64 {
    600
}

/// A sandbox ("burrow").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub status: SandboxStatus,
    pub engine: EngineKind,
    pub image: String,
    pub created_at: String,
    pub updated_at: String,
    pub last_active_at: String,
    pub url: String,
    pub config: SandboxConfig,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ForkSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Extension: something the owner should know, e.g. how an interrupted restore ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// Extension: `warm` (frozen, memory kept), `memory` (a VM's memory saved to disk, no
    /// process on the host) or `cold` (stopped, disk kept) while sleeping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<String>,
    /// Extension: what runs it (on `GET /v1/sandboxes/{name}`): `runc`, or the QEMU
    /// version, accelerator and guest kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_detail: Option<String>,
    /// Extension: resource use right now (on `GET /v1/sandboxes/{name}` of a running or
    /// warm-sleeping sandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<SandboxUsage>,
}

/// What a sandbox uses right now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxUsage {
    pub memory_bytes: u64,
    pub pids: u64,
    /// Processes the kernel's OOM killer killed in it since it last booted.
    pub oom_kills: u64,
    /// The process (and thread) limit in force, which may be below `config.pids`: the
    /// container engine lowers it so that the sandbox's open files stay within its share of
    /// the host's (see docs/threat-model.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
    /// Bytes charged against `config.disk_gb`: what the sandbox wrote and still holds,
    /// including data it deleted that its checkpoints still hold (when the pool keeps quotas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
}

/// `GET /v1/sandboxes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxList {
    pub sandboxes: Vec<Sandbox>,
    pub next_cursor: Option<String>,
}

/// `POST /v1/sandboxes/{name}/exec`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
    /// Extension: per-stream output cap in bytes (default 16 MiB, at most 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

/// Result of a one-shot exec.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExecResult {
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_b64: Option<String>,
    /// Extension: true when output went past the cap and was cut.
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    pub timed_out: bool,
    pub duration_ms: u64,
}

/// WebSocket binary frame stream bytes (`[stream][payload]`).
pub mod ws_stream {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const STDIN_EOF: u8 = 4;
}

/// WebSocket text frames, both directions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WsControl {
    /// Server → client, first frame.
    Session {
        id: String,
        #[serde(default)]
        pid: Option<u32>,
        #[serde(default)]
        tty: bool,
    },
    /// Server → client, last frame before a normal close.
    Exit {
        exit_code: i32,
        #[serde(default)]
        signal: Option<String>,
        /// Extension: why the process ended when the sandbox ended it (stop, restore, …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Server → client when the session cannot go on (the exit frame still follows when known).
    /// `status` is the HTTP status the same error has as a response (set when the session
    /// could not start, after a [`WsControl::Start`] frame).
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
    },
    /// Client → server, first frame, when the query has no `cmd`: what to run. Carries what
    /// may be too long for a URL (argv, environment); any limit the one-shot exec accepts,
    /// this accepts. The server answers with `session`, or `error` (with `status`) and a close.
    Start {
        cmd: Vec<String>,
        /// Extra environment (added to the query's `env`).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
    },
    /// Client → server.
    Resize { cols: u16, rows: u16 },
    /// Client → server, signal name (`TERM`, `SIGINT`, …) or number.
    Signal { signal: String },
}

/// `POST /v1/sandboxes/{name}/checkpoints`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateCheckpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Keep memory and device state too (vm engine only): a restore or fork of it resumes
    /// its processes. Default: the disk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<bool>,
}

/// A checkpoint: a read-only snapshot of a sandbox's whole disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    pub id: String,
    pub comment: String,
    pub created_at: String,
    /// Apparent size of the captured tree (computed after the snapshot; 0 until known).
    pub size_bytes: u64,
    /// `api`, `inside` (from /.burrow/api.sock) or `restore-backup`.
    pub source: String,
    /// It holds memory and device state too (a VM's): restoring or forking it resumes the
    /// processes it had.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointList {
    pub checkpoints: Vec<Checkpoint>,
}

/// `POST …/checkpoints/{id}/restore`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreResult {
    pub restored: String,
    pub backup: String,
}

/// `POST /v1/images`: a template from a sandbox's checkpoint (or its current state).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateImage {
    pub name: String,
    pub from: ForkSource,
}

/// An image sandboxes are created from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// `ready`, `building` or `failed`.
    pub status: String,
    pub created_at: String,
    pub size_bytes: u64,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /v1/images`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageList {
    pub images: Vec<Image>,
}

/// `GET /v1/version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    pub api: String,
    pub agent_protocol: u32,
    pub engines: Vec<EngineInfo>,
    pub default_engine: EngineKind,
    pub pool: String,
    /// Extension: the pool's size and use now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_space: Option<PoolSpaceInfo>,
    /// Whether sandboxes (container engine) see their own memory, CPUs, uptime and load in
    /// `/proc` and `/sys/devices/system/cpu` (lxcfs runs), rather than the host's.
    #[serde(default)]
    pub lxcfs: bool,
    /// Extension: pre-started container sandboxes (absent when the pool is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prestart: Option<PrestartInfo>,
}

/// Pre-started sandboxes: how many wait now, in all and per engine and image kept ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrestartInfo {
    pub ready: u32,
    pub pools: Vec<PrestartPool>,
}

/// The pre-started sandboxes of one engine and image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrestartPool {
    pub engine: EngineKind,
    pub image: String,
    pub ready: u32,
    /// How many are kept ready now: the base size plus what demand added.
    pub target: u32,
}

/// How full the storage pool is: below `reserve_bytes` free, create, fork and image builds
/// are refused (507 `pool_full`), so running sandboxes keep room to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpaceInfo {
    pub size_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub reserve_bytes: u64,
}

/// `POST /v1/images/prune`: what was removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneResult {
    /// Cached build layers deleted (no existing image was built from them).
    pub layers: u64,
    /// Their size (apparent bytes of their trees).
    pub bytes: u64,
}

/// What an engine can do on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineInfo {
    pub kind: EngineKind,
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The error envelope: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// Extension: on a 403, the token caveat that did not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caveat: Option<String>,
}

/// Signal names used on the wire, without the `SIG` prefix.
pub fn signal_name(num: i32) -> String {
    const NAMES: [&str; 32] = [
        "", "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU",
        "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    match usize::try_from(num).ok().and_then(|i| NAMES.get(i)) {
        Some(n) if !n.is_empty() => (*n).to_owned(),
        _ => num.to_string(),
    }
}

/// Parses `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    (1..32).find(|&n| signal_name(n) == name)
}

/// The type of a directory entry in `GET …/files/list`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of `GET /v1/sandboxes/{name}/files/list` (lstat: a symlink is listed as such).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 07777`).
    pub mode: u32,
    /// Modification time, RFC 3339 UTC.
    pub mtime: String,
}

/// `GET /v1/sandboxes/{name}/files/list`, sorted by name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileList {
    pub entries: Vec<FileEntry>,
}

/// `POST /v1/sandboxes/{name}/files/rename`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RenameFile {
    pub from: String,
    pub to: String,
}

/// When a service is restarted after it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }
}

/// `PUT /v1/sandboxes/{name}/services/{svc}`: defines (or replaces) a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutService {
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The port it serves HTTP on; services that `need` it wait until the port accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Services that must be running before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
}

/// What a service is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceStatus {
    Running,
    /// Not running and not meant to (stopped, or its sandbox is not running).
    Stopped,
    /// Ended; its restart policy says not to restart it.
    Exited,
    /// Ended; waiting before the next restart.
    Backoff,
    /// Could not be started (see `error`).
    Failed,
    /// Extension: waiting for the services it needs.
    Waiting,
}

/// A service of a sandbox: its definition and, from the sandbox's agent, its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    pub restart: RestartPolicy,
    #[serde(default)]
    pub needs: Vec<String>,
    pub status: ServiceStatus,
    /// Process id inside the sandbox while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Exit status of the last run; -1 when a signal ended it (see `signal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Why it could not be started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/sandboxes/{name}/services`, sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<Service>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip() {
        assert_eq!(parse_signal("TERM"), Some(15));
        assert_eq!(parse_signal("sigint"), Some(2));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("0"), None);
        assert_eq!(signal_name(9), "KILL");
    }

    #[test]
    fn create_rejects_unknown_fields_and_bad_names() {
        let err = serde_json::from_str::<CreateSandbox>(r#"{"name":"Bad"}"#).unwrap_err();
        assert!(err.to_string().contains("not a DNS label"), "{err}");
        let err = serde_json::from_str::<CreateSandbox>(r#"{"name":"ok","bogus":1}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn ws_control_shapes() {
        let exit = serde_json::to_value(WsControl::Exit {
            exit_code: 0,
            signal: None,
            reason: None,
        })
        .unwrap();
        assert_eq!(
            exit,
            serde_json::json!({"type": "exit", "exit_code": 0, "signal": null})
        );
        let r: WsControl = serde_json::from_str(r#"{"type":"resize","cols":80,"rows":24}"#).unwrap();
        assert_eq!(r, WsControl::Resize { cols: 80, rows: 24 });
    }
}

/// One session (`GET /v1/sandboxes/{name}/sessions`): every exec is one, owned by the
/// sandbox's agent, so it outlives the connection (and burrowd) for its detach timeout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exited_at: Option<String>,
    /// Set once exited: the exit status, or -1 when a signal ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Extension: the signal that ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Whether a client is attached right now.
    pub attached: bool,
    /// Extension: process id inside the sandbox.
    #[serde(default)]
    pub pid: u32,
    /// Extension: how long it may run with nobody attached.
    #[serde(default)]
    pub detach_timeout_s: f64,
}

/// `GET /v1/sandboxes/{name}/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
}

/// `POST /v1/sandboxes/{name}/sessions/{id}/kill`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KillSession {
    /// Signal name (`TERM`, `SIGINT`, …) or number; default KILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
}

/// Server → client text frame on a session attach, right after the `session` frame:
/// how much buffered output follows, and how much older output is no longer buffered.
/// (Clients that do not know the type skip it.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WsNotice {
    Replay { replay_bytes: u64, dropped_bytes: u64 },
}

/// How a sandbox may reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// No traffic leaves the sandbox (burrowd's DNS answers REFUSED).
    None,
    /// Only names the rules allow resolve, and only their addresses are reachable.
    Policy,
    /// Anything public (never the host, other sandboxes, private or metadata ranges).
    #[default]
    Open,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Policy => "policy",
            Self::Open => "open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Allow,
    Deny,
}

/// One domain rule: `example.com` (that name), `*.example.com` (names below it) or `*`.
/// The first matching rule decides; a name no rule matches is denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRule {
    pub domain: String,
    pub action: RuleAction,
}

/// `GET|PUT /v1/sandboxes/{name}/policy/network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    pub mode: NetworkMode,
    #[serde(default)]
    pub rules: Vec<NetworkRule>,
}

/// How the credential proxy puts a secret into a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretInject {
    /// The header that carries it (default `Authorization`).
    #[serde(default = "default_inject_header")]
    pub header: String,
    /// The header value, with `%s` where the secret goes (default `Bearer %s`).
    #[serde(default = "default_inject_format")]
    pub format: String,
}

impl Default for SecretInject {
    fn default() -> Self {
        SecretInject {
            header: default_inject_header(),
            format: default_inject_format(),
        }
    }
}

fn default_inject_header() -> String {
    "Authorization".into()
}

fn default_inject_format() -> String {
    "Bearer %s".into()
}

/// `POST /v1/secrets`. The value is sealed on arrival and never returned.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSecret {
    pub name: String,
    pub value: String,
    #[serde(default)]
    pub inject: SecretInject,
    pub hosts: Vec<String>,
}

impl std::fmt::Debug for CreateSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateSecret")
            .field("name", &self.name)
            .field("inject", &self.inject)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// A secret as the API shows it: everything but the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub name: String,
    pub inject: SecretInject,
    pub hosts: Vec<String>,
    pub created_at: String,
    /// Sandboxes it is attached to, with the variable holding the placeholder.
    #[serde(default)]
    pub attached: Vec<SecretAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretAttachment {
    pub sandbox: String,
    pub env: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretList {
    pub secrets: Vec<Secret>,
}

/// `PUT /v1/sandboxes/{name}/secrets/{secret}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachSecret {
    pub env: String,
}

/// Caveats of a new API token; absent = not restricted on that axis.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenCaveats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandboxes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default)]
    pub caveats: TokenCaveats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenReply {
    pub token: String,
    /// Every caveat the token carries (the caller's own, then the new ones).
    pub caveats: Vec<String>,
}
