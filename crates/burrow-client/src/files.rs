//! The Files API (`/v1/sandboxes/{name}/files…`): streaming downloads and uploads of raw
//! files and tar archives, listings, removal and renames.
//!
//! Bodies stream in both directions (nothing is buffered whole), so these calls use their
//! own hyper client with a streaming request body over the same [`Target`] connector.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use burrow_api::{FileList, RenameFile};
use futures::{Stream, StreamExt, TryStreamExt};
use http_body_util::{BodyExt, BodyStream, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Frame};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;

use crate::client::chain;
use crate::paths::{Query, sandbox};
use crate::transport::Connector;
use crate::{Client, ClientError};

/// Bytes of a download, in the order the server sent them. An `Err` item means the
/// transfer broke off (the data before it is incomplete).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send>>;

/// Options of [`Client::write_file`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteFileOptions {
    /// Permission bits; `None` keeps an existing file's mode (0644 for a new file).
    pub mode: Option<u32>,
    /// Create missing parent directories.
    pub mkdir: bool,
}

type UploadBody = UnsyncBoxBody<Bytes, io::Error>;

fn files_path(name: &str, suffix: &str, query: &Query) -> String {
    query.apply(&format!("{}/files{suffix}", sandbox(name)))
}

fn path_query(path: &str) -> Query {
    let mut q = Query::new();
    q.push("path", path);
    q
}

impl Client {
    /// Sends one Files API request with a streaming body and returns the response when it is
    /// a success; an error response becomes [`ClientError::Api`].
    async fn files_request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: UploadBody,
    ) -> Result<Response<hyper::body::Incoming>, ClientError> {
        let http: HttpClient<Connector, UploadBody> =
            HttpClient::builder(TokioExecutor::new()).build(Connector {
                target: Arc::new(self.target().clone()),
            });
        let uri = self.uri("http", path);
        let mut req = Request::builder().method(method).uri(&uri);
        let h = req.headers_mut().expect("builder has no error yet");
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("burrow-client/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(ct) = content_type {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        if let Some(auth) = self.auth_header()? {
            h.insert(AUTHORIZATION, auth);
        }
        let req = req
            .body(body)
            .map_err(|e| ClientError::Config(format!("cannot build request for {uri}: {e}")))?;
        let resp = http.request(req).await.map_err(|e| {
            if e.is_connect() {
                self.connect_error(io::Error::other(chain(&e)))
            } else {
                ClientError::Transport {
                    target: self.target().clone(),
                    message: chain(&e),
                }
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| self.transport(&e))?;
        Err(ClientError::from_response(status, &body.to_bytes()))
    }

    fn transport(&self, e: &dyn std::error::Error) -> ClientError {
        ClientError::Transport {
            target: self.target().clone(),
            message: chain(e),
        }
    }

    fn download(&self, resp: Response<hyper::body::Incoming>) -> ByteStream {
        let client = self.clone();
        let frames = BodyStream::new(resp.into_body());
        Box::pin(frames.filter_map(move |frame| {
            let item = match frame {
                Ok(f) => f.into_data().ok().map(Ok),
                Err(e) => Some(Err(client.transport(&e))),
            };
            std::future::ready(item)
        }))
    }

    async fn no_content(&self, resp: Response<hyper::body::Incoming>) -> Result<(), ClientError> {
        let status = resp.status();
        resp.into_body().collect().await.map_err(|e| self.transport(&e))?;
        if status != StatusCode::NO_CONTENT && !status.is_success() {
            return Err(ClientError::Decode {
                status: status.as_u16(),
                message: "expected no content".into(),
            });
        }
        Ok(())
    }

    /// `GET …/files?path=`: the file's bytes as a stream.
    pub async fn read_file(&self, name: &str, path: &str) -> Result<ByteStream, ClientError> {
        let p = files_path(name, "", &path_query(path));
        let resp = self.files_request(Method::GET, &p, None, empty()).await?;
        Ok(self.download(resp))
    }

    /// `GET path` as a byte stream, for any endpoint that streams a body (e.g. a service's
    /// logs with `follow=true`).
    pub async fn get_stream(&self, path: &str) -> Result<ByteStream, ClientError> {
        let resp = self.files_request(Method::GET, path, None, empty()).await?;
        Ok(self.download(resp))
    }

    /// `GET …/files?path=`, collected in memory (for small files).
    pub async fn read_file_bytes(&self, name: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        let mut s = self.read_file(name, path).await?;
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// `PUT …/files?path=&mode=&mkdir=`: streams `body` into the file (replaced atomically).
    pub async fn write_file<S>(
        &self,
        name: &str,
        path: &str,
        opts: WriteFileOptions,
        body: S,
    ) -> Result<(), ClientError>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        let mut q = path_query(path);
        if let Some(mode) = opts.mode {
            q.push("mode", format!("{mode:04o}"));
        }
        if opts.mkdir {
            q.push("mkdir", "true");
        }
        let p = files_path(name, "", &q);
        let resp = self
            .files_request(Method::PUT, &p, Some("application/octet-stream"), streaming(body))
            .await?;
        self.no_content(resp).await
    }

    /// `PUT …/files` with a body in memory.
    pub async fn write_file_bytes(
        &self,
        name: &str,
        path: &str,
        opts: WriteFileOptions,
        data: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let data: Bytes = data.into();
        self.write_file(name, path, opts, futures::stream::iter([Ok(data)]))
            .await
    }

    /// `GET …/files/list?path=`.
    pub async fn list_files(&self, name: &str, path: &str) -> Result<FileList, ClientError> {
        self.get_json(&files_path(name, "/list", &path_query(path))).await
    }

    /// `DELETE …/files?path=&recursive=`.
    pub async fn remove_file(&self, name: &str, path: &str, recursive: bool) -> Result<(), ClientError> {
        let mut q = path_query(path);
        if recursive {
            q.push("recursive", "true");
        }
        self.request_bytes(Method::DELETE, &files_path(name, "", &q), None, Bytes::new())
            .await
            .map(drop)
    }

    /// `POST …/files/rename` `{from, to}`.
    pub async fn rename_file(&self, name: &str, from: &str, to: &str) -> Result<(), ClientError> {
        let req = RenameFile {
            from: from.to_owned(),
            to: to.to_owned(),
        };
        self.request_json::<(), _>(
            Method::POST,
            &format!("{}/files/rename", sandbox(name)),
            Some(&req),
        )
        .await
    }

    /// `GET …/files/archive?path=`: a tar stream of the file or directory tree.
    pub async fn read_archive(&self, name: &str, path: &str) -> Result<ByteStream, ClientError> {
        let p = files_path(name, "/archive", &path_query(path));
        let resp = self.files_request(Method::GET, &p, None, empty()).await?;
        Ok(self.download(resp))
    }

    /// `PUT …/files/archive?path=`: extracts the tar stream `body` into directory `path`
    /// (created when missing).
    pub async fn write_archive<S>(&self, name: &str, path: &str, body: S) -> Result<(), ClientError>
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        let p = files_path(name, "/archive", &path_query(path));
        let resp = self
            .files_request(Method::PUT, &p, Some("application/x-tar"), streaming(body))
            .await?;
        self.no_content(resp).await
    }
}

fn empty() -> UploadBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn streaming<S>(body: S) -> UploadBody
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    BodyExt::boxed_unsync(StreamBody::new(body.map_ok(Frame::data)))
}
