"""A real burrowd for the SDK's tests, examples and bench, started the way the Rust testkit
(`crates/burrow-testkit`, `Daemon::spawn`) starts one: its own data dir under /var/tmp, unix
socket, TCP port, pool and /24, traffic only to 198.18.0.0/15, DNS to a port where nothing
listens unless the caller passes its own resolver. Stopped with SIGTERM (the ephemeral daemon
removes its sandboxes and pool)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import httpx


def bin_dir() -> Path:
    """BURROW_BIN_DIR, else $CARGO_TARGET_DIR/debug, else /var/cache/burrow/target/debug."""
    if d := os.environ.get("BURROW_BIN_DIR"):
        return Path(d)
    if t := os.environ.get("CARGO_TARGET_DIR"):
        return Path(t) / "debug"
    return Path("/var/cache/burrow/target/debug")


def _host_ipv4() -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    addrs = []
    for line in out.splitlines():
        words = line.split()
        if "inet" in words:
            addrs.append(words[words.index("inet") + 1].split("/")[0])
    return addrs


_counter = 0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM (the ephemeral daemon's cleanup) when the process that
    started it dies, so a killed test run leaves no daemon behind (as the Rust testkit does)."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def next_subnet() -> str:
    """A /24 no interface of the host has an address in (as the testkit's next_subnet), in a
    range of its own (10.200-249.x) so it never meets a Rust test binary's daemons (10.100-187)."""
    global _counter
    in_use = _host_ipv4()
    start = os.getpid() % 50
    while True:
        n = _counter
        _counter += 1
        prefix = f"10.{200 + (start + n // 256) % 50}.{n % 256}."
        if not any(a.startswith(prefix) for a in in_use):
            return prefix + "0/24"


class Daemon:
    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="burrow-test-pysdk-", dir="/var/tmp"))
        os.chmod(self.dir, 0o711)
        self.data_dir = self.dir / "data"
        self.socket = self.dir / "burrowd.sock"
        self.log = self.dir / "burrowd.log"
        self.subnet = next_subnet()
        args = [
            str(bin_dir() / "burrowd"),
            "--data-dir", str(self.data_dir),
            "--socket", str(self.socket),
            "--listen", "127.0.0.1:0",
            "--pool-size-gb", "16",
            "--ephemeral",
            "--subnet", self.subnet,
            "--uplink-only", "198.18.0.0/15",
        ]
        if "--dns-upstream" not in extra_args:
            args += ["--dns-upstream", "127.0.0.1:9"]
        args += list(extra_args)
        env = dict(os.environ, BURROW_LOG="info,burrow=debug", BURROW_LXCFS_DIR=str(self.dir / "lxcfs"))
        for k in ("BURROW_SOCKET", "BURROW_URL", "BURROW_TOKEN"):
            env.pop(k, None)
        with open(self.log, "ab") as log:
            self.proc: Optional[subprocess.Popen[bytes]] = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, preexec_fn=_die_with_parent
            )
        self._wait_ready()
        self.addr = (self.data_dir / "burrowd.addr").read_text().strip()
        self.token = (self.data_dir / "admin.token").read_text().strip()

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def _wait_ready(self) -> None:
        # Bounded: the very first daemon on a host builds the base image.
        deadline = time.monotonic() + 600
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://burrow", timeout=2) as c:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"burrowd exited during start ({self.proc.returncode}); log:\n{self.log_text()}")
                if self.socket.exists() and (self.data_dir / "burrowd.addr").exists():
                    try:
                        if c.get("/healthz").status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"burrowd did not become ready; log:\n{self.log_text()}")
                time.sleep(0.02)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def env(self, tcp: bool = False) -> dict[str, str]:
        """Environment pointing a client (or an example) at this daemon."""
        env = {k: v for k, v in os.environ.items() if k not in ("BURROW_SOCKET", "BURROW_URL", "BURROW_TOKEN")}
        if tcp:
            env.update(BURROW_URL=self.url, BURROW_TOKEN=self.token)
        else:
            env["BURROW_SOCKET"] = str(self.socket)
        return env

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
