//! A driver for the `runc` command line: one method per runc verb the engine uses, each
//! returning typed results. Knows runc's flags and output formats; knows nothing of sandboxes.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;

use super::sys;
use crate::{EngineError, Result};

#[derive(Debug, Clone)]
pub struct Runc {
    bin: PathBuf,
    root: PathBuf,
}

/// What `runc state` reports.
#[derive(Debug, Clone, Deserialize)]
pub struct State {
    pub id: String,
    pub pid: u32,
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: String,
    pub bundle: PathBuf,
}

#[derive(Debug, Deserialize)]
struct ListEntry {
    id: String,
}

/// How `runc run` is to be started.
#[derive(Debug)]
pub struct RunArgs<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    /// runc's own log (`--log`), for error details.
    pub log_file: &'a Path,
    /// Becomes fd 3 of runc and of the container's init (`--preserve-fds 1`).
    pub listen_fd: OwnedFd,
    /// Become fds 4, 5, ... of runc and of the container's init.
    pub extra_fds: Vec<OwnedFd>,
    /// stdout and stderr of runc and of the container's init.
    pub output: OwnedFd,
    /// RLIMIT_NOFILE for runc, so that the sandbox can be given it.
    pub nofile: u64,
}

/// Marks runc's "no such container" failures (its wording differs by verb and version).
fn is_not_found(stderr: &str) -> bool {
    stderr.contains("does not exist") || stderr.contains("not found") || stderr.contains("no such file")
}

impl Runc {
    pub fn new(bin: PathBuf, root: PathBuf) -> Self {
        Self { bin, root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root").arg(&self.root);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn describe(&self, args: &[&str]) -> String {
        format!("{} {}", self.bin.display(), args.join(" "))
    }

    /// Runs `runc --root <root> <args>` to completion, capturing its output.
    fn output(&self, args: &[&str]) -> Result<Output> {
        self.command()
            .args(args)
            .output()
            .map_err(|source| EngineError::Io {
                op: "spawn",
                path: self.bin.clone(),
                source,
            })
    }

    /// Like `output`, but a non-zero exit becomes `EngineError::Command`.
    fn checked(&self, args: &[&str]) -> Result<Output> {
        let out = self.output(args)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(EngineError::Command {
                cmd: self.describe(args),
                detail: failure_detail(&out),
            })
        }
    }

    pub fn version(&self) -> Result<String> {
        let out = self.checked(&["--version"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned())
    }

    /// `runc run --detach`: creates and starts the container; returns once its init runs.
    /// The init is not our child: runc exits and the kernel reparents it.
    pub fn run_detached(&self, a: RunArgs<'_>) -> Result<()> {
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(a.log_file)
            .args(["--log-format", "text", "run", "--detach", "--bundle"]);
        let preserve = (1 + a.extra_fds.len()).to_string();
        cmd.arg(a.bundle)
            .arg("--pid-file")
            .arg(a.pid_file)
            .args(["--preserve-fds", &preserve, a.id]);
        let stderr = a.output.try_clone().map_err(|source| EngineError::Io {
            op: "dup",
            path: a.log_file.to_owned(),
            source,
        })?;
        cmd.stdout(a.output).stderr(stderr);
        let fds: Vec<_> = std::iter::once(&a.listen_fd)
            .chain(&a.extra_fds)
            .map(AsRawFd::as_raw_fd)
            .collect();
        let passed = sys::pass_fds(&mut cmd, &fds, a.nofile);
        let status = passed
            .and_then(|()| cmd.status())
            .map_err(|source| EngineError::Io {
                op: "spawn",
                path: self.bin.clone(),
                source,
            });
        // The passed fds now live in the sandbox's init (or nowhere, on failure).
        drop(a.listen_fd);
        drop(a.extra_fds);
        let status = status?;
        if status.success() {
            Ok(())
        } else {
            Err(EngineError::Command {
                cmd: format!("runc run {}", a.id),
                detail: format!("{status}; runc log: {}", tail(a.log_file, 4096)),
            })
        }
    }

    /// `runc state`; `None` when runc does not know `id`.
    pub fn state(&self, id: &str) -> Result<Option<State>> {
        let out = self.output(&["state", id])?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if is_not_found(&stderr) {
                return Ok(None);
            }
            return Err(EngineError::Command {
                cmd: self.describe(&["state", id]),
                detail: failure_detail(&out),
            });
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| EngineError::Command {
                cmd: self.describe(&["state", id]),
                detail: format!("unparsable output: {e}"),
            })
    }

    /// Ids of every container under our root.
    pub fn list(&self) -> Result<Vec<String>> {
        if !self.root.exists() {
            return Ok(Vec::new());
        }
        let out = self.checked(&["list", "--format", "json"])?;
        // runc prints `null` when there are none.
        let entries: Option<Vec<ListEntry>> =
            serde_json::from_slice(&out.stdout).map_err(|e| EngineError::Command {
                cmd: self.describe(&["list"]),
                detail: format!("unparsable output: {e}"),
            })?;
        Ok(entries.unwrap_or_default().into_iter().map(|e| e.id).collect())
    }

    /// `runc kill <id> <signal>`. Ok(false) when the container is gone or no longer running.
    pub fn kill(&self, id: &str, signal: &str) -> Result<bool> {
        let out = self.output(&["kill", id, signal])?;
        if out.status.success() {
            return Ok(true);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if is_not_found(&stderr)
            || stderr.contains("not running")
            || stderr.contains("process already finished")
        {
            return Ok(false);
        }
        Err(EngineError::Command {
            cmd: self.describe(&["kill", id, signal]),
            detail: failure_detail(&out),
        })
    }

    /// `runc delete --force`: kills what is left and removes the container's state and cgroups.
    /// Ok when the container does not exist. It runs at nice 10 (through `nice`, so every
    /// thread of runc has it): cleanup yields the CPU to the starts and commands users wait
    /// for; on an idle host it makes no difference.
    pub fn delete_force(&self, id: &str) -> Result<()> {
        let out = Command::new("nice")
            .args(["-n", "10"])
            .arg(&self.bin)
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| EngineError::Io {
                op: "spawn",
                path: self.bin.clone(),
                source,
            })?;
        if out.status.success() || is_not_found(&String::from_utf8_lossy(&out.stderr)) {
            return Ok(());
        }
        Err(EngineError::Command {
            cmd: self.describe(&["delete", "--force", id]),
            detail: failure_detail(&out),
        })
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.checked(&["pause", id]).map(drop)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.checked(&["resume", id]).map(drop)
    }
}

fn failure_detail(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    format!("{}: {}", out.status, last(stderr.trim(), 4096))
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn last(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The last `max` bytes of a text file, for error messages ("" when unreadable).
pub fn tail(path: &Path, max: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let max = u64::try_from(max).unwrap_or(u64::MAX);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() || f.take(max).read_to_end(&mut buf).is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&buf).trim().to_owned()
}
