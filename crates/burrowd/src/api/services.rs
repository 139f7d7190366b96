//! Services over HTTP: define, list, start, stop, remove, and logs (plain text; streaming
//! with `follow=true` until the client goes away). Parsing only; `Manager` does the work.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use burrow_api::{PutService, Service, ServiceList};
use futures::StreamExt;

use super::extract::{ApiJson, query_pairs};
use super::{ApiError, AppState};

type Result<T> = std::result::Result<T, ApiError>;

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// `PUT /v1/sandboxes/{name}/services/{svc}`: 201 when new, 200 when replaced.
pub async fn put(
    State(s): State<AppState>,
    Path((name, svc)): Path<(String, String)>,
    ApiJson(body): ApiJson<PutService>,
) -> Result<Response> {
    let (service, created) = s.mgr.put_service(&name, &svc, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(service)).into_response())
}

pub async fn list(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<ServiceList>> {
    Ok(Json(s.mgr.list_services(&name).await?))
}

pub async fn get_one(
    State(s): State<AppState>,
    Path((name, svc)): Path<(String, String)>,
) -> Result<Json<Service>> {
    Ok(Json(s.mgr.get_service(&name, &svc).await?))
}

pub async fn delete(
    State(s): State<AppState>,
    Path((name, svc)): Path<(String, String)>,
) -> Result<StatusCode> {
    s.mgr.delete_service(&name, &svc).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn start(
    State(s): State<AppState>,
    Path((name, svc)): Path<(String, String)>,
) -> Result<Json<Service>> {
    Ok(Json(s.mgr.service_action(&name, &svc, true).await?))
}

pub async fn stop(
    State(s): State<AppState>,
    Path((name, svc)): Path<(String, String)>,
) -> Result<Json<Service>> {
    Ok(Json(s.mgr.service_action(&name, &svc, false).await?))
}

/// `GET /v1/sandboxes/{name}/services/{svc}/logs?follow=&tail=`.
pub async fn logs(
    State(s): State<AppState>,
    Path((name, svc)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let mut follow = false;
    let mut tail = None;
    for (k, v) in query_pairs(q.as_deref())? {
        match k.as_str() {
            "follow" => {
                follow = match v.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => return Err(bad(format!("follow must be true or false (got '{v}')"))),
                }
            }
            "tail" => {
                tail = Some(
                    v.parse::<u32>()
                        .map_err(|_| bad(format!("tail must be a number of lines (got '{v}')")))?,
                )
            }
            _ => return Err(bad(format!("unknown query parameter '{k}'"))),
        }
    }
    let stream = s.mgr.service_logs(&name, &svc, tail, follow).await?;
    // Dropping the body (the client went away) cancels the agent call, which ends the follow.
    let body = Body::from_stream(stream.map(|r| r.map(bytes::Bytes::from).map_err(std::io::Error::other)));
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}
