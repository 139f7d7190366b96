"""Files: bytes and text, list, exists, mkdir, rename, remove, streamed single files, and
directories as tar both ways (a large tree checked by hash)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from burrow import Conflict, InvalidRequest, NotFound, Sandbox


def test_write_read_bytes_and_text(sb: Sandbox) -> None:
    sb.files.write("/work/a/b.txt", "héllo\n")
    assert sb.files.read_text("/work/a/b.txt") == "héllo\n"
    assert sb.run(["cat", "/work/a/b.txt"]).stdout == "héllo\n"  # seen by processes
    blob = bytes(range(256)) * 10
    sb.files.write("/work/blob", blob, mode=0o600)
    assert sb.files.read("/work/blob") == blob
    assert sb.run(["stat", "-c", "%a", "/work/blob"]).stdout == "600\n"
    with pytest.raises(NotFound):
        sb.files.write("/nodir/x", "x", mkdir=False)
    with pytest.raises(NotFound):
        sb.files.read("/work/missing")
    with pytest.raises(InvalidRequest):
        sb.files.read("relative/path")


def test_list_exists_rename_remove(sb: Sandbox) -> None:
    sb.files.make_dir("/ls/sub")
    sb.files.write("/ls/f1", "12345")
    sb.run("ln -s f1 /ls/link")
    entries = {e.name: e for e in sb.files.list("/ls")}
    assert set(entries) == {"f1", "link", "sub"}
    assert entries["f1"].type == "file" and entries["f1"].size == 5 and entries["f1"].mode == 0o644
    assert entries["sub"].is_dir and entries["link"].type == "symlink"
    assert sb.files.exists("/ls/f1") and not sb.files.exists("/ls/nope")
    sb.files.rename("/ls/f1", "/ls/sub/f2")
    assert not sb.files.exists("/ls/f1") and sb.files.read_text("/ls/sub/f2") == "12345"
    with pytest.raises(NotFound):
        sb.files.rename("/ls/f1", "/ls/f3")
    sb.files.remove("/ls/link")
    assert not sb.files.exists("/ls/link")
    with pytest.raises(Conflict) as e:
        sb.files.remove("/ls/sub")  # not empty without recursive
    assert e.value.code == "file_conflict"
    sb.files.remove("/ls", recursive=True)
    assert not sb.files.exists("/ls")


def _sha(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_large_file_and_directory_round_trip_by_hash(sb: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "deep" / "er").mkdir(parents=True)
    big = src / "big.bin"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))  # 64 MiB
    (src / "deep" / "er" / "small.txt").write_text("small\n")
    (src / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (src / "run.sh").chmod(0o755)
    want = _sha(big)

    sb.files.upload(big, "/data/one/big.bin")
    assert sb.run(["sha256sum", "/data/one/big.bin"]).stdout.split()[0] == want
    sb.files.download("/data/one/big.bin", tmp_path / "back.bin")
    assert _sha(tmp_path / "back.bin") == want

    sb.files.upload_dir(src, "/data/tree")
    assert sb.run(["sha256sum", "/data/tree/big.bin"]).stdout.split()[0] == want
    assert sb.run("/data/tree/run.sh").stdout == "ran\n"  # modes kept
    sb.run("echo made-inside > /data/tree/deep/inside.txt", check=True)
    out = tmp_path / "out"
    sb.files.download_dir("/data/tree", out)
    assert _sha(out / "big.bin") == want
    assert (out / "deep" / "er" / "small.txt").read_text() == "small\n"
    assert (out / "deep" / "inside.txt").read_text() == "made-inside\n"
    assert os.access(out / "run.sh", os.X_OK)
    with pytest.raises(NotFound):
        sb.files.download_dir("/data/none", tmp_path / "none")
