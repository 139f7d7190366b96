//! Checkpoints, restore and templates over HTTP; and the in-sandbox API served on each
//! sandbox's `/.burrow/api.sock` (scoped to that sandbox, no token: the socket is only
//! reachable from inside it).

use std::future::Future;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use burrow_api::{CheckpointList, CreateCheckpoint, CreateImage};
use burrow_core::{CheckpointSource, CoreError};
use serde::Serialize;

use super::extract::{ApiJson, OptionalJson};
use super::{ApiError, AppState};

const NDJSON: &str = "application/x-ndjson";

fn wants_ndjson(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains(NDJSON))
}

fn line(kind: &str, data: serde_json::Value) -> String {
    let time = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!("{}\n", serde_json::json!({"type": kind, "data": data, "time": time}))
}

/// Runs a long operation; answers plain JSON (`status` on success), or NDJSON progress
/// lines ending in `complete`/`error` when the client asked for `application/x-ndjson`.
async fn long_op<T, F>(headers: &HeaderMap, status: StatusCode, what: &str, op: F) -> Result<Response, ApiError>
where
    T: Serialize + Send + 'static,
    F: Future<Output = Result<T, CoreError>> + Send + 'static,
{
    if !wants_ndjson(headers) {
        return Ok((status, Json(op.await?)).into_response());
    }
    let first = line("info", serde_json::json!(format!("{what} started")));
    let stream = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(first) }).chain(
        futures::stream::once(async move {
            Ok(match op.await {
                Ok(v) => line("complete", serde_json::to_value(v).unwrap_or_default()),
                Err(e) => {
                    let e = ApiError::from(e);
                    line("error", serde_json::json!({"code": e.code, "message": e.message}))
                }
            })
        }),
    );
    Ok(([(header::CONTENT_TYPE, NDJSON)], axum::body::Body::from_stream(stream)).into_response())
}

use futures::StreamExt;

pub async fn create(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<CreateCheckpoint>,
) -> Result<Response, ApiError> {
    let comment = body.and_then(|b| b.comment);
    let mgr = s.mgr.clone();
    long_op(&headers, StatusCode::CREATED, "checkpoint", async move {
        mgr.create_checkpoint(&name, comment, CheckpointSource::Api).await
    })
    .await
}

pub async fn list(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<CheckpointList>, ApiError> {
    Ok(Json(CheckpointList { checkpoints: s.mgr.list_checkpoints(&name)? }))
}

pub async fn get_one(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<burrow_api::Checkpoint>, ApiError> {
    Ok(Json(s.mgr.get_checkpoint(&name, &id)?))
}

pub async fn delete(State(s): State<AppState>, Path((name, id)): Path<(String, String)>) -> Result<StatusCode, ApiError> {
    s.mgr.delete_checkpoint(&name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn restore(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mgr = s.mgr.clone();
    long_op(&headers, StatusCode::OK, "restore", async move { mgr.restore(&name, &id).await }).await
}

pub async fn create_image(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateImage>,
) -> Result<Response, ApiError> {
    let mgr = s.mgr.clone();
    long_op(&headers, StatusCode::CREATED, "image", async move { mgr.create_image(req).await }).await
}

pub async fn delete_image(State(s): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    s.mgr.delete_image(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The in-sandbox API: `/.burrow/api.sock` inside sandbox `id`.
pub mod inside {
    use std::sync::Arc;

    use axum::Router;
    use axum::routing::{get, post};
    use burrow_core::Manager;

    use super::*;

    #[derive(Clone)]
    struct Inside {
        mgr: Arc<Manager>,
        id: String,
    }

    pub fn router(mgr: Arc<Manager>, id: String) -> Router {
        Router::new()
            .route("/checkpoints", get(list).post(create))
            .route("/checkpoints/{id}/restore", post(restore))
            .fallback(super::super::error::no_route)
            .with_state(Inside { mgr, id })
    }

    async fn create(
        State(s): State<Inside>,
        OptionalJson(body): OptionalJson<CreateCheckpoint>,
    ) -> Result<Response, ApiError> {
        let name = s.mgr.name_of(&s.id)?;
        let comment = body.and_then(|b| b.comment);
        let cp = s.mgr.create_checkpoint(&name, comment, CheckpointSource::Inside).await?;
        Ok((StatusCode::CREATED, Json(cp)).into_response())
    }

    async fn list(State(s): State<Inside>) -> Result<Json<CheckpointList>, ApiError> {
        let name = s.mgr.name_of(&s.id)?;
        Ok(Json(CheckpointList { checkpoints: s.mgr.list_checkpoints(&name)? }))
    }

    /// Answers 202 at once: the restore stops every process of the sandbox, the caller too.
    async fn restore(State(s): State<Inside>, Path(cp): Path<String>) -> Result<Response, ApiError> {
        let name = s.mgr.name_of(&s.id)?;
        s.mgr.get_checkpoint(&name, &cp)?;
        let mgr = s.mgr.clone();
        let id = cp.clone();
        tokio::spawn(async move {
            if let Err(e) = mgr.restore(&name, &id).await {
                tracing::warn!(sandbox = %name, error = %burrow_core::error::chain(&e), "restore from inside failed");
            }
        });
        Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"restoring": cp}))).into_response())
    }
}
