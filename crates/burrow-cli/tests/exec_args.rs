//! `burrow exec` passes what the API accepts (issue 9): long arguments and environments go
//! in the WebSocket's `start` frame, not the URL. Real daemon, real sandbox. (A command past
//! the kernel's limits cannot reach `burrow` itself: the same kernel refuses to start it; the
//! API's answers to such commands are tested in burrowd's `tests/limits.rs`.)

use burrow_testkit::cli::ok;
use burrow_testkit::unique_name;

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
