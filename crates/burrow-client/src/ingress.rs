//! Ingress: a sandbox's URL, and raw TCP relays to a port inside a sandbox over WebSocket
//! (`GET /v1/sandboxes/{name}/proxy/{port}`).
//!
//! Relay framing (api.md, openapi.yaml): binary messages carry the connection's bytes both
//! ways; an empty binary message is EOF of its sender's direction; a close frame ends it.

use futures::{SinkExt, StreamExt};
use hyper::body::Bytes;
use hyper::header::AUTHORIZATION;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::paths::sandbox;
use crate::transport::Stream;
use crate::{Client, ClientError};

/// Largest binary message a relay sends.
const CHUNK: usize = 64 * 1024;

/// Opens a WebSocket to burrowd at `path` (with the client's token), mapping a refused
/// upgrade to the server's error.
pub(crate) async fn ws_connect(client: &Client, path: &str) -> Result<WebSocketStream<Stream>, ClientError> {
    let mut req = client
        .uri("ws", path)
        .into_client_request()
        .map_err(|e| ClientError::Config(format!("cannot build WebSocket request: {e}")))?;
    if let Some(auth) = client.auth_header()? {
        req.headers_mut().insert(AUTHORIZATION, auth);
    }
    let io = client
        .target()
        .connect()
        .await
        .map_err(|e| client.connect_error(e))?;
    let (ws, _resp) = client_async(req, io).await.map_err(|e| match e {
        WsError::Http(resp) => {
            let body = resp.body().as_deref().unwrap_or_default();
            ClientError::from_response(resp.status().as_u16(), body)
        }
        other => ClientError::WebSocket(format!("handshake with burrowd failed: {other}")),
    })?;
    Ok(ws)
}

/// One TCP connection to a port inside a sandbox, carried by a WebSocket.
#[derive(Debug)]
pub struct PortRelay {
    ws: WebSocketStream<Stream>,
    ctx: RelayContext,
}

/// Bytes a finished relay moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// From the local side into the sandbox.
    pub sent: u64,
    /// From the sandbox to the local side.
    pub received: u64,
}

impl Client {
    /// The sandbox's URL (`http://{name}.{base_domain}:{port}/`), as the server reports it.
    pub async fn sandbox_url(&self, name: &str) -> Result<String, ClientError> {
        Ok(self.get_sandbox(name).await?.url)
    }

    /// Connects to `port` on the loopback address inside sandbox `name` (waking it). Fails
    /// with the server's error (404 unknown sandbox, 502 nothing listens, …) before any byte.
    pub async fn proxy_port(&self, name: &str, port: u16) -> Result<PortRelay, ClientError> {
        let path = format!("{}/proxy/{port}", sandbox(name));
        let ws = ws_connect(self, &path).await?;
        Ok(PortRelay {
            ws,
            ctx: RelayContext {
                client: self.clone(),
                what: format!("port {port} of sandbox '{name}'"),
            },
        })
    }
}

impl PortRelay {
    /// Copies bytes between `io` and the sandbox's port until both sides reached EOF, or
    /// either side closed or failed. Half-closes travel both ways.
    pub async fn relay<T>(self, io: T) -> Result<RelayStats, ClientError>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let Self { ws, ctx: this } = self;
        let (mut sink, mut stream) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut stats = RelayStats::default();
        let result: Result<(), ClientError> = {
            let sent = &mut stats.sent;
            let received = &mut stats.received;
            let up = async {
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = rd.read(&mut buf).await?;
                    // n == 0 sends the empty message: our EOF.
                    sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .map_err(|e| this.failed(e))?;
                    if n == 0 {
                        return Ok::<_, ClientError>(());
                    }
                    *sent += n as u64;
                }
            };
            // Ok(true): the relay is over (closed); Ok(false): the sandbox side sent EOF.
            let down = async {
                while let Some(msg) = stream.next().await {
                    match msg.map_err(|e| this.failed(e))? {
                        Message::Binary(b) if b.is_empty() => {
                            wr.shutdown().await?;
                            return Ok::<_, ClientError>(false);
                        }
                        Message::Binary(b) => {
                            wr.write_all(&b).await?;
                            *received += b.len() as u64;
                        }
                        Message::Close(Some(f)) if f.code != CloseCode::Normal => {
                            return Err(this.failed(format!("closed by burrowd: {}", f.reason)));
                        }
                        Message::Close(_) => return Ok(true),
                        _ => {}
                    }
                }
                Ok(true)
            };
            tokio::pin!(up, down);
            let (mut up_done, mut down_done) = (false, false);
            loop {
                tokio::select! {
                    r = &mut up, if !up_done => {
                        r?;
                        up_done = true;
                    }
                    r = &mut down, if !down_done => {
                        if r? {
                            break Ok(());
                        }
                        down_done = true;
                    }
                }
                if up_done && down_done {
                    break Ok(());
                }
            }
        };
        let _ = sink.send(Message::Close(None)).await;
        result.map(|()| stats)
    }
}

/// What a relay's errors name.
#[derive(Debug)]
struct RelayContext {
    client: Client,
    what: String,
}

impl RelayContext {
    fn failed(&self, message: impl std::fmt::Display) -> ClientError {
        ClientError::Transport {
            target: self.client.target().clone(),
            message: format!("relay to {}: {message}", self.what),
        }
    }
}
