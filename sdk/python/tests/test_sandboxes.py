"""Sandboxes: create/get/list/update/delete, lifecycle verbs, the context manager, and the
typed errors (unknown sandbox, bad name, conflict), over the unix socket and TCP."""

from __future__ import annotations

from pathlib import Path

import pytest

from burrow import (Burrow, Conflict, ConnectionFailed, Exit, InvalidRequest, NotFound, Sandbox, Stdout,
                    Unauthorized)

from conftest import unique
from daemon import Daemon


def test_create_get_list_update_delete(bw: Burrow) -> None:
    name = unique("crud")
    sb = bw.create(name, memory_mb=256, cpus=0.5, env={"GREETING": "hi"}, labels={"team": "sdk"}, keep=True)
    try:
        assert sb.name == name and sb.status == "running"
        assert sb.info.config.memory_mb == 256 and sb.info.config.cpus == 0.5
        assert sb.info.env == {"GREETING": "hi"} and sb.info.labels == {"team": "sdk"}
        assert sb.run("echo $GREETING").stdout == "hi\n"
        assert sb.url.startswith("http://") and name in sb.url
        got = bw.get(name)
        assert got.id == sb.id and got.info.image == "base"
        assert name in [s.name for s in bw.list(prefix="crud-")]
        assert [s.name for s in bw.list(labels={"team": "sdk"})] == [name]
        assert bw.list(labels={"team": "nobody"}) == []
        info = sb.update(labels={"team": "sdk", "x": "1"})
        assert info.labels == {"team": "sdk", "x": "1"} and sb.refresh().labels["x"] == "1"
    finally:
        bw.delete(name)
    with pytest.raises(NotFound) as e:
        bw.get(name)
    assert e.value.code == "not_found" and e.value.status == 404 and name in e.value.message


def test_lifecycle_verbs(bw: Burrow, sb: Sandbox) -> None:
    sb.run("echo before > /root/state")
    assert sb.stop().status == "stopped"
    # A stopped sandbox refuses exec and wake with a conflict carrying the API's code.
    with pytest.raises(Conflict) as e:
        sb.run(["true"])
    assert e.value.code == "illegal_transition"
    with pytest.raises(Conflict):
        sb.wake()
    assert sb.start().status == "running"
    assert sb.run("cat /root/state").stdout == "before\n"
    assert sb.sleep().status == "sleeping"
    assert sb.wake().status == "running"
    cold = sb.sleep(mode="cold")
    assert cold.status == "sleeping" and cold.raw.get("sleep") == "cold"
    assert sb.wake().status == "running"
    assert sb.restart().status == "running"
    assert sb.run("cat /root/state").stdout == "before\n"


def test_context_manager_deletes_unless_kept(bw: Burrow) -> None:
    a, b = unique("cm"), unique("cm")
    with bw.create(a) as sb:
        assert sb.run(["true"]).exit_code == 0
    with pytest.raises(NotFound):
        bw.get(a)
    with bw.create(b, keep=True):
        pass
    assert bw.get(b).status == "running"  # positive control: kept
    with bw.get(b) as again:  # a sandbox from get() is kept by default
        again.keep = False
    with pytest.raises(NotFound):
        bw.get(b)


def test_errors_are_typed(bw: Burrow, sb: Sandbox) -> None:
    with pytest.raises(NotFound) as nf:
        bw.get("no-such-sandbox")
    assert nf.value.code == "not_found"
    with pytest.raises(NotFound):
        bw.delete("no-such-sandbox")
    with pytest.raises(InvalidRequest) as bad:
        bw.create("Bad_Name")
    assert bad.value.status in (400, 422) and "DNS label" in bad.value.message
    with pytest.raises(Conflict) as taken:
        bw.create(sb.name)
    assert taken.value.code == "name_taken"
    assert bw.get(sb.name).status == "running"  # the failed create did not touch it
    with pytest.raises(NotFound):
        sb.get_checkpoint("v999")


def test_version_health_images(bw: Burrow) -> None:
    assert bw.health() is True
    v = bw.version()
    assert v["api"] and any(e["kind"] == "container" for e in v["engines"])
    assert "base" in [i["name"] for i in bw.images()]


def test_tcp_with_token_and_without(bw_tcp: Burrow, daemon: Daemon) -> None:
    name = unique("tcp")
    with bw_tcp.create(name) as sb:
        assert sb.run(["echo", "over tcp"]).stdout == "over tcp\n"
        assert list(sb.spawn(["echo", "streamed"])) == [Stdout(b"streamed\n"), Exit(0)]
        sb.files.upload_dir(Path(__file__).parent, "/tests")  # a streamed body over TCP
        assert sb.files.exists("/tests/conftest.py")
        assert name in [s.name for s in bw_tcp.list()]
    with Burrow(url=daemon.url) as anon:
        with pytest.raises(Unauthorized) as e:
            anon.list()
        assert e.value.status == 401
    with Burrow(url=daemon.url, token="bm1_garbage") as wrong:
        with pytest.raises(Unauthorized):
            wrong.list()


def test_environment_selects_the_daemon(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURROW_SOCKET", str(daemon.socket))
    with Burrow() as c:
        assert c.health()
    monkeypatch.delenv("BURROW_SOCKET")
    monkeypatch.setenv("BURROW_URL", daemon.url)
    monkeypatch.setenv("BURROW_TOKEN", daemon.token)
    with Burrow() as c:
        assert isinstance(c.list(), list)
    monkeypatch.setenv("BURROW_SOCKET", str(daemon.dir / "missing.sock"))
    with Burrow() as c:
        with pytest.raises(ConnectionFailed):
            c.health()


def test_e2b_and_sprites_spellings(bw: Burrow) -> None:
    sb = bw.create(unique("alias"))
    assert sb.commands.run("echo e2b").stdout == "e2b\n"
    assert sb.exec(["echo", "x"]).stdout == "x\n"
    assert sb.services.create("s", ["sleep", "600"]).name == "s"
    sb.destroy()
    with pytest.raises(NotFound):
        bw.get(sb.name)
