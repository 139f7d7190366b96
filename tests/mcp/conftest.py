"""A real burrowd for the MCP tests, started like crates/burrow-testkit's Daemon: its own data
dir, socket, free TCP port and sandbox subnet, sandbox traffic confined to loopback-only
fake ranges, cleaned up (--ephemeral) when the session ends."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest


def bin_dir() -> Path:
    if os.environ.get("BURROW_BIN_DIR"):
        return Path(os.environ["BURROW_BIN_DIR"])
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"]) / "debug"
    return Path(__file__).resolve().parents[2] / "target" / "debug"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 120.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


@dataclass
class Daemon:
    socket: str
    url: str
    admin_token: str
    log: Path

    def api(self, method: str, path: str, body: object | None = None) -> tuple[int, object]:
        """A REST call on the unix socket (no token: the admin's view)."""
        conn = UnixHTTPConnection(self.socket)
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        raw = r.read()
        conn.close()
        return r.status, (json.loads(raw) if raw.strip() else None)

    def token(self, sandboxes: list[str], actions: list[str]) -> str:
        status, body = self.api("POST", "/v1/tokens", {"caveats": {"sandboxes": sandboxes, "actions": actions}})
        assert status == 201, body
        return body["token"]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def free_subnet() -> str:
    """A /24 no interface of this host has an address in (daemons run side by side), in a range
    of its own (10.250.x): the other suites' daemons run at the same time (scripts/test.sh)."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    used = out
    start = os.getpid() % 200
    for i in range(256):
        prefix = f"10.250.{(start + i) % 256}."
        if prefix not in used:
            return prefix + "0/24"
    raise RuntimeError("no free 10.250.x.0/24")


def _die_with_parent() -> None:
    # burrowd gets SIGTERM (its ephemeral cleanup) if pytest dies.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _healthy(sock: str) -> bool:
    try:
        conn = UnixHTTPConnection(sock, timeout=2)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


@contextlib.contextmanager
def start_daemon() -> Iterator[Daemon]:
    """Starts a daemon and waits until it serves; stops it (and its sandboxes) on exit."""
    burrowd = bin_dir() / "burrowd"
    assert burrowd.exists(), f"{burrowd} is missing: build first (bash scripts/build.sh debug)"
    assert os.geteuid() == 0, "burrowd needs root"
    tmp = Path(tempfile.mkdtemp(prefix="burrow-mcp-test-", dir="/var/tmp"))
    os.chmod(tmp, 0o711)
    data_dir, sock, log = tmp / "data", tmp / "burrowd.sock", tmp / "burrowd.log"
    cmd = [
        str(burrowd),
        "--data-dir", str(data_dir),
        "--socket", str(sock),
        "--listen", "127.0.0.1:0",
        "--pool-size-gb", "16",
        "--ephemeral",
        "--subnet", free_subnet(),
        "--uplink-only", "198.18.0.0/15",
        "--dns-upstream", "127.0.0.1:9",
        "--default-engine", "container",
    ]
    env = dict(os.environ, BURROW_LOG="info,rmcp=warn", BURROW_LXCFS_DIR=str(tmp / "lxcfs"))
    with open(log, "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                                preexec_fn=_die_with_parent)
    # Bounded: the very first daemon on a host builds the base image.
    deadline = time.monotonic() + 600
    while not _healthy(str(sock)):
        assert proc.poll() is None, f"burrowd exited during start:\n{log.read_text(errors='replace')[-6000:]}"
        assert time.monotonic() < deadline, f"burrowd did not become ready:\n{log.read_text(errors='replace')[-6000:]}"
        time.sleep(0.05)
    addr = (data_dir / "burrowd.addr").read_text().strip()
    token = (data_dir / "admin.token").read_text().strip()
    d = Daemon(socket=str(sock), url=f"http://{addr}", admin_token=token, log=log)
    try:
        yield d
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    with start_daemon() as d:
        yield d


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # A failing test prints the tail of the daemon's log (nothing else keeps it).
    outcome = yield
    rep = outcome.get_result()
    d = item.funcargs.get("daemon") if hasattr(item, "funcargs") else None
    if rep.failed and d is not None:
        rep.sections.append(("burrowd log (tail)", d.log_tail()))


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 10000}-{random.randrange(1 << 20):05x}"
