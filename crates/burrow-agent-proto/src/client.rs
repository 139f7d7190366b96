//! Host side of the agent channel: connect over a unix socket, handshake, check the version.
//!
//! The host never trusts the agent: connecting and the handshake are bounded in time, and
//! every message is bounded in size ([`MAX_MESSAGE_BYTES`]). Per-call deadlines of later
//! calls are the caller's business (exec sessions legitimately last for hours).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::v1::{HelloReply, HelloRequest};
use crate::{AgentClient, MAX_MESSAGE_BYTES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// HTTP/2 receive windows on the host: how much agent output may be in flight, per exec
/// stream and per connection. Large enough for full-speed output, small enough to bound
/// what one sandbox makes the host buffer.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// A connected, version-checked agent.
#[derive(Debug, Clone)]
pub struct Connection {
    pub client: AgentClient<Channel>,
    /// The agent's answer to the handshake.
    pub hello: HelloReply,
}

/// Why connecting to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to the agent at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the agent at {path} did not complete the handshake within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("the agent at {path} refused the handshake")]
    Hello {
        path: PathBuf,
        #[source]
        source: tonic::Status,
    },
    #[error(
        "the agent speaks protocol version {agent}, but this host requires at least {min} (host speaks {host})"
    )]
    ProtocolTooOld { agent: u32, min: u32, host: u32 },
}

/// Connects to the agent listening on the unix socket `path` and performs the `Hello`
/// handshake, all within `timeout`.
pub async fn connect_unix(path: &Path, timeout: Duration) -> Result<Connection, ConnectError> {
    let socket = path.to_owned();
    connect(
        move || {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await }
        },
        path,
        timeout,
    )
    .await
}

/// Connects to an agent over the byte streams `dial` opens (a unix socket, a vsock, …) and
/// performs the `Hello` handshake, all within `timeout`; `endpoint` names the channel in
/// errors.
///
/// A failed or timed-out attempt hangs up every stream it opened before it returns: the
/// HTTP/2 connection task may outlive the attempt, and an agent that serves one
/// connection at a time (a VM's channel) would otherwise stay busy with a dead one while
/// the next attempts wait in the listener's backlog, then find it full.
pub async fn connect<D, F, S>(dial: D, endpoint: &Path, timeout: Duration) -> Result<Connection, ConnectError>
where
    D: Fn() -> F + Send + Sync + 'static,
    F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + AsFd + Send + Unpin + 'static,
{
    let opened = Opened::default();
    let attempt = connect_and_hello(dial, endpoint, opened.clone());
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            path: endpoint.to_owned(),
            timeout,
        }),
    };
    if result.is_err() {
        opened.hang_up();
    }
    result
}

/// Duplicates of the sockets an attempt opened, to hang them up if it fails.
#[derive(Clone, Default)]
struct Opened(Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>);

impl Opened {
    fn keep(&self, stream: &impl AsFd) {
        if let Ok(fd) = stream.as_fd().try_clone_to_owned() {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(fd.into());
        }
    }

    /// Shuts the sockets down (for every holder of them, unlike a close of our duplicate).
    fn hang_up(&self) {
        for s in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

async fn connect_and_hello<D, F, S>(dial: D, path: &Path, opened: Opened) -> Result<Connection, ConnectError>
where
    D: Fn() -> F + Send + Sync + 'static,
    F: std::future::Future<Output = std::io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + AsFd + Send + Unpin + 'static,
{
    let dial = Arc::new(dial);
    let connector = tower::service_fn(move |_: Uri| {
        let dial = dial.clone();
        let opened = opened.clone();
        async move {
            let stream = dial().await?;
            opened.keep(&stream);
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is required by the API but never resolved: the connector picks the stream.
    let channel = Endpoint::from_static("http://burrow-agent")
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .connect_with_connector(connector)
        .await
        .map_err(|source| ConnectError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let mut client = AgentClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let hello = client
        .hello(HelloRequest {
            protocol_version: PROTOCOL_VERSION,
            host_version: env!("CARGO_PKG_VERSION").to_owned(),
        })
        .await
        .map_err(|source| ConnectError::Hello {
            path: path.to_owned(),
            source,
        })?
        .into_inner();
    if hello.protocol_version < MIN_PROTOCOL_VERSION {
        return Err(ConnectError::ProtocolTooOld {
            agent: hello.protocol_version,
            min: MIN_PROTOCOL_VERSION,
            host: PROTOCOL_VERSION,
        });
    }
    Ok(Connection { client, hello })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{self, ExecInput, ExecOutput, ShutdownReply, ShutdownRequest};
    use crate::{Agent, AgentServer};
    use tokio_stream::wrappers::UnixListenerStream;
    use tonic::{Request, Response, Status, Streaming};

    /// An agent that answers Hello with a fixed protocol version and nothing else.
    struct FakeAgent(u32);

    #[tonic::async_trait]
    impl Agent for FakeAgent {
        async fn hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
            Ok(Response::new(HelloReply {
                protocol_version: self.0,
                agent_version: "fake".into(),
                pid: 1,
            }))
        }
        type ExecStream = tokio_stream::Empty<Result<ExecOutput, Status>>;
        async fn exec(&self, _: Request<Streaming<ExecInput>>) -> Result<Response<Self::ExecStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn shutdown(&self, _: Request<ShutdownRequest>) -> Result<Response<ShutdownReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn sync_fs(&self, _: Request<v1::SyncFsRequest>) -> Result<Response<v1::SyncFsReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn quiesce(
            &self,
            _: Request<v1::QuiesceRequest>,
        ) -> Result<Response<v1::QuiesceReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn reexec(&self, _: Request<v1::ReexecRequest>) -> Result<Response<v1::ReexecReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn grow_fs(&self, _: Request<v1::GrowFsRequest>) -> Result<Response<v1::GrowFsReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn set_clock(
            &self,
            _: Request<v1::SetClockRequest>,
        ) -> Result<Response<v1::SetClockReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        type ReadFileStream = tokio_stream::Empty<Result<v1::FileChunk, Status>>;
        async fn read_file(
            &self,
            _: Request<v1::ReadFileRequest>,
        ) -> Result<Response<Self::ReadFileStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn write_file(
            &self,
            _: Request<Streaming<v1::WriteFileInput>>,
        ) -> Result<Response<v1::WriteFileReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        type ListDirStream = tokio_stream::Empty<Result<v1::ListDirReply, Status>>;
        async fn list_dir(
            &self,
            _: Request<v1::ListDirRequest>,
        ) -> Result<Response<Self::ListDirStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn remove(&self, _: Request<v1::RemoveRequest>) -> Result<Response<v1::RemoveReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn rename(&self, _: Request<v1::RenameRequest>) -> Result<Response<v1::RenameReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        type ReadArchiveStream = tokio_stream::Empty<Result<v1::FileChunk, Status>>;
        async fn read_archive(
            &self,
            _: Request<v1::ReadArchiveRequest>,
        ) -> Result<Response<Self::ReadArchiveStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn write_archive(
            &self,
            _: Request<Streaming<v1::WriteArchiveInput>>,
        ) -> Result<Response<v1::WriteArchiveReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn list_sessions(
            &self,
            _: Request<v1::ListSessionsRequest>,
        ) -> Result<Response<v1::ListSessionsReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        type AttachStream = tokio_stream::Empty<Result<ExecOutput, Status>>;
        async fn attach(
            &self,
            _: Request<Streaming<ExecInput>>,
        ) -> Result<Response<Self::AttachStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn kill_session(
            &self,
            _: Request<v1::KillSessionRequest>,
        ) -> Result<Response<v1::KillSessionReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn set_services(
            &self,
            _: Request<v1::SetServicesRequest>,
        ) -> Result<Response<v1::SetServicesReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn control_service(
            &self,
            _: Request<v1::ControlServiceRequest>,
        ) -> Result<Response<v1::ServiceState>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn service_status(
            &self,
            _: Request<v1::ServiceStatusRequest>,
        ) -> Result<Response<v1::ServiceStatusReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
        type ServiceLogsStream = tokio_stream::Empty<Result<v1::ServiceLogChunk, Status>>;
        async fn service_logs(
            &self,
            _: Request<v1::ServiceLogsRequest>,
        ) -> Result<Response<Self::ServiceLogsStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
        type ConnectPortStream = tokio_stream::Empty<Result<v1::ConnectOutput, Status>>;
        async fn connect_port(
            &self,
            _: Request<Streaming<v1::ConnectInput>>,
        ) -> Result<Response<Self::ConnectPortStream>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    fn serve_fake(dir: &tempfile::TempDir, version: u32) -> PathBuf {
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServer::new(FakeAgent(version)))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        path
    }

    #[tokio::test]
    async fn accepts_current_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = serve_fake(&dir, PROTOCOL_VERSION);
        let conn = connect_unix(&path, Duration::from_secs(10)).await.unwrap();
        assert_eq!(conn.hello.protocol_version, PROTOCOL_VERSION);
        assert_eq!(conn.hello.agent_version, "fake");
    }

    #[tokio::test]
    async fn refuses_old_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = serve_fake(&dir, MIN_PROTOCOL_VERSION - 1);
        let err = connect_unix(&path, Duration::from_secs(10)).await.unwrap_err();
        assert!(
            matches!(err, ConnectError::ProtocolTooOld { agent, min, .. } if agent == MIN_PROTOCOL_VERSION - 1 && min == MIN_PROTOCOL_VERSION),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("version {}", MIN_PROTOCOL_VERSION - 1)),
            "{msg}"
        );
        assert!(msg.contains(&format!("at least {MIN_PROTOCOL_VERSION}")), "{msg}");
    }

    #[tokio::test]
    async fn silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mute.sock");
        // Accepts connections (the kernel does, via the backlog) but never speaks HTTP/2.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = connect_unix(&path, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, ConnectError::Timeout { .. }), "{err:?}");
    }

    /// An agent that serves one connection at a time must not stay busy with a failed
    /// attempt's: the peer sees the attempt's bytes (the control: it was connected), then
    /// end-of-file once the attempt gives up.
    #[tokio::test]
    async fn a_failed_attempt_hangs_up_its_socket() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let peer = tokio::task::spawn_blocking(move || {
            let (mut s, _) = listener.accept().unwrap();
            // A bound, not a pace: a hang-up that never comes fails the test, not hangs it.
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut seen = 0;
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return Ok(seen),
                    Ok(n) => seen += n,
                    Err(e) => return Err(e),
                }
            }
        });
        let err = connect_unix(&path, Duration::from_millis(300)).await.unwrap_err();
        assert!(matches!(err, ConnectError::Timeout { .. }), "{err:?}");
        let seen = peer
            .await
            .unwrap()
            .expect("the peer never saw the attempt hang up");
        assert!(seen > 0, "the attempt never spoke on the socket");
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect_unix(&dir.path().join("none.sock"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Connect { .. }), "{err:?}");
    }
}
