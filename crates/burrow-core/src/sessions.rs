//! Sessions on the host side: listing, attaching to and killing the sessions a sandbox's
//! agent owns. The agent is the source of truth (ids, buffered output, exit status), so
//! sessions survive burrowd restarts; burrowd keeps no session state of its own.
//!
//! Agent statuses map to client errors here: an unknown id is 404, a finished session 410
//! (with its exit status in the message).

use std::time::Duration;

use burrow_agent_proto::AgentClient;
use burrow_agent_proto::v1::{
    AttachStart, ExecInput, KillSessionRequest, ListSessionsRequest, exec_input, exec_output,
};
use burrow_api::{SessionInfo, SessionList, parse_signal, signal_name};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::CoreError;
use crate::exec::{self, ExecSession, agent_status};
use crate::manager::Manager;
use crate::store::SandboxRecord;

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Bound for the agent's first answer to a session call.
const AGENT_ANSWER: Duration = Duration::from_secs(30);

/// A session joined by [`Manager::attach_session`].
#[derive(Debug)]
pub struct AttachedSession {
    /// The live session: buffered output first, then live output, `Exited` last.
    pub session: ExecSession,
    pub tty: bool,
    /// Output that was no longer buffered (the replay starts after it).
    pub dropped_bytes: u64,
    /// Buffered output replayed before live output.
    pub replay_bytes: u64,
}

fn rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

fn session_status(sandbox: &str, id: &str, s: tonic::Status) -> CoreError {
    match s.code() {
        tonic::Code::NotFound => CoreError::not_found("session", id),
        tonic::Code::FailedPrecondition => CoreError::Gone(format!("session '{id}' has already exited")),
        _ => agent_status(sandbox, s),
    }
}

fn gone(id: &str, exit_code: i32, signal: i32) -> CoreError {
    if signal > 0 {
        CoreError::Gone(format!(
            "session '{id}' has exited (killed by signal {})",
            signal_name(signal)
        ))
    } else {
        CoreError::Gone(format!("session '{id}' has exited with code {exit_code}"))
    }
}

impl Manager {
    /// Runs `call` against the sandbox's agent, reconnecting once when the cached channel
    /// turns out to be stale (the agent restarted, or burrowd did).
    async fn with_agent<T, F, Fut>(&self, rec: &SandboxRecord, call: F) -> Result<T>
    where
        F: Fn(AgentClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let client = self.agent(rec).await?;
        match call(client).await {
            Err(CoreError::Agent { .. }) => {
                self.forget_agent(&rec.id);
                let client = self.agent(rec).await?;
                call(client).await
            }
            other => other,
        }
    }

    /// `GET /v1/sandboxes/{name}/sessions`: running and recently finished sessions.
    pub async fn list_sessions(&self, name: &str) -> Result<SessionList> {
        let rec = self.ensure_running(name).await?;
        let sandbox = rec.name.clone();
        let reply = self
            .with_agent(&rec, |mut client| {
                let sandbox = sandbox.clone();
                async move {
                    tokio::time::timeout(AGENT_ANSWER, client.list_sessions(ListSessionsRequest {}))
                        .await
                        .map_err(|_| CoreError::Agent {
                            name: sandbox.clone(),
                            detail: "no answer to ListSessions within 30 s".into(),
                        })?
                        .map_err(|s| agent_status(&sandbox, s))
                }
            })
            .await?
            .into_inner();
        let sessions = reply
            .sessions
            .into_iter()
            .map(|s| {
                let exit = s.exit.filter(|_| s.exited_at_ms.is_some());
                SessionInfo {
                    id: s.id,
                    cmd: s.argv,
                    tty: s.tty,
                    started_at: rfc3339_ms(s.started_at_ms),
                    exited_at: s.exited_at_ms.map(rfc3339_ms),
                    exit_code: exit.map(|e| e.exit_code),
                    signal: exit.filter(|e| e.signal > 0).map(|e| signal_name(e.signal)),
                    attached: s.attached > 0,
                    pid: s.pid,
                    detach_timeout_s: s.detach_timeout_ms as f64 / 1000.0,
                }
            })
            .collect();
        Ok(SessionList { sessions })
    }

    /// Joins session `id`: its buffered output, then live output and its exit.
    pub async fn attach_session(&self, name: &str, id: &str) -> Result<AttachedSession> {
        let rec = self.ensure_running(name).await?;
        self.touch(&rec);
        let sandbox = rec.name.clone();
        let mut attached = self
            .with_agent(&rec, |client| attach(client, sandbox.clone(), id.to_owned()))
            .await?;
        attached.session.busy = Some(self.runtime(&rec.id).busy_guard());
        Ok(attached)
    }

    /// Signals session `id`'s process group (default KILL).
    pub async fn kill_session(&self, name: &str, id: &str, signal: Option<&str>) -> Result<()> {
        let signal = match signal {
            None => libc::SIGKILL,
            Some(s) => parse_signal(s).ok_or_else(|| CoreError::Invalid(format!("unknown signal '{s}'")))?,
        };
        let rec = self.ensure_running(name).await?;
        let sandbox = rec.name.clone();
        self.with_agent(&rec, |mut client| {
            let sandbox = sandbox.clone();
            async move {
                let call = client.kill_session(KillSessionRequest {
                    session_id: id.to_owned(),
                    signal,
                });
                tokio::time::timeout(AGENT_ANSWER, call)
                    .await
                    .map_err(|_| CoreError::Agent {
                        name: sandbox.clone(),
                        detail: "no answer to KillSession within 30 s".into(),
                    })?
                    .map_err(|s| session_status(&sandbox, id, s))
            }
        })
        .await?;
        Ok(())
    }
}

async fn attach(mut client: AgentClient<Channel>, sandbox: String, id: String) -> Result<AttachedSession> {
    let (tx, rx) = mpsc::channel(64);
    tx.send(ExecInput {
        kind: Some(exec_input::Kind::Attach(AttachStart {
            session_id: id.clone(),
        })),
    })
    .await
    .map_err(|_| CoreError::Internal("attach input channel closed".into()))?;
    let no_answer = || CoreError::Agent {
        name: sandbox.clone(),
        detail: "no answer to Attach within 30 s".into(),
    };
    let mut output = tokio::time::timeout(AGENT_ANSWER, client.attach(ReceiverStream::new(rx)))
        .await
        .map_err(|_| no_answer())?
        .map_err(|s| session_status(&sandbox, &id, s))?
        .into_inner();
    let first = tokio::time::timeout(AGENT_ANSWER, output.message())
        .await
        .map_err(|_| no_answer())?
        .map_err(|s| session_status(&sandbox, &id, s))?;
    match first.and_then(|m| m.kind) {
        Some(exec_output::Kind::Attached(a)) => Ok(AttachedSession {
            session: exec::attached_session(id, a.pid, &sandbox, tx, output),
            tty: a.tty,
            dropped_bytes: a.dropped_bytes,
            replay_bytes: a.replay_bytes,
        }),
        Some(exec_output::Kind::Exited(e)) => Err(gone(&id, e.exit_code, e.signal)),
        _ => Err(CoreError::Agent {
            name: sandbox.clone(),
            detail: "agent did not confirm the attach".into(),
        }),
    }
}
