//! The two programs this crate drives: `ip` in batch mode and `nft -f -`. One spawn per
//! batch; the script goes on stdin and a failure carries the program's stderr.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::{NetError, Result};

/// Runs `ip [-n NETNS] -batch -` over `lines`; nothing is spawned for an empty batch.
pub(crate) fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut args: Vec<&str> = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let script = lines.join("\n") + "\n";
    run("ip", &args, &script)
        .map(drop)
        .map_err(|e| explain_batch_line(e, lines))
}

/// Applies an nftables script as one atomic transaction.
pub(crate) fn nft_apply(script: &str) -> Result<()> {
    run("nft", &["-f", "-"], script).map(drop)
}

/// Runs an nft listing command and returns its stdout.
pub(crate) fn nft_output(args: &[&str]) -> Result<String> {
    run("nft", args, "")
}

fn run(program: &str, args: &[&str], stdin: &str) -> Result<String> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_err = |source| NetError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    // Both programs read their whole input before writing much, so writing first cannot
    // deadlock on a full stdout/stderr pipe.
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let written = pipe.write_all(stdin.as_bytes());
    drop(pipe);
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NetError::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    written.map_err(spawn_err)?;
    String::from_utf8(out.stdout).map_err(|_| NetError::Parse {
        command,
        reason: "output is not UTF-8".to_owned(),
    })
}

/// `ip -batch` reports only "Command failed -:N"; name the line so the error stands alone.
fn explain_batch_line(err: NetError, lines: &[String]) -> NetError {
    let NetError::Command {
        command,
        status,
        stderr,
    } = err
    else {
        return err;
    };
    let line = stderr
        .rsplit_once("Command failed -:")
        .and_then(|(_, n)| n.trim().parse::<usize>().ok())
        .and_then(|n| lines.get(n.checked_sub(1)?));
    let stderr = match line {
        Some(line) => format!("{stderr} (the failed command: `{line}`)"),
        None => stderr,
    };
    NetError::Command {
        command,
        status,
        stderr,
    }
}
