"""The asyncio client over the same daemon: every family of methods once, concurrency, and
the typed errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from burrow import (AsyncBurrow, CommandError, CommandTimeout, Conflict, Exit, InvalidRequest, NotFound,
                    Stdout)

from conftest import unique
from daemon import Daemon


async def test_async_surface(abw: AsyncBurrow, tmp_path: Path) -> None:
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
        # Many commands at once on one client.
        outs = await asyncio.gather(*(sb.run(["echo", str(i)]) for i in range(20)))
        assert [o.stdout for o in outs] == [f"{i}\n" for i in range(20)]

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
