//! Request extractors with the API's error messages: JSON bodies that say exactly what is
//! wrong (missing content type, not JSON, invalid values, too large).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ApiError;

/// A JSON body. 415 without `Content-Type: application/json`, 400 for malformed JSON,
/// 422 for JSON with invalid values, 413 past the body limit.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Serialize> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let is_json = ct.as_deref().is_some_and(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
        if !is_json {
            let got = ct
                .map(|c| format!(" (got '{c}')"))
                .unwrap_or_else(|| " (none was sent)".into());
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("request body must be JSON with 'Content-Type: application/json'{got}"),
            ));
        }
        // A large body is read and parsed within the daemon's buffer budget (if the router
        // has one): about twice its size is held until it is parsed.
        let _reserved = match req.extensions().get::<std::sync::Arc<super::ExecBudget>>() {
            Some(budget) => {
                let len = req
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(super::MAX_BODY_BYTES)
                    .min(super::MAX_BODY_BYTES);
                budget.reserve_body(len)?
            }
            None => None,
        };
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!(
                        "request body is larger than the limit of {} bytes",
                        super::MAX_BODY_BYTES
                    ),
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("reading request body: {rej}"),
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body into `T`. Objects must be objects: serde also reads a struct from an
/// array of its fields in order (`[null, null]` for `{"a": null, "b": null}`), which no
/// client means and the OpenAPI document does not allow, so that is 422 too.
pub fn parse_json<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "request body is empty; expected JSON",
        ));
    }
    let value: T = from_slice(bytes)?;
    let input: Value = from_slice(bytes)?;
    if let Ok(parsed) = serde_json::to_value(&value)
        && let Some(at) = array_for_object(&input, &parsed, "")
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("invalid request: expected an object at '{at}', got an array"),
        ));
    }
    Ok(value)
}

/// The path (`a.b`, empty for the whole body) of the first array in `input` that was read
/// into what `parsed` (the value re-serialized) has as an object.
fn array_for_object(input: &Value, parsed: &Value, at: &str) -> Option<String> {
    match (input, parsed) {
        (Value::Array(_), Value::Object(_)) => Some(if at.is_empty() { "(body)".into() } else { at.into() }),
        (Value::Object(i), Value::Object(p)) => i.iter().find_map(|(k, v)| {
            let at = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            p.get(k).and_then(|pv| array_for_object(v, pv, &at))
        }),
        (Value::Array(i), Value::Array(p)) => i
            .iter()
            .zip(p)
            .enumerate()
            .find_map(|(n, (iv, pv))| array_for_object(iv, pv, &format!("{at}[{n}]"))),
        _ => None,
    }
}

fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("invalid request: {e}"),
            ),
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("request body is not valid JSON: {e}"),
            ),
        }
    })
}

/// Parses a raw query string into pairs, keeping repeated keys.
pub fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or("")).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("malformed query string: {e}"),
        )
    })
}

/// An optional JSON body: absent (empty) is `None`; present must be valid JSON as for
/// [`ApiJson`] (a content type is only required when there is a body).
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned + Serialize> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let has_body = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.trim() != "0")
            && (req.headers().contains_key(header::CONTENT_LENGTH)
                || req.headers().contains_key(header::TRANSFER_ENCODING));
        if !has_body {
            return Ok(Self(None));
        }
        ApiJson::<T>::from_request(req, state)
            .await
            .map(|ApiJson(v)| Self(Some(v)))
    }
}
