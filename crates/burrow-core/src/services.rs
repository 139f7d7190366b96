//! Services on the host side: definitions live here (the `services` table), supervision
//! lives in the sandbox's agent. This module validates definitions (names, commands, the
//! `needs` graph), stores them, pushes the sandbox's whole set to its agent whenever it
//! changes and whenever the sandbox boots, and merges stored definitions with the states
//! the agent reports.
//!
//! It never runs or watches a process itself, and never trusts the agent's answers beyond
//! what it validates: unknown names are dropped, texts are truncated, calls are bounded in
//! time (log streams that follow are bounded by the client's interest instead).

use std::collections::HashMap;
use std::time::Duration;

use burrow_agent_proto::v1::{
    ControlServiceRequest, EnvVar, ExecStart, RestartPolicy as WirePolicy, ServiceAction, ServiceLogsRequest,
    ServiceRunState, ServiceSpec, ServiceState, ServiceStatusRequest, SetServicesRequest,
};
use burrow_api::{PutService, RestartPolicy, SandboxStatus, Service, ServiceList, ServiceStatus};
use futures::StreamExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::{Code, Status};

use crate::error::chain;
use crate::files::FileStream;
use crate::store::{SandboxRecord, ServiceRecord};
use crate::time_util::now_rfc3339;
use crate::{CoreError, Manager};

type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Most services one sandbox may define.
pub const MAX_SERVICES: usize = 64;
/// Bound of calls that define, start, stop or list services (a stop may take its grace).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest text taken from the agent.
const MAX_AGENT_TEXT: usize = 512;
/// Most bytes of a non-following log read (the agent keeps 1 MiB per service).
const MAX_LOG_BYTES: usize = 4 << 20;

/// Checks a service name: a DNS label, like sandbox names.
pub fn check_service_name(svc: &str) -> Result<()> {
    burrow_api::SandboxName::parse(svc)
        .map(|_| ())
        .map_err(|e| CoreError::Invalid(format!("invalid service name: {e}")))
}

fn check_spec(svc: &str, s: &PutService) -> Result<()> {
    let invalid = |m: String| Err(CoreError::Invalid(m));
    if s.cmd.is_empty() || s.cmd[0].is_empty() {
        return invalid(format!(
            "service '{svc}': cmd must name a program (argv is empty)"
        ));
    }
    if s.cmd.iter().any(|a| a.contains('\0')) {
        return invalid(format!(
            "service '{svc}': cmd arguments must not contain NUL bytes"
        ));
    }
    for (k, v) in &s.env {
        let ok = !k.is_empty()
            && k.len() <= 256
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok || v.contains('\0') {
            return invalid(format!(
                "service '{svc}': environment variable '{}' is invalid: names use letters, digits and '_' \
                 (not starting with a digit), values no NUL bytes",
                k.chars().take(64).collect::<String>()
            ));
        }
    }
    if let Some(cwd) = &s.cwd
        && (!cwd.starts_with('/') || cwd.contains('\0') || cwd.len() > crate::files::MAX_PATH)
    {
        return invalid(format!("service '{svc}': cwd must be an absolute path"));
    }
    if let Some(user) = &s.user
        && (user.contains('\0') || user.len() > 256)
    {
        return invalid(format!("service '{svc}': user is invalid"));
    }
    if s.http_port == Some(0) {
        return invalid(format!("service '{svc}': http_port must be between 1 and 65535"));
    }
    for n in &s.needs {
        check_service_name(n).map_err(|_| {
            CoreError::Invalid(format!(
                "service '{svc}' needs '{n}', which is not a valid service name"
            ))
        })?;
    }
    Ok(())
}

/// Checks the `needs` of a whole set: every name defined, no cycles.
fn check_graph(defs: &[ServiceRecord]) -> Result<()> {
    let by_name: HashMap<&str, &ServiceRecord> = defs.iter().map(|d| (d.name.as_str(), d)).collect();
    for d in defs {
        for n in &d.spec.needs {
            if !by_name.contains_key(n.as_str()) {
                return Err(CoreError::Invalid(format!(
                    "service '{}' needs '{n}', which is not defined in this sandbox",
                    d.name
                )));
            }
        }
    }
    // Depth-first search; `path` is the current chain, for naming the cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        by_name: &HashMap<&'a str, &'a ServiceRecord>,
        marks: &mut HashMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
    ) -> Result<()> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let start = path.iter().position(|p| *p == name).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|p| format!("'{p}'")).collect();
                cycle.push(format!("'{name}'"));
                return Err(CoreError::Invalid(format!(
                    "services form a dependency cycle in needs: {}",
                    cycle.join(" -> ")
                )));
            }
            None => {}
        }
        marks.insert(name, Mark::Visiting);
        path.push(name);
        for n in &by_name[name].spec.needs {
            visit(n.as_str(), by_name, marks, path)?;
        }
        path.pop();
        marks.insert(name, Mark::Done);
        Ok(())
    }
    let mut marks = HashMap::new();
    for d in defs {
        visit(d.name.as_str(), &by_name, &mut marks, &mut Vec::new())?;
    }
    Ok(())
}

fn text(s: &str) -> String {
    s.chars().take(MAX_AGENT_TEXT).collect()
}

fn rfc3339_ms(ms: i64) -> Option<String> {
    if ms <= 0 {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
}

/// A stored definition merged with the agent's state (`None`: not running anywhere).
fn view(d: &ServiceRecord, st: Option<&ServiceState>) -> Service {
    let (status, pid, restarts, exit_code, signal, started_at, error) = match st {
        None => (ServiceStatus::Stopped, None, 0, None, None, None, None),
        Some(s) => {
            let status = match ServiceRunState::try_from(s.state) {
                Ok(ServiceRunState::Running) => ServiceStatus::Running,
                Ok(ServiceRunState::Exited) => ServiceStatus::Exited,
                Ok(ServiceRunState::Backoff) => ServiceStatus::Backoff,
                Ok(ServiceRunState::Failed) => ServiceStatus::Failed,
                Ok(ServiceRunState::Waiting) => ServiceStatus::Waiting,
                Ok(ServiceRunState::Stopped) | Err(_) => ServiceStatus::Stopped,
            };
            (
                status,
                (status == ServiceStatus::Running && s.pid > 0).then_some(s.pid),
                s.restarts,
                s.exit_code,
                (s.signal > 0).then(|| burrow_api::signal_name(s.signal)),
                rfc3339_ms(s.started_at_ms),
                (!s.error.is_empty()).then(|| text(&s.error)),
            )
        }
    };
    Service {
        name: d.name.clone(),
        cmd: d.spec.cmd.clone(),
        env: d.spec.env.clone(),
        cwd: d.spec.cwd.clone(),
        user: d.spec.user.clone(),
        http_port: d.spec.http_port,
        restart: d.spec.restart,
        needs: d.spec.needs.clone(),
        status,
        pid,
        restarts,
        exit_code,
        signal,
        started_at,
        error,
    }
}

/// Maps a failed services call to the caller's error.
fn agent_error(sandbox: &str, svc: &str, s: &Status) -> CoreError {
    match s.code() {
        Code::NotFound => CoreError::not_found("service", svc),
        Code::InvalidArgument => CoreError::Invalid(text(s.message())),
        Code::Unimplemented => CoreError::Unavailable(format!(
            "the agent of sandbox '{sandbox}' is too old for services; restart the sandbox to update it"
        )),
        code => CoreError::Agent {
            name: sandbox.to_owned(),
            detail: format!("{code:?}: {}", text(s.message())),
        },
    }
}

/// A failed call that a fresh channel may fix (the cached one went stale).
fn is_transport(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled)
}

impl Manager {
    /// The agent's view of the service set of a sandbox, as sent on the wire.
    fn agent_specs(&self, rec: &SandboxRecord, defs: &[ServiceRecord]) -> Vec<ServiceSpec> {
        let workdir = self.images.config(&rec.image).workdir;
        defs.iter()
            .map(|d| {
                // As for exec: a base environment, then the sandbox's, then the service's.
                let env = self.exec_env(rec, &d.spec.env, false);
                ServiceSpec {
                    name: d.name.clone(),
                    exec: Some(ExecStart {
                        argv: d.spec.cmd.clone(),
                        env: env
                            .into_iter()
                            .map(|(name, value)| EnvVar { name, value })
                            .collect(),
                        cwd: d.spec.cwd.clone().or_else(|| workdir.clone()).unwrap_or_default(),
                        user: d.spec.user.clone().unwrap_or_default(),
                        ..Default::default()
                    }),
                    restart: match d.spec.restart {
                        RestartPolicy::Always => WirePolicy::Always,
                        RestartPolicy::OnFailure => WirePolicy::OnFailure,
                        RestartPolicy::Never => WirePolicy::Never,
                    }
                    .into(),
                    needs: d.spec.needs.clone(),
                    enabled: d.enabled,
                    stop_grace_ms: 0,
                    ready_port: d.spec.http_port.map_or(0, u32::from),
                }
            })
            .collect()
    }

    /// Runs one services call on the sandbox's agent, reconnecting once if the cached
    /// channel went stale, bounded by [`CALL_TIMEOUT`].
    async fn services_call<T, F, Fut>(&self, rec: &SandboxRecord, svc: &str, call: F) -> Result<T>
    where
        F: Fn(burrow_agent_proto::AgentClient<tonic::transport::Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        for attempt in 0..2 {
            let client = self.agent(rec).await?;
            match tokio::time::timeout(CALL_TIMEOUT, call(client)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if attempt == 0 && is_transport(&s) => self.forget_agent(&rec.id),
                Ok(Err(s)) => return Err(agent_error(&rec.name, svc, &s)),
                Err(_) => {
                    return Err(CoreError::Agent {
                        name: rec.name.clone(),
                        detail: format!("no answer within {CALL_TIMEOUT:?}"),
                    });
                }
            }
        }
        unreachable!("the second attempt always returns")
    }

    /// Pushes the stored service set to the sandbox's agent; returns the agent's states.
    async fn push_services(&self, rec: &SandboxRecord, defs: &[ServiceRecord]) -> Result<Vec<ServiceState>> {
        let services = self.agent_specs(rec, defs);
        let reply = self
            .services_call(rec, "", |mut c| {
                let req = SetServicesRequest {
                    services: services.clone(),
                };
                async move { c.set_services(req).await }
            })
            .await?;
        Ok(reply.services)
    }

    /// Boot hook: starts the sandbox's services (its agent is new and knows none). A
    /// failure is logged, never fatal: the sandbox runs without them and `GET …/services`
    /// tells.
    pub(crate) async fn start_services(&self, rec: &SandboxRecord) {
        let defs = match self.store.services(&rec.id) {
            Ok(d) if d.is_empty() => return,
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(sandbox = %rec.name, error = %chain(&e), "reading service definitions");
                return;
            }
        };
        match self.push_services(rec, &defs).await {
            Ok(_) => tracing::debug!(sandbox = %rec.name, n = defs.len(), "services pushed"),
            Err(e) => tracing::warn!(sandbox = %rec.name, error = %chain(&e), "starting services"),
        }
    }

    /// Removes the definitions of a sandbox that is being deleted.
    pub(crate) fn forget_services(&self, rec: &SandboxRecord) {
        if let Err(e) = self.store.delete_services(&rec.id) {
            tracing::warn!(sandbox = %rec.name, error = %chain(&e), "removing service definitions");
        }
    }

    /// The sandbox, woken when asleep; `None` for the "live" flag when it is not running
    /// (stopped, failed, creating): then only the definitions are touched.
    async fn services_target(&self, name: &str) -> Result<(SandboxRecord, bool)> {
        let rec = self.record(name)?;
        if matches!(rec.status, SandboxStatus::Running | SandboxStatus::Sleeping) {
            let rec = self.ensure_running(name).await?;
            self.touch(&rec);
            return Ok((rec, true));
        }
        Ok((rec, false))
    }

    /// Runs `f` on the stored definitions under the sandbox's operation lock, then pushes
    /// the new set to the agent when the sandbox runs.
    async fn change_services<T>(
        &self,
        name: &str,
        f: impl FnOnce(&SandboxRecord, &mut Vec<ServiceRecord>) -> Result<T>,
    ) -> Result<(T, SandboxRecord, Vec<ServiceRecord>, Vec<ServiceState>)> {
        let (rec, _) = self.services_target(name).await?;
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        // Re-read under the lock: a lifecycle operation may have run meanwhile.
        let rec = self.record(name)?;
        let mut defs = self.store.services(&rec.id)?;
        let before = defs.clone();
        let out = f(&rec, &mut defs)?;
        check_graph(&defs)?;
        let states = if rec.status == SandboxStatus::Running {
            self.push_services(&rec, &defs).await?
        } else {
            Vec::new()
        };
        // Pushed first, stored next: a refused push leaves the old definitions in force.
        for d in &before {
            if !defs.iter().any(|n| n.name == d.name) {
                self.store.delete_service(&rec.id, &d.name)?;
            }
        }
        for d in &defs {
            if !before.contains(d) {
                self.store.upsert_service(d)?;
            }
        }
        Ok((out, rec, defs, states))
    }

    /// `PUT …/services/{svc}`: defines or replaces a service; `true` when it is new.
    pub async fn put_service(&self, name: &str, svc: &str, spec: PutService) -> Result<(Service, bool)> {
        check_service_name(svc)?;
        check_spec(svc, &spec)?;
        let (created, _, defs, states) = self
            .change_services(name, |rec, defs| {
                let now = now_rfc3339();
                match defs.iter_mut().find(|d| d.name == svc) {
                    Some(d) => {
                        d.spec = spec;
                        d.updated_at = now;
                        Ok(false)
                    }
                    None => {
                        if defs.len() >= MAX_SERVICES {
                            return Err(CoreError::Invalid(format!(
                                "a sandbox may define at most {MAX_SERVICES} services"
                            )));
                        }
                        defs.push(ServiceRecord {
                            sandbox_id: rec.id.clone(),
                            name: svc.to_owned(),
                            spec,
                            enabled: true,
                            created_at: now.clone(),
                            updated_at: now,
                        });
                        defs.sort_by(|a, b| a.name.cmp(&b.name));
                        Ok(true)
                    }
                }
            })
            .await?;
        let d = defs
            .iter()
            .find(|d| d.name == svc)
            .ok_or_else(|| CoreError::Internal("service vanished".into()))?;
        Ok((view(d, states.iter().find(|s| s.name == svc)), created))
    }

    /// `DELETE …/services/{svc}`: stops and forgets it. Refused while others need it.
    pub async fn delete_service(&self, name: &str, svc: &str) -> Result<()> {
        check_service_name(svc)?;
        self.change_services(name, |_, defs| {
            let before = defs.len();
            defs.retain(|d| d.name != svc);
            if defs.len() == before {
                return Err(CoreError::not_found("service", svc));
            }
            let users: Vec<String> = defs
                .iter()
                .filter(|d| d.spec.needs.iter().any(|n| n == svc))
                .map(|d| format!("'{}'", d.name))
                .collect();
            if !users.is_empty() {
                return Err(CoreError::Conflict(format!(
                    "service '{svc}' is needed by {}; remove it from their needs first",
                    users.join(", ")
                )));
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// `POST …/services/{svc}/start|stop`. The choice is stored: a stopped service stays
    /// stopped across sandbox restarts until it is started again.
    pub async fn service_action(&self, name: &str, svc: &str, start: bool) -> Result<Service> {
        check_service_name(svc)?;
        let (rec, live) = self.services_target(name).await?;
        let lock = self.op_lock(&rec.id);
        let _guard = lock.lock().await;
        let rec = self.record(name)?;
        let mut d = self
            .store
            .services(&rec.id)?
            .into_iter()
            .find(|d| d.name == svc)
            .ok_or_else(|| CoreError::not_found("service", svc))?;
        let state = if live && rec.status == SandboxStatus::Running {
            let req = ControlServiceRequest {
                name: svc.to_owned(),
                action: if start {
                    ServiceAction::Start
                } else {
                    ServiceAction::Stop
                }
                .into(),
            };
            let st = self
                .services_call(&rec, svc, |mut c| {
                    let req = req.clone();
                    async move { c.control_service(req).await }
                })
                .await;
            match st {
                Ok(st) => Some(st),
                // The agent lost its set (e.g. it was restarted behind our back): push it.
                Err(CoreError::NotFound { .. }) => {
                    let mut defs = self.store.services(&rec.id)?;
                    for x in defs.iter_mut().filter(|x| x.name == svc) {
                        x.enabled = start;
                    }
                    let states = self.push_services(&rec, &defs).await?;
                    states.into_iter().find(|s| s.name == svc)
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if d.enabled != start {
            d.enabled = start;
            d.updated_at = now_rfc3339();
            self.store.upsert_service(&d)?;
        }
        Ok(view(&d, state.as_ref()))
    }

    /// The states the agent reports, by name; empty when the sandbox does not run.
    async fn service_states(&self, rec: &SandboxRecord, live: bool) -> Result<HashMap<String, ServiceState>> {
        if !live {
            return Ok(HashMap::new());
        }
        let reply = self
            .services_call(rec, "", |mut c| async move {
                c.service_status(ServiceStatusRequest::default()).await
            })
            .await?;
        Ok(reply.services.into_iter().map(|s| (s.name.clone(), s)).collect())
    }

    /// `GET …/services`.
    pub async fn list_services(&self, name: &str) -> Result<ServiceList> {
        let (rec, live) = self.services_target(name).await?;
        let defs = self.store.services(&rec.id)?;
        let states = if defs.is_empty() {
            HashMap::new()
        } else {
            self.service_states(&rec, live).await?
        };
        Ok(ServiceList {
            services: defs.iter().map(|d| view(d, states.get(&d.name))).collect(),
        })
    }

    /// `GET …/services/{svc}`.
    pub async fn get_service(&self, name: &str, svc: &str) -> Result<Service> {
        check_service_name(svc)?;
        let (rec, live) = self.services_target(name).await?;
        let d = self
            .store
            .services(&rec.id)?
            .into_iter()
            .find(|d| d.name == svc)
            .ok_or_else(|| CoreError::not_found("service", svc))?;
        let states = self.service_states(&rec, live).await?;
        Ok(view(&d, states.get(svc)))
    }

    /// `GET …/services/{svc}/logs`: the last `tail` lines (all kept when `None`), then with
    /// `follow` new output until the caller drops the stream.
    pub async fn service_logs(
        &self,
        name: &str,
        svc: &str,
        tail: Option<u32>,
        follow: bool,
    ) -> Result<FileStream> {
        check_service_name(svc)?;
        let (rec, live) = self.services_target(name).await?;
        if !self.store.services(&rec.id)?.iter().any(|d| d.name == svc) {
            return Err(CoreError::not_found("service", svc));
        }
        if !live {
            return Err(CoreError::Conflict(format!(
                "sandbox '{name}' is {}: its services have no logs until it runs again",
                rec.status
            )));
        }
        let req = ServiceLogsRequest {
            name: svc.to_owned(),
            tail_lines: tail.unwrap_or(0),
            follow,
        };
        let stream = self
            .services_call(&rec, svc, |mut c| {
                let req = req.clone();
                async move { c.service_logs(req).await }
            })
            .await?;
        let sandbox = rec.name.clone();
        let svc = svc.to_owned();
        let mut total = 0usize;
        let stream = stream
            .map(move |r| r.map(|c| c.data).map_err(|s| agent_error(&sandbox, &svc, &s)))
            // Without follow the agent sends at most its ring; never take more than a bound.
            .take_while(move |r| {
                total += r.as_ref().map_or(0, Vec::len);
                std::future::ready(follow || total <= MAX_LOG_BYTES)
            });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(name: &str, needs: &[&str]) -> ServiceRecord {
        ServiceRecord {
            sandbox_id: "sb".into(),
            name: name.into(),
            spec: PutService {
                cmd: vec!["true".into()],
                needs: needs.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            enabled: true,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn graph_checks_name_the_problem() {
        assert!(check_graph(&[def("a", &[]), def("b", &["a"]), def("c", &["a", "b"])]).is_ok());
        let e = check_graph(&[def("a", &["x"])]).unwrap_err().to_string();
        assert!(e.contains("'x'"), "{e}");
        let e = check_graph(&[def("a", &["b"]), def("b", &["c"]), def("c", &["a"])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cycle") && e.contains("'a' -> 'b' -> 'c' -> 'a'"),
            "{e}"
        );
        let e = check_graph(&[def("a", &["a"])]).unwrap_err().to_string();
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn spec_checks() {
        let ok = PutService {
            cmd: vec!["sleep".into(), "1".into()],
            ..Default::default()
        };
        assert!(check_spec("a", &ok).is_ok());
        assert!(check_spec("a", &PutService::default()).is_err());
        assert!(
            check_spec(
                "a",
                &PutService {
                    http_port: Some(0),
                    ..ok.clone()
                }
            )
            .is_err()
        );
        assert!(
            check_spec(
                "a",
                &PutService {
                    cwd: Some("rel".into()),
                    ..ok.clone()
                }
            )
            .is_err()
        );
        assert!(check_service_name("Web").is_err());
        assert!(check_service_name("web-1").is_ok());
    }
}
