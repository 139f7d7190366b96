//! Network policy, secrets and API tokens over HTTP. Parsing only; `Manager` does the work.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use burrow_api::{AttachSecret, CreateSecret, CreateToken, NetworkPolicy, Secret, SecretList, TokenReply};
use burrow_macaroon::{Caveat, Macaroon};

use super::auth::{ACTIONS, Caller};
use super::extract::ApiJson;
use super::{ApiError, AppState};

type Result<T> = std::result::Result<T, ApiError>;

fn invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
}

pub async fn get_policy(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<NetworkPolicy>> {
    Ok(Json(s.mgr.network_policy(&name)?))
}

pub async fn put_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<NetworkPolicy>,
) -> Result<Json<NetworkPolicy>> {
    Ok(Json(s.mgr.set_network_policy(&name, body).await?))
}

/// `POST /v1/secrets` → 201; the value is sealed at once and never returned.
pub async fn create_secret(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CreateSecret>,
) -> Result<Response> {
    let secret = s.mgr.create_secret(body)?;
    Ok((StatusCode::CREATED, Json(secret)).into_response())
}

pub async fn list_secrets(State(s): State<AppState>) -> Result<Json<SecretList>> {
    Ok(Json(SecretList {
        secrets: s.mgr.secrets()?,
    }))
}

pub async fn get_secret(State(s): State<AppState>, Path(name): Path<String>) -> Result<Json<Secret>> {
    Ok(Json(s.mgr.secret(&name)?))
}

pub async fn delete_secret(State(s): State<AppState>, Path(name): Path<String>) -> Result<StatusCode> {
    s.mgr.delete_secret(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/sandboxes/{name}/secrets/{secret}` `{env}`.
pub async fn attach_secret(
    State(s): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
    ApiJson(body): ApiJson<AttachSecret>,
) -> Result<Json<Secret>> {
    Ok(Json(s.mgr.attach_secret(&name, &secret, &body.env)?))
}

pub async fn detach_secret(
    State(s): State<AppState>,
    Path((name, secret)): Path<(String, String)>,
) -> Result<StatusCode> {
    s.mgr.detach_secret(&name, &secret)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/tokens`: a token with the caller's own caveats plus the new ones, so a token
/// can only make narrower tokens (the unix socket and the admin token make them from the
/// root).
pub async fn create_token(
    State(s): State<AppState>,
    caller: Option<Extension<Caller>>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<TokenReply>)> {
    let caveats = token_caveats(&body)?;
    let base = caller
        .and_then(|Extension(c)| c.macaroon)
        .unwrap_or_else(|| Macaroon::mint(s.mgr.token_key(), &Macaroon::random_id("token"), &[]));
    let mac = caveats.iter().fold(base, |m, c| m.attenuate(c));
    Ok((
        StatusCode::CREATED,
        Json(TokenReply {
            token: mac.encode(),
            caveats: mac.caveat_texts().to_vec(),
        }),
    ))
}

/// The caveats a token request asks for, checked.
pub fn token_caveats(body: &CreateToken) -> Result<Vec<Caveat>> {
    let mut out = Vec::new();
    let c = &body.caveats;
    if let Some(sandboxes) = &c.sandboxes {
        for n in sandboxes {
            burrow_api::SandboxName::parse(n).map_err(|e| invalid(format!("caveats.sandboxes: {e}")))?;
        }
        out.push(Caveat::Sandboxes(sandboxes.clone()));
    }
    if let Some(actions) = &c.actions {
        if let Some(bad) = actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
            return Err(invalid(format!(
                "caveats.actions: unknown action '{bad}' (known: {})",
                ACTIONS.join(", ")
            )));
        }
        out.push(Caveat::Actions(actions.clone()));
    }
    if let Some(at) = &c.expires_at {
        let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .map_err(|e| invalid(format!("caveats.expires_at '{at}' is not an RFC 3339 time: {e}")))?;
        out.push(Caveat::ExpiresAt(t.unix_timestamp()));
    }
    Ok(out)
}
