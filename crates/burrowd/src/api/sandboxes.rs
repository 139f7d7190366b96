//! Sandboxes, images, version and health.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use burrow_api::{CreateSandbox, ImageList, PatchSandbox, Sandbox, SandboxList, VersionInfo};
use burrow_core::state::Action;

use super::extract::{ApiJson, query_pairs};
use super::{ApiError, AppState};

type Result<T> = std::result::Result<T, ApiError>;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/yaml")],
        burrow_api::OPENAPI_YAML,
    )
}

pub async fn version(State(s): State<AppState>) -> Json<VersionInfo> {
    Json(s.mgr.version())
}

pub async fn list_images(State(s): State<AppState>) -> Result<Json<ImageList>> {
    Ok(Json(ImageList {
        images: s.mgr.images()?,
    }))
}

pub async fn list(
    State(s): State<AppState>,
    caller: Option<axum::extract::Extension<super::auth::Caller>>,
    RawQuery(q): RawQuery,
) -> Result<Json<SandboxList>> {
    let mut prefix = String::new();
    let mut labels = Vec::new();
    let mut limit = None;
    let mut cursor = None;
    for (k, v) in query_pairs(q.as_deref())? {
        match k.as_str() {
            "prefix" => prefix = v,
            "label" => {
                let (lk, lv) = v.split_once('=').ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("label filter '{v}' is not k=v"),
                    )
                })?;
                labels.push((lk.to_owned(), lv.to_owned()));
            }
            "limit" => {
                limit = Some(v.parse::<u32>().map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("limit '{v}' is not a number"),
                    )
                })?)
            }
            "cursor" => cursor = Some(v),
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("unknown query parameter '{other}'"),
                ));
            }
        }
    }
    let mut list = s.mgr.list(&prefix, &labels, limit, cursor.as_deref())?;
    // A token limited to some sandboxes lists only those.
    if let Some(axum::extract::Extension(caller)) = caller {
        list.sandboxes.retain(|sb| caller.may_see(&sb.name, &sb.id));
    }
    Ok(Json(list))
}

pub async fn create(
    State(s): State<AppState>,
    caller: Option<axum::extract::Extension<super::auth::Caller>>,
    ApiJson(req): ApiJson<CreateSandbox>,
) -> Result<(StatusCode, Json<Sandbox>)> {
    check_resources(&req.resources())?;
    // A fork copies its source's disk: the token must be allowed to read the source.
    if let (Some(from), Some(axum::extract::Extension(caller))) = (&req.from, &caller) {
        caller.check(&s, super::auth::Access::new(Some(from.sandbox.as_str()), "read"))?;
    }
    Ok((StatusCode::CREATED, Json(s.mgr.create(req).await?)))
}

/// The resources and timeouts a request sets, against the API's one range for each
/// ([`burrow_api::check_resources`]): 422 naming the field, its range and the value.
fn check_resources(r: &burrow_api::Resources) -> Result<()> {
    burrow_api::check_resources(r)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string()))
}

pub async fn get_one(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<Sandbox>> {
    Ok(Json(s.mgr.get(&name)?))
}

pub async fn patch(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PatchSandbox>,
) -> Result<Json<Sandbox>> {
    check_resources(&req.resources())?;
    Ok(Json(s.mgr.patch(&name, req).await?))
}

pub async fn delete(State(s): State<AppState>, Path(name): Path<String>) -> Result<StatusCode> {
    s.mgr.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn act(s: AppState, name: String, action: Action) -> Result<Json<Sandbox>> {
    Ok(Json(s.mgr.action(&name, action).await?))
}

pub async fn start(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<Sandbox>> {
    act(s, name, Action::Start).await
}
pub async fn stop(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<Sandbox>> {
    act(s, name, Action::Stop).await
}
pub async fn restart(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<Sandbox>> {
    act(s, name, Action::Restart).await
}
/// `POST …/sleep[?mode=warm|cold]`: warm freezes every process; cold stops them (disk kept).
pub async fn sleep(
    State(s): State<AppState>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<Sandbox>> {
    let mut cold = false;
    for (k, v) in query_pairs(q.as_deref())? {
        match (k.as_str(), v.as_str()) {
            ("mode", "warm") => cold = false,
            ("mode", "cold") => cold = true,
            ("mode", other) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("mode '{other}' is not warm or cold"),
                ));
            }
            (other, _) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("unknown query parameter '{other}'"),
                ));
            }
        }
    }
    let sb = s.mgr.action(&name, Action::Sleep).await?;
    if !cold {
        return Ok(Json(sb));
    }
    s.mgr.sleep_cold(&name).await?;
    Ok(Json(s.mgr.get(&name)?))
}
pub async fn wake(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<Sandbox>> {
    act(s, name, Action::Wake).await
}
