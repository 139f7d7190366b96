//! The agent as PID 1 of its own pid namespace (like in a container): it must reap
//! orphans that get re-parented to it. Needs root and util-linux `unshare`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn can_unshare() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
        && Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "true"])
            .status()
            .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn pid1_reaps_orphaned_zombies() {
    burrow_testkit::require!(can_unshare(), "needs root and unshare");
    let mut agent = Agent::start_with(|sock| {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            AGENT,
            "--listen",
        ])
        .arg(sock);
        cmd
    });
    let mut conn = agent.connect().await;
    assert_eq!(conn.hello.pid, 1, "agent is not PID 1 of the namespace");

    // `sh` exits at once; its child `sleep` is re-parented to PID 1 (the agent) and, once it
    // exits, only the agent can reap it.
    let out = run(&mut conn, start(&["sh", "-c", "sleep 0.1 & echo $!; exit 0"])).await;
    assert_eq!(out.exit_code, 0);
    let orphan = out.stdout_str().trim().to_owned();
    assert!(!orphan.is_empty());

    // Bounded wait-for-condition: the orphan must disappear entirely (not linger as Z).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = run(&mut conn, start(&["ps", "-o", "stat=", "-p", &orphan])).await;
        let stat = out.stdout_str();
        if out.exit_code != 0 && stat.trim().is_empty() {
            break; // gone: reaped
        }
        assert!(
            Instant::now() < deadline,
            "orphan {orphan} not reaped, state {stat:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // As PID 1, a graceful shutdown signals everything in the namespace.
    let out = run(
        &mut conn,
        start(&[
            "sh",
            "-c",
            "setsid sleep 100 >/dev/null 2>&1 </dev/null & echo $!",
        ]),
    )
    .await;
    assert_eq!(out.exit_code, 0);
    let mut client = conn.client.clone();
    client
        .shutdown(burrow_agent_proto::v1::ShutdownRequest { grace_ms: 2000 })
        .await
        .unwrap();
    let exit = tokio::task::spawn_blocking(move || agent.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
