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
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(NDJSON))
}

fn line(kind: &str, data: serde_json::Value) -> String {
    let time = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    format!(
        "{}\n",
        serde_json::json!({"type": kind, "data": data, "time": time})
    )
}

/// Runs a long operation; answers plain JSON (`status` on success), or NDJSON progress
/// lines ending in `complete`/`error` when the client asked for `application/x-ndjson`.
async fn long_op<T, F>(
    headers: &HeaderMap,
    status: StatusCode,
    what: &str,
    op: F,
) -> Result<Response, ApiError>
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
    Ok((
        [(header::CONTENT_TYPE, NDJSON)],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

use futures::StreamExt;

pub async fn create(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<CreateCheckpoint>,
) -> Result<Response, ApiError> {
    let (comment, memory) = body.map_or((None, false), |b| (b.comment, b.memory.unwrap_or(false)));
    let mgr = s.mgr.clone();
    long_op(&headers, StatusCode::CREATED, "checkpoint", async move {
        mgr.create_checkpoint(&name, comment, CheckpointSource::Api, memory)
            .await
    })
    .await
}

pub async fn list(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<CheckpointList>, ApiError> {
    Ok(Json(CheckpointList {
        checkpoints: s.mgr.list_checkpoints(&name)?,
    }))
}

pub async fn get_one(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<burrow_api::Checkpoint>, ApiError> {
    Ok(Json(s.mgr.get_checkpoint(&name, &id)?))
}

pub async fn delete(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.mgr.delete_checkpoint(&name, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn restore(
    State(s): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mgr = s.mgr.clone();
    long_op(&headers, StatusCode::OK, "restore", async move {
        mgr.restore(&name, &id).await
    })
    .await
}

pub async fn create_image(
    State(s): State<AppState>,
    caller: Option<axum::extract::Extension<super::auth::Caller>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateImage>,
) -> Result<Response, ApiError> {
    // An image copies its source's disk: the token must be allowed to read the source.
    if let Some(axum::extract::Extension(caller)) = &caller {
        caller.check(
            &s,
            super::auth::Access::new(Some(req.from.sandbox.as_str()), "read"),
        )?;
    }
    let mgr = s.mgr.clone();
    long_op(&headers, StatusCode::CREATED, "image", async move {
        mgr.create_image(req).await
    })
    .await
}

pub async fn delete_image(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.mgr.delete_image(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/images/prune`: deletes cached build layers no existing image was built from.
pub async fn prune_images(State(s): State<AppState>) -> Result<Json<burrow_api::PruneResult>, ApiError> {
    Ok(Json(s.mgr.prune_layers().await?))
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
        // From inside, a memory checkpoint would stop the very VM that asks: disk only.
        let comment = body.and_then(|b| b.comment);
        let cp = s
            .mgr
            .create_checkpoint(&name, comment, CheckpointSource::Inside, false)
            .await?;
        Ok((StatusCode::CREATED, Json(cp)).into_response())
    }

    async fn list(State(s): State<Inside>) -> Result<Json<CheckpointList>, ApiError> {
        let name = s.mgr.name_of(&s.id)?;
        Ok(Json(CheckpointList {
            checkpoints: s.mgr.list_checkpoints(&name)?,
        }))
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

/// `POST /v1/images/build?name=NAME[&file=Burrowfile]`, body: a tar of the build context
/// (`Content-Type: application/x-tar`) holding the Burrowfile. Streams NDJSON progress
/// when asked; plain JSON (the image) otherwise.
pub async fn build_image(
    State(s): State<AppState>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m);
    let mut name = None;
    let mut file = "Burrowfile".to_owned();
    for (k, v) in super::extract::query_pairs(q.as_deref())? {
        match k.as_str() {
            "name" => name = Some(v),
            "file" => file = v,
            other => return Err(bad(format!("unknown query parameter '{other}'"))),
        }
    }
    let name = name.ok_or_else(|| bad("query parameter 'name' (the image name) is required".into()))?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-tar") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the build context must be a tar with 'Content-Type: application/x-tar'",
        ));
    }
    // Spool the context to a file (bounded), so COPY can read it and nothing stays in memory.
    let guard = spool(&s, body, "build context", burrow_core::build::MAX_CONTEXT_BYTES).await?;
    let path = guard.0.clone();
    let burrowfile = read_from_tar(&path, &file).map_err(bad)?;
    let mgr = s.mgr.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let op = async move {
        let _guard = guard;
        mgr.build_image(&name, &burrowfile, Some(&path), tx).await
    };
    if !wants_ndjson(&headers) {
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        return Ok((StatusCode::CREATED, Json(op.await?)).into_response());
    }
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = done_tx.send(op.await);
    });
    let progress = async_stream_lines(rx);
    let end = futures::stream::once(async move {
        Ok::<_, std::convert::Infallible>(match done_rx.await {
            Ok(Ok(img)) => line("complete", serde_json::to_value(img).unwrap_or_default()),
            Ok(Err(e)) => {
                let e = ApiError::from(e);
                line("error", serde_json::json!({"code": e.code, "message": e.message}))
            }
            Err(_) => line(
                "error",
                serde_json::json!({"code": "internal", "message": "build task ended"}),
            ),
        })
    });
    Ok((
        [(header::CONTENT_TYPE, NDJSON)],
        axum::body::Body::from_stream(progress.chain(end)),
    )
        .into_response())
}

fn async_stream_lines(
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> impl futures::Stream<Item = Result<String, std::convert::Infallible>> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|m| (Ok(line("info", serde_json::json!(m))), rx))
    })
}

fn read_from_tar(path: &std::path::Path, name: &str) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut ar = tar::Archive::new(f);
    let want = name.trim_start_matches("./");
    for e in ar
        .entries()
        .map_err(|e| format!("the build context is not a tar: {e}"))?
    {
        let e = e.map_err(|e| format!("the build context is not a tar: {e}"))?;
        let p = e
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        if p == want {
            let mut s = String::new();
            e.take(1 << 20)
                .read_to_string(&mut s)
                .map_err(|e| format!("reading {name}: {e}"))?;
            return Ok(s);
        }
    }
    Err(format!("the build context has no '{name}'"))
}

/// Streams a request body to a temporary file in the data dir, refusing more than `limit`
/// bytes with 413. The file is removed when the returned guard drops.
async fn spool(s: &AppState, body: axum::body::Body, what: &str, limit: u64) -> Result<TempFile, ApiError> {
    use std::io::Write;
    let internal =
        |e: std::io::Error| ApiError::from(CoreError::Internal(format!("spooling the {what}: {e}")));
    // Root's only: build contexts and image archives are nobody else's business on the host.
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = s.mgr.config().data_dir.join("tmp");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(internal)?;
    let guard = TempFile(dir.join(format!("upload-{:016x}", rand::random::<u64>())));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&guard.0)
        .map_err(internal)?;
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading the {what}: {e}"),
            )
        })?;
        total += chunk.len() as u64;
        if total > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the {what} is larger than {limit} bytes"),
            ));
        }
        f.write_all(&chunk).map_err(internal)?;
    }
    Ok(guard)
}

/// Largest image archive accepted by `POST /v1/images/import`.
const MAX_IMPORT_BYTES: u64 = 16 << 30;

/// `POST /v1/images/import?name=NAME`, body: an OCI layout or `docker save` archive.
pub async fn import_image(
    State(s): State<AppState>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let mut name = None;
    for (k, v) in super::extract::query_pairs(q.as_deref())? {
        match k.as_str() {
            "name" => name = Some(v),
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("unknown query parameter '{other}'"),
                ));
            }
        }
    }
    let name = name.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "query parameter 'name' (the image name) is required",
        )
    })?;
    let guard = spool(&s, body, "image archive", MAX_IMPORT_BYTES).await?;
    let mgr = s.mgr.clone();
    long_op(&headers, StatusCode::CREATED, "import", async move {
        let r = mgr.import_image(&name, &guard.0).await;
        drop(guard);
        r
    })
    .await
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PullImage {
    pub reference: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /v1/images/pull` `{reference, name?}`.
pub async fn pull_image(
    State(s): State<AppState>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PullImage>,
) -> Result<Response, ApiError> {
    let name = match req
        .name
        .clone()
        .or_else(|| burrow_core::oci::default_name(&req.reference))
    {
        Some(n) => n,
        None => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!(
                    "cannot derive an image name from '{}'; give one in 'name'",
                    req.reference
                ),
            ));
        }
    };
    let mgr = s.mgr.clone();
    long_op(&headers, StatusCode::CREATED, "pull", async move {
        mgr.pull_image(&name, &req.reference).await
    })
    .await
}

/// Removes the spooled context when the build is over.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
