"""The MCP exec tool's round trip over Streamable HTTP (target: 5 ms or less), next to the
REST exec it wraps, in one run against a daemon this script starts (like the tests do).

    /var/cache/burrow/venv-mcp/bin/python tests/mcp/bench_mcp.py [--runs 200] [--json out.json]

Figures (medians and p95, ms): `rest_exec_true` (POST /v1/sandboxes/{name}/exec),
`mcp_exec_true_http` (a tools/call of `exec` as one raw POST /mcp on a kept-alive connection),
`mcp_exec_true_sdk` (the same call through the official Python SDK's client session)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import start_daemon, unique  # noqa: E402


def summary(samples: list[float]) -> dict:
    s = sorted(samples)
    return {
        "median_ms": round(statistics.median(s), 3),
        "p95_ms": round(s[round((len(s) - 1) * 0.95)], 3),
        "min_ms": round(s[0], 3),
        "runs": len(s),
    }


def timed(n: int, f) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with start_daemon() as d:
        name = unique("mcp-bench")
        status, body = d.api("POST", "/v1/sandboxes", {"name": name})
        assert status == 201, body
        auth = {"Authorization": f"Bearer {d.admin_token}"}
        figures = {}
        try:
            with httpx2.Client(base_url=d.url, headers=auth) as h:
                def rest():
                    r = h.post(f"/v1/sandboxes/{name}/exec", json={"cmd": ["true"]})
                    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text

                call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                        "params": {"name": "exec", "arguments": {"sandbox": name, "cmd": ["true"]}}}
                mcp_headers = {"Accept": "application/json, text/event-stream",
                               "MCP-Protocol-Version": "2025-06-18"}

                def mcp():
                    r = h.post("/mcp", json=call, headers=mcp_headers)
                    assert r.status_code == 200, r.text
                    res = r.json()["result"]
                    assert not res.get("isError") and res["structuredContent"]["exit_code"] == 0, res

                for f in (rest, mcp):
                    timed(10, f)  # warm-up
                figures["rest_exec_true"] = summary(timed(args.runs, rest))
                figures["mcp_exec_true_http"] = summary(timed(args.runs, mcp))
            figures["mcp_exec_true_sdk"] = summary(asyncio.run(sdk_samples(d, name, args.runs)))
        finally:
            d.api("DELETE", f"/v1/sandboxes/{name}")
    out = {"target": "mcp_exec_true_http median <= 5 ms", "figures": figures}
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


async def sdk_samples(d, name: str, runs: int) -> list[float]:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {d.admin_token}"})
    async with Client(streamable_http_client(f"{d.url}/mcp", http_client=http)) as c:
        for _ in range(10):
            await c.call_tool("exec", {"sandbox": name, "cmd": ["true"]})
        out = []
        for _ in range(runs):
            t = time.perf_counter()
            r = await c.call_tool("exec", {"sandbox": name, "cmd": ["true"]})
            out.append((time.perf_counter() - t) * 1000)
            assert not r.is_error and r.structured_content["exit_code"] == 0
        return out


if __name__ == "__main__":
    main()
