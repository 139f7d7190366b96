//! A sandbox's limits are not agent failures (issue 9): an exec that runs into the sandbox's
//! process limit, the kernel's argument limits or burrowd's own cap on a command's size gets
//! an error that names the limit, with its own code and status, never 503
//! `agent_unavailable`. Real daemon, real sandboxes.

use std::time::{Duration, Instant};

use burrow_api::{CreateSandbox, ExecRequest, ExecResult, SandboxName};
use burrow_testkit::burrow_client::{Client, ClientError, ExecEvent, ExecStreamOptions};
use burrow_testkit::{shared, unique_name};

/// Upper bound of every wait-for-condition below (loops exit as soon as it holds).
const PATIENCE: Duration = Duration::from_secs(60);
/// The kernel's limit on one argument string (`MAX_ARG_STRLEN`, 32 pages of 4 KiB).
const MAX_ARG_STRLEN: usize = 128 * 1024;

async fn make(c: &Client, f: impl FnOnce(&mut CreateSandbox)) -> burrow_api::Sandbox {
    let mut req = CreateSandbox {
        name: SandboxName::parse(&unique_name("lim")).unwrap(),
        ..Default::default()
    };
    f(&mut req);
    c.create_sandbox(&req).await.expect("create")
}

fn req(cmd: Vec<String>) -> ExecRequest {
    ExecRequest {
        cmd,
        timeout_s: Some(60.0),
        ..Default::default()
    }
}

async fn exec(c: &Client, name: &str, cmd: &[&str]) -> Result<ExecResult, ClientError> {
    c.exec(name, &req(cmd.iter().map(|s| (*s).to_owned()).collect()))
        .await
}

/// The API error of `r`, with a message naming what came back instead.
fn api_error<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String, String) {
    match r {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// `EAGAIN` on Linux.
const EAGAIN: i32 = 11;

/// A sandbox with `pids: 32` whose processes are all taken by `sleep`s: an exec is refused
/// with 429 `resource_exhausted` naming the pids limit; once the sleepers are gone the same
/// exec runs.
#[tokio::test(flavor = "multi_thread")]
async fn exhausted_pids_are_429_resource_exhausted_not_agent_unavailable() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |r| r.pids = Some(32)).await;
    assert_eq!(
        exec(&c, &sb.name, &["true"])
            .await
            .expect("exec before")
            .exit_code,
        0
    );

    // One process forks sleepers until fork fails (at most 64), says so and waits. Its
    // connection holds them: closing it kills the process group.
    let fill = r#"
import os, time
n = 0
while n < 64:
    try:
        pid = os.fork()
    except OSError as e:
        print('filled', n, 'errno', e.errno, flush=True)
        break
    if pid == 0:
        time.sleep(1000)
        os._exit(0)
    n += 1
time.sleep(1000)
"#;
    let mut filler = c
        .exec_stream(&sb.name, ExecStreamOptions::new(["python3", "-c", fill]))
        .await
        .expect("filler");
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains('\n') {
        match tokio::time::timeout(PATIENCE, filler.next_event()).await {
            Ok(Ok(Some(ExecEvent::Stdout(b) | ExecEvent::Stderr(b)))) => seen.extend_from_slice(&b),
            Ok(Ok(Some(ExecEvent::Session { .. }))) => {}
            other => panic!("filler: {other:?} after {}", String::from_utf8_lossy(&seen)),
        }
    }
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        seen.starts_with("filled ") && seen.trim_end().ends_with(&format!("errno {EAGAIN}")),
        "the sleepers ran into the limit (EAGAIN): {seen}"
    );

    // The sandbox is full: the exec is refused (a pid freed meanwhile, e.g. by an idle
    // thread of the agent ending, may let one through; the next is refused again).
    let deadline = Instant::now() + PATIENCE;
    let (status, code, message) = loop {
        match exec(&c, &sb.name, &["true"]).await {
            Ok(_) if Instant::now() < deadline => continue,
            r => break api_error(r),
        }
    };
    assert_eq!((status, code.as_str()), (429, "resource_exhausted"), "{message}");
    assert!(
        message.contains("pids limit 32"),
        "names the limit and its value: {message}"
    );
    assert!(message.contains("'true'"), "names the program: {message}");

    // Control: the same exec runs once the sleepers are gone.
    drop(filler);
    let deadline = Instant::now() + PATIENCE;
    let ok = loop {
        match exec(&c, &sb.name, &["echo", "room again"]).await {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Some("resource_exhausted"), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the sandbox never had room again: {e}"),
        }
    };
    assert_eq!((ok.exit_code, ok.stdout.as_str()), (0, "room again\n"));
    c.delete_sandbox(&sb.name).await.unwrap();
}

/// One argument over the kernel's 128 KiB per string: 413 `argument_too_long` naming the
/// kernel's limit, on the one-shot exec and the WebSocket exec; 100 KB runs on both.
#[tokio::test(flavor = "multi_thread")]
async fn an_argument_over_the_kernels_limit_is_413_argument_too_long() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |_| {}).await;

    let big = "a".repeat(200_000);
    assert!(big.len() > MAX_ARG_STRLEN);
    let (status, code, message) = api_error(exec(&c, &sb.name, &["echo", &big]).await);
    assert_eq!((status, code.as_str()), (413, "argument_too_long"), "{message}");
    assert!(
        message.contains(&format!("{MAX_ARG_STRLEN} bytes per argument")),
        "names the kernel's limit: {message}"
    );
    assert!(message.contains("'echo'"), "names the program: {message}");

    let (status, code, message) = api_error(
        c.exec_stream(&sb.name, ExecStreamOptions::new(["echo", big.as_str()]))
            .await
            .map(|_| ()),
    );
    assert_eq!((status, code.as_str()), (413, "argument_too_long"), "{message}");

    // Control: 100 KB is under the kernel's limit and is passed whole.
    let fine = "b".repeat(100_000);
    let r = exec(&c, &sb.name, &["echo", &fine])
        .await
        .expect("100 KB argument");
    assert_eq!((r.exit_code, r.stdout.len()), (0, 100_001));
    let out = c
        .exec_stream(&sb.name, ExecStreamOptions::new(["echo", fine.as_str()]))
        .await
        .expect("100 KB argument over the WebSocket")
        .collect()
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, out.stdout.len()),
        (0, 100_001),
        "{:?}",
        out.errors
    );
    c.delete_sandbox(&sb.name).await.unwrap();
}

/// A 10 MB command line is refused by burrowd itself (413 `argument_too_long` naming its
/// 3 MiB cap) before anything reaches the agent, where it would break the channel (4 MiB
/// messages); the agent stays usable.
#[tokio::test(flavor = "multi_thread")]
async fn a_10_mb_command_is_refused_by_the_host_with_413() {
    let d = shared();
    let c = d.client();
    let sb = make(&c, |_| {}).await;
    let mut cmd = vec!["echo".to_owned()];
    cmd.extend(std::iter::repeat_n("c".repeat(100_000), 100));
    let (status, code, message) = api_error(c.exec(&sb.name, &req(cmd.clone())).await);
    assert_eq!((status, code.as_str()), (413, "argument_too_long"), "{message}");
    assert!(
        message.contains("at most 3145728 bytes"),
        "names burrowd's limit: {message}"
    );
    let (status, code, message) = api_error(
        c.exec_stream(&sb.name, ExecStreamOptions::new(cmd))
            .await
            .map(|_| ()),
    );
    assert_eq!((status, code.as_str()), (413, "argument_too_long"), "{message}");

    // Control: the agent is fine and a command of a few arguments runs.
    let r = exec(&c, &sb.name, &["echo", "still here"])
        .await
        .expect("exec after");
    assert_eq!(r.stdout, "still here\n");
    c.delete_sandbox(&sb.name).await.unwrap();
}
