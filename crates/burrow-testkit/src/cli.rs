//! The `burrow` CLI as a test runs it: pointed at a daemon's unix socket, with no URL or
//! token from the environment, stdin empty unless the test sets it. The free functions use
//! the test binary's [`shared`](crate::shared) daemon; [`Daemon::cli`](crate::Daemon::cli)
//! and [`run_on`] take another.

use std::process::{Command, Output, Stdio};

use crate::{Daemon, shared};

/// `burrow args…` against the shared daemon, not yet run (for stdin, a terminal, a child).
pub fn burrow(args: &[&str]) -> Command {
    let mut c = shared().cli();
    c.args(args);
    c
}

/// Runs `burrow args…` against the shared daemon with empty stdin; the outcome is the
/// caller's to judge.
pub fn run(args: &[&str]) -> Output {
    run_on(shared(), args)
}

/// Runs `burrow args…` against daemon `d` with empty stdin.
pub fn run_on(d: &Daemon, args: &[&str]) -> Output {
    let mut c = d.cli();
    c.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running burrow {args:?}: {e}"))
}

/// Runs `burrow args…` against the shared daemon, asserts it succeeds, and returns stdout.
pub fn ok(args: &[&str]) -> String {
    String::from_utf8(ok_bytes(args)).expect("burrow's stdout is UTF-8")
}

/// Like [`ok`], for output that is not text (`burrow cp … -`).
pub fn ok_bytes(args: &[&str]) -> Vec<u8> {
    succeeded(args, run(args))
}

/// Asserts that `burrow args…` exited 0 and returns its stdout; the failure shows both
/// streams (long arguments cut to 40 characters, so a megabyte argument does not drown them).
pub fn succeeded(args: &[&str], o: Output) -> Vec<u8> {
    assert!(
        o.status.success(),
        "burrow {:?} failed ({}): {}{}",
        args.iter()
            .map(|a| a.chars().take(40).collect::<String>())
            .collect::<Vec<_>>(),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}
