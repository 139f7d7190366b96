//! The gRPC face of the agent: implements the `Agent` service by parsing each call and
//! handing it to the module that owns the behaviour (spawn, session, shutdown).
//!
//! No process logic lives here; it only translates between the wire and the agent's core.

use std::sync::Arc;
use std::time::Duration;

use burrow_agent_proto::v1::{
    ExecInput, ExecOutput, HelloReply, HelloRequest, ShutdownReply, ShutdownRequest, Started, exec_input,
    exec_output,
};
use burrow_agent_proto::v1::{
    ListDirRequest, ReadArchiveRequest, ReadFileRequest, RemoveReply, RemoveRequest, RenameReply,
    RenameRequest, WriteArchiveInput, WriteArchiveReply, WriteFileInput, WriteFileReply,
};
use burrow_agent_proto::{Agent, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::reaper::Reaper;
use crate::shutdown::{DEFAULT_GRACE, Shutdown};
use crate::{files, session, spawn};

/// The agent's service state, shared by all connections.
pub struct AgentService {
    reaper: Arc<Reaper>,
    shutdown: Arc<Shutdown>,
}

impl AgentService {
    pub fn new(reaper: Arc<Reaper>, shutdown: Arc<Shutdown>) -> Self {
        Self { reaper, shutdown }
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn hello(&self, _request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            protocol_version: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
        }))
    }

    type ExecStream = ReceiverStream<Result<ExecOutput, Status>>;

    async fn exec(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        if self.shutdown.is_started() {
            return Err(Status::unavailable("the sandbox is shutting down"));
        }
        let mut input = request.into_inner();
        let start = match input.message().await? {
            Some(ExecInput {
                kind: Some(exec_input::Kind::Start(start)),
            }) => start,
            Some(_) => return Err(Status::invalid_argument("the first exec message must be `start`")),
            None => return Err(Status::invalid_argument("exec stream ended before `start`")),
        };
        let spec = spawn::prepare(start).map_err(spawn::ExecError::into_status)?;
        let proc = spawn::spawn(&self.reaper, spec).map_err(spawn::ExecError::into_status)?;

        let (tx, rx) = mpsc::channel(session::OUTPUT_QUEUE);
        let started = ExecOutput {
            kind: Some(exec_output::Kind::Started(Started {
                pid: u32::try_from(proc.pid).unwrap_or(0),
            })),
        };
        // The channel is new and empty, so `started` is queued first, before any output.
        tx.try_send(Ok(started))
            .map_err(|_| Status::internal("exec output queue unavailable"))?;
        tokio::spawn(session::run(proc, input, tx, Arc::clone(&self.reaper)));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ReadFileStream = files::ChunkStream;

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<Self::ReadFileStream>, Status> {
        files::read_file(request.into_inner().path)
            .await
            .map(Response::new)
    }

    async fn write_file(
        &self,
        request: Request<Streaming<WriteFileInput>>,
    ) -> Result<Response<WriteFileReply>, Status> {
        let size = files::write_file(request.into_inner()).await?;
        Ok(Response::new(WriteFileReply { size }))
    }

    type ListDirStream = files::ListStream;

    async fn list_dir(
        &self,
        request: Request<ListDirRequest>,
    ) -> Result<Response<Self::ListDirStream>, Status> {
        files::list_dir(request.into_inner().path)
            .await
            .map(Response::new)
    }

    async fn remove(&self, request: Request<RemoveRequest>) -> Result<Response<RemoveReply>, Status> {
        let r = request.into_inner();
        files::remove(r.path, r.recursive).await?;
        Ok(Response::new(RemoveReply {}))
    }

    async fn rename(&self, request: Request<RenameRequest>) -> Result<Response<RenameReply>, Status> {
        let r = request.into_inner();
        files::rename(r.from, r.to).await?;
        Ok(Response::new(RenameReply {}))
    }

    type ReadArchiveStream = files::ChunkStream;

    async fn read_archive(
        &self,
        request: Request<ReadArchiveRequest>,
    ) -> Result<Response<Self::ReadArchiveStream>, Status> {
        files::read_archive(request.into_inner().path)
            .await
            .map(Response::new)
    }

    async fn write_archive(
        &self,
        request: Request<Streaming<WriteArchiveInput>>,
    ) -> Result<Response<WriteArchiveReply>, Status> {
        let entries = files::write_archive(request.into_inner()).await?;
        Ok(Response::new(WriteArchiveReply { entries }))
    }

    async fn shutdown(&self, request: Request<ShutdownRequest>) -> Result<Response<ShutdownReply>, Status> {
        let grace = match request.into_inner().grace_ms {
            0 => DEFAULT_GRACE,
            ms => Duration::from_millis(u64::from(ms)),
        };
        self.shutdown.run(grace).await;
        Ok(Response::new(ShutdownReply {}))
    }
}
