//! `burrow exec` and `burrow console`: streaming exec over WebSocket, with the local terminal in
//! raw mode for interactive TTY sessions, or the one-shot `POST …/exec` for `--json`.

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine as _;
use burrow_api::{ExecRequest, ExecResult, parse_signal};
use burrow_client::{ClientError, ExecEvent, ExecSender, ExecStreamOptions, Method, paths};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::app::{App, decode};
use crate::cli::ExecArgs;
use crate::output;
use crate::term::{self, RawMode};

/// How long to wait for the exit status after killing a command that ran past `--timeout`.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// Local Ctrl-C presses forwarded before burrow gives up waiting (non-TTY sessions).
const MAX_INTERRUPTS: u32 = 3;
/// How long the command gets to exit after burrow forwarded its own SIGTERM or SIGHUP to it.
const SIGNAL_GRACE: Duration = Duration::from_secs(3);
/// End of transmission: what a terminal sends for Ctrl-D.
const EOT: u8 = 0x04;
/// How long a TTY session's Ctrl-D at stdin EOF waits for the program's first output.
const EOT_WAIT: Duration = Duration::from_secs(1);

pub async fn exec(app: &App, a: ExecArgs) -> anyhow::Result<u8> {
    if app.json {
        return exec_once(app, a).await;
    }
    let timeout = a.timeout.map(parse_timeout).transpose()?;
    warn_if_no_terminal(a.tty);
    let session = Session::new(&a, timeout);
    let mut stdin = a.interactive.then(term::spawn_stdin_reader);
    match session.run(app, &a.name, &mut stdin, false).await? {
        Outcome::Exited(code) => Ok(code),
        Outcome::NotFound(msg) => anyhow::bail!(msg),
    }
}

/// `exec -t -i NAME -- bash -l`, or `sh` when the sandbox has no bash.
pub async fn console(app: &App, name: &str) -> anyhow::Result<u8> {
    let args = |cmd: &[&str]| ExecArgs {
        name: name.to_owned(),
        tty: true,
        interactive: true,
        env: Vec::new(),
        cwd: None,
        user: None,
        timeout: None,
        detach_timeout: None,
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
    };
    warn_if_no_terminal(true);
    let mut stdin = Some(term::spawn_stdin_reader());
    let bash = args(&["bash", "-l"]);
    match Session::new(&bash, None).run(app, name, &mut stdin, true).await? {
        Outcome::Exited(code) => Ok(code),
        Outcome::NotFound(_) => {
            let sh = args(&["sh"]);
            match Session::new(&sh, None).run(app, name, &mut stdin, false).await? {
                Outcome::Exited(code) => Ok(code),
                Outcome::NotFound(msg) => anyhow::bail!(msg),
            }
        }
    }
}

/// `--json`: one-shot exec, the server's ExecResult printed, exit status still the command's.
async fn exec_once(app: &App, a: ExecArgs) -> anyhow::Result<u8> {
    let (stdin, stdin_b64) = if a.interactive {
        let data = tokio::task::spawn_blocking(|| {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map(|_| buf)
        })
        .await??;
        match String::from_utf8(data) {
            Ok(s) => (Some(s), None),
            Err(e) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
            ),
        }
    } else {
        (None, None)
    };
    let req = ExecRequest {
        cmd: a.cmd,
        env: a.env.into_iter().collect(),
        cwd: a.cwd,
        user: a.user,
        stdin,
        stdin_b64,
        timeout_s: a.timeout,
        ..Default::default()
    };
    let v = app.call(Method::POST, &paths::exec(&a.name), Some(&req)).await?;
    output::print_json(&v)?;
    let res: ExecResult = decode(v)?;
    Ok(exit_status(res.exit_code, res.signal.as_deref()))
}

fn warn_if_no_terminal(tty: bool) {
    if tty && !term::stdin_is_tty() {
        term::eprint_line("warning: -t given but stdin is not a terminal; leaving the local terminal as is");
    }
}

fn parse_timeout(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--timeout must be a positive number of seconds"))
}

/// Exit status of `burrow exec`: the command's, or 128+N when signal N killed it.
fn exit_status(exit_code: i32, signal: Option<&str>) -> u8 {
    if let Some(n) = signal.and_then(parse_signal) {
        return u8::try_from(128 + n).unwrap_or(255);
    }
    u8::try_from(exit_code).unwrap_or(255)
}

enum Outcome {
    Exited(u8),
    /// The program does not exist in the sandbox (only reported when asked to detect it).
    NotFound(String),
}

/// One streaming exec, as the command line asked for it.
struct Session {
    opts: ExecStreamOptions,
    /// Switch the local terminal to raw mode (TTY + interactive + stdin is a terminal).
    raw: bool,
    timeout: Option<Duration>,
}

impl Session {
    fn new(a: &ExecArgs, timeout: Option<Duration>) -> Self {
        let stdin_tty = term::stdin_is_tty();
        let size = if a.tty { term::size() } else { None };
        let opts = ExecStreamOptions {
            cmd: a.cmd.clone(),
            tty: a.tty,
            stdin: a.interactive,
            cwd: a.cwd.clone(),
            env: a.env.clone(),
            cols: size.map(|s| s.0),
            rows: size.map(|s| s.1),
            user: a.user.clone(),
            detach_timeout_s: a.detach_timeout,
        };
        Self {
            opts,
            raw: a.tty && a.interactive && stdin_tty,
            timeout,
        }
    }

    /// Runs the session to its exit. `stdin` (when forwarding) is lent to this run and handed
    /// back, so a retry can keep reading the same input.
    async fn run(
        &self,
        app: &App,
        name: &str,
        stdin: &mut Option<mpsc::Receiver<Vec<u8>>>,
        detect_not_found: bool,
    ) -> anyhow::Result<Outcome> {
        let program = self.opts.cmd.first().cloned().unwrap_or_default();
        let stream = match app.client.exec_stream(name, self.opts.clone()).await {
            Err(e @ ClientError::Api { .. })
                if detect_not_found && looks_not_found(&e.to_string(), &program) =>
            {
                return Ok(Outcome::NotFound(e.to_string()));
            }
            r => r?,
        };
        let (tx, mut rx) = stream.split();

        let _raw = if self.raw { RawMode::enable_or_warn() } else { None };

        let (seen_tx, seen_rx) = watch::channel(false);
        let pump = stdin.take().map(|input| {
            let (stop_tx, stop_rx) = oneshot::channel();
            let tty = self.opts.tty.then_some(seen_rx);
            (stop_tx, tokio::spawn(pump_stdin(input, tx.clone(), tty, stop_rx)))
        });
        let resize =
            (self.opts.tty && self.opts.cols.is_some()).then(|| tokio::spawn(forward_resizes(tx.clone())));

        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut interrupts = 0;
        let mut deadline = self.timeout.map(|t| Instant::now() + t);
        let mut killed = false;
        // Set when burrow itself was asked to stop: (give up at, exit status then).
        let mut quit_at: Option<(Instant, u8)> = None;
        let mut state = Output::new(seen_tx);

        let result = loop {
            tokio::select! {
                ev = rx.next_event() => match ev {
                    Ok(Some(ev)) => {
                        if let Some(done) = state.handle(ev, &tx, detect_not_found, &program).await {
                            break Ok(done);
                        }
                    }
                    Ok(None) => break Err(ClientError::NoExitFrame.into()),
                    Err(e) => break Err(e.into()),
                },
                _ = sigint.recv() => {
                    // Only reachable when the terminal is not raw: in raw mode Ctrl-C is a byte
                    // that reaches the remote process through its pty.
                    interrupts += 1;
                    if interrupts >= MAX_INTERRUPTS {
                        term::eprint_line("burrow: interrupted; the command may still be running in the sandbox");
                        break Ok(Outcome::Exited(130));
                    }
                    let _ = tx.signal("INT").await;
                }
                // Pass our own termination on, but do not let a command that ignores it (an
                // interactive shell ignores TERM) make burrow unkillable.
                _ = sigterm.recv() => {
                    let _ = tx.signal("TERM").await;
                    quit_at.get_or_insert((Instant::now() + SIGNAL_GRACE, 128 + 15));
                }
                _ = sighup.recv() => {
                    let _ = tx.signal("HUP").await;
                    quit_at.get_or_insert((Instant::now() + SIGNAL_GRACE, 128 + 1));
                }
                _ = sleep_until(quit_at.map(|q| q.0)) => {
                    break Ok(Outcome::Exited(quit_at.map_or(1, |q| q.1)));
                }
                _ = sleep_until(deadline) => {
                    if killed {
                        break Err(anyhow::anyhow!("the command was killed after --timeout but reported no exit status"));
                    }
                    killed = true;
                    let secs = self.timeout.unwrap_or_default().as_secs_f64();
                    term::eprint_line(&format!("burrow: command timed out after {secs} s; killing it"));
                    let _ = tx.signal("KILL").await;
                    deadline = Some(Instant::now() + KILL_GRACE);
                }
            }
        };

        if let Some(task) = resize {
            task.abort();
        }
        if let Some((stop, task)) = pump {
            let _ = stop.send(());
            if let Ok(input) = task.await {
                *stdin = Some(input);
            }
        }
        let _ = tx.close().await;
        result
    }
}

/// Where output goes, and what the session saw so far.
struct Output {
    got_output: bool,
    /// Told when the first stdout arrives.
    first_output: watch::Sender<bool>,
    stdout_closed: bool,
    not_found: Option<String>,
}

impl Output {
    fn new(first_output: watch::Sender<bool>) -> Self {
        Self {
            got_output: false,
            first_output,
            stdout_closed: false,
            not_found: None,
        }
    }

    /// Handles one event; `Some` when the session is over.
    async fn handle(
        &mut self,
        ev: ExecEvent,
        tx: &ExecSender,
        detect_not_found: bool,
        program: &str,
    ) -> Option<Outcome> {
        match ev {
            ExecEvent::Session { .. } => {}
            ExecEvent::Stdout(b) => {
                if !self.got_output {
                    self.first_output.send_replace(true);
                }
                self.got_output = true;
                if !self.stdout_closed && write_all(&mut std::io::stdout().lock(), &b).is_err() {
                    // Like a local pipeline: the writer learns its reader went away.
                    self.stdout_closed = true;
                    let _ = tx.signal("PIPE").await;
                }
            }
            ExecEvent::Stderr(b) => {
                self.got_output = true;
                let _ = write_all(&mut std::io::stderr().lock(), &b);
            }
            ExecEvent::Error { message, .. } => {
                if detect_not_found && !self.got_output && looks_not_found(&message, program) {
                    self.not_found = Some(message);
                } else {
                    term::eprint_line(&format!("error: {message}"));
                }
            }
            ExecEvent::Exit {
                exit_code,
                signal,
                reason,
            } => {
                if let Some(reason) = reason {
                    eprintln!("burrow: {reason}");
                }
                if detect_not_found && !self.got_output && (self.not_found.is_some() || exit_code == 127) {
                    let msg = self
                        .not_found
                        .take()
                        .unwrap_or_else(|| format!("{program}: not found"));
                    return Some(Outcome::NotFound(msg));
                }
                if let Some(msg) = self.not_found.take() {
                    term::eprint_line(&format!("error: {msg}"));
                }
                return Some(Outcome::Exited(exit_status(exit_code, signal.as_deref())));
            }
        }
        None
    }
}

fn write_all(w: &mut impl Write, b: &[u8]) -> std::io::Result<()> {
    w.write_all(b)?;
    w.flush()
}

/// Whether an error message says the program itself is missing (not the sandbox).
fn looks_not_found(message: &str, program: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains(&program.to_ascii_lowercase()) && (m.contains("not found") || m.contains("no such file"))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Forwards stdin chunks, then stdin EOF, until `stop`; returns the reader for reuse. `tty`
/// (TTY sessions) tells when the program first wrote output.
async fn pump_stdin(
    mut input: mpsc::Receiver<Vec<u8>>,
    tx: ExecSender,
    mut tty: Option<watch::Receiver<bool>>,
    mut stop: oneshot::Receiver<()>,
) -> mpsc::Receiver<Vec<u8>> {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            chunk = input.recv() => match chunk {
                Some(c) => {
                    if tx.send_stdin(&c).await.is_err() {
                        break;
                    }
                }
                None => {
                    // A pty has no EOF of its own: end input the way a terminal user does, with
                    // Ctrl-D, so `echo cmd | burrow exec -t -i …` ends.
                    // A Ctrl-D typed before the program set up its terminal (a shell switching
                    // to raw mode) is lost, so give it until its first output, briefly.
                    if let Some(seen) = tty.as_mut() {
                        let _ = tokio::time::timeout(EOT_WAIT, seen.wait_for(|s| *s)).await;
                        let _ = tx.send_stdin(&[EOT]).await;
                    }
                    let _ = tx.close_stdin().await;
                    let _ = stop.await;
                    break;
                }
            },
        }
    }
    input
}

/// Sends the terminal size on every SIGWINCH.
async fn forward_resizes(tx: ExecSender) {
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if let Some((cols, rows)) = term::size()
            && tx.resize(cols, rows).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(0, None), 0);
        assert_eq!(exit_status(3, None), 3);
        assert_eq!(exit_status(-1, None), 255);
        assert_eq!(exit_status(0, Some("KILL")), 137);
        assert_eq!(exit_status(0, Some("SIGINT")), 130);
        assert_eq!(exit_status(1, Some("BOGUS")), 1);
    }

    #[test]
    fn not_found_detection() {
        assert!(looks_not_found(
            "exec: \"bash\": executable file not found in $PATH",
            "bash"
        ));
        assert!(looks_not_found(
            "cannot run bash: No such file or directory",
            "bash"
        ));
        assert!(!looks_not_found("sandbox 'dev' not found", "bash"));
        assert!(looks_not_found("executable 'bash' not found in PATH", "bash"));
        assert!(!looks_not_found("bash: permission denied", "bash"));
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout(1.5).unwrap(), Duration::from_millis(1500));
        assert!(parse_timeout(0.0).is_err());
        assert!(parse_timeout(-1.0).is_err());
        assert!(parse_timeout(f64::NAN).is_err());
    }
}
