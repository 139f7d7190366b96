//! Supervised services: long-running processes the agent keeps alive on the host's behalf.
//!
//! The host owns the definitions and pushes the whole set ([`Supervisor::set`]); this module
//! owns the processes. Each service has one runner task that starts it in its own session
//! (through `spawn`, so user, environment and working directory resolve as for exec), waits
//! for the services it `needs` to be running (and, when they have a readiness port, to
//! accept connections), restarts it per its policy with exponential backoff (100 ms doubling
//! to 30 s, reset after 10 s of uptime), and stops it with TERM, then KILL after a grace.
//!
//! Output (stdout and stderr combined) goes to an in-memory ring of [`LOG_CAPACITY`] bytes
//! per service, trimmed at line boundaries: bounded whatever the service writes, nothing on
//! the sandbox's disk, and lost when the sandbox stops (the definitions are the host's, the
//! logs are only a window). Followers get new output through a broadcast channel; a slow
//! follower loses output (and is told so) rather than slowing the service down.
//!
//! This module never waits for processes itself (the reaper does) and never restarts
//! anything once the sandbox is shutting down.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use burrow_agent_proto::v1::{
    ExecStart, RestartPolicy, ServiceAction, ServiceLogChunk, ServiceRunState, ServiceSpec, ServiceState,
};
use tokio::io::Interest;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::reaper::Reaper;
use crate::shutdown::Shutdown;
use crate::spawn::{self, Spawned};
use crate::sys::{self, ExitStatus};

/// Log bytes kept per service.
pub const LOG_CAPACITY: usize = 1024 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run that lasted this long resets the backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
const MAX_STOP_GRACE: Duration = Duration::from_secs(300);
/// How long KILLed processes get to be reaped before the runner moves on anyway.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a readiness port is probed while a service starts.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
const MAX_SERVICES: usize = 256;
const READ_CHUNK: usize = 64 * 1024;
/// Output chunks buffered per follower before it counts as lagging.
const FOLLOW_BUFFER: usize = 1024;
/// Messages queued per log stream towards the host.
const LOG_QUEUE: usize = 16;
/// How long the output of an ended run may take to drain before its end is recorded.
const OUTPUT_LINGER: Duration = Duration::from_millis(250);
/// How long `set` waits for new services' first start before it answers anyway.
const START_ACK_WAIT: Duration = Duration::from_secs(5);

pub type LogStream = ReceiverStream<Result<ServiceLogChunk, Status>>;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can leave the data inconsistent on a panic; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ----- logs ------------------------------------------------------------------------------

/// The bounded output of one service, kept across redefinitions of the service.
struct Log {
    ring: Mutex<VecDeque<u8>>,
    tx: broadcast::Sender<Arc<[u8]>>,
}

impl Log {
    fn new() -> Self {
        Self {
            ring: Mutex::new(VecDeque::new()),
            tx: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }

    fn append(&self, data: &[u8]) {
        let mut ring = lock(&self.ring);
        ring.extend(data);
        if ring.len() > LOG_CAPACITY {
            let mut cut = ring.len() - LOG_CAPACITY;
            // Drop whole lines: continue to the next newline when one is close.
            if let Some(nl) = ring.range(cut..).take(4096).position(|&b| b == b'\n') {
                cut += nl + 1;
            }
            ring.drain(..cut);
        }
        // Sent under the lock, so a new follower sees each byte exactly once.
        let _ = self.tx.send(Arc::from(data));
    }

    fn line(&self, text: &str) {
        self.append(format!("[burrow] {text}\n").as_bytes());
    }

    /// The last `lines` lines (all when 0) and, atomically with them, a subscription to
    /// what comes next.
    fn tail(&self, lines: u32) -> (Vec<u8>, broadcast::Receiver<Arc<[u8]>>) {
        let ring = lock(&self.ring);
        let (a, b) = ring.as_slices();
        let mut all = Vec::with_capacity(ring.len());
        all.extend_from_slice(a);
        all.extend_from_slice(b);
        let rx = self.tx.subscribe();
        drop(ring);
        (tail_lines(all, lines), rx)
    }
}

/// The last `n` lines of `data` (a final line without newline counts); all when `n == 0`.
fn tail_lines(data: Vec<u8>, n: u32) -> Vec<u8> {
    if n == 0 {
        return data;
    }
    let body = data.strip_suffix(b"\n").unwrap_or(&data);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(n as usize - 1)
        .map_or(0, |(i, _)| i + 1);
    data[start..].to_vec()
}

/// Copies one output fd into the log until EOF (which may come after the process exited,
/// when a descendant keeps the pipe open).
async fn pump(fd: OwnedFd, log: Arc<Log>) {
    let Ok(fd) = sys::async_fd(fd, Interest::READABLE) else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return;
        };
        match guard.try_io(|inner| sys::read_chunk(inner.get_ref().as_fd(), READ_CHUNK)) {
            Ok(Ok(buf)) if buf.is_empty() => return,
            Ok(Ok(buf)) => log.append(&buf),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(_)) => return,
            Err(_would_block) => {}
        }
    }
}

// ----- one service ------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct RunInfo {
    state: ServiceRunState,
    pid: i32,
    /// A readiness port accepted a connection (or the service has none) during this run.
    ready: bool,
    restarts: u32,
    exit: Option<ExitStatus>,
    started_at_ms: i64,
    error: String,
}

enum Cmd {
    Start(oneshot::Sender<()>),
    Stop(oneshot::Sender<()>),
}

struct Service {
    spec: ServiceSpec,
    log: Arc<Log>,
    info: Mutex<RunInfo>,
    /// What the last command asked for (start = true).
    desired: AtomicBool,
    /// Taken (closed) when the service is removed: the runner then stops it and ends.
    cmds: Mutex<Option<mpsc::UnboundedSender<Cmd>>>,
    runner: Mutex<Option<JoinHandle<()>>>,
}

impl Service {
    fn state(&self) -> ServiceState {
        let i = lock(&self.info);
        let (exit_code, signal) = match i.exit {
            Some(ExitStatus::Exited(c)) => (Some(c), 0),
            Some(ExitStatus::Signaled(s)) => (Some(-1), s),
            None => (None, 0),
        };
        ServiceState {
            name: self.spec.name.clone(),
            state: i.state.into(),
            pid: u32::try_from(i.pid).unwrap_or(0),
            restarts: i.restarts,
            exit_code,
            signal,
            started_at_ms: i.started_at_ms,
            error: i.error.clone(),
        }
    }

    fn grace(&self) -> Duration {
        match self.spec.stop_grace_ms {
            0 => DEFAULT_STOP_GRACE,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_STOP_GRACE),
        }
    }

    fn policy(&self) -> RestartPolicy {
        RestartPolicy::try_from(self.spec.restart).unwrap_or(RestartPolicy::Always)
    }

    fn ready_port(&self) -> Option<u16> {
        u16::try_from(self.spec.ready_port).ok().filter(|p| *p != 0)
    }
}

/// The spec without the fields that do not require a restart when they change.
fn definition(spec: &ServiceSpec) -> ServiceSpec {
    ServiceSpec {
        enabled: false,
        ..spec.clone()
    }
}

// ----- the supervisor ---------------------------------------------------------------------

/// All services of the sandbox.
pub struct Supervisor {
    reaper: Arc<Reaper>,
    shutdown: Arc<Shutdown>,
    services: Mutex<BTreeMap<String, Arc<Service>>>,
    /// Serialises redefinitions and commands.
    ops: tokio::sync::Mutex<()>,
    /// Bumped on every state change, for services waiting on the ones they need.
    changed: watch::Sender<u64>,
}

impl Supervisor {
    pub fn new(reaper: Arc<Reaper>, shutdown: Arc<Shutdown>) -> Arc<Self> {
        Arc::new(Self {
            reaper,
            shutdown,
            services: Mutex::new(BTreeMap::new()),
            ops: tokio::sync::Mutex::new(()),
            changed: watch::channel(0).0,
        })
    }

    fn get(&self, name: &str) -> Result<Arc<Service>, Status> {
        lock(&self.services)
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("service '{name}' does not exist")))
    }

    /// States of all services, or of the one named.
    pub fn status(&self, name: &str) -> Result<Vec<ServiceState>, Status> {
        if name.is_empty() {
            Ok(lock(&self.services).values().map(|s| s.state()).collect())
        } else {
            Ok(vec![self.get(name)?.state()])
        }
    }

    /// Whether a service that declares `port` as its readiness port is on its way to accept
    /// connections there: waiting for the services it needs, backing off before a restart, or
    /// running for less than `young` and not accepting yet. (`ConnectPort` waits for those.)
    pub fn starting_on(&self, port: u16, young: Duration) -> bool {
        let young_ms = i64::try_from(young.as_millis()).unwrap_or(i64::MAX);
        lock(&self.services).values().any(|s| {
            if s.ready_port() != Some(port) || !s.desired.load(Ordering::SeqCst) {
                return false;
            }
            let i = lock(&s.info);
            match i.state {
                ServiceRunState::Waiting | ServiceRunState::Backoff => true,
                ServiceRunState::Running => !i.ready && now_ms().saturating_sub(i.started_at_ms) < young_ms,
                _ => false,
            }
        })
    }

    /// Replaces the set of services (see the protocol's `SetServices`).
    pub async fn set(self: &Arc<Self>, specs: Vec<ServiceSpec>) -> Result<Vec<ServiceState>, Status> {
        if self.shutdown.is_started() {
            return Err(Status::unavailable("the sandbox is shutting down"));
        }
        validate(&specs)?;
        let _op = self.ops.lock().await;
        let old = lock(&self.services).clone();
        let wanted: BTreeMap<&str, &ServiceSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();

        // Stop what goes away or changes first (a new definition may need the same port).
        let mut stopping = Vec::new();
        let mut logs = BTreeMap::new();
        for (name, svc) in &old {
            let same = wanted
                .get(name.as_str())
                .is_some_and(|s| definition(s) == definition(&svc.spec));
            if !same {
                lock(&self.services).remove(name);
                logs.insert(name.clone(), Arc::clone(&svc.log));
                stopping.push(Arc::clone(svc));
            }
        }
        for svc in stopping {
            self.retire(svc).await;
        }

        let mut started = Vec::new();
        for spec in specs {
            let existing = lock(&self.services).get(&spec.name).cloned();
            match existing {
                Some(svc) => {
                    // Unchanged definition: apply only whether it should run.
                    if svc.desired.load(Ordering::SeqCst) != spec.enabled {
                        let _ = self.command(&svc, spec.enabled).await;
                    }
                }
                None => {
                    let log = logs.remove(&spec.name).unwrap_or_else(|| Arc::new(Log::new()));
                    started.push(self.launch(spec, log));
                }
            }
        }
        self.notify();
        // Answer once new services were started (or wait for what they need, or failed),
        // so the reply shows what happened. Bounded: a stuck start must not hold the host.
        let _ = tokio::time::timeout(START_ACK_WAIT, futures_join(started)).await;
        self.status("")
    }

    /// Starts or stops one service; answers once the action took effect.
    pub async fn control(&self, name: &str, action: ServiceAction) -> Result<ServiceState, Status> {
        if self.shutdown.is_started() {
            return Err(Status::unavailable("the sandbox is shutting down"));
        }
        let _op = self.ops.lock().await;
        let svc = self.get(name)?;
        self.command(&svc, action == ServiceAction::Start).await?;
        Ok(svc.state())
    }

    async fn command(&self, svc: &Service, start: bool) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        svc.desired.store(start, Ordering::SeqCst);
        let cmd = if start { Cmd::Start(tx) } else { Cmd::Stop(tx) };
        let sent = lock(&svc.cmds).as_ref().is_some_and(|tx| tx.send(cmd).is_ok());
        if !sent {
            return Err(Status::unavailable(format!(
                "service '{}' is being removed",
                svc.spec.name
            )));
        }
        let limit = svc.grace() + KILL_WAIT + Duration::from_secs(5);
        match tokio::time::timeout(limit, rx).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "service '{}' did not {} in time",
                svc.spec.name,
                if start { "start" } else { "stop" }
            ))),
        }
    }

    /// A service's log: the tail, then (with `follow`) new output until the host cancels.
    pub fn logs(&self, name: &str, tail: u32, follow: bool) -> Result<LogStream, Status> {
        let svc = self.get(name)?;
        let (head, mut rx) = svc.log.tail(tail);
        // Only the log is kept: the stream must end when the service is removed.
        drop(svc);
        let (tx, out) = mpsc::channel(LOG_QUEUE);
        tokio::spawn(async move {
            for chunk in head.chunks(READ_CHUNK) {
                if tx
                    .send(Ok(ServiceLogChunk { data: chunk.to_vec() }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                let data = tokio::select! {
                    r = rx.recv() => match r {
                        Ok(data) => data.to_vec(),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            format!("[burrow] {n} output chunks skipped (reader too slow)\n").into_bytes()
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    () = tx.closed() => return,
                };
                if tx.send(Ok(ServiceLogChunk { data })).await.is_err() {
                    return;
                }
            }
        });
        Ok(ReceiverStream::new(out))
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn set_info(&self, svc: &Service, f: impl FnOnce(&mut RunInfo)) {
        f(&mut lock(&svc.info));
        self.notify();
    }

    /// Starts the runner of a new service; the receiver resolves after its first start
    /// attempt (at once when it is not enabled).
    fn launch(self: &Arc<Self>, spec: ServiceSpec, log: Arc<Log>) -> oneshot::Receiver<()> {
        let (ack_tx, ack_rx) = oneshot::channel();
        let (tx, rx) = mpsc::unbounded_channel();
        let enabled = spec.enabled;
        let svc = Arc::new(Service {
            spec,
            log,
            info: Mutex::new(RunInfo::default()),
            desired: AtomicBool::new(enabled),
            cmds: Mutex::new(Some(tx)),
            runner: Mutex::new(None),
        });
        lock(&self.services).insert(svc.spec.name.clone(), Arc::clone(&svc));
        let handle = tokio::spawn(Arc::clone(self).run(Arc::clone(&svc), rx, enabled, ack_tx));
        *lock(&svc.runner) = Some(handle);
        ack_rx
    }

    /// Stops a service that is no longer in the set and waits for its runner to end.
    async fn retire(&self, svc: Arc<Service>) {
        let handle = lock(&svc.runner).take();
        // Closing the command channel tells the runner to stop the service and end.
        drop(lock(&svc.cmds).take());
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    /// Whether every needed service runs (and is ready, when it has a readiness port).
    fn needs_met(&self, svc: &Service) -> bool {
        let services = lock(&self.services);
        svc.spec.needs.iter().all(|n| {
            services.get(n).is_some_and(|s| {
                let i = lock(&s.info);
                i.state == ServiceRunState::Running && i.ready
            })
        })
    }

    fn start_process(&self, svc: &Service) -> Result<Spawned, String> {
        let exec = svc.spec.exec.clone().unwrap_or_default();
        let start = ExecStart {
            tty: false,
            stdin: false,
            ..exec
        };
        let spec = spawn::prepare(start).map_err(|e| e.into_status().message().to_owned())?;
        spawn::spawn(&self.reaper, spec).map_err(|e| e.into_status().message().to_owned())
    }

    /// The runner of one service: everything that happens to its processes.
    async fn run(
        self: Arc<Self>,
        svc: Arc<Service>,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        enabled: bool,
        first: oneshot::Sender<()>,
    ) {
        let mut want = enabled;
        let mut acks: Vec<oneshot::Sender<()>> = vec![first];
        let mut backoff = BACKOFF_MIN;
        let ack = |acks: &mut Vec<oneshot::Sender<()>>| {
            for a in acks.drain(..) {
                let _ = a.send(());
            }
        };
        'outer: loop {
            if !want || self.shutdown.is_started() {
                ack(&mut acks);
                match cmds.recv().await {
                    None => return,
                    Some(Cmd::Start(a)) => {
                        acks.push(a);
                        want = true;
                        backoff = BACKOFF_MIN;
                        self.set_info(&svc, |i| i.restarts = 0);
                    }
                    Some(Cmd::Stop(a)) => {
                        self.set_info(&svc, |i| i.state = ServiceRunState::Stopped);
                        let _ = a.send(());
                    }
                }
                continue;
            }

            // Dependencies first.
            if !self.needs_met(&svc) {
                self.set_info(&svc, |i| {
                    i.state = ServiceRunState::Waiting;
                    i.pid = 0;
                });
                ack(&mut acks);
                let mut changed = self.changed.subscribe();
                while !self.needs_met(&svc) {
                    tokio::select! {
                        r = changed.changed() => if r.is_err() { return },
                        cmd = cmds.recv() => match cmd {
                            None => return,
                            Some(Cmd::Start(a)) => { let _ = a.send(()); }
                            Some(Cmd::Stop(a)) => {
                                self.set_info(&svc, |i| i.state = ServiceRunState::Stopped);
                                let _ = a.send(());
                                want = false;
                                continue 'outer;
                            }
                        },
                    }
                }
            }
            if self.shutdown.is_started() {
                continue;
            }

            let proc = match self.start_process(&svc) {
                Ok(p) => p,
                Err(e) => {
                    svc.log.line(&format!("cannot start: {e}"));
                    self.set_info(&svc, |i| {
                        i.state = ServiceRunState::Failed;
                        i.pid = 0;
                        i.error = e;
                    });
                    want = false;
                    continue;
                }
            };
            let Spawned {
                pid,
                mut exit,
                stdout,
                stderr,
                ..
            } = proc;
            let mut pumps = vec![tokio::spawn(pump(stdout, Arc::clone(&svc.log)))];
            if let Some(stderr) = stderr {
                pumps.push(tokio::spawn(pump(stderr, Arc::clone(&svc.log))));
            }
            let port = svc.ready_port();
            self.set_info(&svc, |i| {
                i.state = ServiceRunState::Running;
                i.pid = pid;
                i.ready = port.is_none();
                i.started_at_ms = now_ms();
                i.error.clear();
            });
            ack(&mut acks);
            let started = Instant::now();

            let mut probing = port.is_some();
            let status = loop {
                tokio::select! {
                    biased;
                    status = &mut exit => break status.unwrap_or(ExitStatus::Signaled(libc::SIGKILL)),
                    cmd = cmds.recv() => match cmd {
                        None => {
                            let status = stop_group(pid, &mut exit, svc.grace()).await;
                            self.finish(&svc, pid, status, ServiceRunState::Stopped);
                            return;
                        }
                        Some(Cmd::Start(a)) => { let _ = a.send(()); }
                        Some(Cmd::Stop(a)) => {
                            let status = stop_group(pid, &mut exit, svc.grace()).await;
                            self.finish(&svc, pid, status, ServiceRunState::Stopped);
                            let _ = a.send(());
                            want = false;
                            continue 'outer;
                        }
                    },
                    () = probe(port.unwrap_or(0)), if probing => {
                        probing = false;
                        self.set_info(&svc, |i| i.ready = true);
                    }
                }
            };

            // What the run wrote comes before what we say about its end (bounded: a
            // descendant may keep the pipes open; its output then keeps coming after).
            let _ = tokio::time::timeout(OUTPUT_LINGER, async {
                for p in &mut pumps {
                    let _ = p.await;
                }
            })
            .await;
            let restart = !self.shutdown.is_started()
                && match svc.policy() {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => status != ExitStatus::Exited(0),
                    RestartPolicy::Never => false,
                };
            if !restart {
                svc.log.line(&format!("{}; not restarting", describe(status)));
                self.finish(&svc, pid, Some(status), ServiceRunState::Exited);
                want = false;
                continue;
            }
            if started.elapsed() >= BACKOFF_RESET_AFTER {
                backoff = BACKOFF_MIN;
            }
            svc.log.line(&format!(
                "{}; restarting in {:.1}s",
                describe(status),
                backoff.as_secs_f64()
            ));
            self.finish(&svc, pid, Some(status), ServiceRunState::Backoff);
            let wait = tokio::time::sleep(backoff);
            tokio::pin!(wait);
            tokio::select! {
                () = &mut wait => {}
                cmd = cmds.recv() => match cmd {
                    None => {
                        self.set_info(&svc, |i| i.state = ServiceRunState::Stopped);
                        return;
                    }
                    // An explicit start skips the rest of the wait.
                    Some(Cmd::Start(a)) => acks.push(a),
                    Some(Cmd::Stop(a)) => {
                        self.set_info(&svc, |i| i.state = ServiceRunState::Stopped);
                        let _ = a.send(());
                        want = false;
                        continue 'outer;
                    }
                },
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            self.set_info(&svc, |i| i.restarts = i.restarts.saturating_add(1));
        }
    }

    /// Records the end of a run and cleans up what it left in its process group.
    fn finish(&self, svc: &Service, pid: i32, status: Option<ExitStatus>, state: ServiceRunState) {
        if sys::group_alive(pid) {
            // Leftover descendants of an ended run would hold its ports and files.
            let _ = sys::kill_group(pid, libc::SIGKILL);
        }
        self.reaper.forget_group_if_empty(pid);
        self.set_info(svc, |i| {
            i.state = state;
            i.pid = 0;
            i.ready = false;
            if status.is_some() {
                i.exit = status;
            }
        });
    }
}

/// Waits for every receiver (a sender dropped counts as done).
async fn futures_join(rxs: Vec<oneshot::Receiver<()>>) {
    for rx in rxs {
        let _ = rx.await;
    }
}

fn describe(status: ExitStatus) -> String {
    match status {
        ExitStatus::Exited(c) => format!("exited with code {c}"),
        ExitStatus::Signaled(s) => format!("killed by signal {s}"),
    }
}

/// TERM to the process group, KILL after `grace`; the main process's status when reaped.
async fn stop_group(
    pid: i32,
    exit: &mut oneshot::Receiver<ExitStatus>,
    grace: Duration,
) -> Option<ExitStatus> {
    let _ = sys::kill_group(pid, libc::SIGTERM);
    if let Ok(status) = tokio::time::timeout(grace, &mut *exit).await {
        return status.ok();
    }
    let _ = sys::kill_group(pid, libc::SIGKILL);
    tokio::time::timeout(KILL_WAIT, exit)
        .await
        .ok()
        .and_then(Result::ok)
}

/// Resolves once something accepts TCP connections on `port` on the loopback address.
async fn probe(port: u16) {
    loop {
        for addr in [
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ] {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Refuses sets the supervisor cannot run: bad or duplicate names, empty argv, unknown or
/// self-referencing `needs`. (Cycles of several services only keep them waiting; the
/// host refuses those.)
fn validate(specs: &[ServiceSpec]) -> Result<(), Status> {
    if specs.len() > MAX_SERVICES {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_SERVICES} services"
        )));
    }
    let mut names = HashSet::new();
    for s in specs {
        let ok = !s.name.is_empty()
            && s.name.len() <= 63
            && s.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(Status::invalid_argument(format!(
                "invalid service name '{}'",
                s.name.chars().take(80).collect::<String>()
            )));
        }
        if !names.insert(s.name.as_str()) {
            return Err(Status::invalid_argument(format!(
                "service '{}' is defined twice",
                s.name
            )));
        }
        if s.exec.as_ref().is_none_or(|e| e.argv.is_empty()) {
            return Err(Status::invalid_argument(format!(
                "service '{}' has no command",
                s.name
            )));
        }
    }
    for s in specs {
        for n in &s.needs {
            if n == &s.name || !names.contains(n.as_str()) {
                return Err(Status::invalid_argument(format!(
                    "service '{}' needs '{n}', which is not another defined service",
                    s.name
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_counts_lines_from_the_end() {
        let d = b"a\nb\nc\n".to_vec();
        assert_eq!(tail_lines(d.clone(), 0), b"a\nb\nc\n");
        assert_eq!(tail_lines(d.clone(), 1), b"c\n");
        assert_eq!(tail_lines(d.clone(), 2), b"b\nc\n");
        assert_eq!(tail_lines(d.clone(), 9), b"a\nb\nc\n");
        assert_eq!(tail_lines(b"a\nb".to_vec(), 1), b"b");
        assert_eq!(tail_lines(Vec::new(), 3), b"");
    }

    #[test]
    fn log_stays_bounded_and_cuts_at_lines() {
        let log = Log::new();
        let line = [b'x'; 99];
        for _ in 0..30_000 {
            log.append(&line);
            log.append(b"\n");
        }
        let (all, _) = log.tail(0);
        assert!(all.len() <= LOG_CAPACITY, "{}", all.len());
        assert!(all.len() > LOG_CAPACITY - 200);
        assert_eq!(all.len() % 100, 0, "starts at a line boundary");
    }

    #[test]
    fn validation() {
        let spec = |name: &str, needs: &[&str]| ServiceSpec {
            name: name.into(),
            exec: Some(ExecStart {
                argv: vec!["true".into()],
                ..Default::default()
            }),
            needs: needs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(validate(&[spec("a", &[]), spec("b", &["a"])]).is_ok());
        assert!(validate(&[spec("a", &["a"])]).is_err());
        assert!(validate(&[spec("a", &["x"])]).is_err());
        assert!(validate(&[spec("a", &[]), spec("a", &[])]).is_err());
        assert!(validate(&[spec("A", &[])]).is_err());
        let mut empty = spec("a", &[]);
        empty.exec = None;
        assert!(validate(&[empty]).is_err());
    }
}
