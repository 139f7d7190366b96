"""Checkpoints, restore (never destructive) and forks from the live state or a checkpoint."""

from __future__ import annotations

import pytest

from burrow import Burrow, Conflict, NotFound, Sandbox

from conftest import unique


def test_checkpoint_restore_list_get_delete(sb: Sandbox) -> None:
    sb.files.write("/srv/app.txt", "v1")
    cp = sb.checkpoint("clean")
    assert cp.id.startswith("v") and cp.comment == "clean" and cp.source == "api"
    sb.run("rm -rf /srv; echo wrecked > /wreck", check=True)
    r = sb.restore(cp)
    assert r.restored == cp.id and r.backup != cp.id
    assert sb.files.read_text("/srv/app.txt") == "v1" and not sb.files.exists("/wreck")
    # The replaced state was saved: restoring the backup brings the wreck back.
    sb.restore(r.backup)
    assert sb.files.read_text("/wreck") == "wrecked\n"
    ids = [c.id for c in sb.checkpoints()]
    assert cp.id in ids and r.backup in ids
    assert sb.get_checkpoint(cp.id).comment == "clean"
    sb.delete_checkpoint(r.backup)
    assert r.backup not in [c.id for c in sb.checkpoints()]
    with pytest.raises(NotFound):
        sb.restore("v999")


def test_fork_live_and_from_checkpoint(bw: Burrow, sb: Sandbox) -> None:
    sb.files.write("/state", "one")
    cp = sb.checkpoint()
    sb.files.write("/state", "two")
    with sb.fork(unique("live")) as live, sb.fork(unique("old"), cp) as old:
        assert live.files.read_text("/state") == "two"
        assert old.files.read_text("/state") == "one"
        assert live.info.parent is not None and live.info.parent.sandbox == sb.name
        assert old.info.parent is not None and old.info.parent.checkpoint == cp.id
        live.files.write("/state", "mine")
        assert sb.files.read_text("/state") == "two"  # forks are independent
        with pytest.raises(Conflict):
            sb.fork(live.name)
        names = (live.name, old.name)
    for n in names:
        with pytest.raises(NotFound):
            bw.get(n)


def test_events_follow_the_sandbox(bw: Burrow) -> None:
    with bw.create(unique("ev")) as sb:
        cp = sb.checkpoint("watched")
        kinds = []
        with sb.events(since=0, timeout=30) as events:
            for ev in events:  # the history first, then live
                assert ev["sandbox"] in (sb.name, sb.id), ev
                kinds.append(ev["kind"])
                if ev["kind"] == "checkpoint":
                    assert cp.id in str(ev["data"])
                    sb.stop()
                if ev["kind"] == "stopped":
                    break
        assert kinds[0] == "created" and kinds.index("checkpoint") < kinds.index("stopped")
