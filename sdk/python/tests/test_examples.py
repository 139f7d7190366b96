"""Every example in examples/python and every Python block of the SDK's README runs against a
real daemon, so a quick start can never break silently. The credential-proxy example gets a
daemon of its own that resolves and trusts a fake upstream in a namespace (never the internet)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import Daemon
from fake_upstream import FakeUpstream

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[2] / "examples" / "python"
README = HERE.parent / "README.md"

EXPECT = {
    "run_untrusted_code.py": ['"stdout": "hello from job-', '"error": "timed out after 1 s"', "gaierror"],
    "agent_checkpoint_restore.py": ["step 2 broke the sandbox; restored", "step one\nstep three\n"],
    "fork_five_attempts.py": ["fork-try-2: pass", "winner: fork-try-2"],
    "web_service.py": ["by URL: 200 {'path': '/hello'", "through the API: {'path': '/api/x'"],
}


def run_python(path_or_code: str, env: dict[str, str], *, code: bool = False) -> str:
    args = [sys.executable, "-c", path_or_code] if code else [sys.executable, path_or_code]
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180, cwd=EXAMPLES)
    assert r.returncode == 0, f"{path_or_code[:200]}\nexit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted([*EXPECT, "secret_via_proxy.py"])


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example(name: str, daemon: Daemon) -> None:
    out = run_python(str(EXAMPLES / name), daemon.env())
    for want in EXPECT[name]:
        assert want in out, f"{name}: {want!r} not in:\n{out}"


@pytest.fixture(scope="module")
def upstream_daemon() -> Iterator[tuple[FakeUpstream, Daemon]]:
    up = FakeUpstream(["api.example.test", "other.example.test"])
    try:
        with Daemon(["--dns-upstream", up.dns, "--egress-ca", str(up.ca_pem)]) as d:
            yield up, d
    finally:
        up.close()


def test_secret_example(upstream_daemon: tuple[FakeUpstream, Daemon]) -> None:
    up, d = upstream_daemon
    value = "ghp_REALsecretVALUE0123456789"
    env = d.env()
    env.update(UPSTREAM="https://api.example.test/user", ELSEWHERE="https://other.example.test/",
               SECRET_VALUE=value)
    out = run_python(str(EXAMPLES / "secret_via_proxy.py"), env)
    assert "inside, API_TOKEN is a placeholder: bm1_" in out and value not in out
    assert "to another host: 403" in out
    reqs = up.requests()
    # The upstream got the real value, once; the other host got nothing.
    assert [r["headers"].get("authorization") for r in reqs] == [f"token {value}"], reqs
    assert all(r["host"] == "api.example.test" for r in reqs)


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_blocks() -> None:
    assert len(readme_blocks()) >= 6


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_block(index: int, daemon: Daemon) -> None:
    run_python(readme_blocks()[index], daemon.env(), code=True)
