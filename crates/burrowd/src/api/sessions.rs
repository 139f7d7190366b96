//! Sessions: list, attach (WebSocket, same framing as exec) and kill.

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use burrow_api::{KillSession, SessionList, WsNotice};

use super::extract::{OptionalJson, query_pairs};
use super::{ApiError, AppState};

pub async fn list(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<SessionList>, ApiError> {
    Ok(Json(s.mgr.list_sessions(&name).await?))
}

/// `GET …/sessions/{id}/attach`: the `session` frame, a `replay` notice, the buffered
/// output, then live output and the exit frame, as for exec.
pub async fn attach(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("GET …/sessions/{{id}}/attach needs a WebSocket upgrade ({e})"),
        )
    })?;
    if let Some((k, _)) = query_pairs(q.as_deref())?.into_iter().next() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("unknown query parameter '{k}'"),
        ));
    }
    let attached = s.mgr.attach_session(&name, &id).await?;
    let notice = WsNotice::Replay {
        replay_bytes: attached.replay_bytes,
        dropped_bytes: attached.dropped_bytes,
    };
    let tty = attached.tty;
    Ok(ws.on_upgrade(move |socket| super::exec::bridge(socket, attached.session, tty, Some(notice))))
}

pub async fn kill(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<KillSession>,
) -> Result<StatusCode, ApiError> {
    let signal = body.and_then(|b| b.signal);
    s.mgr.kill_session(&name, &id, signal.as_deref()).await?;
    Ok(StatusCode::NO_CONTENT)
}
