//! `burrow exec` passes what the API accepts (issue 9): long arguments and environments go
//! in the WebSocket's `start` frame, not the URL. Real daemon, real sandbox. (A command past
//! the kernel's limits cannot reach `burrow` itself: the same kernel refuses to start it; the
//! API's answers to such commands are tested in burrowd's `tests/limits.rs`.)

use std::process::{Command, Output, Stdio};

use burrow_testkit::{shared, unique_name};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(args)
        .env("BURROW_SOCKET", &shared().socket)
        .env_remove("BURROW_URL")
        .env_remove("BURROW_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run burrow")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "burrow {:?} failed ({}): {}",
        args.iter()
            .map(|a| a.chars().take(40).collect::<String>())
            .collect::<Vec<_>>(),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn exec_passes_a_100_kb_argument_and_environment() {
    let name = unique_name("args");
    ok(&["create", &name]);

    // Control: a short command still works (it travels in the URL query).
    assert_eq!(ok(&["exec", &name, "--", "echo", "short"]), "short\n");

    // 100 KB: far past any URL limit, under the kernel's 128 KiB per argument.
    let arg = "x".repeat(100_000);
    let out = ok(&["exec", &name, "--", "echo", &arg]);
    assert_eq!(out.len(), 100_001, "{}", &out[..out.len().min(200)]);
    assert_eq!(out, format!("{arg}\n"));

    // A long environment variable, the same way.
    let var = format!("BIG={}", "y".repeat(100_000));
    let out = ok(&[
        "exec",
        &name,
        "-e",
        &var,
        "--",
        "sh",
        "-c",
        "printf %s \"$BIG\" | wc -c",
    ]);
    assert_eq!(out.trim(), "100000");

    ok(&["rm", &name]);
}
