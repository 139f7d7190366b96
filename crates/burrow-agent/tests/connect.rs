//! `ConnectPort` against the real agent binary (run on the host here, so "the sandbox's
//! loopback" is the host's): bytes both ways, half-close both ways, refused ports, retries
//! while a port is not yet listening, and bad requests.

mod common;

use std::time::Duration;

use burrow_agent_proto::Connection;
use burrow_agent_proto::v1::{
    ConnectInput, ConnectOpen, ConnectOutput, ServiceSpec, SetServicesRequest, connect_input, connect_output,
};
use common::{Agent, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

fn msg(kind: connect_input::Kind) -> ConnectInput {
    ConnectInput { kind: Some(kind) }
}

async fn open(
    conn: &mut Connection,
    port: u32,
    wait_ms: u32,
) -> Result<(mpsc::Sender<ConnectInput>, Streaming<ConnectOutput>), tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(msg(connect_input::Kind::Open(ConnectOpen { port, wait_ms })))
        .await
        .unwrap();
    let mut out = conn
        .client
        .connect_port(ReceiverStream::new(rx))
        .await?
        .into_inner();
    match out.message().await?.and_then(|m| m.kind) {
        Some(connect_output::Kind::Connected(_)) => Ok((tx, out)),
        other => panic!("first message was not `connected`: {other:?}"),
    }
}

/// Reads `data` messages until `eof`; fails if the call ends without one.
async fn read_to_eof(out: &mut Streaming<ConnectOutput>) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        let m = tokio::time::timeout(PATIENCE, out.message())
            .await
            .expect("agent answers in time")
            .expect("call failed")
            .expect("call ended before eof");
        match m.kind {
            Some(connect_output::Kind::Data(b)) => {
                assert!(b.len() <= 64 * 1024, "chunk of {} bytes", b.len());
                got.extend_from_slice(&b);
            }
            Some(connect_output::Kind::Eof(_)) => return got,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn bytes_and_half_closes_travel_both_ways() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // The "app": reads everything until EOF, then answers with its length and what it read,
    // reversed, and closes. It only answers after our half-close arrived.
    let app = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        let mut reply = format!("{}:", all.len()).into_bytes();
        reply.extend(all.iter().rev());
        s.write_all(&reply).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let (tx, mut out) = open(&mut conn, port.into(), 0).await.unwrap();
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    for chunk in payload.chunks(60_000) {
        tx.send(msg(connect_input::Kind::Data(chunk.to_vec())))
            .await
            .unwrap();
    }
    tx.send(msg(connect_input::Kind::Eof(true))).await.unwrap();
    let got = read_to_eof(&mut out).await;
    let mut want = format!("{}:", payload.len()).into_bytes();
    want.extend(payload.iter().rev());
    assert_eq!(got.len(), want.len());
    assert!(got == want, "reply differs");
    // Both directions ended: the call ends OK.
    drop(tx);
    let end = tokio::time::timeout(PATIENCE, out.message()).await.unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    app.await.unwrap();
}

#[tokio::test]
async fn sandbox_side_eof_first_leaves_the_host_side_open() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        // Half-close, then keep reading what the host sends.
        s.shutdown().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        all
    });
    let (tx, mut out) = open(&mut conn, port.into(), 0).await.unwrap();
    assert_eq!(read_to_eof(&mut out).await, b"hello");
    tx.send(msg(connect_input::Kind::Data(b"still here".to_vec())))
        .await
        .unwrap();
    drop(tx); // the end of the input stream is a half-close too
    assert_eq!(app.await.unwrap(), b"still here");
    let end = tokio::time::timeout(PATIENCE, out.message()).await.unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
}

#[tokio::test]
async fn refused_bad_and_late_ports() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    // A port nobody listens on (bound and released).
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = open(&mut conn, free.into(), 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&format!("port {free}")),
        "{}",
        err.message()
    );
    for bad in [0, 65536, 1 << 20] {
        let err = open(&mut conn, bad, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
    }
    // First message must be `open`.
    let (tx, rx) = mpsc::channel(1);
    tx.send(msg(connect_input::Kind::Data(b"x".to_vec())))
        .await
        .unwrap();
    let err = conn
        .client
        .connect_port(ReceiverStream::new(rx))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // wait_ms alone does not make the agent wait: no service is starting on the port.
    let t = std::time::Instant::now();
    let err = open(&mut conn, free.into(), 20_000).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // A service that declares the port and has not opened it yet: the agent keeps trying
    // until the port listens.
    let svc = ServiceSpec {
        name: "web".into(),
        exec: Some(common::start(&["sleep", "1000"])),
        enabled: true,
        ready_port: free.into(),
        ..Default::default()
    };
    conn.client
        .set_services(SetServicesRequest { services: vec![svc] })
        .await
        .unwrap();
    let mut conn2 = conn.clone();
    let call = tokio::spawn(async move { open(&mut conn2, free.into(), 20_000).await.map(|_| ()) });
    let listener = TcpListener::bind(("127.0.0.1", free)).await.unwrap();
    // Accept whatever comes (the supervisor's readiness probe connects too).
    let acceptor = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            kept.push(s);
        }
    });
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the agent connected once the port listened")
        .unwrap()
        .unwrap();
    acceptor.abort();
    conn.client
        .set_services(SetServicesRequest { services: vec![] })
        .await
        .unwrap();
}

#[tokio::test]
async fn cancelling_the_call_closes_the_connection() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, out) = open(&mut conn, port.into(), 0).await.unwrap();
    let (mut s, _) = listener.accept().await.unwrap();
    drop(out);
    drop(tx);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("connection closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}
