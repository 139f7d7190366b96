"""The asyncio client over the same daemon: every family of methods once, concurrency, and
the typed errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from burrow import (AsyncBurrow, CommandError, CommandResult, CommandTimeout, Conflict, Exit, InvalidRequest, NotFound,
                    RateLimited, Stdout, Timeout)

from conftest import unique
from daemon import Daemon


async def test_async_surface(abw: AsyncBurrow, daemon: Daemon, tmp_path: Path) -> None:
    name = unique("async")
    async with abw.create(name, labels={"k": "v"}) as sb:
        assert sb.status == "running" and (await abw.get(name)).id == sb.id
        assert [s.name for s in await abw.list(labels={"k": "v"})] == [name]
        r = await sb.run(["sh", "-c", "echo $V; echo e >&2"], env={"V": "1"})
        assert (r.stdout, r.stderr, r.exit_code) == ("1\n", "e\n", 0)
        with pytest.raises(CommandError):
            await sb.run("exit 2", check=True)
        with pytest.raises(CommandTimeout):
            await sb.run(["sleep", "30"], timeout=0.3)
        # Many commands at once on one client, each held until /tmp/go exists: more than the
        # daemon's one-shot exec budget holds (512 MiB, 32 MiB each by default). Without
        # retries some are turned away (429, nothing run); with them every one runs.
        wait_go = "while [ ! -e /tmp/go ]; do sleep 0.01; done; echo {}"
        cmds = [["sh", "-c", wait_go.format(i)] for i in range(24)]
        async with AsyncBurrow(socket=str(daemon.socket), retries=0) as no_retry:
            nsb = await no_retry.get(name)
            tasks = [asyncio.create_task(nsb.run(c)) for c in cmds]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = next(iter(done)).exception()  # nothing can finish before /tmp/go but a refusal
            assert isinstance(first, RateLimited) and first.code == "exec_budget_exhausted", first
            assert first.retry_after
            await sb.files.write("/tmp/go", "")
            got = await asyncio.gather(*tasks, return_exceptions=True)
        ran = [g for g in got if isinstance(g, CommandResult)]
        assert ran and all(r.exit_code == 0 for r in ran)
        assert len(ran) + sum(isinstance(g, RateLimited) for g in got) == len(cmds)
        await sb.files.remove("/tmp/go")
        tasks = [asyncio.create_task(sb.run(c)) for c in cmds]
        # Let some be turned away and wait for their retry (the result holds either way).
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=0.5)
        await sb.files.write("/tmp/go", "")
        outs = await asyncio.gather(*tasks)
        assert [o.stdout for o in outs] == [f"{i}\n" for i in range(24)]

        async with await sb.spawn(["cat"], stdin=True) as p:
            await p.write("streamed")
            await p.close_stdin()
            assert [ev async for ev in p] == [Stdout(b"streamed"), Exit(0)]

        p = await sb.spawn(["sh", "-c", "echo ready; sleep 60"], detach_timeout_s=30)
        assert await p.__anext__() == Stdout(b"ready\n")
        await p.close()
        assert p.session_id in [s.id for s in await sb.sessions.list()]
        a = await sb.sessions.attach(p.session_id)
        assert await a.__anext__() == Stdout(b"ready\n")
        await sb.sessions.kill(p.session_id)
        assert (await a.wait()).signal == "KILL"

        await sb.files.write("/a/b", b"bytes")
        assert await sb.files.read("/a/b") == b"bytes"
        assert [e.name for e in await sb.files.list("/a")] == ["b"]
        await sb.files.rename("/a/b", "/a/c")
        assert await sb.files.read_text("/a/c") == "bytes"
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "f").write_text("up")
        await sb.files.upload_dir(tmp_path / "d", "/up")
        await sb.files.download_dir("/up", tmp_path / "back")
        assert (tmp_path / "back" / "f").read_text() == "up"
        await sb.files.remove("/a", recursive=True)
        assert not await sb.files.exists("/a")

        cp = await sb.checkpoint("async")
        await sb.files.write("/later", "x")
        res = await sb.restore(cp)
        assert res.restored == cp.id and not await sb.files.exists("/later")
        assert cp.id in [c.id for c in await sb.checkpoints()]
        async with sb.fork(unique("afork"), cp) as child:
            assert child.info.parent is not None and child.info.parent.sandbox == name
        assert (await sb.stop()).status == "stopped"
        with pytest.raises(Conflict):
            await sb.run(["true"])
        assert (await sb.start()).status == "running"

        svc = await sb.services.put("tick", "while true; do echo tick; sleep 1; done", restart="always")
        assert svc.name == "tick" and [s.name for s in await sb.services.list()] == ["tick"]
        await sb.services.delete("tick")
        pol = await sb.set_network_policy("none")
        assert pol.mode == "none" and (await sb.network_policy()).mode == "none"
        tok = await abw.tokens.create(sandboxes=[name])
        assert tok.startswith("bm1_")
    with pytest.raises(NotFound):
        await abw.get(name)
    with pytest.raises(InvalidRequest):
        await abw.create("UPPER")


async def test_async_tcp_with_token(daemon: Daemon) -> None:
    async with AsyncBurrow(url=daemon.url, token=daemon.token) as c:
        sb = await c.create(unique("atcp"))
        try:
            p = await sb.spawn(["echo", "tcp ws"])
            assert [ev async for ev in p] == [Stdout(b"tcp ws\n"), Exit(0)]
            assert (await sb.run(["echo", "tcp"])).stdout == "tcp\n"
        finally:
            await sb.delete()


async def test_sync_client_inside_a_running_event_loop(daemon: Daemon) -> None:
    # Agent frameworks and notebooks call blocking code from inside a loop: it must still work.
    from burrow import Burrow
    with Burrow(socket=str(daemon.socket)) as bw, bw.create(unique("inloop")) as sb:
        assert sb.run(["echo", "inline"]).stdout == "inline\n"
        assert list(sb.spawn(["echo", "streamed"])) == [Stdout(b"streamed\n"), Exit(0)]


async def test_async_remaining_methods(abw: AsyncBurrow, daemon: Daemon, tmp_path: Path) -> None:
    assert await abw.health() and (await abw.version())["api"]
    assert "base" in [i["name"] for i in await abw.images()]
    async with abw.create(unique("arest")) as sb:
        assert (await sb.update(labels={"a": "b"})).labels == {"a": "b"}
        assert (await sb.refresh()).labels == {"a": "b"}
        assert (await sb.sleep()).status == "sleeping"
        assert (await sb.wake()).status == "running"
        assert (await sb.restart()).status == "running"
        r = await sb.run("head -c 5000 /dev/zero | tr '\\0' x", max_output_bytes=1000)
        assert r.stdout_truncated and len(r.stdout) == 1000

        p = await sb.spawn(["sh", "-c", "read x; stty size"], tty=True, cols=90, rows=20)
        await p.resize(91, 21)
        await p.write("\r")
        assert "21 91" in (await p.wait()).stdout
        p = await sb.spawn(["sleep", "60"])
        await p.signal("INT")
        assert (await p.wait()).signal == "INT"
        p = await sb.spawn(["sleep", "60"])
        await p.kill()
        assert (await p.wait()).signal == "KILL"

        big = tmp_path / "f.bin"
        big.write_bytes(bytes(range(256)) * 4096)
        await sb.files.upload(big, "/u/f.bin", mode=0o640)
        assert (await sb.run(["stat", "-c", "%a %s", "/u/f.bin"])).stdout == f"640 {256 * 4096}\n"
        await sb.files.download("/u/f.bin", tmp_path / "g.bin")
        assert (tmp_path / "g.bin").read_bytes() == big.read_bytes()
        await sb.files.make_dir("/u/d")
        assert {e.name: e.type for e in await sb.files.list("/u")} == {"f.bin": "file", "d": "dir"}

        cp = await sb.checkpoint("x")
        assert (await sb.get_checkpoint(cp.id)).comment == "x"
        seen = []
        async for ev in sb.events(timeout=30):  # history first
            seen.append(ev["kind"])
            if ev["kind"] == "checkpoint":
                last = int(ev["seq"])
                break
        assert seen[0] == "created"
        with pytest.raises(Timeout):  # nothing after `last` happens meanwhile: the wait runs out
            async for ev in sb.events(since=last, timeout=0.3):
                raise AssertionError(f"unexpected event {ev}")
        await sb.delete_checkpoint(cp)
        with pytest.raises(NotFound):
            await sb.get_checkpoint(cp.id)

        await sb.services.put("echoes", ["sh", "-c", "for i in 1 2 3; do echo line$i; done; sleep 600"])
        got = await sb.services.get("echoes")
        assert got.name == "echoes"
        assert (await sb.services.stop("echoes")).status == "stopped"
        assert (await sb.services.start("echoes")).name == "echoes"
        for _ in range(100):  # bounded: until the restarted service has printed its lines
            if (await sb.services.logs("echoes", tail=1)).strip() == "line3":
                break
            await sb.run(["sleep", "0.05"])
        assert (await sb.services.logs("echoes", tail=1)).strip() == "line3"
        assert (await sb.fetch("/")).status_code == 502  # nothing serves 8080

        sec = unique("asec")
        await abw.secrets.create(sec, "v4lue", ["h.example.test"])
        assert (await abw.secrets.get(sec)).header == "Authorization"
        assert sec in [s.name for s in await abw.secrets.list()]
        await sb.attach_secret(sec, "TOK")
        assert (await sb.run('printf %s "$TOK"')).stdout.startswith("bm1_")
        await sb.detach_secret(sec)
        await abw.secrets.delete(sec)
    with pytest.raises(NotFound):
        await abw.delete(sb.name)
