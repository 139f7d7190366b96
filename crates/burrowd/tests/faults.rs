//! Faults are never hidden (issue 9): a sandbox's agent (PID 1) killed from the host, and
//! the host files burrowd owns for a sandbox (its run dir, the agent socket) deleted.
//! Waits are bounded polls for a condition; nothing sleeps to synchronise.

use std::path::Path;
use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, ExecRequest, SandboxName, SandboxRestart, SandboxStatus};
use burrow_testkit::fixtures::wait_for;
use burrow_testkit::{Daemon, shared, unique_name};

fn req(name: &str) -> CreateSandbox {
    CreateSandbox {
        name: SandboxName::parse(name).unwrap(),
        // The idle policy stays out of the way: sleeping is done by the test itself; and so
        // does the restart policy, unless a test is about it.
        idle_timeout_s: Some(0),
        restart: Some(SandboxRestart::Never),
        ..Default::default()
    }
}

/// Waits (bounded) until the daemon's post-create install into sandbox `id` is done: its last
/// step writes `run/<id>/host/system-bundle`. A test that deletes the run dir must not race
/// that write.
fn wait_post_create_install(d: &Daemon, id: &str) {
    let marker = d.data_dir.join("run").join(id).join("host/system-bundle");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the post-create install of {id} never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent's host pid (runc's view), once the sandbox is running with a live agent.
fn agent_pid(d: &Daemon, id: &str) -> u32 {
    let (status, pid) = runc_state(&d.data_dir, id);
    assert_eq!(status, "running", "{id}");
    pid
}

fn echo(text: &str) -> ExecRequest {
    ExecRequest {
        cmd: vec!["echo".into(), text.into()],
        ..Default::default()
    }
}

/// What `runc state` says of sandbox `id`: (status, host pid of its init, the agent).
fn runc_state(data_dir: &Path, id: &str) -> (String, u32) {
    let out = std::process::Command::new("runc")
        .args(["--root", data_dir.join("runc").to_str().unwrap(), "state", id])
        .output()
        .expect("runc state");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("runc state {id}: {}", String::from_utf8_lossy(&out.stderr)));
    (
        v["status"].as_str().unwrap().to_owned(),
        v["pid"].as_u64().unwrap() as u32,
    )
}

/// `kill -9` of the sandbox's agent from the host; returns once it is dead (every thread
/// gone: its pidfd polls readable), as `kill -9` and a later command would see it.
fn kill_agent(d: &Daemon, id: &str) {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    let (status, pid) = runc_state(&d.data_dir, id);
    assert_eq!(status, "running", "agent of {id} before the kill");
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd (or -1); no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open {pid}: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL)
        .expect("kill -9 the agent");
    let mut fds = [nix::poll::PollFd::new(
        pidfd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16)).expect("poll pidfd");
    assert_eq!(ready, 1, "agent {pid} survived SIGKILL for 10 s");
}

const DIED: &str = "the agent (PID 1) died: killed by signal 9 (SIGKILL)";

/// kill -9 of the agent: within seconds `info` says `failed` with the reason, an
/// `agent.died` event says how, exec says why instead of "connection refused", and `start`
/// boots it again. Controls: a sandbox whose agent was not killed stays `running`, and a
/// warm-sleeping (frozen) one stays asleep.
#[tokio::test(flavor = "multi_thread")]
async fn killed_agent_is_reported_and_start_boots_it_again() {
    let d = shared();
    let c = d.client();
    let (dead, alive, asleep) = (unique_name("dead"), unique_name("alive"), unique_name("asleep"));
    let dead_id = c.create_sandbox(&req(&dead)).await.unwrap().id;
    c.create_sandbox(&req(&alive)).await.unwrap();
    c.create_sandbox(&req(&asleep)).await.unwrap();
    // The CA install that follows a create goes through the agent and would wake the sandbox
    // again: let it finish before putting it to sleep.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c
        .exec(
            &asleep,
            &ExecRequest {
                // The certificate, then the bundle holding it: the install's last write.
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "c=/usr/local/share/ca-certificates/burrow-egress.crt; test -s $c && grep -qF \"$(sed -n 2p $c)\" /etc/ssl/certs/ca-certificates.crt".into(),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .exit_code
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "the sandbox CA was never installed in {asleep}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.sandbox_action(&asleep, "sleep").await.unwrap();
    let asleep_id = c.get_sandbox(&asleep).await.unwrap().id;
    assert_eq!(runc_state(&d.data_dir, &asleep_id).0, "paused");

    kill_agent(d, &dead_id);
    // At once: exec tells the reason (noticed on demand or by the watcher, whichever is first).
    let err = c.exec(&dead, &echo("hi")).await.unwrap_err();
    let msg = err.to_string();
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("illegal_transition")),
        "{msg}"
    );
    assert!(msg.contains(DIED), "{msg}");
    assert!(msg.contains(&format!("burrow start {dead}")), "{msg}");
    assert!(!msg.contains("refused"), "{msg}");

    let sb = wait_for(&c, &dead, "not running", |s| s.status != SandboxStatus::Running).await;
    assert_eq!(sb.status, SandboxStatus::Failed);
    assert_eq!(sb.failure_reason.as_deref(), Some(DIED));
    let ev = d.events_until(&dead, "agent.died").await;
    assert!(ev.contains("killed by signal 9 (SIGKILL)"), "{ev}");
    // A dead burrow cannot be put to sleep as if it ran.
    let err = c.sandbox_action(&dead, "sleep").await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");

    // Controls, after the watcher has seen the dead one: the others are as they were.
    let sb = c.get_sandbox(&alive).await.unwrap();
    assert_eq!((sb.status, sb.failure_reason), (SandboxStatus::Running, None));
    let sb = c.get_sandbox(&asleep).await.unwrap();
    assert_eq!(
        (sb.status, sb.sleep.as_deref(), sb.failure_reason.as_deref()),
        (SandboxStatus::Sleeping, Some("warm"), None)
    );
    assert_eq!(c.exec(&alive, &echo("up")).await.unwrap().stdout, "up\n");
    assert_eq!(c.exec(&asleep, &echo("woke")).await.unwrap().stdout, "woke\n");

    // `start` boots it again, and exec answers.
    let sb = c.sandbox_action(&dead, "start").await.unwrap();
    assert_eq!((sb.status, sb.failure_reason), (SandboxStatus::Running, None));
    assert_eq!(c.exec(&dead, &echo("back")).await.unwrap().stdout, "back\n");
    for n in [&dead, &alive, &asleep] {
        c.delete_sandbox(n).await.unwrap();
    }
}

/// `start` (and `restart`) asked right after the agent died, before anything noticed, boot
/// the sandbox instead of answering `running` and doing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn start_right_after_the_agent_died_boots_it() {
    let d = shared();
    let c = d.client();
    let name = unique_name("restart");
    let id = c.create_sandbox(&req(&name)).await.unwrap().id;
    for verb in ["start", "restart"] {
        kill_agent(d, &id);
        let sb = c.sandbox_action(&name, verb).await.unwrap();
        assert_eq!(sb.status, SandboxStatus::Running, "{verb}");
        assert_eq!(
            c.exec(&name, &echo(verb)).await.unwrap().stdout,
            format!("{verb}\n"),
            "{verb}"
        );
    }
    let ev = d.events_until(&name, "agent.died").await;
    assert!(ev.contains("killed by signal 9"), "{ev}");
    c.delete_sandbox(&name).await.unwrap();
}

/// The agent socket (or the whole run dir) deleted, then a daemon restart: the sandbox is
/// booted again with a new socket and says why; exec works. Control: a sandbox whose files
/// were left alone is adopted as it was (its process survives).
#[tokio::test(flavor = "multi_thread")]
async fn lost_agent_socket_or_run_dir_is_repaired_at_daemon_start() {
    let d = Daemon::start();
    let c = d.client();
    let (sock, dir, kept) = (unique_name("sock"), unique_name("rundir"), unique_name("kept"));
    let sock_id = c.create_sandbox(&req(&sock)).await.unwrap().id;
    let dir_id = c.create_sandbox(&req(&dir)).await.unwrap().id;
    c.create_sandbox(&req(&kept)).await.unwrap();
    let bg = ExecRequest {
        cmd: vec![
            "sh".into(),
            "-c".into(),
            "setsid sleep 1000 >/dev/null 2>&1 < /dev/null & echo $!".into(),
        ],
        ..Default::default()
    };
    let kept_pid = c.exec(&kept, &bg).await.unwrap().stdout.trim().to_owned();
    let run = d.data_dir.join("run");
    wait_post_create_install(&d, &sock_id);
    wait_post_create_install(&d, &dir_id);
    std::fs::remove_file(run.join(&sock_id).join("agent.sock")).unwrap();
    std::fs::remove_dir_all(run.join(&dir_id)).unwrap();

    d.kill9();
    d.restart();
    let c = d.client();
    for (name, what) in [(&sock, "its agent socket"), (&dir, "its run directory")] {
        assert_eq!(c.exec(name, &echo("up")).await.unwrap().stdout, "up\n", "{name}");
        let sb = c.get_sandbox(name).await.unwrap();
        assert_eq!(sb.status, SandboxStatus::Running, "{name}");
        let notice = sb.notice.unwrap_or_default();
        assert!(
            notice.contains(&format!("{what} ")) && notice.contains("was deleted"),
            "{notice}"
        );
        let ev = d.events_until(name, "\"restarted\"").await;
        assert!(ev.contains("was deleted"), "{ev}");
    }
    assert!(run.join(&sock_id).join("agent.sock").exists());
    // The control was adopted, not booted again.
    let r = c
        .exec(
            &kept,
            &ExecRequest {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("kill -0 {kept_pid} && echo alive"),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "alive\n");
    let sb = c.get_sandbox(&kept).await.unwrap();
    assert_eq!((sb.status, sb.notice), (SandboxStatus::Running, None));
}

/// The run dir deleted while the daemon runs: exec still works on the open channel, and
/// `restart` rebuilds what is missing (run dir, agent socket, in-sandbox API socket) and
/// boots the sandbox, instead of failing with runc's log and leaving it `failed`.
#[tokio::test(flavor = "multi_thread")]
async fn restart_recreates_a_deleted_run_dir() {
    let d = shared();
    let c = d.client();
    let name = unique_name("rundir");
    let id = c.create_sandbox(&req(&name)).await.unwrap().id;
    let run = d.data_dir.join("run").join(&id);
    wait_post_create_install(d, &id);
    std::fs::remove_dir_all(&run).unwrap();
    let sb = c.sandbox_action(&name, "restart").await.unwrap();
    assert_eq!((sb.status, sb.failure_reason), (SandboxStatus::Running, None));
    assert_eq!(c.exec(&name, &echo("up")).await.unwrap().stdout, "up\n");
    assert!(run.join("agent.sock").exists());
    // The in-sandbox API answers on its socket again.
    let r = c
        .exec(
            &name,
            &ExecRequest {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "test -S /.burrow/api.sock && echo sock".into(),
                ],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.stdout, "sock\n", "{r:?}");
    c.delete_sandbox(&name).await.unwrap();
}

/// A sandbox deleted right after its create leaves no warnings behind: the CA install that
/// runs after the create answers finds the sandbox gone and says so at debug level only.
/// Before, every such pair logged WARN lines ("installing network files") that hid real
/// faults in the daemon's log.
#[tokio::test(flavor = "multi_thread")]
async fn create_then_delete_at_once_logs_no_warnings() {
    let d = Daemon::start();
    let c = d.client();
    let mut names = Vec::new();
    for _ in 0..12 {
        let name = unique_name("quick");
        c.create_sandbox(&req(&name)).await.unwrap();
        c.delete_sandbox(&name).await.unwrap();
        names.push(name);
    }
    // Give the install tasks (spawned at each create) time to run into the deletes: one more
    // create → exec round trip. A task still pending after it could only hide a warning,
    // never invent one (before the fix this test saw 23 of them).
    let last = unique_name("after");
    c.create_sandbox(&req(&last)).await.unwrap();
    c.exec(&last, &echo("x")).await.unwrap();
    let log = d.log_text();
    // Control: the log is the daemon's and holds those sandboxes' creates.
    for name in &names {
        assert!(
            log.lines()
                .any(|l| l.contains("created") && l.contains(name.as_str())),
            "no 'created' line for {name} in the daemon's log"
        );
    }
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("installing network files"))
        .collect();
    assert!(warnings.is_empty(), "{} warnings: {warnings:#?}", warnings.len());
    c.delete_sandbox(&last).await.unwrap();
}

/// The restart policy (default `on-failure`): a killed agent makes the sandbox `failed`, an
/// `agent.died` event says a restart is scheduled, and burrowd boots it again by itself: a new
/// agent, exec answers, a `restarted` event and a notice say why. Control: the same kill of a
/// sandbox whose policy is `never` leaves it `failed` (looked at after the other one is back,
/// so its restart would have been due by then).
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_agent_is_restarted_by_the_default_policy() {
    let d = shared();
    let c = d.client();
    let (auto, never) = (unique_name("auto"), unique_name("never"));
    let mut r = req(&auto);
    r.restart = None;
    let sb = c.create_sandbox(&r).await.unwrap();
    assert_eq!(sb.config.restart, SandboxRestart::OnFailure, "the default");
    let auto_id = sb.id;
    let never_id = c.create_sandbox(&req(&never)).await.unwrap().id;
    let before = agent_pid(d, &auto_id);

    kill_agent(d, &never_id);
    kill_agent(d, &auto_id);
    let ev = d.events_until(&auto, "agent.died").await;
    assert!(ev.contains(r#""restart":{"attempt":1,"in_ms":500}"#), "{ev}");
    let ev = d.events_until(&auto, r#""by":"restart policy""#).await;
    assert!(ev.contains("killed by signal 9 (SIGKILL)"), "{ev}");
    let sb = wait_for(&c, &auto, "running again", |s| s.status == SandboxStatus::Running).await;
    assert_eq!(sb.failure_reason, None);
    let notice = sb.notice.unwrap_or_default();
    assert!(
        notice.contains("restarted by its restart policy") && notice.contains(DIED),
        "{notice}"
    );
    assert_ne!(agent_pid(d, &auto_id), before, "a new agent");
    assert_eq!(c.exec(&auto, &echo("back")).await.unwrap().stdout, "back\n");

    let sb = c.get_sandbox(&never).await.unwrap();
    assert_eq!(
        (sb.status, sb.failure_reason.as_deref()),
        (SandboxStatus::Failed, Some(DIED))
    );
    let ev = d.events_until(&never, "agent.died").await;
    assert!(
        ev.contains(r#""restart":null"#) && ev.contains(r#""restart_policy":"never""#),
        "{ev}"
    );
    for n in [&auto, &never] {
        c.delete_sandbox(n).await.unwrap();
    }
}

/// A sandbox whose agent dies again right after each restart: the policy restarts it four
/// times with a growing backoff, then leaves it `failed` after the fifth death with the reason
/// saying so; `start` still boots it.
#[tokio::test(flavor = "multi_thread")]
async fn the_restart_policy_gives_up_on_a_crash_loop() {
    let d = shared();
    let c = d.client();
    let name = unique_name("loop");
    let mut r = req(&name);
    r.restart = Some(SandboxRestart::OnFailure);
    let id = c.create_sandbox(&r).await.unwrap().id;
    for attempt in 1..=4u32 {
        let pid = agent_pid(d, &id);
        kill_agent(d, &id);
        let delay = 500u64 << (attempt - 1);
        let needle = format!(r#""restart":{{"attempt":{attempt},"in_ms":{delay}}}"#);
        d.events_until(&name, &needle).await;
        // Back with a new agent (bounded wait: the backoff is at most 4 s here).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sb = c.get_sandbox(&name).await.unwrap();
            if sb.status == SandboxStatus::Running && runc_state(&d.data_dir, &id).1 != pid {
                break;
            }
            assert!(Instant::now() < deadline, "restart {attempt} never came: {sb:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    kill_agent(d, &id);
    let sb = wait_for(&c, &name, "failed", |s| s.status == SandboxStatus::Failed).await;
    let reason = sb.failure_reason.unwrap_or_default();
    assert!(
        reason.starts_with(DIED)
            && reason.contains("died 5 times in a row")
            && reason.contains("burrow start"),
        "{reason}"
    );
    let ev = d.events_until(&name, r#""restart":null"#).await;
    assert!(ev.contains("agent.died"), "{ev}");
    let sb = c.sandbox_action(&name, "start").await.unwrap();
    assert_eq!((sb.status, sb.failure_reason), (SandboxStatus::Running, None));
    assert_eq!(c.exec(&name, &echo("up")).await.unwrap().stdout, "up\n");
    c.delete_sandbox(&name).await.unwrap();
}
