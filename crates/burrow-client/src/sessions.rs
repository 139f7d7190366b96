//! Sessions (`/v1/sandboxes/{name}/sessions…`): list, attach over WebSocket, kill.

use burrow_api::{KillSession, SessionList};
use hyper::Method;

use crate::paths::{encode, sandbox};
use crate::{Client, ClientError, ExecStream};

fn sessions_path(name: &str) -> String {
    format!("{}/sessions", sandbox(name))
}

fn session_path(name: &str, id: &str, verb: &str) -> String {
    format!("{}/{}/{verb}", sessions_path(name), encode(id))
}

impl Client {
    /// `GET /v1/sandboxes/{name}/sessions`: running and recently finished sessions.
    pub async fn list_sessions(&self, name: &str) -> Result<SessionList, ClientError> {
        self.get_json(&sessions_path(name)).await
    }

    /// `GET /v1/sandboxes/{name}/sessions/{id}/attach` as a WebSocket. The stream starts with
    /// the session event; the replay notice is then available from
    /// [`crate::ExecReceiver::replay`], and the buffered output follows as ordinary output.
    pub async fn attach_session(&self, name: &str, id: &str) -> Result<ExecStream, ClientError> {
        ExecStream::connect(self, &session_path(name, id, "attach")).await
    }

    /// `POST /v1/sandboxes/{name}/sessions/{id}/kill` with `signal` (default KILL).
    pub async fn kill_session(&self, name: &str, id: &str, signal: Option<&str>) -> Result<(), ClientError> {
        let body = KillSession {
            signal: signal.map(str::to_owned),
        };
        self.request_json::<(), _>(Method::POST, &session_path(name, id, "kill"), Some(&body))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(sessions_path("a"), "/v1/sandboxes/a/sessions");
        assert_eq!(
            session_path("a", "s-1/x", "attach"),
            "/v1/sandboxes/a/sessions/s-1%2Fx/attach"
        );
    }
}
