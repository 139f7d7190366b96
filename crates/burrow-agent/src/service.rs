//! The gRPC face of the agent: implements the `Agent` service by parsing each call and
//! handing it to the module that owns the behaviour (spawn, session, shutdown).
//!
//! No process logic lives here; it only translates between the wire and the agent's core.

use std::sync::Arc;
use std::time::Duration;

use burrow_agent_proto::v1::{
    ExecInput, ExecOutput, HelloReply, HelloRequest, ShutdownReply, ShutdownRequest, exec_input, exec_output,
};
use burrow_agent_proto::v1::{
    GrowFsReply, GrowFsRequest, SetClockReply, SetClockRequest, SyncFsReply, SyncFsRequest,
};
use burrow_agent_proto::v1::{KillSessionReply, KillSessionRequest, ListSessionsReply, ListSessionsRequest};
use burrow_agent_proto::v1::{
    ListDirRequest, ReadArchiveRequest, ReadFileRequest, RemoveReply, RemoveRequest, RenameReply,
    RenameRequest, WriteArchiveInput, WriteArchiveReply, WriteFileInput, WriteFileReply,
};
use burrow_agent_proto::v1::{QuiesceReply, QuiesceRequest, ReexecReply, ReexecRequest};
use burrow_agent_proto::{Agent, PROTOCOL_VERSION};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::reaper::Reaper;
use crate::sessions::{Attach, Sessions};
use crate::shutdown::{DEFAULT_GRACE, Shutdown};
use crate::{files, spawn};

/// The agent's service state, shared by all connections.
pub struct AgentService {
    reaper: Arc<Reaper>,
    shutdown: Arc<Shutdown>,
    services: Arc<crate::supervisor::Supervisor>,
    sessions: Arc<Sessions>,
}

impl AgentService {
    pub fn new(reaper: Arc<Reaper>, shutdown: Arc<Shutdown>) -> Self {
        let services = crate::supervisor::Supervisor::new(Arc::clone(&reaper), Arc::clone(&shutdown));
        Self {
            reaper,
            shutdown,
            services,
            sessions: Sessions::new(),
        }
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
        let argv = start.argv.clone();
        let detach_timeout = Duration::from_millis(start.detach_timeout_ms);
        let spec = spawn::prepare(start).map_err(spawn::ExecError::into_status)?;
        let proc = spawn::spawn(&self.reaper, spec).map_err(spawn::ExecError::into_status)?;
        Ok(Response::new(self.sessions.start(
            proc,
            argv,
            detach_timeout,
            input,
            Arc::clone(&self.reaper),
        )))
    }

    async fn list_sessions(
        &self,
        _request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsReply>, Status> {
        Ok(Response::new(ListSessionsReply {
            sessions: self.sessions.list(),
        }))
    }

    type AttachStream = ReceiverStream<Result<ExecOutput, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<ExecInput>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut input = request.into_inner();
        let id = match input.message().await? {
            Some(ExecInput {
                kind: Some(exec_input::Kind::Attach(a)),
            }) => a.session_id,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first attach message must be `attach`",
                ));
            }
            None => return Err(Status::invalid_argument("attach stream ended before `attach`")),
        };
        match self.sessions.attach(&id, input)? {
            Attach::Live(stream) => Ok(Response::new(stream)),
            Attach::Finished(exited) => {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let _ = tx.try_send(Ok(ExecOutput {
                    kind: Some(exec_output::Kind::Exited(exited)),
                }));
                Ok(Response::new(ReceiverStream::new(rx)))
            }
        }
    }

    async fn kill_session(
        &self,
        request: Request<KillSessionRequest>,
    ) -> Result<Response<KillSessionReply>, Status> {
        let r = request.into_inner();
        let signal = if r.signal == 0 { libc::SIGKILL } else { r.signal };
        if !crate::sys::valid_signal(signal) {
            return Err(Status::invalid_argument(format!("invalid signal {}", r.signal)));
        }
        self.sessions.kill(&r.session_id, signal).await?;
        Ok(Response::new(KillSessionReply {}))
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

    async fn set_services(
        &self,
        request: Request<burrow_agent_proto::v1::SetServicesRequest>,
    ) -> Result<Response<burrow_agent_proto::v1::SetServicesReply>, Status> {
        let services = self.services.set(request.into_inner().services).await?;
        Ok(Response::new(burrow_agent_proto::v1::SetServicesReply {
            services,
        }))
    }

    async fn control_service(
        &self,
        request: Request<burrow_agent_proto::v1::ControlServiceRequest>,
    ) -> Result<Response<burrow_agent_proto::v1::ServiceState>, Status> {
        let r = request.into_inner();
        let action = burrow_agent_proto::v1::ServiceAction::try_from(r.action)
            .map_err(|_| Status::invalid_argument(format!("unknown service action {}", r.action)))?;
        Ok(Response::new(self.services.control(&r.name, action).await?))
    }

    async fn service_status(
        &self,
        request: Request<burrow_agent_proto::v1::ServiceStatusRequest>,
    ) -> Result<Response<burrow_agent_proto::v1::ServiceStatusReply>, Status> {
        let services = self.services.status(&request.into_inner().name)?;
        Ok(Response::new(burrow_agent_proto::v1::ServiceStatusReply {
            services,
        }))
    }

    type ServiceLogsStream = crate::supervisor::LogStream;

    async fn service_logs(
        &self,
        request: Request<burrow_agent_proto::v1::ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        let r = request.into_inner();
        self.services
            .logs(&r.name, r.tail_lines, r.follow)
            .map(Response::new)
    }

    type ConnectPortStream = crate::connect::ConnectStream;

    async fn connect_port(
        &self,
        request: Request<Streaming<burrow_agent_proto::v1::ConnectInput>>,
    ) -> Result<Response<Self::ConnectPortStream>, Status> {
        if self.shutdown.is_started() {
            return Err(Status::unavailable("the sandbox is shutting down"));
        }
        crate::connect::connect(request.into_inner(), &self.services)
            .await
            .map(Response::new)
    }

    async fn sync_fs(&self, _: Request<SyncFsRequest>) -> Result<Response<SyncFsReply>, Status> {
        tokio::task::spawn_blocking(crate::sys::sync)
            .await
            .map_err(|e| Status::internal(format!("sync: {e}")))?;
        Ok(Response::new(SyncFsReply {}))
    }

    async fn grow_fs(&self, request: Request<GrowFsRequest>) -> Result<Response<GrowFsReply>, Status> {
        let min = request.into_inner().min_device_bytes;
        let Some(device) = crate::guest::root_device() else {
            return Err(Status::failed_precondition(
                "this sandbox's root filesystem belongs to the host (not a VM)",
            ));
        };
        let size_bytes = tokio::task::spawn_blocking(move || crate::guest::grow_root_online(&device, min))
            .await
            .map_err(|e| Status::internal(format!("growing /: {e}")))?
            .map_err(|e| Status::internal(format!("growing /: {e}")))?;
        Ok(Response::new(GrowFsReply { size_bytes }))
    }

    async fn set_clock(&self, request: Request<SetClockRequest>) -> Result<Response<SetClockReply>, Status> {
        use nix::time::{ClockId, clock_gettime, clock_settime};
        let req = request.into_inner();
        let want = req.unix_nanos;
        if !req.hostname.is_empty() {
            if req.hostname.len() > 64
                || !req
                    .hostname
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(Status::invalid_argument("bad hostname"));
            }
            nix::unistd::sethostname(&req.hostname)
                .map_err(|e| Status::internal(format!("sethostname: {e}")))?;
            crate::guest::rename_etc_files(&req.hostname)
                .map_err(|e| Status::internal(format!("rewriting /etc/hostname and /etc/hosts: {e}")))?;
        }
        if !req.entropy.is_empty() {
            crate::sys::reseed_random(&req.entropy[..req.entropy.len().min(64)])
                .map_err(|e| Status::internal(format!("reseeding the RNG: {e}")))?;
            let id: String = req.entropy.iter().take(16).map(|b| format!("{b:02x}")).collect();
            if std::path::Path::new("/etc/machine-id").exists() && id.len() == 32 {
                let _ = std::fs::write("/etc/machine-id", format!("{id}\n"));
            }
        }
        let ts =
            nix::sys::time::TimeSpec::new(want.div_euclid(1_000_000_000), want.rem_euclid(1_000_000_000));
        let before = clock_gettime(ClockId::CLOCK_REALTIME).map_err(|e| Status::internal(e.to_string()))?;
        let skew = (before.tv_sec() as i64 * 1_000_000_000 + before.tv_nsec() as i64) - want;
        clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(|e| match e {
            nix::Error::EPERM => Status::permission_denied("this sandbox may not set the clock"),
            e => Status::internal(format!("setting the clock: {e}")),
        })?;
        Ok(Response::new(SetClockReply { skew_nanos: skew }))
    }

    async fn quiesce(&self, _: Request<QuiesceRequest>) -> Result<Response<QuiesceReply>, Status> {
        let all_gone = self.shutdown.quiesce().await;
        Ok(Response::new(QuiesceReply { all_gone }))
    }

    async fn reexec(&self, request: Request<ReexecRequest>) -> Result<Response<ReexecReply>, Status> {
        if !self.shutdown.is_quiesced() {
            return Err(Status::failed_precondition(
                "the agent re-executes only after a quiesce (every process ended)",
            ));
        }
        if std::process::id() != 1 || !crate::sys::serves_inherited_socket() {
            return Err(Status::failed_precondition(
                "only a container's agent (PID 1 of its sandbox) re-executes itself",
            ));
        }
        let hostname = request.into_inner().hostname;
        let err = crate::sys::reexec(&hostname);
        Err(Status::internal(format!("re-executing the agent: {err}")))
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
