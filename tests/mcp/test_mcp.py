"""burrow's MCP server driven by the official Python MCP SDK, over stdio (`burrow mcp`) and
Streamable HTTP (`POST /mcp` on burrowd), against a real daemon with real sandboxes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from typing import Any, AsyncIterator

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import Daemon, bin_dir, unique

TOOLS = {
    "list_sandboxes", "get_sandbox", "create_sandbox", "delete_sandbox",
    "exec", "exec_poll", "exec_kill",
    "read_file", "write_file", "list_files",
    "checkpoint", "list_checkpoints", "restore", "fork",
    "service_url",
}
READ_ONLY = {"list_sandboxes", "get_sandbox", "exec_poll", "read_file", "list_files", "list_checkpoints", "service_url"}
DESTRUCTIVE = {"delete_sandbox", "exec", "exec_kill", "write_file", "restore"}


@contextlib.asynccontextmanager
async def connect(daemon: Daemon, transport: str, token: str | None = None) -> AsyncIterator[Client]:
    """An MCP client session: `burrow mcp` (on the daemon's socket, or over TCP with `token`),
    or /mcp with `token` (default: the admin's)."""
    if transport == "stdio":
        env = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
        if token is None:
            env["BURROW_SOCKET"] = daemon.socket
        else:
            env.update(BURROW_URL=daemon.url, BURROW_TOKEN=token)
        server: Any = StdioServerParameters(command=str(bin_dir() / "burrow"), args=["mcp"], env=env)
    else:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token or daemon.admin_token}"})
        server = streamable_http_client(f"{daemon.url}/mcp", http_client=http)
    async with Client(server) as client:
        yield client


async def call(client: Client, tool: str, **args: Any) -> dict:
    """Calls a tool that must succeed; returns its structured result."""
    r = await client.call_tool(tool, args)
    text = " ".join(getattr(c, "text", "") for c in r.content)
    assert not r.is_error, f"{tool}({args}) failed: {text}"
    assert isinstance(r.structured_content, dict), r
    # The text content says the same as the structured one (clients that read only text).
    assert json.loads(text) == r.structured_content
    return r.structured_content


async def fails(client: Client, tool: str, **args: Any) -> str:
    """Calls a tool that must fail as a tool error; returns the error's text."""
    r = await client.call_tool(tool, args)
    text = " ".join(getattr(c, "text", "") for c in r.content)
    assert r.is_error, f"{tool}({args}) should have failed: {text}"
    return text


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_tools_are_listed_with_annotations_and_schemas(daemon: Daemon, transport: str):
    async def go():
        async with connect(daemon, transport) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert TOOLS <= set(tools), TOOLS - set(tools)
            for name, t in tools.items():
                assert t.description, name
                assert t.input_schema.get("type") == "object", name
                a = t.annotations
                assert a is not None, name
                assert a.read_only_hint is (name in READ_ONLY), name
                if name not in READ_ONLY:
                    assert a.destructive_hint is (name in DESTRUCTIVE), name
            assert "sandbox" in tools["exec"].input_schema["required"]
            assert {"cmd", "shell", "background", "timeout_s", "max_output_bytes"} <= set(
                tools["exec"].input_schema["properties"]
            )

    run(go())


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_every_tool_on_a_real_sandbox(daemon: Daemon, transport: str):
    name = unique(f"mcp-{transport}")
    twin = f"{name}-fork"

    async def go():
        async with connect(daemon, transport) as c:
            sb = await call(c, "create_sandbox", name=name, labels={"suite": "mcp"})
            assert sb["name"] == name and sb["status"] == "running", sb
            try:
                await walkthrough(c)
            finally:
                for n in (twin, name):
                    r = await c.call_tool("delete_sandbox", {"sandbox": n})
            assert not r.is_error
            # Gone: the API's own message comes back as a tool error.
            msg = await fails(c, "get_sandbox", sandbox=name)
            assert "does not exist" in msg and "not_found" in msg, msg

    async def walkthrough(c: Client):
        listed = await call(c, "list_sandboxes", prefix=name)
        assert [s["name"] for s in listed["sandboxes"]] == [name]
        assert (await call(c, "get_sandbox", sandbox=name))["labels"] == {"suite": "mcp"}

        # exec: argv, shell, stdin, env, cwd, exit codes, bounded output, timeout.
        r = await call(c, "exec", sandbox=name, cmd=["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (r["exit_code"], r["stdout"], r["stderr"], r["timed_out"]) == (3, "out\n", "err\n", False)
        r = await call(c, "exec", sandbox=name, shell="cat; echo $GREETING; pwd", stdin="in\n",
                       env={"GREETING": "hi"}, cwd="/tmp")
        assert r["stdout"] == "in\nhi\n/tmp\n", r
        r = await call(c, "exec", sandbox=name, shell="head -c 100000 /dev/zero | tr '\\0' x", max_output_bytes=1000)
        assert len(r["stdout"]) == 1000 and r["stdout_truncated"] is True, {k: r[k] for k in r if k != "stdout"}
        r = await call(c, "exec", sandbox=name, cmd=["sleep", "30"], timeout_s=1)
        assert r["timed_out"] is True, r
        assert "either cmd or shell" in await fails(c, "exec", sandbox=name, cmd=["true"], shell="true")

        # files
        w = await call(c, "write_file", sandbox=name, path="/srv/app/hello.txt", content="hello mcp\n")
        assert w == {"path": "/srv/app/hello.txt", "size": 10}
        assert (await call(c, "read_file", sandbox=name, path="/srv/app/hello.txt"))["text"] == "hello mcp\n"
        await call(c, "write_file", sandbox=name, path="/srv/app/run.sh", content="#!/bin/sh\necho ran\n", mode="0755")
        assert (await call(c, "exec", sandbox=name, cmd=["/srv/app/run.sh"]))["stdout"] == "ran\n"
        blob = bytes(range(256))
        await call(c, "write_file", sandbox=name, path="/srv/app/blob", content=base64.b64encode(blob).decode(), base64=True)
        got = await call(c, "read_file", sandbox=name, path="/srv/app/blob")
        assert base64.b64decode(got["base64"]) == blob and "text" not in got
        cut = await call(c, "read_file", sandbox=name, path="/srv/app/hello.txt", max_bytes=5)
        assert (cut["text"], cut["truncated"]) == ("hello", True)
        entries = {e["name"]: e for e in (await call(c, "list_files", sandbox=name, path="/srv/app"))["entries"]}
        assert set(entries) == {"hello.txt", "run.sh", "blob"}
        assert entries["hello.txt"]["size"] == 10 and entries["hello.txt"]["type"] == "file"
        msg = await fails(c, "read_file", sandbox=name, path="/srv/app/nope")
        assert "not_found" in msg, msg
        msg = await fails(c, "read_file", sandbox=name, path="relative/path")
        assert "absolute" in msg, msg

        # checkpoint, wreck, restore
        cp = await call(c, "checkpoint", sandbox=name, comment="clean")
        assert cp["id"].startswith("v") and cp["comment"] == "clean"
        await call(c, "exec", sandbox=name, shell="rm -rf /srv/app")
        assert "not_found" in await fails(c, "read_file", sandbox=name, path="/srv/app/hello.txt")
        restored = await call(c, "restore", sandbox=name, checkpoint=cp["id"])
        assert restored["restored"] == cp["id"] and restored["backup"].startswith("v")
        assert (await call(c, "read_file", sandbox=name, path="/srv/app/hello.txt"))["text"] == "hello mcp\n"
        ids = [x["id"] for x in (await call(c, "list_checkpoints", sandbox=name))["checkpoints"]]
        assert cp["id"] in ids and restored["backup"] in ids
        assert "v999" in await fails(c, "restore", sandbox=name, checkpoint="v999")

        # fork: the copy has the file, and is a sandbox of its own
        f = await call(c, "fork", sandbox=name, name=twin, checkpoint=cp["id"])
        assert f["name"] == twin and f["parent"]["sandbox"] == name
        await call(c, "write_file", sandbox=twin, path="/srv/app/hello.txt", content="twin\n")
        assert (await call(c, "read_file", sandbox=name, path="/srv/app/hello.txt"))["text"] == "hello mcp\n"
        assert (await call(c, "read_file", sandbox=twin, path="/srv/app/hello.txt"))["text"] == "twin\n"

        # URL of the sandbox's web service
        u = await call(c, "service_url", sandbox=name)
        assert u["url"].startswith(f"http://{name}.") and u["api_path"] == f"/v1/sandboxes/{name}/http/"

        # background: start, poll (output so far), finish, poll (exit); kill a long one
        await call(c, "exec", sandbox=name, cmd=["mkfifo", "/srv/app/fifo"])
        bg = await call(c, "exec", sandbox=name, background=True,
                        shell="echo started; read line < /srv/app/fifo; echo got $line; exit 7")
        sid = bg["session_id"]
        assert bg["running"] is True and sid
        p = await call(c, "exec_poll", sandbox=name, session_id=sid, wait_s=0)
        # The command may not have printed yet; it cannot have finished (it waits on the fifo).
        assert p["running"] is True and "exit_code" not in p and p["stdout"] in ("", "started\n"), p
        await call(c, "exec", sandbox=name, shell="echo go > /srv/app/fifo")
        p = await call(c, "exec_poll", sandbox=name, session_id=sid, wait_s=30)
        assert (p["running"], p["exit_code"], p["stdout"]) == (False, 7, "started\ngot go\n"), p
        long = await call(c, "exec", sandbox=name, background=True, cmd=["sleep", "600"])
        k = await call(c, "exec_kill", sandbox=name, session_id=long["session_id"], signal="TERM")
        assert k["signal"] == "TERM"
        p = await call(c, "exec_poll", sandbox=name, session_id=long["session_id"], wait_s=30)
        assert p["running"] is False and p.get("signal") == "TERM", p
        assert "not_found" in await fails(c, "exec_poll", sandbox=name, session_id="no-such-session")

        # errors are tool errors with the API's message; the server keeps serving
        msg = await fails(c, "exec", sandbox="no-such-sandbox", cmd=["true"])
        assert "does not exist" in msg and "not_found" in msg, msg
        msg = await fails(c, "create_sandbox", name="Bad_Name")
        assert "Bad_Name" in msg, msg
        msg = await fails(c, "create_sandbox", name=name)
        assert "conflict" in msg or "exists" in msg, msg
        assert (await call(c, "exec", sandbox=name, cmd=["echo", "still here"]))["stdout"] == "still here\n"

    run(go())


def test_http_needs_a_valid_token(daemon: Daemon):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    with httpx2.Client() as h:
        r = h.post(f"{daemon.url}/mcp", json=body, headers=headers)
        assert r.status_code == 401, r.text
        r = h.post(f"{daemon.url}/mcp", json=body, headers={**headers, "Authorization": "Bearer not-a-token"})
        assert r.status_code == 401, r.text
    # Control: the admin token reaches the same endpoint through the SDK.
    async def go():
        async with connect(daemon, "http") as c:
            assert TOOLS <= {t.name for t in (await c.list_tools()).tools}

    run(go())


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_scoped_token_reaches_only_its_sandboxes_and_actions(daemon: Daemon, transport: str):
    mine, other = unique("mcp-mine"), unique("mcp-other")
    for n in (mine, other):
        status, body = daemon.api("POST", "/v1/sandboxes", {"name": n})
        assert status == 201, body
    token = daemon.token([mine], ["exec", "files", "read"])

    async def go():
        async with connect(daemon, transport, token) as c:
            # Positive control: its own sandbox, its own actions.
            r = await call(c, "exec", sandbox=mine, cmd=["echo", "mine"])
            assert r["stdout"] == "mine\n"
            await call(c, "write_file", sandbox=mine, path="/tmp/x", content="x")
            assert (await call(c, "read_file", sandbox=mine, path="/tmp/x"))["text"] == "x"
            assert [s["name"] for s in (await call(c, "list_sandboxes"))["sandboxes"]] == [mine]
            # Another sandbox: every tool is refused with the API's 403 message.
            for tool, args in [
                ("exec", {"cmd": ["echo", "theirs"]}),
                ("read_file", {"path": "/etc/hostname"}),
                ("write_file", {"path": "/tmp/x", "content": "x"}),
                ("list_files", {"path": "/"}),
                ("get_sandbox", {}),
                ("delete_sandbox", {}),
                ("checkpoint", {}),
                ("fork", {"name": unique("mcp-stolen")}),
            ]:
                msg = await fails(c, tool, sandbox=other, **args)
                assert "forbidden" in msg or "not allowed" in msg, (tool, msg)
            # Its own sandbox, an action it lacks.
            msg = await fails(c, "delete_sandbox", sandbox=mine)
            assert "delete" in msg, msg
            msg = await fails(c, "checkpoint", sandbox=mine)
            assert "checkpoints" in msg, msg

    try:
        run(go())
        # Nothing the scoped token tried happened to the other sandbox.
        status, _ = daemon.api("GET", f"/v1/sandboxes/{other}")
        assert status == 200
        status, body = daemon.api("POST", f"/v1/sandboxes/{other}/exec", {"cmd": ["cat", "/tmp/x"]})
        assert status == 200 and body["exit_code"] != 0, body
    finally:
        for n in (mine, other):
            daemon.api("DELETE", f"/v1/sandboxes/{n}")


def test_stdio_without_a_daemon_answers_with_tool_errors(tmp_path):
    """`burrow mcp` starts and lists its tools with no daemon; a call says it cannot reach it."""

    async def go():
        env = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
        env["BURROW_SOCKET"] = str(tmp_path / "no-daemon.sock")
        params = StdioServerParameters(command=str(bin_dir() / "burrow"), args=["mcp"], env=env)
        async with Client(params) as c:
            assert TOOLS <= {t.name for t in (await c.list_tools()).tools}
            msg = await fails(c, "list_sandboxes")
            assert "cannot reach burrowd" in msg, msg
            # The server is still there after the error.
            assert "cannot reach burrowd" in await fails(c, "exec", sandbox="x", cmd=["true"])

    run(go())
