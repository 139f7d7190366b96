//! The Files API: raw file bodies and tar streams in and out of a sandbox, listings,
//! removal and renames. Parses the query and streams bodies; everything else is
//! `Manager`'s (which does the work through the sandbox's agent).
//!
//! Bodies are never buffered: uploads stream from the request into the agent channel with
//! backpressure, downloads the other way. Upload bodies are raw bytes of any content type.

use axum::Json;
use axum::body::{Body, BodyDataStream};
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use burrow_api::{FileList, RenameFile};
use burrow_core::files::parse_mode;
use burrow_core::{FileStream, WriteOptions};
use futures::StreamExt;

use super::extract::{ApiJson, query_pairs};
use super::{ApiError, AppState};

type Result<T> = std::result::Result<T, ApiError>;

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad(format!("{key} must be true or false (got '{v}')"))),
    }
}

/// The query of a file endpoint: `path` (required) and the flags `allowed` lists.
#[derive(Debug, Default)]
struct FileQuery {
    path: String,
    mode: Option<u32>,
    mkdir: Option<bool>,
    recursive: bool,
}

fn file_query(raw: Option<&str>, allowed: &[&str]) -> Result<FileQuery> {
    let mut q = FileQuery::default();
    let mut path = None;
    for (k, v) in query_pairs(raw)? {
        if k != "path" && !allowed.contains(&k.as_str()) {
            return Err(bad(format!("unknown query parameter '{k}'")));
        }
        match k.as_str() {
            "path" => path = Some(v),
            "mode" => q.mode = Some(parse_mode(&v)?),
            "mkdir" => q.mkdir = Some(parse_bool("mkdir", &v)?),
            "recursive" => q.recursive = parse_bool("recursive", &v)?,
            _ => {}
        }
    }
    q.path = path
        .ok_or_else(|| bad("query parameter 'path' is required (an absolute path in the sandbox)".into()))?;
    Ok(q)
}

fn stream_response(stream: FileStream, content_type: &'static str) -> Response {
    // An error after the first byte can only cut the body short; the client sees a broken
    // chunked transfer rather than a complete-looking file.
    let body = Body::from_stream(stream.map(|r| r.map(bytes::Bytes::from).map_err(std::io::Error::other)));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// An upload that failed (a full disk, a bad path) while the client may still be sending:
/// the rest of the body is read and dropped (at most [`DRAIN_BYTES`] or [`DRAIN_TIME`]) before
/// the error is answered. Answering first and closing the connection would make the client's
/// next write fail ("Broken pipe") and, with unread data left, the kernel may reset the
/// connection before the client reads the answer: the user would never see the 507.
async fn refused_upload<T>(
    res: std::result::Result<T, burrow_core::CoreError>,
    mut body: BodyDataStream,
) -> Result<T> {
    if res.is_err() {
        let drain = async {
            let mut left = DRAIN_BYTES;
            while let Some(Ok(chunk)) = body.next().await {
                left = left.saturating_sub(chunk.len() as u64);
                if left == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    }
    Ok(res?)
}

const DRAIN_BYTES: u64 = 1 << 30;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /v1/sandboxes/{name}/files?path=`.
pub async fn read(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let q = file_query(q.as_deref(), &[])?;
    let stream = s.mgr.read_file(&name, &q.path).await?;
    Ok(stream_response(stream, "application/octet-stream"))
}

/// `PUT /v1/sandboxes/{name}/files?path=&mode=&mkdir=`: the raw body becomes the file.
pub async fn write(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<StatusCode> {
    let q = file_query(q.as_deref(), &["mode", "mkdir"])?;
    let opts = WriteOptions {
        mode: q.mode,
        mkdir: q.mkdir.unwrap_or(false),
    };
    let mut body = body.into_data_stream();
    let res = s.mgr.write_file(&name, &q.path, opts, &mut body).await;
    refused_upload(res, body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/sandboxes/{name}/files/list?path=`.
pub async fn list(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<FileList>> {
    let q = file_query(q.as_deref(), &[])?;
    Ok(Json(s.mgr.list_files(&name, &q.path).await?))
}

/// `DELETE /v1/sandboxes/{name}/files?path=&recursive=`.
pub async fn remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode> {
    let q = file_query(q.as_deref(), &["recursive"])?;
    s.mgr.remove_file(&name, &q.path, q.recursive).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/sandboxes/{name}/files/rename` `{from, to}`.
pub async fn rename(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<RenameFile>,
) -> Result<StatusCode> {
    s.mgr.rename_file(&name, &req.from, &req.to).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/sandboxes/{name}/files/archive?path=`: a tar stream.
pub async fn read_archive(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let q = file_query(q.as_deref(), &[])?;
    let stream = s.mgr.read_archive(&name, &q.path).await?;
    Ok(stream_response(stream, "application/x-tar"))
}

/// `PUT /v1/sandboxes/{name}/files/archive?path=&mkdir=`: a tar body extracted into `path`
/// (created when missing unless `mkdir=false`).
pub async fn write_archive(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<StatusCode> {
    let q = file_query(q.as_deref(), &["mkdir"])?;
    let mut body = body.into_data_stream();
    let res = s
        .mgr
        .write_archive(&name, &q.path, q.mkdir.unwrap_or(true), &mut body)
        .await;
    refused_upload(res, body).await?;
    Ok(StatusCode::NO_CONTENT)
}
