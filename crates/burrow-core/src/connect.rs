//! Tunnels: a byte stream to a TCP port inside a sandbox, through the agent's `ConnectPort`
//! call (no network route into the sandbox). Ingress (HTTP by URL, WebSocket port relays)
//! is built on it by the HTTP layer.
//!
//! A tunnel wakes a sleeping sandbox first, exactly as exec does, and keeps it awake while
//! it is open. It never interprets the bytes it carries.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use burrow_agent_proto::v1::{ConnectInput, ConnectOpen, ConnectOutput, connect_input, connect_output};
use burrow_api::{SandboxStatus, UrlAuth};
use futures::channel::mpsc;
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::store::SandboxRecord;
use crate::{CoreError, Manager};

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// The port ingress uses when no service of the sandbox declares an `http_port` (api.md).
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Largest `data` message sent to the agent (the agent sends at most as much).
const CHUNK: usize = 64 * 1024;
/// Messages queued towards the agent per tunnel.
const QUEUE: usize = 8;
/// Bound of opening a tunnel, connect included.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may retry a refused port while a service that declares it as its
/// `http_port` is starting (a cold wake boots every service again); the agent knows when
/// one is, and does not wait otherwise.
const SERVICE_START_WAIT: Duration = Duration::from_secs(15);
/// The agent honours no longer a wait than this.
const SERVICE_START_WAIT_MAX: Duration = Duration::from_secs(60);

/// An open TCP connection to a port inside a sandbox. Reading returns what the sandbox side
/// sends, EOF once it closed its write side; `shutdown` closes ours. Dropping it closes the
/// connection. The sandbox does not go idle while a tunnel is open.
pub struct Tunnel {
    sandbox: String,
    port: u16,
    tx: Option<mpsc::Sender<ConnectInput>>,
    rx: tonic::Streaming<ConnectOutput>,
    pending: Vec<u8>,
    offset: usize,
    read_done: bool,
    _busy: crate::runtime::BusyGuard,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("sandbox", &self.sandbox)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Tunnel {
    pub fn sandbox(&self) -> &str {
        &self.sandbox
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Manager {
    /// Opens a tunnel to 127.0.0.1:`port` inside sandbox `name`, waking it first when it
    /// sleeps. `CoreError::NotListening` when nothing accepts on the port.
    pub async fn connect(&self, name: &str, port: u16) -> Result<Tunnel> {
        if port == 0 {
            return Err(CoreError::BadRequest("port must be between 1 and 65535".into()));
        }
        let rec = self.record(name)?;
        refuse_unless_up(&rec)?;
        let rec = self.ensure_running(name).await?;
        // Held from here on, so the sandbox cannot fall asleep while the tunnel opens.
        let busy = self.runtime(&rec.id).busy_guard();
        self.touch(&rec);
        let client = self.agent(&rec).await?;
        // A VM under emulation boots its services slowly: as long as its engine allows for
        // a boot, up to the agent's own bound.
        let wait = self
            .engine(&rec)?
            .ready_timeout()
            .clamp(SERVICE_START_WAIT, SERVICE_START_WAIT_MAX);
        let (tx, rx) = match open(client, &rec.name, port, wait).await {
            Err(CoreError::Agent { .. }) => {
                // The cached channel may be stale (agent restarted): reconnect once.
                self.forget_agent(&rec.id);
                let client = self.agent(&rec).await?;
                open(client, &rec.name, port, wait).await
            }
            other => other,
        }?;
        Ok(Tunnel {
            sandbox: rec.name,
            port,
            tx: Some(tx),
            rx,
            pending: Vec::new(),
            offset: 0,
            read_done: false,
            _busy: busy,
        })
    }

    /// The port ingress sends HTTP to: the `http_port` of the sandbox's first service (by
    /// name) that declares one, else [`DEFAULT_HTTP_PORT`].
    pub async fn http_port(&self, name: &str) -> Result<u16> {
        let rec = self.record(name)?;
        Ok(self
            .store
            .services(&rec.id)?
            .iter()
            .find_map(|s| s.spec.http_port)
            .unwrap_or(DEFAULT_HTTP_PORT))
    }

    /// The id of sandbox `name` while it runs (`None` otherwise): what connections to it
    /// are kept under, so that none ever serves another sandbox of the same name.
    pub fn running_id(&self, name: &str) -> Result<Option<String>> {
        let rec = self.record(name)?;
        Ok((rec.status == SandboxStatus::Running).then_some(rec.id))
    }

    /// Who may use the sandbox's URL (its `config.url_auth`).
    pub fn url_auth(&self, name: &str) -> Result<UrlAuth> {
        Ok(self.record(name)?.config.url_auth)
    }
}

/// A tunnel needs a sandbox that runs or sleeps; anything else is the sandbox's state, not
/// the caller's request, so it is reported as unavailable with what to do about it.
fn refuse_unless_up(rec: &SandboxRecord) -> Result<()> {
    match rec.status {
        SandboxStatus::Running | SandboxStatus::Sleeping => Ok(()),
        SandboxStatus::Failed => Err(CoreError::Unavailable(format!(
            "sandbox '{}' failed{}; start it again with `burrow start {}`",
            rec.name,
            rec.failure_reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            rec.name
        ))),
        SandboxStatus::Stopped => Err(CoreError::Unavailable(format!(
            "sandbox '{}' is stopped; start it with `burrow start {}`",
            rec.name, rec.name
        ))),
        other => Err(CoreError::Unavailable(format!(
            "sandbox '{}' is {other}",
            rec.name
        ))),
    }
}

async fn open(
    mut client: burrow_agent_proto::AgentClient<tonic::transport::Channel>,
    sandbox: &str,
    port: u16,
    wait: Duration,
) -> Result<(mpsc::Sender<ConnectInput>, tonic::Streaming<ConnectOutput>)> {
    let (mut tx, rx) = mpsc::channel(QUEUE);
    tx.try_send(ConnectInput {
        kind: Some(connect_input::Kind::Open(ConnectOpen {
            port: port.into(),
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        })),
    })
    .map_err(|_| CoreError::Internal("tunnel input queue is full".into()))?;
    let agent_err = |detail: String| CoreError::Agent {
        name: sandbox.to_owned(),
        detail,
    };
    let status = |s: tonic::Status| match s.code() {
        tonic::Code::FailedPrecondition => CoreError::NotListening {
            name: sandbox.to_owned(),
            port,
        },
        tonic::Code::InvalidArgument => CoreError::BadRequest(s.message().chars().take(512).collect()),
        _ => crate::exec::agent_status(sandbox, s),
    };
    let opened = async {
        let mut output = client.connect_port(rx).await.map_err(status)?.into_inner();
        match output.message().await.map_err(status)? {
            Some(ConnectOutput {
                kind: Some(connect_output::Kind::Connected(_)),
            }) => Ok(output),
            _ => Err(agent_err("the agent did not confirm the connection".into())),
        }
    };
    let output = tokio::time::timeout(OPEN_TIMEOUT + wait, opened)
        .await
        .map_err(|_| agent_err(format!("no connection to port {port} within {OPEN_TIMEOUT:?}")))??;
    Ok((tx, output))
}

fn broken(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        format!("the tunnel is closed ({what})"),
    )
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.offset < this.pending.len() {
                let n = buf.remaining().min(this.pending.len() - this.offset);
                buf.put_slice(&this.pending[this.offset..this.offset + n]);
                this.offset += n;
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.rx).poll_next(cx)) {
                Some(Ok(ConnectOutput {
                    kind: Some(connect_output::Kind::Data(b)),
                })) => {
                    this.pending = b;
                    this.offset = 0;
                }
                Some(Ok(ConnectOutput {
                    kind: Some(connect_output::Kind::Eof(_)),
                }))
                | None => this.read_done = true,
                // A stray `connected` or an empty message: the agent is not trusted to be
                // well-formed, but it cannot make us misreport.
                Some(Ok(_)) => {}
                Some(Err(s)) => {
                    this.read_done = true;
                    let msg: String = s.message().chars().take(512).collect();
                    return Poll::Ready(Err(io::Error::other(format!(
                        "tunnel to port {} in sandbox '{}' failed: {msg}",
                        this.port, this.sandbox
                    ))));
                }
            }
        }
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let Some(tx) = self.tx.as_mut() else {
            return Poll::Ready(Err(broken("shut down for writing")));
        };
        ready!(Pin::new(&mut *tx).poll_ready(cx)).map_err(|_| broken("the call ended"))?;
        let n = buf.len().min(CHUNK);
        Pin::new(&mut *tx)
            .start_send(ConnectInput {
                kind: Some(connect_input::Kind::Data(buf[..n].to_vec())),
            })
            .map_err(|_| broken("the call ended"))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.tx.as_mut() {
            // Queued messages go out as fast as the channel's flow control allows; waiting
            // for the queue to drain is all a flush can mean here.
            Some(tx) => Pin::new(tx).poll_flush(cx).map_err(|_| broken("the call ended")),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(tx) = self.tx.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        // `eof`, then the end of the input stream; a call that already ended needs neither.
        if ready!(Pin::new(&mut *tx).poll_ready(cx)).is_ok() {
            let _ = Pin::new(&mut *tx).start_send(ConnectInput {
                kind: Some(connect_input::Kind::Eof(true)),
            });
        }
        let _ = ready!(Pin::new(&mut *tx).poll_close(cx));
        self.tx = None;
        Poll::Ready(Ok(()))
    }
}
