//! A minimal OCI distribution client over hyper: manifests and blobs, bearer/basic auth on `401`, redirects.
//!
//! Must never: send credentials anywhere but the registry and its token realm; follow a redirect from HTTPS
//! to plain HTTP on a non-loopback host; use plain HTTP for a non-loopback registry; buffer a layer in memory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, LOCATION, USER_AGENT, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::io::AsyncWriteExt as _;

use super::auth::{Challenge, parse_challenges};
use crate::OciError;
use crate::digest::{Expected, Hasher};
use crate::reference::authority_is_loopback;

const MAX_REDIRECTS: usize = 5;
const MAX_TOKEN_BYTES: u64 = 1024 * 1024;
const MAX_ERROR_BYTES: u64 = 4096;
/// Query-string encoding: everything but RFC 3986 unreserved characters.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Talks to one repository of one registry.
pub(crate) struct RegistryClient {
    http: HttpClient,
    scheme: &'static str,
    authority: String,
    repository: String,
    credentials: Option<(String, String)>,
    /// `Authorization` value for the registry once a challenge has been answered.
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

/// A fetched manifest or index.
pub(crate) struct FetchedManifest {
    pub(crate) bytes: Vec<u8>,
    pub(crate) content_type: Option<String>,
    /// The registry's `Docker-Content-Digest` header, if sent.
    pub(crate) digest_header: Option<String>,
}

impl RegistryClient {
    pub(crate) fn new(
        authority: &str,
        repository: &str,
        plain_http: bool,
        credentials: Option<(String, String)>,
        timeout: Duration,
    ) -> Result<Self, OciError> {
        if plain_http && !authority_is_loopback(authority) {
            return Err(OciError::Refused(format!(
                "plain HTTP to non-loopback registry {authority}"
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| OciError::Transport {
                registry: authority.into(),
                reason: format!("TLS setup: {e}"),
            })?;
        let tls = match builder.clone().with_native_roots() {
            Ok(b) => b.with_no_client_auth(),
            Err(e) => {
                // Loopback pulls over plain HTTP need no roots; HTTPS then fails verification with a clear error.
                tracing::warn!(error = %e, "no system CA certificates; HTTPS registries will fail verification");
                builder
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            scheme: if plain_http { "http" } else { "https" },
            authority: authority.to_owned(),
            repository: repository.to_owned(),
            credentials,
            authorization: None,
            timeout,
        })
    }

    fn url(&self, kind: &str, reference: &str) -> Result<Uri, OciError> {
        let url = format!(
            "{}://{}/v2/{}/{kind}/{reference}",
            self.scheme, self.authority, self.repository
        );
        url.parse()
            .map_err(|e| OciError::Refused(format!("bad URL {url}: {e}")))
    }

    /// `GET /v2/<repo>/manifests/<reference>` with every manifest media type we understand.
    pub(crate) async fn manifest(
        &mut self,
        reference: &str,
        accept: &str,
        limit: u64,
    ) -> Result<FetchedManifest, OciError> {
        let url = self.url("manifests", reference)?;
        let response = self.get(url.clone(), Some(accept)).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type =
            header(CONTENT_TYPE.as_str()).map(|c| c.split(';').next().unwrap_or_default().trim().to_owned());
        let digest_header = header("docker-content-digest");
        let bytes = self.read_limited(response, limit, &url.to_string()).await?;
        Ok(FetchedManifest {
            bytes,
            content_type,
            digest_header,
        })
    }

    /// `GET /v2/<repo>/blobs/<digest>` into memory, for configs and manifests (bounded).
    pub(crate) async fn small_blob(&mut self, expected: &Expected, limit: u64) -> Result<Vec<u8>, OciError> {
        if expected.size.is_some_and(|s| s > limit) {
            return Err(OciError::TooLarge {
                digest: expected.digest.to_string(),
                expected: limit,
            });
        }
        let url = self.url("blobs", expected.digest.as_str())?;
        let response = self.get(url.clone(), None).await?;
        let bytes = self.read_limited(response, limit, &url.to_string()).await?;
        let mut hasher = Hasher::default();
        hasher.update(&bytes);
        expected.check(hasher)?;
        Ok(bytes)
    }

    /// Streams a blob to `path`, hashing on the way; the file is only trusted if this returns `Ok`.
    pub(crate) async fn blob_to_file(&mut self, expected: &Expected, path: &Path) -> Result<(), OciError> {
        let url = self.url("blobs", expected.digest.as_str())?;
        let response = self.get(url, None).await?;
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| OciError::io(format!("creating {}", path.display()), e))?;
        let mut hasher = Hasher::default();
        let mut body = response.into_body();
        let limit = expected.size.unwrap_or(u64::MAX);
        while let Some(chunk) = self.next_chunk(&mut body, &expected.digest.to_string()).await? {
            hasher.update(&chunk);
            if hasher.len() > limit {
                return Err(OciError::TooLarge {
                    digest: expected.digest.to_string(),
                    expected: limit,
                });
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| OciError::io(format!("writing {}", path.display()), e))?;
        }
        file.flush()
            .await
            .map_err(|e| OciError::io(format!("writing {}", path.display()), e))?;
        expected.check(hasher)
    }

    async fn next_chunk(&self, body: &mut Incoming, what: &str) -> Result<Option<Bytes>, OciError> {
        loop {
            let frame = tokio::time::timeout(self.timeout, body.frame())
                .await
                .map_err(|_| self.transport(format!("{what}: no data for {:?}", self.timeout)))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(self.transport(format!("{what}: {e}"))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    async fn read_limited(
        &self,
        response: Response<Incoming>,
        limit: u64,
        what: &str,
    ) -> Result<Vec<u8>, OciError> {
        let mut body = response.into_body();
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk(&mut body, what).await? {
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(OciError::TooLarge {
                    digest: what.to_owned(),
                    expected: limit,
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn transport(&self, reason: String) -> OciError {
        OciError::Transport {
            registry: self.authority.clone(),
            reason,
        }
    }

    /// GET with authentication (one challenge round per request) and redirects; returns a 2xx response.
    async fn get(&mut self, url: Uri, accept: Option<&str>) -> Result<Response<Incoming>, OciError> {
        let mut authenticated_once = false;
        let mut current = url.clone();
        let mut redirects = 0;
        loop {
            // Credentials go to the registry itself only, never to a redirect target elsewhere.
            let same_origin = current.authority().map(|a| a.as_str()) == Some(self.authority.as_str())
                && current.scheme_str() == Some(self.scheme);
            let auth = if same_origin {
                self.authorization.clone()
            } else {
                None
            };
            let response = self.send(&current, accept, auth.as_ref()).await?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED && same_origin && !authenticated_once {
                let challenges: Vec<Challenge> = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(parse_challenges)
                    .collect();
                if !challenges.is_empty() {
                    authenticated_once = true;
                    self.authenticate(&challenges).await?;
                    continue;
                }
            }
            if status.is_redirection() {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(OciError::Refused(format!(
                        "{url}: more than {MAX_REDIRECTS} redirects"
                    )));
                }
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| self.transport(format!("{current}: redirect without Location")))?;
                current = resolve_redirect(&current, location)?;
                continue;
            }
            let message = self.error_message(response).await;
            return Err(OciError::Registry {
                method: "GET".into(),
                url: current.to_string(),
                status: status.as_u16(),
                message,
            });
        }
    }

    async fn send(
        &self,
        url: &Uri,
        accept: Option<&str>,
        authorization: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, OciError> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(url.clone())
            .header(USER_AGENT, concat!("burrow-oci/", env!("CARGO_PKG_VERSION")));
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        if let Some(auth) = authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| self.transport(format!("building request for {url}: {e}")))?;
        tokio::time::timeout(self.timeout, self.http.request(request))
            .await
            .map_err(|_| self.transport(format!("GET {url}: no response within {:?}", self.timeout)))?
            .map_err(|e| self.transport(format!("GET {url}: {}", error_chain(&e))))
    }

    async fn error_message(&self, response: Response<Incoming>) -> String {
        let Ok(bytes) = self.read_limited(response, MAX_ERROR_BYTES, "error body").await else {
            return String::new();
        };
        // Registries answer `{"errors":[{"code":…,"message":…}]}`.
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Some(first) = value.get("errors").and_then(|e| e.get(0))
        {
            let code = first.get("code").and_then(|c| c.as_str()).unwrap_or_default();
            let message = first.get("message").and_then(|c| c.as_str()).unwrap_or_default();
            return format!("{code} {message}").trim().to_owned();
        }
        String::from_utf8_lossy(&bytes)
            .chars()
            .take(200)
            .collect::<String>()
            .trim()
            .to_owned()
    }

    /// Answers a `401` challenge: fetches a bearer token from the realm, or prepares basic credentials.
    async fn authenticate(&mut self, challenges: &[Challenge]) -> Result<(), OciError> {
        let auth_err = |reason: String| OciError::Auth {
            registry: self.authority.clone(),
            reason,
        };
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = bearer
                .params
                .get("realm")
                .ok_or_else(|| auth_err("bearer challenge without realm".into()))?;
            let default_scope = format!("repository:{}:pull", self.repository);
            let scope = bearer.params.get("scope").unwrap_or(&default_scope);
            let mut query = vec![format!("scope={}", utf8_percent_encode(scope, QUERY))];
            if let Some(service) = bearer.params.get("service") {
                query.insert(0, format!("service={}", utf8_percent_encode(service, QUERY)));
            }
            let separator = if realm.contains('?') { '&' } else { '?' };
            let token_url: Uri = format!("{realm}{separator}{}", query.join("&"))
                .parse()
                .map_err(|e| auth_err(format!("bad token realm {realm:?}: {e}")))?;
            let realm_authority = token_url.authority().map(|a| a.as_str()).unwrap_or_default();
            match token_url.scheme_str() {
                Some("https") => {}
                Some("http") if authority_is_loopback(realm_authority) => {}
                _ => return Err(auth_err(format!("refusing token realm {realm:?}: not HTTPS"))),
            }
            let basic = self.basic_header();
            let response = self.send(&token_url, None, basic.as_ref()).await?;
            if !response.status().is_success() {
                let status = response.status();
                let message = self.error_message(response).await;
                return Err(auth_err(format!(
                    "token service answered HTTP {status} {message}"
                )));
            }
            let bytes = self
                .read_limited(response, MAX_TOKEN_BYTES, "token response")
                .await?;
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| auth_err(format!("token response: {e}")))?;
            let token = value
                .get("token")
                .or_else(|| value.get("access_token"))
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| auth_err("token response without token".into()))?;
            let header = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| auth_err("token is not a valid header value".into()))?;
            self.authorization = Some(header);
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            let header = self
                .basic_header()
                .ok_or_else(|| auth_err("registry requires a username and password".into()))?;
            self.authorization = Some(header);
            return Ok(());
        }
        let schemes: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
        Err(auth_err(format!(
            "unsupported authentication scheme(s): {}",
            schemes.join(", ")
        )))
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let (user, password) = self.credentials.as_ref()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

/// Resolves a `Location` header against the current URL; refuses HTTPS → HTTP downgrades off loopback.
fn resolve_redirect(current: &Uri, location: &str) -> Result<Uri, OciError> {
    let bad = |reason: &str| OciError::Refused(format!("redirect from {current} to {location:?}: {reason}"));
    let target: Uri = if location.starts_with("http://") || location.starts_with("https://") {
        location.parse().map_err(|_| bad("unparsable"))?
    } else if location.starts_with('/') && !location.starts_with("//") {
        let scheme = current.scheme_str().unwrap_or("https");
        let authority = current.authority().map(|a| a.as_str()).unwrap_or_default();
        format!("{scheme}://{authority}{location}")
            .parse()
            .map_err(|_| bad("unparsable"))?
    } else {
        return Err(bad("only absolute URLs and absolute paths are followed"));
    };
    let target_authority = target.authority().map(|a| a.as_str()).unwrap_or_default();
    if current.scheme_str() == Some("https")
        && target.scheme_str() == Some("http")
        && !authority_is_loopback(target_authority)
    {
        return Err(bad("downgrade from HTTPS to HTTP"));
    }
    Ok(target)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_and_refuse_downgrades() {
        let here: Uri = "https://reg.example/v2/a/blobs/x".parse().unwrap();
        assert_eq!(
            resolve_redirect(&here, "/storage/x").unwrap().to_string(),
            "https://reg.example/storage/x"
        );
        assert_eq!(
            resolve_redirect(&here, "https://cdn.example/x?sig=1")
                .unwrap()
                .to_string(),
            "https://cdn.example/x?sig=1"
        );
        assert!(resolve_redirect(&here, "http://cdn.example/x").is_err());
        assert!(resolve_redirect(&here, "relative/x").is_err());
        assert!(resolve_redirect(&here, "//cdn.example/x").is_err());
        let local: Uri = "http://127.0.0.1:5000/v2/a".parse().unwrap();
        assert!(resolve_redirect(&local, "http://127.0.0.1:5001/x").is_ok());
    }

    #[test]
    fn plain_http_only_for_loopback() {
        let err = RegistryClient::new("10.1.2.3:5000", "a", true, None, Duration::from_secs(1)).err();
        assert!(matches!(err, Some(OciError::Refused(_))));
    }
}
