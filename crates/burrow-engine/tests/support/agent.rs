//! A blocking test client for the agent of a started sandbox (exec through gRPC).

use std::path::Path;
use std::time::Duration;

use burrow_agent_proto::client::{Connection, connect_unix};
use burrow_agent_proto::v1::{EnvVar, ExecInput, ExecStart, exec_input, exec_output};

pub struct Agent {
    rt: tokio::runtime::Runtime,
    pub conn: Connection,
}

#[derive(Debug, Default)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub signal: i32,
}

impl ExecResult {
    pub fn ok(&self) -> bool {
        self.exit_code == 0 && self.signal == 0
    }
}

impl Agent {
    pub fn connect(sock: &Path) -> Self {
        Self::connect_within(sock, Duration::from_secs(30))
    }

    /// Connects and completes the handshake within `timeout` (a booting VM needs longer).
    pub fn connect_within(sock: &Path, timeout: Duration) -> Self {
        Self::try_connect_within(sock, timeout).unwrap()
    }

    pub fn try_connect_within(
        sock: &Path,
        timeout: Duration,
    ) -> Result<Self, burrow_agent_proto::client::ConnectError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt.block_on(connect_unix(sock, timeout))?;
        Ok(Self { rt, conn })
    }

    /// Runs one future (another RPC) on this client's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Runs `argv` to completion (no stdin), collecting its output.
    pub fn exec(&mut self, argv: &[&str]) -> ExecResult {
        let start = ExecStart {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![EnvVar {
                name: "PATH".into(),
                value: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            }],
            ..Default::default()
        };
        let client = &mut self.conn.client;
        self.rt.block_on(async move {
            // The input stream stays open until the process has exited: the agent takes its
            // end as "the host is gone" and kills the session.
            let (input_tx, input_rx) = tokio::sync::mpsc::channel(1);
            input_tx
                .send(ExecInput {
                    kind: Some(exec_input::Kind::Start(start)),
                })
                .await
                .unwrap();
            let input = tokio_stream::wrappers::ReceiverStream::new(input_rx);
            let mut out = client
                .exec(input)
                .await
                .unwrap_or_else(|e| panic!("exec {argv:?}: {e}"))
                .into_inner();
            let mut res = ExecResult::default();
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            while let Some(msg) = out
                .message()
                .await
                .unwrap_or_else(|e| panic!("exec {argv:?}: {e}"))
            {
                match msg.kind {
                    Some(exec_output::Kind::Stdout(b)) => stdout.extend_from_slice(&b),
                    Some(exec_output::Kind::Stderr(b)) => stderr.extend_from_slice(&b),
                    Some(exec_output::Kind::Exited(e)) => {
                        drop(input_tx);
                        res.exit_code = e.exit_code;
                        res.signal = e.signal;
                        res.stdout = String::from_utf8_lossy(&stdout).into_owned();
                        res.stderr = String::from_utf8_lossy(&stderr).into_owned();
                        return res;
                    }
                    _ => {}
                }
            }
            panic!("exec {argv:?}: stream ended without `exited`");
        })
    }

    pub fn sh(&mut self, script: &str) -> ExecResult {
        self.exec(&["/bin/sh", "-c", script])
    }
}
