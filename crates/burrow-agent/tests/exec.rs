//! End-to-end tests of exec against the real agent binary running on the host.

mod common;

use std::os::unix::fs::MetadataExt;

use burrow_agent_proto::PROTOCOL_VERSION;
use burrow_agent_proto::v1::{ExecStart, Resize, exec_input};
use common::*;
use tonic::Code;

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

#[tokio::test]
async fn hello_reports_version_and_pid() {
    let mut agent = Agent::start();
    let conn = agent.connect().await;
    assert_eq!(conn.hello.protocol_version, PROTOCOL_VERSION);
    assert_eq!(conn.hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(conn.hello.pid, agent.child.id());
}

#[tokio::test]
async fn echo_output_and_exit_code() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let out = run(&mut conn, start(&["echo", "hello", "world"])).await;
    assert_eq!(out.stdout_str(), "hello world\n");
    assert!(out.stderr.is_empty());
    assert_eq!((out.exit_code, out.signal), (0, 0));

    let out = run(&mut conn, start(&["sh", "-c", "echo oops >&2; exit 3"])).await;
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!((out.exit_code, out.signal), (3, 0));
}

#[tokio::test]
async fn killed_by_signal() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let out = run(&mut conn, start(&["sh", "-c", "kill -9 $$"])).await;
    assert_eq!((out.exit_code, out.signal), (-1, 9));
}

#[tokio::test]
async fn stdin_is_piped_until_eof() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let exec = open(
        &mut conn,
        ExecStart {
            stdin: true,
            ..start(&["cat"])
        },
    )
    .await
    .unwrap();
    exec.send(exec_input::Kind::Stdin(b"hello ".to_vec())).await;
    exec.send(exec_input::Kind::Stdin(b"stdin".to_vec())).await;
    exec.send(exec_input::Kind::StdinEof(true)).await;
    let out = exec.finish().await;
    assert_eq!(out.stdout_str(), "hello stdin");
    assert_eq!(out.exit_code, 0);

    // Without `stdin`, the process reads /dev/null.
    let out = run(&mut conn, start(&["cat"])).await;
    assert!(out.stdout.is_empty());
    assert_eq!(out.exit_code, 0);
}

#[tokio::test]
async fn env_is_exact_and_cwd_honoured() {
    // SAFETY-free way to give the agent a variable that must not leak into execs.
    let mut agent = Agent::start_with(|sock| {
        let mut cmd = std::process::Command::new(AGENT);
        cmd.arg("--listen").arg(sock).env("AGENT_ONLY_SECRET", "leak");
        cmd
    });
    let mut conn = agent.connect().await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap();
    let out = run(
        &mut conn,
        ExecStart {
            env: env(&[("FOO", "bar baz"), ("PATH", "/usr/bin:/bin")]),
            cwd: cwd.to_string_lossy().into_owned(),
            ..start(&["sh", "-c", "echo \"$FOO\"; pwd; env"])
        },
    )
    .await;
    let stdout = out.stdout_str();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("bar baz"));
    assert_eq!(lines.next(), Some(cwd.to_str().unwrap()));
    let vars: Vec<&str> = lines.filter_map(|l| l.split('=').next()).collect();
    assert!(!vars.contains(&"AGENT_ONLY_SECRET"), "agent env leaked: {stdout}");
    for expected in ["FOO", "PATH", "HOME"] {
        assert!(vars.contains(&expected), "{expected} missing: {stdout}");
    }

    // Default cwd is the user's home (root's is /root on Debian) or /.
    let out = run(&mut conn, start(&["pwd"])).await;
    let home = if std::path::Path::new("/root").is_dir() && is_root() {
        "/root\n"
    } else {
        "/\n"
    };
    assert_eq!(out.stdout_str(), home);
}

#[tokio::test]
async fn user_switching() {
    burrow_testkit::require!(is_root(), "needs root (switching users)");
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let out = run(
        &mut conn,
        ExecStart {
            user: "nobody".into(),
            ..start(&["id", "-u"])
        },
    )
    .await;
    assert_eq!(out.stdout_str(), "65534\n");
    let out = run(
        &mut conn,
        ExecStart {
            user: "nobody".into(),
            ..start(&["sh", "-c", "echo $HOME $USER"])
        },
    )
    .await;
    assert_eq!(out.stdout_str(), "/nonexistent nobody\n");
    let out = run(
        &mut conn,
        ExecStart {
            user: "1234:4321".into(),
            ..start(&["sh", "-c", "id -u; id -g; id -G"])
        },
    )
    .await;
    assert_eq!(out.stdout_str(), "1234\n4321\n4321\n");

    let err = open(
        &mut conn,
        ExecStart {
            user: "no-such-user-xyz".into(),
            ..start(&["true"])
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("no-such-user-xyz"), "{}", err.message());
}

#[tokio::test]
async fn refusals_have_clear_statuses() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;

    let err = open(&mut conn, start(&["no-such-binary-xyz"]))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "executable 'no-such-binary-xyz' not found in PATH");

    let err = open(&mut conn, start(&["/no/such/file"])).await.err().unwrap();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "executable '/no/such/file' does not exist");

    let err = open(&mut conn, start(&["/etc/passwd"])).await.err().unwrap();
    assert_eq!(err.code(), Code::PermissionDenied);

    let err = open(&mut conn, start(&[])).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = open(
        &mut conn,
        ExecStart {
            cwd: "/no/such/dir".into(),
            ..start(&["true"])
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "working directory '/no/such/dir' does not exist");

    // PATH comes from the request's environment.
    let err = open(
        &mut conn,
        ExecStart {
            env: env(&[("PATH", "/nonexistent")]),
            ..start(&["true"])
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), Code::NotFound);

    // The connection is still fine afterwards.
    assert_eq!(run(&mut conn, start(&["true"])).await.exit_code, 0);
}

#[tokio::test]
async fn tty_mode() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;

    let out = run(
        &mut conn,
        ExecStart {
            tty: true,
            ..start(&["tty"])
        },
    )
    .await;
    let stdout = out.stdout_str();
    assert!(stdout.starts_with("/dev/pts/"), "{stdout:?}");
    assert_eq!(out.exit_code, 0);

    let out = run(
        &mut conn,
        ExecStart {
            tty: true,
            ..start(&["stty", "size"])
        },
    )
    .await;
    assert_eq!(out.stdout_str().trim(), "24 80");

    let out = run(
        &mut conn,
        ExecStart {
            tty: true,
            cols: 132,
            rows: 50,
            ..start(&["stty", "size"])
        },
    )
    .await;
    assert_eq!(out.stdout_str().trim(), "50 132");

    // Resize, then let the process look (stdin is the terminal; the newline releases `read`).
    let mut exec = open(
        &mut conn,
        ExecStart {
            tty: true,
            stdin: true,
            ..start(&["sh", "-c", "echo ready; read x; stty size"])
        },
    )
    .await
    .unwrap();
    exec.read_until("ready").await;
    exec.send(exec_input::Kind::Resize(Resize { cols: 100, rows: 40 }))
        .await;
    exec.send(exec_input::Kind::Stdin(b"\n".to_vec())).await;
    let out = exec.finish().await;
    assert!(out.stdout_str().contains("40 100"), "{:?}", out.stdout_str());
    assert_eq!(out.exit_code, 0);

    // stdin_eof in TTY mode is ^D: `cat` sees end of file and exits.
    let exec = open(
        &mut conn,
        ExecStart {
            tty: true,
            stdin: true,
            ..start(&["cat"])
        },
    )
    .await
    .unwrap();
    exec.send(exec_input::Kind::Stdin(b"abc\n".to_vec())).await;
    exec.send(exec_input::Kind::StdinEof(true)).await;
    let out = exec.finish().await;
    assert!(out.stdout_str().contains("abc"), "{:?}", out.stdout_str());
    assert_eq!(out.exit_code, 0);
}

#[tokio::test]
async fn signal_reaches_process_group() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let exec = open(&mut conn, start(&["sleep", "100"])).await.unwrap();
    exec.send(exec_input::Kind::Signal(2)).await;
    let out = exec.finish().await;
    assert_eq!((out.exit_code, out.signal), (-1, 2));
}

#[tokio::test]
async fn dropping_the_stream_kills_the_process() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    for tty in [false, true] {
        let exec = open(
            &mut conn,
            ExecStart {
                tty,
                ..start(&["sleep", "100"])
            },
        )
        .await
        .unwrap();
        let pid = exec.pid;
        assert!(pid_exists(pid));
        drop(exec);
        wait_for(&format!("pid {pid} (tty: {tty}) to be killed and reaped"), || {
            !pid_exists(pid)
        })
        .await;
    }
    // Ending only the input side (host half-close) also counts as the host going away.
    let Exec { input, output, pid } = open(&mut conn, start(&["sleep", "100"])).await.unwrap();
    drop(input);
    let out = Exec {
        input: tokio::sync::mpsc::channel(1).0,
        output,
        pid,
    }
    .finish()
    .await;
    assert_eq!((out.exit_code, out.signal), (-1, 9));
    wait_for("the process to be reaped", || !pid_exists(pid)).await;
}

#[tokio::test]
async fn background_grandchild_does_not_delay_exit_forever() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    // The grandchild keeps stdout open for 100 s; `exited` must still arrive, after "parent".
    let out = run(&mut conn, start(&["sh", "-c", "sleep 100 & echo parent"])).await;
    assert_eq!(out.stdout_str(), "parent\n");
    assert_eq!(out.exit_code, 0);
}

#[tokio::test]
async fn many_sequential_and_parallel_execs() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    for i in 0..2000 {
        let out = if i % 2 == 0 {
            run(&mut conn, start(&["true"])).await
        } else {
            let out = run(&mut conn, start(&["echo", &i.to_string()])).await;
            assert_eq!(out.stdout_str(), format!("{i}\n"));
            out
        };
        assert_eq!((out.exit_code, out.signal), (0, 0), "exec {i}");
    }

    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..125 {
                let n = t * 1000 + i;
                let out = run(&mut conn, start(&["echo", &n.to_string()])).await;
                assert_eq!(out.stdout_str(), format!("{n}\n"));
                assert_eq!(out.exit_code, 0);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn large_output_arrives_complete() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    const SIZE: usize = 256 * 1024 * 1024;
    let mut exec = open(&mut conn, start(&["head", "-c", &SIZE.to_string(), "/dev/zero"]))
        .await
        .unwrap();
    let mut total = 0usize;
    let mut exited = None;
    while let Some(msg) = exec.output.message().await.unwrap() {
        assert!(exited.is_none(), "output after exited");
        match msg.kind.unwrap() {
            burrow_agent_proto::v1::exec_output::Kind::Stdout(b) => {
                assert!(b.iter().all(|&x| x == 0));
                total += b.len();
            }
            burrow_agent_proto::v1::exec_output::Kind::Exited(e) => exited = Some(e),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(total, SIZE);
    assert_eq!(exited.unwrap().exit_code, 0);
}

#[tokio::test]
async fn reconnect_after_disconnect() {
    let mut agent = Agent::start();
    let mut conn1 = agent.connect().await;
    // A detached background process started over connection 1 ...
    let out = run(
        &mut conn1,
        start(&["sh", "-c", "sleep 100 >/dev/null 2>&1 </dev/null & echo $!"]),
    )
    .await;
    let bg: u32 = out.stdout_str().trim().parse().unwrap();
    drop(conn1);
    // ... survives the host going away, and connection 2 works and sees it.
    let mut conn2 = agent.connect().await;
    let out = run(&mut conn2, start(&["kill", "-0", &bg.to_string()])).await;
    assert_eq!(out.exit_code, 0, "background process died with connection 1");
    let out = run(&mut conn2, start(&["kill", "-9", &bg.to_string()])).await;
    assert_eq!(out.exit_code, 0);
    wait_for("the background process to be reaped", || !pid_exists(bg)).await;
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    let exec = open(&mut conn, start(&["sleep", "100"])).await.unwrap();
    let pid = exec.pid;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &agent.child.id().to_string()])
        .status();
    assert!(status.unwrap().success());
    let out = exec.finish().await;
    assert_eq!((out.exit_code, out.signal), (-1, 15));
    let exit = tokio::task::spawn_blocking(move || agent.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(!pid_exists(pid));
}

#[tokio::test]
async fn shutdown_rpc_kills_stubborn_processes() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    // Ignores TERM, so only the KILL after the grace period ends it.
    let exec = open(
        &mut conn,
        start(&["sh", "-c", "trap '' TERM; echo armed; sleep 100 & wait"]),
    )
    .await;
    let mut exec = exec.unwrap();
    exec.read_until("armed").await;
    let mut client = conn.client.clone();
    client
        .shutdown(burrow_agent_proto::v1::ShutdownRequest { grace_ms: 200 })
        .await
        .unwrap();
    let out = exec.finish().await;
    assert_eq!((out.exit_code, out.signal), (-1, 9));
    let exit = tokio::task::spawn_blocking(move || agent.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn exit_is_reported_while_stdin_is_blocked() {
    let mut agent = Agent::start();
    let mut conn = agent.connect().await;
    // A descendant keeps stdin open without reading it, so stdin input piles up.
    let mut exec = open(
        &mut conn,
        ExecStart {
            stdin: true,
            ..start(&["sh", "-c", "sleep 100 <&0 & echo $!; exec sleep 100"])
        },
    )
    .await
    .unwrap();
    let bg = exec.read_until("\n").await.trim().to_owned();
    let main_pid = exec.pid;
    let input = exec.input.clone();
    let flood = tokio::spawn(async move {
        for _ in 0..256 {
            if input
                .send(common::input(exec_input::Kind::Stdin(vec![b'x'; 64 * 1024])))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // The agent has stopped taking input once our queue stays full.
    wait_for("stdin to back up", || exec.input.capacity() == 0).await;
    let out = run(&mut conn, start(&["kill", "-9", &main_pid.to_string()])).await;
    assert_eq!(out.exit_code, 0);
    let out = tokio::time::timeout(PATIENCE, exec.finish())
        .await
        .expect("exit not reported");
    assert_eq!((out.exit_code, out.signal), (-1, 9));
    flood.abort();
    run(&mut conn, start(&["kill", "-9", &bg])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_an_inherited_listening_fd_and_leaves_it_alone() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let mut agent = Agent::start_with(|sock| {
        // The host creates and owns the listening socket (like burrowd with runc).
        let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
        let mut cmd = std::process::Command::new(AGENT);
        let setup = move || {
            let fd = listener.as_raw_fd();
            // The listener may be fd 3 already: dup2 onto itself would leave it close-on-exec.
            // SAFETY: fcntl and dup2 are async-signal-safe; `fd` stays open in the parent
            // until spawn returns (the listener is moved into this closure).
            let ret = unsafe {
                if fd == 3 {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                }
            };
            if ret < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the closure only calls fcntl or dup2 between fork and exec.
        unsafe { cmd.pre_exec(setup) };
        cmd // no flag: fd 3 is the default
    });
    let mut conn = agent.connect().await;
    let out = run(
        &mut conn,
        start(&["sh", "-c", "ls -l /proc/self/fd >&2; ls /proc/self/fd"]),
    )
    .await;
    let fds: Vec<&str> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "agent fds leaked into the process: {}",
        String::from_utf8_lossy(&out.stderr)
    ); // 3 = ls's own dir fd
    drop(conn);
    let pid = nix::unistd::Pid::from_raw(agent.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let exit = tokio::task::block_in_place(|| agent.child.wait()).unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        agent.socket.exists(),
        "the agent removed a socket it did not create"
    );
}
