//! Supervised services against the real agent binary running on the host: restart
//! policies, backoff, stop/start, dependency order, redefinition, logs.

mod common;

use std::time::{Duration, Instant};

use burrow_agent_proto::v1::{
    ControlServiceRequest, RestartPolicy, ServiceAction, ServiceLogsRequest, ServiceRunState, ServiceSpec,
    ServiceState, ServiceStatusRequest, SetServicesRequest,
};
use burrow_agent_proto::{AgentClient, Connection};
use common::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

fn spec(name: &str, argv: &[&str], restart: RestartPolicy) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        exec: Some(start(argv)),
        restart: restart.into(),
        enabled: true,
        ..Default::default()
    }
}

fn sh(name: &str, script: &str, restart: RestartPolicy) -> ServiceSpec {
    spec(name, &["sh", "-c", script], restart)
}

async fn set(c: &mut AgentClient<Channel>, services: Vec<ServiceSpec>) -> Vec<ServiceState> {
    c.set_services(SetServicesRequest { services })
        .await
        .unwrap()
        .into_inner()
        .services
}

async fn state(c: &mut AgentClient<Channel>, name: &str) -> ServiceState {
    c.service_status(ServiceStatusRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .services
        .remove(0)
}

/// Polls the service's state until `ok` holds (bounded by PATIENCE).
async fn wait_state(
    c: &mut AgentClient<Channel>,
    name: &str,
    ok: impl Fn(&ServiceState) -> bool,
) -> ServiceState {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = state(c, name).await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "service {name} never got there: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn logs(c: &mut AgentClient<Channel>, name: &str) -> String {
    let mut s = c
        .service_logs(ServiceLogsRequest {
            name: name.into(),
            tail_lines: 0,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend(chunk.unwrap().data);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn running(s: &ServiceState) -> bool {
    s.state == ServiceRunState::Running as i32 && s.pid > 0
}

async fn connect(agent: &mut Agent) -> Connection {
    agent.connect().await
}

/// Two consecutive loopback ports that nothing listens on now, below the kernel's ephemeral
/// range: no outgoing connection of another test takes them as its local port, which would
/// make a server's bind fail (a port derived from the pid alone landed in that range).
fn free_port_pair() -> u16 {
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, span) = (10_000u16, ephemeral_start.saturating_sub(10_000 + 2).max(1));
    let first = (std::process::id() % u32::from(span)) as u16;
    (0..span)
        .map(|i| low + (first + i) % span)
        .find(|p| {
            [*p, p + 1]
                .iter()
                .all(|q| std::net::TcpListener::bind(("127.0.0.1", *q)).is_ok())
        })
        .expect("two free loopback ports below the ephemeral range")
}

#[tokio::test]
async fn restart_policies_backoff_and_logs() {
    let mut agent = Agent::start();
    let mut c = connect(&mut agent).await.client;
    set(
        &mut c,
        vec![
            sh("crash", "echo boom; exit 3", RestartPolicy::OnFailure),
            sh("once", "echo done; exit 3", RestartPolicy::Never),
            sh("clean", "exit 0", RestartPolicy::OnFailure),
        ],
    )
    .await;
    let s = wait_state(&mut c, "crash", |s| s.restarts >= 2).await;
    assert_eq!(s.exit_code, Some(3));
    let log = logs(&mut c, "crash").await;
    assert!(log.matches("boom\n").count() >= 2, "{log}");
    assert!(log.contains("exited with code 3; restarting in"), "{log}");

    let s = wait_state(&mut c, "once", |s| s.state == ServiceRunState::Exited as i32).await;
    assert_eq!((s.exit_code, s.restarts, s.pid), (Some(3), 0, 0));
    assert!(logs(&mut c, "once").await.starts_with("done\n"));
    // on-failure does not restart a clean exit.
    let s = wait_state(&mut c, "clean", |s| s.state == ServiceRunState::Exited as i32).await;
    assert_eq!((s.exit_code, s.restarts), (Some(0), 0));

    // An explicit start runs an exited service again.
    let s = c
        .control_service(ControlServiceRequest {
            name: "once".into(),
            action: ServiceAction::Start.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(s.state == ServiceRunState::Running as i32 || s.state == ServiceRunState::Exited as i32);
    let deadline = Instant::now() + PATIENCE;
    while logs(&mut c, "once").await.matches("done\n").count() < 2 {
        assert!(Instant::now() < deadline, "not run again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stop_start_and_redefine() {
    let mut agent = Agent::start();
    let mut c = connect(&mut agent).await.client;
    let svc = spec("sleeper", &["sleep", "1000"], RestartPolicy::Always);
    set(&mut c, vec![svc.clone()]).await;
    let pid = wait_state(&mut c, "sleeper", running).await.pid;
    assert!(pid_exists(pid));

    // The same set again changes nothing.
    set(&mut c, vec![svc.clone()]).await;
    assert_eq!(state(&mut c, "sleeper").await.pid, pid);

    // Stop: TERM reaches it, the answer comes once it is gone.
    let s = c
        .control_service(ControlServiceRequest {
            name: "sleeper".into(),
            action: ServiceAction::Stop.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state, ServiceRunState::Stopped as i32);
    assert!(!pid_exists(pid));
    assert_eq!(s.signal, libc_sigterm());

    let s = c
        .control_service(ControlServiceRequest {
            name: "sleeper".into(),
            action: ServiceAction::Start.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(running(&s), "{s:?}");
    let pid2 = s.pid;
    assert_ne!(pid2, pid);

    // A changed definition restarts it; removal stops it.
    let mut changed = svc.clone();
    changed.exec = Some(start(&["sleep", "999"]));
    set(&mut c, vec![changed]).await;
    let pid3 = wait_state(&mut c, "sleeper", running).await.pid;
    assert_ne!(pid3, pid2);
    assert!(!pid_exists(pid2));
    set(&mut c, vec![]).await;
    assert!(!pid_exists(pid3));
    let err = c
        .service_status(ServiceStatusRequest {
            name: "sleeper".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

fn libc_sigterm() -> i32 {
    15
}

#[tokio::test]
async fn dependencies_start_in_order() {
    let mut agent = Agent::start();
    let mut c = connect(&mut agent).await.client;
    let dir = tempfile::tempdir().unwrap();
    let order = dir.path().join("order");
    let o = order.display();
    // `db` and `web` are up only once their ports accept (each writes its marker before it
    // listens); `web` needs `db`, `worker` needs `web`.
    let port = free_port_pair();
    let mut db = sh(
        "db",
        &format!("sleep 0.3; echo db >> {o}; exec python3 -m http.server {port} --bind 127.0.0.1"),
        RestartPolicy::Always,
    );
    db.ready_port = u32::from(port);
    let mut web = sh(
        "web",
        &format!(
            "echo web >> {o}; exec python3 -m http.server {} --bind 127.0.0.1",
            port + 1
        ),
        RestartPolicy::Always,
    );
    web.ready_port = u32::from(port + 1);
    web.needs = vec!["db".into()];
    let mut worker = sh(
        "worker",
        &format!("echo worker >> {o}; exec sleep 1000"),
        RestartPolicy::Always,
    );
    worker.needs = vec!["web".into()];
    // Listed dependents first: order must come from `needs`, not from the list.
    set(&mut c, vec![worker, web, db]).await;
    // Bounded; on a timeout, what each of the three did says which one held the others up.
    let deadline = Instant::now() + PATIENCE;
    while !running(&state(&mut c, "worker").await) {
        if Instant::now() >= deadline {
            let mut why = String::new();
            for name in ["db", "web", "worker"] {
                let s = state(&mut c, name).await;
                why.push_str(&format!("\n{name}: {s:?}\n{}", logs(&mut c, name).await));
            }
            panic!("worker never ran:{why}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = std::fs::read_to_string(&order).unwrap_or_default();
        if text.lines().count() == 3 {
            assert_eq!(text, "db\nweb\nworker\n");
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Unknown needs are refused.
    let mut bad = sh("x", "true", RestartPolicy::Never);
    bad.needs = vec!["nope".into()];
    let err = c
        .set_services(SetServicesRequest { services: vec![bad] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("nope"), "{}", err.message());
}

#[tokio::test]
async fn follow_streams_new_output_and_missing_program_fails() {
    let mut agent = Agent::start();
    let mut c = connect(&mut agent).await.client;
    set(
        &mut c,
        vec![
            sh(
                "ticker",
                "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.05; done",
                RestartPolicy::Always,
            ),
            spec("ghost", &["/no/such/program"], RestartPolicy::Always),
        ],
    )
    .await;
    wait_state(&mut c, "ticker", running).await;
    let mut stream = c
        .service_logs(ServiceLogsRequest {
            name: "ticker".into(),
            tail_lines: 1,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = String::new();
    let deadline = Instant::now() + PATIENCE;
    while seen.lines().count() < 5 {
        assert!(Instant::now() < deadline, "{seen}");
        let chunk = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk.data));
    }
    let nums: Vec<u64> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("tick")?.parse().ok())
        .collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{seen}");
    drop(stream);

    let s = wait_state(&mut c, "ghost", |s| s.state == ServiceRunState::Failed as i32).await;
    assert!(s.error.contains("/no/such/program"), "{s:?}");
}
