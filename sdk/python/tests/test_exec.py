"""run (one-shot), spawn (streaming), sessions: output, exit codes, check, timeout, env, cwd,
user, stdin, TTY, signals, attach with replay, kill, and 1,000 fast streamed commands."""

from __future__ import annotations

import pytest

from burrow import (AsyncBurrow, Burrow, CommandError, CommandTimeout, Exit, Gone, NotFound, Sandbox,
                    Stderr, Stdout, Timeout)

from conftest import unique


def test_run_argv_and_shell(sb: Sandbox) -> None:
    r = sb.run(["python3", "-c", "import sys; print(6*7); print('oops', file=sys.stderr); sys.exit(3)"])
    assert (r.stdout, r.stderr, r.exit_code, r.returncode, r.ok) == ("42\n", "oops\n", 3, 3, False)
    r = sb.run("echo $((1+2)) | tr 3 x")
    assert r.stdout == "x\n" and r.ok and r.cmd == ["sh", "-c", "echo $((1+2)) | tr 3 x"]
    assert sb.exec(["true"]).exit_code == 0  # alias


def test_run_check_raises_with_output(sb: Sandbox) -> None:
    with pytest.raises(CommandError) as e:
        sb.run("echo out; echo err >&2; exit 7", check=True)
    assert e.value.exit_code == 7 and e.value.returncode == 7
    assert e.value.stdout == "out\n" and e.value.stderr == "err\n"
    assert "err" in str(e.value) and e.value.code == "command_failed"
    assert sb.run("exit 0", check=True).exit_code == 0  # positive control


def test_run_timeout(sb: Sandbox) -> None:
    with pytest.raises(CommandTimeout) as e:
        sb.run("echo started; sleep 30", timeout=0.5)
    assert isinstance(e.value, Timeout) and isinstance(e.value, TimeoutError)
    assert e.value.result.timed_out and e.value.result.signal == "KILL"
    assert e.value.stdout == "started\n"
    assert sb.run("sleep 0.1", timeout=20).ok  # positive control: enough time


def test_run_env_cwd_user_stdin(sb: Sandbox) -> None:
    r = sb.run('echo "$A-$B"; pwd; id -un', env={"A": "1", "B": "two"}, cwd="/tmp", user="nobody")
    assert r.stdout == "1-two\n/tmp\nnobody\n"
    assert sb.run(["cat"], stdin="piped text").stdout == "piped text"
    raw = bytes(range(256))
    r = sb.run(["sh", "-c", "cat | sha256sum"], stdin=raw)
    import hashlib
    assert r.stdout.split()[0] == hashlib.sha256(raw).hexdigest()
    # Output that is not UTF-8 comes back exactly.
    r = sb.run(["printf", "\\377\\376ok"])
    assert r.stdout_bytes == b"\xff\xfeok"


def test_spawn_streams_events_in_order(sb: Sandbox) -> None:
    proc = sb.spawn(["sh", "-c", "echo one; echo two >&2; sleep 0.05; echo three; exit 4"])
    assert proc.session_id.startswith("s-") and proc.pid
    events = list(proc)
    assert isinstance(events[-1], Exit) and events[-1].exit_code == 4
    out = b"".join(e.data for e in events if isinstance(e, Stdout))
    err = b"".join(e.data for e in events if isinstance(e, Stderr))
    assert (out, err) == (b"one\nthree\n", b"two\n")
    assert proc.exit_code == 4 and list(proc) == []  # nothing after the exit


def test_spawn_stdin_signal_env_cwd(sb: Sandbox) -> None:
    with sb.spawn(["sh", "-c", "cat; echo \"$X\" in $(pwd)"], stdin=True, env={"X": "ex"}, cwd="/etc") as p:
        p.write(b"abc")
        p.write("def\n")
        p.close_stdin()
        r = p.wait()
    assert r.stdout == "abcdef\nex in /etc\n" and r.exit_code == 0
    p = sb.spawn(["sleep", "30"])
    p.signal("TERM")
    r = p.wait()
    assert r.signal == "TERM"
    p = sb.spawn(["sleep", "30"])
    p.kill()
    assert p.wait().signal == "KILL"
    with pytest.raises(CommandError):
        sb.spawn(["false"]).wait(check=True)


def test_spawn_tty_and_resize(sb: Sandbox) -> None:
    p = sb.spawn(["sh", "-c", "stty size; read x; stty size; tty"], tty=True, cols=100, rows=30)
    first = b""
    for ev in p:
        assert isinstance(ev, Stdout), ev  # a terminal has no separate stderr
        first += ev.data
        if b"30 100" in first:
            break
    p.resize(120, 40)
    p.write("go\r")
    r = p.wait()
    assert "40 120" in r.stdout and "/dev/pts/" in r.stdout and r.exit_code == 0


def test_spawn_and_run_in_a_deleted_sandbox_are_not_found(bw: Burrow) -> None:
    gone = bw.create(unique("gone"))
    assert list(gone.spawn(["true"])) == [Exit(0)]  # positive control
    gone.delete()
    with pytest.raises(NotFound) as e:
        gone.spawn(["true"])
    assert e.value.code == "not_found"
    with pytest.raises(NotFound):
        gone.run(["true"])


def test_sessions_list_attach_replay_kill(sb: Sandbox) -> None:
    p = sb.spawn(["sh", "-c", "echo hello-from-session; read x; echo after-$x; sleep 60"],
                 stdin=True, detach_timeout_s=60)
    sid = p.session_id
    assert next(iter(p)) == Stdout(b"hello-from-session\n")
    p.close()  # detach: the process lives on
    s = {x.id: x for x in sb.sessions.list()}[sid]
    assert s.running and s.cmd[0] == "sh" and s.exit_code is None
    with sb.sessions.attach(sid) as a:
        assert a.session_id == sid
        got = next(iter(a))
        assert got == Stdout(b"hello-from-session\n")  # replayed
        assert a.replay is not None and a.replay.replay_bytes == len(b"hello-from-session\n")
        a.write("x\n")
        assert next(iter(a)) == Stdout(b"after-x\n")  # live
        sb.sessions.kill(sid, "TERM")
        r = a.wait()
    assert r.signal == "TERM"
    done = {x.id: x for x in sb.sessions.list()}[sid]
    assert not done.running and done.signal == "TERM"
    with pytest.raises(Gone) as gone:
        sb.sessions.attach(sid)  # it has exited
    assert gone.value.status == 410
    with pytest.raises(NotFound):
        sb.sessions.attach("s-0000000000000000")
    with pytest.raises(NotFound):
        sb.sessions.kill("s-0000000000000000")


def test_a_thousand_fast_streamed_commands_sync(sb: Sandbox) -> None:
    for i in range(1000):
        events = list(sb.spawn(["echo", str(i)]))
        assert events == [Stdout(f"{i}\n".encode()), Exit(0)], (i, events)


async def test_a_thousand_fast_streamed_commands_async(abw: AsyncBurrow) -> None:
    async with abw.create(unique("fast")) as sb:
        for i in range(1000):
            p = await sb.spawn(["sh", "-c", f"echo {i}; exit {i % 3}"] if i % 100 == 0 else ["echo", str(i)])
            events = [ev async for ev in p]
            assert isinstance(events[-1], Exit), (i, events)
            assert events[-1].exit_code == (i % 3 if i % 100 == 0 else 0)
            assert b"".join(e.data for e in events if isinstance(e, Stdout)) == f"{i}\n".encode()
