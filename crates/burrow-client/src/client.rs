//! The HTTP client: request plumbing, error mapping and one typed method per endpoint.

use std::error::Error as _;
use std::path::PathBuf;
use std::sync::Arc;

use burrow_api::{
    CreateSandbox, ExecRequest, ExecResult, ImageList, PatchSandbox, Sandbox, SandboxList, VersionInfo,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::exec_stream::{ExecStream, ExecStreamOptions};
use crate::transport::{Connector, DEFAULT_SOCKET, Target};
use crate::{ClientError, paths};

const JSON: &str = "application/json";
const UA: &str = concat!("burrow-client/", env!("CARGO_PKG_VERSION"));

/// A client of one burrowd. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    target: Arc<Target>,
    http: HttpClient<Connector, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("target", &self.target).finish()
    }
}

impl Client {
    /// `BURROW_SOCKET` (unix socket) if set, else `BURROW_URL` with `BURROW_TOKEN`, else the
    /// default socket `/run/burrow/burrowd.sock`.
    pub fn from_env() -> Result<Self, ClientError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(sock) = var("BURROW_SOCKET") {
            return Ok(Self::unix(sock));
        }
        if let Some(url) = var("BURROW_URL") {
            return Self::tcp(&url, var("BURROW_TOKEN"));
        }
        Ok(Self::unix(DEFAULT_SOCKET))
    }

    /// A client of the daemon listening on the unix socket `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self::with_target(Target::Unix(path.into()))
    }

    /// A client of the daemon at `url` (`http://host:port`), authenticating with `token`.
    pub fn tcp(url: &str, token: Option<String>) -> Result<Self, ClientError> {
        Ok(Self::with_target(Target::tcp(url, token)?))
    }

    pub fn with_target(target: Target) -> Self {
        let target = Arc::new(target);
        let http = HttpClient::builder(TokioExecutor::new()).build(Connector {
            target: target.clone(),
        });
        Self { target, http }
    }

    /// Where this client connects.
    pub fn target(&self) -> &Target {
        &self.target
    }

    // ---- generic requests ----

    /// Sends `body` (raw bytes with `content_type`) and returns the successful response with its
    /// whole body. Non-2xx answers become [`ClientError::Api`].
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Response<Bytes>, ClientError> {
        let mut headers = HeaderMap::new();
        if let Some(ct) = content_type {
            let ct = HeaderValue::from_str(ct)
                .map_err(|_| ClientError::Config(format!("invalid content type '{ct}'")))?;
            headers.insert(CONTENT_TYPE, ct);
        }
        let resp = self.send(method, path, headers, body).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ClientError::from_response(status.as_u16(), resp.body()));
        }
        Ok(resp)
    }

    /// Sends `body` as JSON (if any) and decodes a JSON answer into `T`. An empty answer
    /// (`204 No Content`) decodes as JSON `null`, so `T = ()` or `Option<_>` fits it.
    pub async fn request_json<T, B>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError>
    where
        T: DeserializeOwned,
        B: Serialize + ?Sized,
    {
        let (ct, bytes) = match body {
            Some(b) => (Some(JSON), Bytes::from(serde_json::to_vec(b)?)),
            None => (None, Bytes::new()),
        };
        let resp = self.request_bytes(method, path, ct, bytes).await?;
        decode(resp.status(), resp.body())
    }

    /// `GET path`, decoded as JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.request_json(Method::GET, path, None::<&()>).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<Bytes>, ClientError> {
        let uri = self.uri("http", path);
        let mut req = Request::builder().method(method).uri(&uri);
        let h = req.headers_mut().expect("builder has no error yet");
        h.extend(headers);
        h.insert(ACCEPT, HeaderValue::from_static(JSON));
        h.insert(USER_AGENT, HeaderValue::from_static(UA));
        if let Some(auth) = self.auth_header()? {
            h.insert(AUTHORIZATION, auth);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Config(format!("cannot build request for {uri}: {e}")))?;
        let resp = self.http.request(req).await.map_err(|e| self.map_http_error(e))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| ClientError::Transport {
            target: (*self.target).clone(),
            message: format!("reading the response body: {}", chain(&e)),
        })?;
        Ok(Response::from_parts(parts, body.to_bytes()))
    }

    /// Full URI of `path` for this target; `scheme` is `http` or `ws`.
    pub(crate) fn uri(&self, scheme: &str, path: &str) -> String {
        format!(
            "{scheme}://{}{}{path}",
            self.target.authority(),
            self.target.base_path()
        )
    }

    pub(crate) fn auth_header(&self) -> Result<Option<HeaderValue>, ClientError> {
        self.target
            .token()
            .map(|t| {
                HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    ClientError::Config("BURROW_TOKEN contains characters not allowed in a header".into())
                })
            })
            .transpose()
    }

    pub(crate) fn connect_error(&self, source: std::io::Error) -> ClientError {
        ClientError::Connect {
            target: (*self.target).clone(),
            source,
        }
    }

    fn map_http_error(&self, e: hyper_util::client::legacy::Error) -> ClientError {
        if e.is_connect() {
            // The connector only fails with io::Error; dig it out for a precise message.
            let mut src = e.source();
            while let Some(s) = src {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    return self.connect_error(std::io::Error::new(io.kind(), io.to_string()));
                }
                src = s.source();
            }
            return self.connect_error(std::io::Error::other(chain(&e)));
        }
        ClientError::Transport {
            target: (*self.target).clone(),
            message: chain(&e),
        }
    }

    // ---- typed endpoints ----

    /// `GET /healthz`: Ok when the daemon answers 2xx.
    pub async fn health(&self) -> Result<(), ClientError> {
        self.request_bytes(Method::GET, paths::HEALTH, None, Bytes::new())
            .await
            .map(drop)
    }

    /// `GET /v1/version`.
    pub async fn version(&self) -> Result<VersionInfo, ClientError> {
        self.get_json(paths::VERSION).await
    }

    /// `POST /v1/sandboxes`.
    pub async fn create_sandbox(&self, req: &CreateSandbox) -> Result<Sandbox, ClientError> {
        self.request_json(Method::POST, paths::SANDBOXES, Some(req)).await
    }

    /// `GET /v1/sandboxes`: one page.
    pub async fn list_sandboxes(
        &self,
        prefix: Option<&str>,
        labels: &[(String, String)],
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<SandboxList, ClientError> {
        self.get_json(&paths::list_sandboxes(prefix, labels, limit, cursor))
            .await
    }

    /// `GET /v1/sandboxes`, following `next_cursor` to the end.
    pub async fn list_all_sandboxes(
        &self,
        prefix: Option<&str>,
        labels: &[(String, String)],
    ) -> Result<Vec<Sandbox>, ClientError> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .list_sandboxes(prefix, labels, None, cursor.as_deref())
                .await?;
            let progressed = !page.sandboxes.is_empty();
            all.extend(page.sandboxes);
            match page.next_cursor {
                // A cursor with an empty page would loop forever on a buggy server.
                Some(c) if progressed && Some(&c) != cursor.as_ref() => cursor = Some(c),
                _ => return Ok(all),
            }
        }
    }

    /// `GET /v1/sandboxes/{name}`.
    pub async fn get_sandbox(&self, name: &str) -> Result<Sandbox, ClientError> {
        self.get_json(&paths::sandbox(name)).await
    }

    /// `PATCH /v1/sandboxes/{name}`.
    pub async fn patch_sandbox(&self, name: &str, patch: &PatchSandbox) -> Result<Sandbox, ClientError> {
        self.request_json(Method::PATCH, &paths::sandbox(name), Some(patch))
            .await
    }

    /// `DELETE /v1/sandboxes/{name}`.
    pub async fn delete_sandbox(&self, name: &str) -> Result<(), ClientError> {
        self.request_bytes(Method::DELETE, &paths::sandbox(name), None, Bytes::new())
            .await
            .map(drop)
    }

    /// `POST /v1/sandboxes/{name}/{action}` with action one of start, stop, restart, sleep, wake.
    pub async fn sandbox_action(&self, name: &str, action: &str) -> Result<Sandbox, ClientError> {
        self.request_json(Method::POST, &paths::sandbox_action(name, action), None::<&()>)
            .await
    }

    /// `POST /v1/sandboxes/{name}/exec`: runs to completion and returns the collected output.
    pub async fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        self.request_json(Method::POST, &paths::exec(name), Some(req))
            .await
    }

    /// `GET /v1/images`.
    pub async fn list_images(&self) -> Result<ImageList, ClientError> {
        self.get_json(paths::IMAGES).await
    }

    /// `GET /v1/sandboxes/{name}/exec` as a WebSocket: an interactive, streaming exec session.
    pub async fn exec_stream(&self, name: &str, opts: ExecStreamOptions) -> Result<ExecStream, ClientError> {
        let (query, start) = opts.request();
        let path = query.apply(&paths::exec(name));
        match start {
            None => ExecStream::connect(self, &path).await,
            Some(start) => ExecStream::connect_with_start(self, &path, &start).await,
        }
    }
}

fn decode<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Result<T, ClientError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ClientError::Decode {
        status: status.as_u16(),
        message: format!("{e} in {}", String::from_utf8_lossy(&body[..body.len().min(200)])),
    })
}

/// `e: cause: cause…`, skipping causes whose text the outer message already contains.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}
