//! `ConnectPort`: one TCP connection to a port on the sandbox's loopback address, pumped over a
//! bidirectional gRPC stream. It is how the host reaches a sandbox's web app (ingress) and
//! forwards raw ports without any network route into the sandbox.
//!
//! Only loopback is ever dialled: the host names a port, never an address. Data moves in
//! bounded chunks through a bounded queue, so a slow host slows the sandbox's sender down
//! (TCP back-pressure) instead of making the agent buffer.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use burrow_agent_proto::v1::{ConnectInput, ConnectOutput, Connected, connect_input, connect_output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::supervisor::Supervisor;

/// Largest `data` message the agent sends.
pub const CHUNK: usize = 64 * 1024;
/// Messages queued towards the host per connection.
const QUEUE: usize = 8;
/// Bound of one connect attempt (loopback answers at once unless the listener's backlog is full).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `wait_ms` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long after its start a running service that does not accept yet counts as starting.
const STARTING_FOR: Duration = Duration::from_secs(60);
/// Pause between attempts while a port refuses connections.
const RETRY_EVERY: Duration = Duration::from_millis(20);

pub type ConnectStream = ReceiverStream<Result<ConnectOutput, Status>>;

fn output(kind: connect_output::Kind) -> Result<ConnectOutput, Status> {
    Ok(ConnectOutput { kind: Some(kind) })
}

/// Serves one `ConnectPort` call: reads `open`, connects, answers `connected`, then pumps.
pub async fn connect(
    mut input: Streaming<ConnectInput>,
    services: &Supervisor,
) -> Result<ConnectStream, Status> {
    let open = match input.message().await? {
        Some(ConnectInput {
            kind: Some(connect_input::Kind::Open(open)),
        }) => open,
        Some(_) => {
            return Err(Status::invalid_argument(
                "the first connect message must be `open`",
            ));
        }
        None => return Err(Status::invalid_argument("connect stream ended before `open`")),
    };
    let port = u16::try_from(open.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Status::invalid_argument(format!("port {} is not between 1 and 65535", open.port)))?;
    let wait = Duration::from_millis(u64::from(open.wait_ms)).min(MAX_WAIT);
    let stream = dial(port, wait, services).await?;
    // Small request/response exchanges (HTTP) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let (tx, rx) = mpsc::channel(QUEUE);
    tx.try_send(output(connect_output::Kind::Connected(Connected {})))
        .map_err(|_| Status::internal("connect reply queue is full"))?;
    tokio::spawn(pump(stream, input, tx));
    Ok(ReceiverStream::new(rx))
}

/// Connects to 127.0.0.1:`port`. A refused connection is retried (until `wait` has passed)
/// only while a service that declares the port is starting: nothing else is coming.
async fn dial(port: u16, wait: Duration, services: &Supervisor) -> Result<TcpStream, Status> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                if tokio::time::Instant::now() + RETRY_EVERY > deadline
                    || !services.starting_on(port, STARTING_FOR)
                {
                    return Err(Status::failed_precondition(format!(
                        "connection refused: nothing listens on port {port} in the sandbox"
                    )));
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Ok(Err(e)) => {
                return Err(Status::unavailable(format!(
                    "cannot connect to port {port} in the sandbox: {e}"
                )));
            }
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "connecting to port {port} in the sandbox took longer than {CONNECT_TIMEOUT:?}"
                )));
            }
        }
    }
}

/// Moves bytes both ways until both directions ended, or either side failed. Dropping the
/// socket halves (on return) closes the connection.
async fn pump(
    stream: TcpStream,
    input: Streaming<ConnectInput>,
    tx: mpsc::Sender<Result<ConnectOutput, Status>>,
) {
    let (rd, wr) = stream.into_split();
    let result = tokio::try_join!(host_to_sandbox(input, wr), sandbox_to_host(rd, &tx));
    if let Err(status) = result {
        let _ = tx.send(Err(status)).await;
    }
}

async fn host_to_sandbox(mut input: Streaming<ConnectInput>, mut wr: OwnedWriteHalf) -> Result<(), Status> {
    loop {
        // A host input error is a cancelled call: the host is gone.
        let msg = input
            .message()
            .await
            .map_err(|s| Status::cancelled(format!("the host went away: {}", s.message())))?;
        let Some(msg) = msg else { break };
        match msg.kind {
            Some(connect_input::Kind::Data(b)) => wr
                .write_all(&b)
                .await
                .map_err(|e| Status::aborted(format!("writing to the connection: {e}")))?,
            Some(connect_input::Kind::Eof(_)) => break,
            Some(connect_input::Kind::Open(_)) => {
                return Err(Status::invalid_argument("`open` may only be the first message"));
            }
            None => {}
        }
    }
    // The peer may still be sending: only our write side ends.
    let _ = wr.shutdown().await;
    Ok(())
}

async fn sandbox_to_host(
    mut rd: OwnedReadHalf,
    tx: &mpsc::Sender<Result<ConnectOutput, Status>>,
) -> Result<(), Status> {
    let gone = || Status::cancelled("the host went away");
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            r = rd.read(&mut buf) => r.map_err(|e| Status::aborted(format!("reading from the connection: {e}")))?,
            () = tx.closed() => return Err(gone()),
        };
        if n == 0 {
            tx.send(output(connect_output::Kind::Eof(true)))
                .await
                .map_err(|_| gone())?;
            return Ok(());
        }
        tx.send(output(connect_output::Kind::Data(buf[..n].to_vec())))
            .await
            .map_err(|_| gone())?;
    }
}
