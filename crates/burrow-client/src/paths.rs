//! Request paths of the API, built in one place so every caller encodes them the same way.
//!
//! Paths are relative to the API root (they start with `/v1` or `/healthz`); the client prepends
//! the base path of a TCP target.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986 unreserved characters is escaped, in path segments and query values alike.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment or query component.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// Builds a query string (without `?`) from key/value pairs; keys may repeat.
#[derive(Debug, Default, Clone)]
pub struct Query(String);

impl Query {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, key: &str, value: impl AsRef<str>) -> &mut Self {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(&encode(key));
        self.0.push('=');
        self.0.push_str(&encode(value.as_ref()));
        self
    }

    pub fn push_opt(&mut self, key: &str, value: Option<impl AsRef<str>>) -> &mut Self {
        if let Some(v) = value {
            self.push(key, v);
        }
        self
    }

    /// `path` followed by `?query` when the query is not empty.
    pub fn apply(&self, path: &str) -> String {
        if self.0.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", self.0)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub const HEALTH: &str = "/healthz";
pub const VERSION: &str = "/v1/version";
pub const SANDBOXES: &str = "/v1/sandboxes";
pub const IMAGES: &str = "/v1/images";

/// `/v1/sandboxes/{name}`.
pub fn sandbox(name: &str) -> String {
    format!("{SANDBOXES}/{}", encode(name))
}

/// `/v1/sandboxes/{name}/{action}` for start, stop, restart, sleep, wake.
pub fn sandbox_action(name: &str, action: &str) -> String {
    format!("{}/{}", sandbox(name), encode(action))
}

/// `/v1/sandboxes/{name}/exec` (POST one-shot, GET WebSocket).
pub fn exec(name: &str) -> String {
    format!("{}/exec", sandbox(name))
}

/// `GET /v1/sandboxes` with its filters.
pub fn list_sandboxes(
    prefix: Option<&str>,
    labels: &[(String, String)],
    limit: Option<u32>,
    cursor: Option<&str>,
) -> String {
    let mut q = Query::new();
    q.push_opt("prefix", prefix);
    for (k, v) in labels {
        q.push("label", format!("{k}={v}"));
    }
    q.push_opt("limit", limit.map(|l| l.to_string()));
    q.push_opt("cursor", cursor);
    q.apply(SANDBOXES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_components() {
        assert_eq!(encode("a b/c?d&e=f"), "a%20b%2Fc%3Fd%26e%3Df");
        assert_eq!(encode("ok-1._~"), "ok-1._~");
        assert_eq!(encode("ü"), "%C3%BC");
        assert_eq!(sandbox("../x"), "/v1/sandboxes/..%2Fx");
        assert_eq!(
            list_sandboxes(Some("dev"), &[("team".into(), "a&b".into())], Some(10), None),
            "/v1/sandboxes?prefix=dev&label=team%3Da%26b&limit=10"
        );
        assert_eq!(list_sandboxes(None, &[], None, None), "/v1/sandboxes");
    }
}
