"""One real burrowd for the whole run (see daemon.py); clients over its unix socket and over
TCP with its admin token. Nothing is mocked."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest

from burrow import AsyncBurrow, Burrow, Sandbox

from daemon import Daemon, bin_dir


def _require(present: bool, what: str) -> None:
    """A missing prerequisite fails under BURROW_TEST_STRICT=1 (CI) and skips elsewhere."""
    if present:
        return
    if os.environ.get("BURROW_TEST_STRICT") == "1":
        pytest.fail(f"cannot run the SDK tests: {what} (BURROW_TEST_STRICT=1)")
    pytest.skip(what)


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    _require(os.geteuid() == 0, "burrowd needs root")
    _require((bin_dir() / "burrowd").exists(), f"no burrowd in {bin_dir()} (set BURROW_BIN_DIR)")
    d = Daemon()
    try:
        yield d
    finally:
        d.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def bw(daemon: Daemon) -> Iterator[Burrow]:
    with Burrow(socket=str(daemon.socket)) as c:
        yield c


@pytest.fixture(scope="session")
def bw_tcp(daemon: Daemon) -> Iterator[Burrow]:
    with Burrow(url=daemon.url, token=daemon.token) as c:
        yield c


@pytest.fixture(scope="session")
async def abw(daemon: Daemon) -> AsyncIterator[AsyncBurrow]:
    async with AsyncBurrow(socket=str(daemon.socket)) as c:
        yield c


@pytest.fixture(scope="module")
def sb(bw: Burrow) -> Iterator[Sandbox]:
    """A sandbox shared by the tests of one module."""
    with bw.create(unique("t")) as s:
        yield s
