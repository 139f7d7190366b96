"""Exec round trip of `true` through the SDK vs the raw API (httpx directly), in the same run,
interleaved so both see the same daemon and machine state. Prints the medians and the ratio
(the target is at most 1.2: the SDK adds no more than a fifth).

    BURROW_SOCKET=/run/burrow/burrowd.sock python bench.py [ROUNDS]

Without BURROW_SOCKET it starts a daemon of its own (tests/daemon.py; root, BURROW_BIN_DIR)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from burrow import AsyncBurrow, Burrow


@contextlib.contextmanager
def daemon_socket() -> Iterator[str]:
    if sock := os.environ.get("BURROW_SOCKET"):
        yield sock
        return
    sys.path.insert(0, str(Path(__file__).parent / "tests"))
    from daemon import Daemon
    with Daemon() as d:
        yield str(d.socket)


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    with daemon_socket() as sock, Burrow(socket=sock) as bw:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        with bw.create(name) as sb:
            raw = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://burrow")
            path = f"/v1/sandboxes/{name}/exec"

            def raw_run() -> None:
                r = raw.post(path, json={"cmd": ["true"]})
                assert r.status_code == 200 and r.json()["exit_code"] == 0

            def sdk_run() -> None:
                assert sb.run(["true"]).exit_code == 0

            for _ in range(20):  # warm both paths
                raw_run()
                sdk_run()
            t_raw, t_sdk = [], []
            for i in range(rounds):  # alternate which goes first, so order favours neither
                if i % 2:
                    t_raw.append(timed(raw_run))
                    t_sdk.append(timed(sdk_run))
                else:
                    t_sdk.append(timed(sdk_run))
                    t_raw.append(timed(raw_run))
            raw.close()

            async def async_pair() -> tuple[list[float], list[float]]:
                a_raw, a_sdk = [], []
                async with AsyncBurrow(socket=sock) as abw, httpx.AsyncClient(
                        transport=httpx.AsyncHTTPTransport(uds=sock), base_url="http://burrow") as araw:
                    asb = await abw.get(name)
                    async def raw_once() -> float:
                        t = time.perf_counter()
                        r = await araw.post(path, json={"cmd": ["true"]})
                        assert r.json()["exit_code"] == 0
                        return (time.perf_counter() - t) * 1000

                    async def sdk_once() -> float:
                        t = time.perf_counter()
                        assert (await asb.run(["true"])).exit_code == 0
                        return (time.perf_counter() - t) * 1000

                    for i in range(rounds + 20):
                        if i % 2:
                            pair = (await raw_once(), await sdk_once())
                        else:
                            s_first = await sdk_once()
                            pair = (await raw_once(), s_first)
                        if i >= 20:
                            a_raw.append(pair[0])
                            a_sdk.append(pair[1])
                return a_raw, a_sdk
            a_raw, a_sdk = asyncio.run(async_pair())

    for label, r, s in (("sync ", t_raw, t_sdk), ("async", a_raw, a_sdk)):
        mr, ms = statistics.median(r), statistics.median(s)
        print(f"{label}: exec `true` median over {rounds}: raw httpx {mr:.2f} ms, SDK {ms:.2f} ms, "
              f"ratio {ms / mr:.2f}")


if __name__ == "__main__":
    main()
