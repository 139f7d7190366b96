//! What can go wrong talking to burrowd.

use crate::Target;

/// An error from a client call. `Display` is meant for users: for [`ClientError::Api`] it is the
/// server's own message.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error envelope (`{"error": {"code", "message"}}`).
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },

    /// The daemon could not be reached at all.
    #[error(
        "cannot reach burrowd at {target}: {source}; is burrowd running? Point burrow at a daemon with \
         BURROW_SOCKET=/path/to/burrowd.sock, or BURROW_URL=http://host:7440 and BURROW_TOKEN=<token>"
    )]
    Connect { target: Target, source: std::io::Error },

    /// `BURROW_URL` or another setting is unusable.
    #[error("invalid client configuration: {0}")]
    Config(String),

    /// The connection failed after it was established (reset, protocol error, …).
    #[error("request to burrowd at {target} failed: {message}")]
    Transport { target: Target, message: String },

    /// A response that is not what the API promises.
    #[error("unexpected response from burrowd (HTTP {status}): {message}")]
    Decode { status: u16, message: String },

    /// A request body could not be serialised.
    #[error("cannot encode request: {0}")]
    Encode(#[from] serde_json::Error),

    /// Local I/O (reading stdin for a stream, …).
    #[error(transparent)]
    Io(#[from] std::io::Error),

    /// WebSocket protocol failure on an exec stream.
    #[error("exec stream failed: {0}")]
    WebSocket(String),

    /// The exec stream closed before the server sent the exit frame, so the exit status is unknown.
    #[error("the exec stream closed without an exit status")]
    NoExitFrame,
}

impl ClientError {
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Error code of an API error (`not_found`, `conflict`, …).
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Builds the error for a non-success response: the envelope when there is one, else the raw body.
    pub(crate) fn from_response(status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<burrow_api::ErrorBody>(body) {
            Ok(env) => Self::Api {
                status,
                code: env.error.code,
                message: env.error.message,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    format!("HTTP {status} with no error message")
                } else {
                    format!("HTTP {status}: {}", truncate(text, 500))
                };
                Self::Api {
                    status,
                    code: fallback_code(status).to_owned(),
                    message,
                }
            }
        }
    }
}

fn fallback_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        413 => "too_large",
        415 => "unsupported_media_type",
        422 => "invalid",
        429 => "too_many_requests",
        503 => "unavailable",
        _ => "http_error",
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_and_plain_bodies() {
        let e = ClientError::from_response(
            404,
            br#"{"error":{"code":"not_found","message":"sandbox 'x' does not exist"}}"#,
        );
        assert_eq!(e.to_string(), "sandbox 'x' does not exist");
        assert_eq!(e.code(), Some("not_found"));
        assert_eq!(e.status(), Some(404));
        let e = ClientError::from_response(502, b"bad gateway");
        assert_eq!(e.to_string(), "HTTP 502: bad gateway");
        let e = ClientError::from_response(500, b"");
        assert_eq!(e.to_string(), "HTTP 500 with no error message");
    }
}
