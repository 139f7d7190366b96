"""A fake upstream for the credential-proxy example: a network namespace this test makes,
with a veth to the host (198.19.N.1 here, DNS on .2, the HTTPS echo on .10), running the
network tests' own servers (crates/burrowd/tests/support/fake_internet.py) with a test CA.
A daemon given `--dns-upstream` and `--egress-ca` from here resolves and trusts it; nothing
reaches a real network. Namespace and link names start like the Rust tests' (`bwt-`,
`bwti`), so scripts/cleanup-test-leftovers.sh removes any a killed run leaves."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
SERVERS = REPO / "crates/burrowd/tests/support/fake_internet.py"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class FakeUpstream:
    def __init__(self, names: list[str]) -> None:
        in_use = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
        net = 100 + os.getpid() % 100
        while f"198.19.{net}." in in_use:
            net = 100 + (net + 1) % 100
        self.net = net
        self.ns, self.host_if = f"bwt-py-{net}", f"bwtipy{net}"
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        _ip("addr", "add", f"198.19.{net}.1/24", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.ns, "addr", "add", f"198.19.{net}.2/24", "dev", "eth0")
        self.addrs = {n: f"198.19.{net}.{10 + i}" for i, n in enumerate(names)}
        for a in self.addrs.values():
            _ip("-n", self.ns, "addr", "add", f"{a}/24", "dev", "eth0")
        _ip("-n", self.ns, "link", "set", "eth0", "up")
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", self.ns, "route", "add", "default", "via", f"198.19.{net}.1")

        self._dir = tempfile.TemporaryDirectory(prefix="burrow-pysdk-inet-")
        d = Path(self._dir.name)
        self.ca_pem = d / "ca.pem"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=fake upstream test CA",
                 "-keyout", str(d / "ca.key"), "-out", str(self.ca_pem))
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={names[0]}",
                 "-keyout", str(d / "key.pem"), "-out", str(d / "leaf.csr"))
        (d / "san.ext").write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n")
        _openssl("x509", "-req", "-in", str(d / "leaf.csr"), "-CA", str(self.ca_pem), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "1", "-extfile", str(d / "san.ext"), "-out", str(d / "cert.pem"))
        self.log = d / "requests.log"
        self.log.write_text("")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "python3", str(SERVERS), "--cert", str(d / "cert.pem"),
             "--key", str(d / "key.pem"), "--log", str(self.log),
             *[f"{n}={a}" for n, a in self.addrs.items()]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if line != "READY":
            self.close()
            raise RuntimeError(f"the fake upstream did not start: {line!r}")

    @property
    def dns(self) -> str:
        return f"198.19.{self.net}.2:53"

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        self._dir.cleanup()
