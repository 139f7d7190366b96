//! The `burrow` CLI end to end against a real daemon: every command of the foundation, as a
//! user types it, including a real terminal for `exec -t -i` and `console`.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use burrow_testkit::cli::{burrow, ok, run};
use burrow_testkit::{shared, unique_name};

/// Runs a shell command line under a pseudo-terminal (util-linux `script`), feeding `input`.
fn in_pty(cmdline: &str, input: &str) -> Output {
    let mut child = Command::new("script")
        .args(["-qfec", cmdline, "/dev/null"])
        .env("BURROW_SOCKET", &shared().socket)
        .env(
            "PATH",
            format!("{}:{}", bin_dir(), std::env::var("PATH").unwrap_or_default()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1)");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// An interactive pseudo-terminal session (util-linux `script`) driven like `expect`: the test
/// waits for output it names instead of sleeping, and types keys when it has seen it.
struct Pty {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Pty {
    fn spawn(cmdline: &str) -> Pty {
        let mut child = Command::new("script")
            .args(["-qfec", cmdline, "/dev/null"])
            .env("BURROW_SOCKET", &shared().socket)
            .env(
                "PATH",
                format!("{}:{}", bin_dir(), std::env::var("PATH").unwrap_or_default()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script(1)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Pty {
            child,
            stdin,
            rx,
            seen: Vec::new(),
        }
    }

    /// Reads until `needle` has appeared; a hang guard (not a speed check) fails the test.
    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !String::from_utf8_lossy(&self.seen).contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(e) => panic!(
                    "waiting for {needle:?} ({e}); the terminal showed: {}",
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits for the program to end by itself.
    fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Kills the program started with [`Pty::spawn_announced`] outright, as a lost network
    /// connection would end it: no signal reaches the sandbox.
    fn drop_connection(mut self) {
        let shown = String::from_utf8_lossy(&self.seen).into_owned();
        let pid: i32 = shown
            .split("PID=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no PID= line in {shown:?}"));
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = self.child.wait();
    }

    /// Like [`Pty::spawn`], with the program's pid printed first (`PID=n`, the shell `exec`s it).
    fn spawn_announced(cmdline: &str) -> Pty {
        let mut pty = Pty::spawn(&format!("echo PID=$$; exec {cmdline}"));
        pty.expect("PID=");
        pty
    }
}

fn bin_dir() -> String {
    std::path::Path::new(env!("CARGO_BIN_EXE_burrow"))
        .parent()
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn foundation_commands_end_to_end() {
    let name = unique_name("cli");
    let out = ok(&[
        "create",
        &name,
        "--memory",
        "512",
        "-e",
        "GREETING=hi",
        "--label",
        "team=core",
    ]);
    assert!(out.contains(&name), "{out}");

    let out = ok(&["exec", &name, "--", "python3", "-c", "print(42)"]);
    assert_eq!(out, "42\n");
    let out = ok(&[
        "exec",
        &name,
        "-e",
        "X=1",
        "-w",
        "/tmp",
        "--",
        "sh",
        "-c",
        "echo $GREETING $X; pwd",
    ]);
    assert_eq!(out, "hi 1\n/tmp\n");
    // Exit status is the command's; stderr goes to stderr.
    let o = run(&["exec", &name, "--", "sh", "-c", "echo oops >&2; exit 7"]);
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "oops\n");
    // stdin with -i.
    let mut child = burrow(&["exec", "-i", &name, "--", "tr", "a-z", "A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"shout").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!((o.status.code(), o.stdout.as_slice()), (Some(0), &b"SHOUT"[..]));

    let ls = ok(&["ls"]);
    assert!(ls.contains(&name) && ls.contains("running"), "{ls}");
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", &name, "--json"])).unwrap();
    assert_eq!(info["status"], "running");
    assert_eq!(info["labels"]["team"], "core");
    assert_eq!(info["config"]["memory_mb"], 512);
    let ls: serde_json::Value = serde_json::from_str(&ok(&["ls", "--json"])).unwrap();
    assert!(ls.to_string().contains(&name));

    ok(&["stop", &name]);
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", &name, "--json"])).unwrap();
    assert_eq!(info["status"], "stopped");
    // Exec into a stopped burrow: the server's message, non-zero exit.
    let o = run(&["exec", &name, "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("stopped"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ok(&["start", &name]);
    ok(&["restart", &name]);
    ok(&["sleep", &name]);
    assert_eq!(ok(&["exec", &name, "--", "echo", "woke"]), "woke\n");
    ok(&["rm", &name]);
    let o = run(&["info", &name]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn errors_print_the_servers_message() {
    let o = run(&["create", "Not_A_Name"]);
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("DNS label") || err.contains("not a valid"), "{err}");
    let name = unique_name("dup");
    ok(&["create", &name]);
    let o = run(&["create", &name]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let o = run(&["exec", &name, "--", "no-such-program"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-program"));
    ok(&["rm", &name]);
}

#[test]
fn exec_tty_and_console_get_a_real_terminal() {
    let name = unique_name("tty");
    ok(&["create", &name]);
    let o = in_pty(
        &format!("burrow exec -t -i {name} -- sh -c 'tty; stty size; exit 5'"),
        "",
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert_eq!(o.status.code(), Some(5), "{text}");
    // Console: an interactive login shell; what we type runs, `exit` ends it.
    let o = in_pty(
        &format!("burrow console {name}"),
        "echo answer-$((6*7))\nexit 0\n",
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("answer-42"), "{text}");
    assert_eq!(o.status.code(), Some(0), "{text}");
    ok(&["rm", &name]);
}

#[test]
fn images_lists_base() {
    let out = ok(&["images", "--wait", "base"]);
    assert!(out.contains("base") && out.contains("ready"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&ok(&["version", "--json"])).unwrap();
    assert_eq!(v["server"]["api"], "v1");
}

#[test]
fn checkpoint_restore_fork_and_templates_from_the_cli() {
    let name = unique_name("cpcli");
    ok(&["create", &name]);
    ok(&["exec", &name, "--", "sh", "-c", "echo one > /root/f"]);
    let out = ok(&["checkpoint", &name, "-m", "deps installed"]);
    assert!(out.contains("v0"), "{out}");
    ok(&["exec", &name, "--", "sh", "-c", "echo two > /root/f"]);
    let list = ok(&["checkpoints", &name]);
    assert!(list.contains("v0") && list.contains("deps installed"), "{list}");
    let out = ok(&["restore", &name, "v0"]);
    assert!(out.contains("v1"), "the backup id is printed: {out}");
    assert_eq!(ok(&["exec", &name, "--", "cat", "/root/f"]), "one\n");
    // Forks: from a checkpoint (the backup holds "two") and from the live state.
    let a = unique_name("fork-a");
    ok(&["fork", &format!("{name}:v1"), &a]);
    assert_eq!(ok(&["exec", &a, "--", "cat", "/root/f"]), "two\n");
    let b = unique_name("fork-b");
    ok(&["fork", &name, &b]);
    assert_eq!(ok(&["exec", &b, "--", "cat", "/root/f"]), "one\n");
    // A template, and a sandbox from it.
    let tpl = unique_name("tpl");
    ok(&["images", "create", &tpl, "--from", &format!("{name}:v0")]);
    let c = unique_name("from-tpl");
    ok(&["create", &c, "--image", &tpl]);
    assert_eq!(ok(&["exec", &c, "--", "cat", "/root/f"]), "one\n");
    let o = run(&["images", "rm", &tpl]);
    assert_eq!(o.status.code(), Some(1), "deleting a used image must fail");
    // Bad input: unknown checkpoint, fork onto an existing name.
    let o = run(&["restore", &name, "v99"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("v99"));
    assert_eq!(run(&["fork", &name, &a]).status.code(), Some(1));
    for sb in [&c, &a, &b, &name] {
        ok(&["rm", sb]);
    }
    ok(&["images", "rm", &tpl]);
}

#[test]
fn images_build_from_a_burrowfile() {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("greeting.txt"), "hello from COPY\n").unwrap();
    std::fs::write(
        ctx.path().join("Burrowfile"),
        "FROM base\nENV MODE=test\nCOPY greeting.txt /opt/\nRUN echo ran > /opt/ran\n",
    )
    .unwrap();
    let image = unique_name("cli-img");
    let out = ok(&["images", "build", &image, ctx.path().to_str().unwrap()]);
    assert!(out.contains(&image), "{out}");
    let sb = unique_name("cli-built");
    ok(&["create", &sb, "--image", &image]);
    assert_eq!(
        ok(&[
            "exec",
            &sb,
            "--",
            "sh",
            "-c",
            "cat /opt/greeting.txt /opt/ran; echo $MODE"
        ]),
        "hello from COPY\nran\ntest\n"
    );
    // A failing step: the step's output in the error, exit 1.
    std::fs::write(
        ctx.path().join("Burrowfile"),
        "FROM base\nRUN echo nope-$((1+1)) && false\n",
    )
    .unwrap();
    let o = run(&[
        "images",
        "build",
        &unique_name("cli-bad"),
        ctx.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nope-2"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ok(&["rm", &sb]);
    ok(&["images", "rm", &image]);
}

#[test]
fn sessions_attach_and_kill_from_the_cli() {
    let name = unique_name("sess-cli");
    ok(&["create", &name]);
    // A TTY session that counts; the client's terminal is dropped once it has shown the first
    // line (the client is killed), and the session lives on (TTY default detach timeout).
    let mut exec = Pty::spawn_announced(&format!(
        "burrow exec -t {name} -- sh -c 'i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done'"
    ));
    exec.expect("tick-0");
    exec.drop_connection();
    let list: serde_json::Value = serde_json::from_str(&ok(&["sessions", &name, "--json"])).unwrap();
    let live: Vec<&serde_json::Value> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["tty"] == true && s["exit_code"].is_null())
        .collect();
    assert_eq!(live.len(), 1, "{list}");
    let id = live[0]["id"].as_str().unwrap().to_owned();
    let table = ok(&["sessions", &name]);
    assert!(table.contains(&id), "{table}");
    // Re-attach: what was missed is replayed, then Ctrl-] detaches and leaves it running.
    let mut attach = Pty::spawn(&format!("burrow attach {name} {id}"));
    attach.expect("tick-0");
    attach.send(&[0x1d]);
    assert!(attach.wait().success());
    // Kill it; then it is finished, and attaching says so.
    ok(&["kill-session", &name, &id]);
    let list: serde_json::Value = serde_json::from_str(&ok(&["sessions", &name, "--json"])).unwrap();
    let s = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap()
        .clone();
    assert!(!s["exited_at"].is_null(), "{s}");
    let o = run(&["attach", &name, &id]);
    assert_eq!(o.status.code(), Some(1));
    let o = run(&["attach", &name, "s-0000000000000000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("s-0000000000000000"));
    ok(&["rm", &name]);
}

/// `--cpus` passes what was typed to the API, which alone judges it: `nan`, `inf` and `-inf`
/// are refused with the API's message (they used to become the default, 1), and `0` and
/// `0.001` get the same range in the same words. Control: an in-range value is accepted and
/// shown by `info`.
#[test]
fn cpus_out_of_range_or_not_a_number_get_the_apis_message() {
    let name = unique_name("cpus");
    for (typed, shown) in [
        ("nan", "NaN"),
        ("inf", "inf"),
        ("-inf", "-inf"),
        ("0", "0"),
        ("0.001", "0.001"),
        ("300", "300"),
    ] {
        let o = run(&["create", &name, &format!("--cpus={typed}")]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--cpus {typed} was accepted");
        assert!(
            stderr.contains(&format!("cpus must be between 0.01 and 256, got {shown}")),
            "--cpus {typed}: {stderr}"
        );
    }
    let o = run(&["info", &name]);
    assert!(!o.status.success(), "a refused create made {name}");

    ok(&["create", &name, "--cpus", "0.5"]);
    let out = ok(&["info", &name]);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("CPUs"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(line.split_whitespace().last(), Some("0.5"), "{out}");
    ok(&["rm", &name]);
}
