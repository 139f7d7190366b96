"""The asyncio client: the one implementation. `burrow.Burrow` (sync) drives this same code
on a private event loop thread.

HTTP goes through httpx (a unix-socket transport or TCP with a bearer token); the streaming
exec and session attach go through `websockets`, with the framing of the API: binary frames
are `[stream byte][payload]` (0 stdin, 1 stdout, 2 stderr, 4 stdin EOF), text frames JSON
(`session` first, `exit` last, always)."""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import (IO, Any, AsyncGenerator, AsyncIterator, Awaitable, Generator, Iterable, Mapping, Optional,
                    Sequence, Union, cast)
from urllib.parse import quote

import httpx
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from . import errors
from .errors import BurrowError, CommandError, CommandTimeout, ConnectionFailed
from .models import (Checkpoint, CommandResult, Event, Exit, FileEntry, ForkSource, NetworkPolicy,
                     NetworkRule, Replay, RestoreResult, SandboxInfo, Secret, Service, SessionInfo,
                     Stderr, Stdout)
from .tokens import Expiry, _unix

DEFAULT_SOCKET = "/run/burrow/burrowd.sock"
"""Where burrowd listens when neither BURROW_SOCKET nor BURROW_URL says otherwise."""

Command = Union[str, Sequence[str]]
"""argv (a list), or a shell line run with `sh -c`."""

_CHUNK = 1 << 20


def _argv(cmd: Command) -> list[str]:
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    argv = [str(a) for a in cmd]
    if not argv:
        raise errors.InvalidRequest("the command is empty", code="invalid")
    return argv


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class _Conn:
    """Where the daemon is and how to talk to it (shared by HTTP and WebSocket)."""

    def __init__(self, socket: Optional[str], url: Optional[str], token: Optional[str],
                 timeout: float, inline: bool = False, retries: int = 10) -> None:
        self.retries = retries
        # `inline`: plain HTTP over a blocking httpx.Client, so a coroutine of this connection
        # never suspends and the sync client runs it to completion in its own thread (no loop,
        # no thread hop). Streams (WebSocket, streamed bodies) need the asyncio connection.
        self.inline = inline
        env = os.environ
        if socket is None and url is None:
            socket = env.get("BURROW_SOCKET") or None
            if socket is None:
                url = env.get("BURROW_URL") or None
            if socket is None and url is None:
                socket = DEFAULT_SOCKET
        if url is not None and token is None:
            token = env.get("BURROW_TOKEN") or None
        self.socket = socket
        self.token = token
        self.timeout = timeout
        headers = {"user-agent": "burrow-sdk-python/0.1"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self.headers = headers
        if socket is not None:
            self.base = "http://burrow"
            self.ws_base = "ws://burrow"
        else:
            assert url is not None
            if not url.startswith("http://"):
                raise errors.InvalidRequest(f"BURROW_URL '{url}' must start with http://", code="config")
            self.base = url.rstrip("/")
            self.ws_base = "ws://" + self.base[len("http://"):]
        t = httpx.Timeout(timeout, connect=10.0)
        if inline:
            self.http_sync = httpx.Client(transport=httpx.HTTPTransport(uds=socket), base_url=self.base,
                                          headers=headers, timeout=t)
        else:
            self.http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=socket), base_url=self.base,
                                          headers=headers, timeout=t)

    async def aclose(self) -> None:
        if self.inline:
            self.http_sync.close()
        else:
            await self.http.aclose()

    async def send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request, its answer whatever the status; transport failures typed."""
        try:
            if self.inline:
                return self.http_sync.request(method, path, **kw)
            return await self.http.request(method, path, **kw)
        except httpx.TimeoutException as e:
            raise errors.Timeout(f"{method} {path}: no answer in time ({e!r})", code="timeout") from e
        except httpx.TransportError as e:
            raise ConnectionFailed(f"cannot reach burrowd at {self.where}: {e!r}", code="connection") from e

    async def ws(self, path: str, query: Sequence[tuple[str, str]] = ()) -> ClientConnection:
        assert not self.inline, "WebSockets need the asyncio connection"
        qs = httpx.QueryParams(list(query))
        uri = f"{self.ws_base}{path}" + (f"?{qs}" if qs else "")
        kw: dict[str, Any] = dict(max_size=None, compression=None, open_timeout=30,
                                  ping_interval=None, user_agent_header=self.headers["user-agent"])
        if self.token:
            kw["additional_headers"] = {"authorization": f"Bearer {self.token}"}
        try:
            if self.socket is not None:
                return await unix_connect(self.socket, uri, **kw)
            return await connect(uri, **kw)
        except InvalidStatus as e:
            raise _error_from(e.response.status_code, bytes(e.response.body or b""),
                              e.response.headers.get("retry-after")) from None
        except (OSError, WebSocketException, asyncio.TimeoutError) as e:
            raise ConnectionFailed(f"cannot open a WebSocket to burrowd at {self.where}: {e}",
                                   code="connection") from e

    @property
    def where(self) -> str:
        return self.socket if self.socket is not None else self.base

    async def request(self, method: str, path: str, *, json_body: Any = None,
                      params: Any = None, content: Any = None,
                      headers: Optional[Mapping[str, str]] = None,
                      timeout: Union[float, None, httpx.Timeout, object] = ...) -> httpx.Response:
        kw: dict[str, Any] = {}
        if timeout is not ...:
            kw["timeout"] = timeout
        attempt = 0
        while True:
            resp = await self.send(method, path, json=json_body, params=params, content=content,
                                   headers=headers, **kw)
            if resp.status_code < 400:
                return resp
            err = _error_from(resp.status_code, resp.content, resp.headers.get("retry-after"))
            # The daemon's shared buffer budget was taken by other requests: nothing was done,
            # so the same request is safe to send again after its Retry-After (a body that is
            # a stream cannot be replayed).
            replayable = content is None or isinstance(content, (bytes, str))
            if (isinstance(err, errors.RateLimited) and err.code in _RETRYABLE and replayable
                    and attempt < self.retries):
                attempt += 1
                await self.pause(min(err.retry_after or 1.0, 5.0))
                continue
            raise err

    async def pause(self, seconds: float) -> None:
        if self.inline:
            time.sleep(seconds)  # must not suspend: the sync client runs this coroutine inline
        else:
            await asyncio.sleep(seconds)

    async def json(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self.request(method, path, **kw)
        return resp.json() if resp.content else None

    async def stream(self, method: str, path: str, params: Any = None,
                     read_timeout: Optional[float] = None) -> httpx.Response:
        assert not self.inline, "streams need the asyncio connection"
        req = self.http.build_request(method, path, params=params,
                                      timeout=httpx.Timeout(None, connect=10.0, read=read_timeout))
        try:
            resp = await self.http.send(req, stream=True)
        except httpx.TransportError as e:
            raise ConnectionFailed(f"cannot reach burrowd at {self.where}: {e!r}", code="connection") from e
        if resp.status_code >= 400:
            body = await resp.aread()
            await resp.aclose()
            raise _error_from(resp.status_code, body, resp.headers.get("retry-after"))
        return resp


_RETRYABLE = {"exec_budget_exhausted", "buffer_budget_exhausted"}
"""429 codes that mean the daemon did nothing because its shared buffer budget was taken."""


def _error_from(status: int, body: bytes, retry_after: Optional[str] = None) -> BurrowError:
    code, message, parsed = f"http_{status}", body.decode(errors="replace").strip() or f"HTTP {status}", None
    try:
        parsed = json.loads(body)
        err = parsed["error"]
        code, message = str(err["code"]), str(err["message"])
    except (ValueError, KeyError, TypeError):
        parsed = None
    ra: Optional[float] = None
    if retry_after:
        try:
            ra = float(retry_after)
        except ValueError:
            pass
    return errors.error_for(status, code, message, parsed if isinstance(parsed, dict) else None, ra)


class AsyncBurrow:
    """A connection to burrowd.

    With no arguments: `BURROW_SOCKET` (a unix socket, no token), else `BURROW_URL` with
    `BURROW_TOKEN` (TCP), else the default socket `/run/burrow/burrowd.sock`. A request the
    daemon turned away because its shared buffer budget was taken (429
    `exec_budget_exhausted`, `buffer_budget_exhausted`: nothing was done) is sent again after
    its Retry-After, up to `retries` times; then it raises RateLimited."""

    def __init__(self, *, socket: Optional[str] = None, url: Optional[str] = None,
                 token: Optional[str] = None, timeout: float = 300.0, retries: int = 10,
                 _inline: bool = False) -> None:
        self._c = _Conn(socket, url, token, timeout, _inline, retries)
        self.secrets = AsyncSecrets(self._c)
        self.tokens = AsyncTokens(self._c)

    async def close(self) -> None:
        await self._c.aclose()

    async def __aenter__(self) -> "AsyncBurrow":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- sandboxes ----

    def create(self, name: str, *, image: Optional[str] = None, engine: Optional[str] = None,
               cpus: Optional[float] = None, memory_mb: Optional[int] = None,
               disk_gb: Optional[int] = None, env: Optional[Mapping[str, str]] = None,
               labels: Optional[Mapping[str, str]] = None, idle_timeout_s: Optional[int] = None,
               url_auth: Optional[str] = None, fork_from: Optional[ForkSource] = None,
               keep: bool = False, **extra: Any) -> "SandboxCreation":
        """Creates a sandbox and waits until it runs. Await it, or use it as an async context
        manager (`async with bw.create("x") as sb:`), which deletes the sandbox on exit unless
        `keep=True`. `extra` passes further fields of the API (e.g. `pids`, `restart`)."""
        body = _drop_none(dict(name=name, image=image, engine=engine, cpus=cpus, memory_mb=memory_mb,
                               disk_gb=disk_gb, env=dict(env) if env is not None else None,
                               labels=dict(labels) if labels is not None else None,
                               idle_timeout_s=idle_timeout_s, url_auth=url_auth, **extra))
        if fork_from is not None:
            body["from"] = _drop_none({"sandbox": fork_from.sandbox, "checkpoint": fork_from.checkpoint})
        return SandboxCreation(self._create(body, keep))

    async def _create(self, body: dict[str, Any], keep: bool) -> "AsyncSandbox":
        j = await self._c.json("POST", "/v1/sandboxes", json_body=body)
        return AsyncSandbox(self._c, SandboxInfo.from_json(j), keep=keep)

    async def get(self, name: str) -> "AsyncSandbox":
        """The sandbox `name` (NotFound if there is none)."""
        j = await self._c.json("GET", f"/v1/sandboxes/{_q(name)}")
        return AsyncSandbox(self._c, SandboxInfo.from_json(j), keep=True)

    async def list(self, *, prefix: Optional[str] = None,
                   labels: Optional[Mapping[str, str]] = None) -> list["AsyncSandbox"]:
        """Every sandbox (all pages), optionally by name prefix and labels (all must match)."""
        out: list[AsyncSandbox] = []
        cursor: Optional[str] = None
        while True:
            params: list[tuple[str, str]] = [("limit", "1000")]
            if prefix:
                params.append(("prefix", prefix))
            for k, v in (labels or {}).items():
                params.append(("label", f"{k}={v}"))
            if cursor:
                params.append(("cursor", cursor))
            j = await self._c.json("GET", "/v1/sandboxes", params=params)
            out += [AsyncSandbox(self._c, SandboxInfo.from_json(s), keep=True) for s in j["sandboxes"]]
            cursor = j.get("next_cursor")
            if not cursor:
                return out

    async def delete(self, name: str) -> None:
        await self._c.request("DELETE", f"/v1/sandboxes/{_q(name)}")

    async def version(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self._c.json("GET", "/v1/version"))

    async def health(self) -> bool:
        return (await self._c.request("GET", "/healthz")).status_code == 200

    async def images(self) -> "builtins.list[dict[str, Any]]":
        return cast("builtins.list[dict[str, Any]]", (await self._c.json("GET", "/v1/images"))["images"])


class SandboxCreation(Awaitable["AsyncSandbox"]):
    """What `AsyncBurrow.create` returns: awaitable, and an async context manager that deletes
    the sandbox on exit (unless it is kept)."""

    def __init__(self, coro: Awaitable["AsyncSandbox"]) -> None:
        self._coro = coro
        self._sb: Optional[AsyncSandbox] = None

    def __await__(self) -> Generator[Any, None, "AsyncSandbox"]:
        return self._coro.__await__()

    async def __aenter__(self) -> "AsyncSandbox":
        self._sb = await self._coro
        return self._sb

    async def __aexit__(self, et: Optional[type[BaseException]], ev: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        if self._sb is not None:
            await self._sb.__aexit__(et, ev, tb)


class AsyncSandbox:
    """One sandbox. `info` is its record as last seen (`refresh()` reads it again)."""

    def __init__(self, conn: _Conn, info: SandboxInfo, keep: bool = True) -> None:
        self._c = conn
        self.info = info
        self.name = info.name
        self.keep = keep
        """Whether leaving an `async with` block keeps the sandbox (False: it is deleted)."""
        self._p = f"/v1/sandboxes/{_q(info.name)}"
        self.files = AsyncFiles(conn, self._p)
        self.sessions = AsyncSessions(conn, self._p)
        self.services = AsyncServices(conn, self._p)
        self.commands = self
        """E2B's spelling: `sb.commands.run(…)` is `sb.run(…)`."""

    def __repr__(self) -> str:
        return f"<Sandbox {self.name} {self.info.status}>"

    async def __aenter__(self) -> "AsyncSandbox":
        return self

    async def __aexit__(self, et: Optional[type[BaseException]], ev: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        if not self.keep:
            try:
                await self.delete()
            except errors.NotFound:
                pass

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def status(self) -> str:
        return self.info.status

    @property
    def url(self) -> str:
        """The sandbox's web address (its service with `http_port`, else port 8080)."""
        return self.info.url

    def _set(self, j: Any) -> SandboxInfo:
        self.info = SandboxInfo.from_json(j)
        return self.info

    async def refresh(self) -> SandboxInfo:
        return self._set(await self._c.json("GET", self._p))

    async def update(self, **fields: Any) -> SandboxInfo:
        """PATCH: labels, env, idle_timeout_s, url_auth, cpus, memory_mb, … (resources at next start)."""
        return self._set(await self._c.json("PATCH", self._p, json_body=fields))

    async def delete(self) -> None:
        await self._c.request("DELETE", self._p)

    kill = delete  # E2B's name
    destroy = delete  # Sprites' name

    async def _verb(self, verb: str, params: Any = None) -> SandboxInfo:
        return self._set(await self._c.json("POST", f"{self._p}/{verb}", params=params))

    async def start(self) -> SandboxInfo:
        return await self._verb("start")

    async def stop(self) -> SandboxInfo:
        return await self._verb("stop")

    async def restart(self) -> SandboxInfo:
        return await self._verb("restart")

    async def sleep(self, mode: Optional[str] = None) -> SandboxInfo:
        """Warm sleep (processes frozen, memory kept), or `mode="cold"` (stopped, disk kept)."""
        return await self._verb("sleep", {"mode": mode} if mode else None)

    async def wake(self) -> SandboxInfo:
        return await self._verb("wake")

    # ---- exec ----

    async def run(self, cmd: Command, *, check: bool = False, timeout: Optional[float] = None,
                  env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                  user: Optional[str] = None, stdin: Union[str, bytes, None] = None,
                  max_output_bytes: Optional[int] = None) -> CommandResult:
        """Runs a command to completion, like `subprocess.run(capture_output=True, text=True)`.
        `cmd` is argv or a shell line (`sh -c`). `check=True` raises CommandError when it fails;
        a `timeout` (seconds) that runs out kills it and raises CommandTimeout."""
        argv = _argv(cmd)
        body: dict[str, Any] = {"cmd": argv}
        if env:
            body["env"] = dict(env)
        if cwd is not None:
            body["cwd"] = cwd
        if user is not None:
            body["user"] = user
        if isinstance(stdin, bytes):
            try:
                body["stdin"] = stdin.decode()
            except UnicodeDecodeError:
                import base64
                body["stdin_b64"] = base64.b64encode(stdin).decode()
        elif stdin is not None:
            body["stdin"] = stdin
        if timeout is not None:
            body["timeout_s"] = timeout
        if max_output_bytes is not None:
            body["max_output_bytes"] = max_output_bytes
        # The daemon enforces `timeout`; the HTTP read waits for it and a grace beyond.
        http_timeout = httpx.Timeout(None if timeout is None else timeout + 30.0, connect=10.0)
        j = await self._c.json("POST", f"{self._p}/exec", json_body=body, timeout=http_timeout)
        result = CommandResult.from_json(argv, j)
        if result.timed_out:
            raise CommandTimeout(f"command {argv!r} timed out after {timeout} s", result)
        if check and result.exit_code != 0:
            raise CommandError(argv, result)
        return result

    exec = run

    async def spawn(self, cmd: Command, *, tty: bool = False, stdin: bool = False,
                    env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
                    user: Optional[str] = None, cols: Optional[int] = None,
                    rows: Optional[int] = None, detach_timeout_s: Optional[float] = None) -> "AsyncProcess":
        """Starts a command and streams it: iterate the process for Stdout/Stderr events, then
        its Exit (always the last). `stdin=True` keeps its standard input open for `write`;
        `tty=True` gives it a terminal (output on stdout; `resize`)."""
        argv = _argv(cmd)
        query: list[tuple[str, str]] = []
        if tty:
            query.append(("tty", "true"))
        if stdin:
            query.append(("stdin", "true"))
        if cols is not None:
            query.append(("cols", str(cols)))
        if rows is not None:
            query.append(("rows", str(rows)))
        if detach_timeout_s is not None:
            query.append(("detach_timeout_s", str(detach_timeout_s)))
        ws = await self._c.ws(f"{self._p}/exec", query)
        start = _drop_none({"type": "start", "cmd": argv, "env": dict(env) if env else None,
                            "cwd": cwd, "user": user})
        proc = AsyncProcess(ws, argv)
        try:
            await ws.send(json.dumps(start))
            await proc._handshake()
        except BaseException:
            await proc.close()
            raise
        return proc

    # ---- events ----

    async def events(self, *, since: Optional[int] = None,
                     timeout: Optional[float] = None) -> AsyncGenerator[dict[str, Any], None]:
        """The sandbox's events as they happen (server-sent events): dicts with `seq`, `time`,
        `sandbox`, `kind` (created, started, stopped, sleeping, woke, checkpoint, restored,
        deleted, failed, …) and `data`. The daemon replays what it remembers after `since`
        (an event's `seq`; by default from the start) first. It never ends by itself: break
        out of the loop. `timeout`: longest wait for the next event, else Timeout."""
        params = {"since": str(since)} if since is not None else None
        resp = await self._c.stream("GET", f"{self._p}/events", params, read_timeout=timeout)
        try:
            data: list[str] = []
            async for line in resp.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line and data:
                    yield cast(dict[str, Any], json.loads("\n".join(data)))
                    data = []
        except httpx.ReadTimeout as e:
            raise errors.Timeout(f"no event from sandbox '{self.name}' within {timeout} s", code="timeout") from e
        finally:
            await resp.aclose()

    # ---- checkpoints, restore, fork ----

    async def checkpoint(self, comment: Optional[str] = None) -> Checkpoint:
        """Snapshots the whole disk (live); returns the new checkpoint (`v0`, `v1`, …)."""
        body = {"comment": comment} if comment is not None else {}
        return Checkpoint.from_json(await self._c.json("POST", f"{self._p}/checkpoints", json_body=body))

    async def checkpoints(self) -> list[Checkpoint]:
        j = await self._c.json("GET", f"{self._p}/checkpoints")
        return [Checkpoint.from_json(c) for c in j["checkpoints"]]

    async def get_checkpoint(self, id: str) -> Checkpoint:
        return Checkpoint.from_json(await self._c.json("GET", f"{self._p}/checkpoints/{_q(id)}"))

    async def delete_checkpoint(self, checkpoint: Union[Checkpoint, str]) -> None:
        cid = checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint
        await self._c.request("DELETE", f"{self._p}/checkpoints/{_q(cid)}")

    async def restore(self, checkpoint: Union[Checkpoint, str]) -> RestoreResult:
        """Puts the disk back as it was at `checkpoint`; what it replaces is first saved as a
        new checkpoint (`backup`). Processes are restarted."""
        cid = checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint
        j = await self._c.json("POST", f"{self._p}/checkpoints/{_q(cid)}/restore")
        await self.refresh()
        return RestoreResult(restored=j["restored"], backup=j["backup"])

    def fork(self, name: str, checkpoint: Union[Checkpoint, str, None] = None, *, keep: bool = False,
             **create: Any) -> SandboxCreation:
        """A new sandbox `name` from this one's current state, or from `checkpoint`."""
        cid = checkpoint.id if isinstance(checkpoint, Checkpoint) else checkpoint
        body = _drop_none(dict(name=name, **create))
        body["from"] = _drop_none({"sandbox": self.name, "checkpoint": cid})

        async def go() -> AsyncSandbox:
            j = await self._c.json("POST", "/v1/sandboxes", json_body=body)
            return AsyncSandbox(self._c, SandboxInfo.from_json(j), keep=keep)
        return SandboxCreation(go())

    # ---- network, secrets, web ----

    async def network_policy(self) -> NetworkPolicy:
        return NetworkPolicy.from_json(await self._c.json("GET", f"{self._p}/policy/network"))

    async def set_network_policy(self, mode: str, rules: Iterable[Union[NetworkRule, tuple[str, str]]] = ()
                                 ) -> NetworkPolicy:
        """`none` (nothing leaves), `policy` (only domains the rules allow; first match
        decides, no match denies) or `open`. Rules: NetworkRule or (domain, "allow"|"deny")."""
        rs = [r if isinstance(r, NetworkRule) else NetworkRule(r[0], cast(Any, r[1])) for r in rules]
        body = NetworkPolicy(cast(Any, mode), rs).to_json()
        return NetworkPolicy.from_json(await self._c.json("PUT", f"{self._p}/policy/network", json_body=body))

    async def attach_secret(self, secret: str, env: str) -> Secret:
        """Attaches a secret: new processes see a placeholder in `env`, which the credential
        proxy swaps for the value on HTTPS requests to the secret's hosts."""
        j = await self._c.json("PUT", f"{self._p}/secrets/{_q(secret)}", json_body={"env": env})
        return Secret.from_json(j)

    async def detach_secret(self, secret: str) -> None:
        await self._c.request("DELETE", f"{self._p}/secrets/{_q(secret)}")

    async def fetch(self, path: str = "/", *, method: str = "GET", headers: Optional[Mapping[str, str]] = None,
                    content: Union[str, bytes, None] = None, timeout: float = 60.0) -> httpx.Response:
        """An HTTP request to the sandbox's web app through the daemon's ingress
        (`/v1/sandboxes/{name}/http/{path}`); the answer is the app's, whatever its status."""
        url = f"{self._p}/http/{path.lstrip('/')}"
        return await self._c.send(method, url, headers=headers, content=content, timeout=timeout)


class AsyncProcess:
    """A streaming command (from `spawn`) or an attached session (from `sessions.attach`).

    Iterate it (`async for ev in proc`) for Stdout, Stderr, then Exit. `wait()` reads to the
    end and returns a CommandResult. Leaving `async with` (or `close()`) closes the
    connection; a pipe process dies with it unless `detach_timeout_s` said otherwise."""

    def __init__(self, ws: ClientConnection, cmd: list[str]) -> None:
        self._ws = ws
        self.cmd = cmd
        self.session_id = ""
        self.pid: Optional[int] = None
        self.tty = False
        self.replay: Optional[Replay] = None
        self.exit: Optional[Exit] = None

    async def _control(self) -> dict[str, Any]:
        try:
            msg = await self._ws.recv()
        except ConnectionClosed as e:
            raise ConnectionFailed(f"the exec stream closed before it started: {e}", code="connection") from e
        if isinstance(msg, bytes):
            raise BurrowError("the exec stream sent output before its session frame", code="protocol")
        return cast(dict[str, Any], json.loads(msg))

    async def _handshake(self) -> None:
        j = await self._control()
        if j.get("type") == "error":
            raise errors.error_for(int(j.get("status") or 500), str(j.get("code")), str(j.get("message")), {"error": j})
        if j.get("type") != "session":
            raise BurrowError(f"expected a session frame, got {j}", code="protocol")
        self.session_id, self.pid, self.tty = str(j["id"]), j.get("pid"), bool(j.get("tty"))

    @property
    def exit_code(self) -> Optional[int]:
        return self.exit.exit_code if self.exit else None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self.exit is not None:
            raise StopAsyncIteration
        while True:
            try:
                msg = await self._ws.recv()
            except ConnectionClosed as e:
                raise ConnectionFailed(f"session {self.session_id}: the stream ended without an exit frame ({e})",
                                       code="connection") from e
            if isinstance(msg, bytes):
                if not msg:
                    continue
                stream, data = msg[0], msg[1:]
                if stream == 1:
                    return Stdout(data)
                if stream == 2:
                    return Stderr(data)
                continue
            j = json.loads(msg)
            kind = j.get("type")
            if kind == "exit":
                self.exit = Exit(int(j["exit_code"]), j.get("signal"), j.get("reason"))
                return self.exit
            if kind == "replay":
                self.replay = Replay(int(j.get("replay_bytes", 0)), int(j.get("dropped_bytes", 0)))
            elif kind == "error":
                raise errors.error_for(int(j.get("status") or 500), str(j.get("code")), str(j.get("message")),
                                       {"error": j})

    async def write(self, data: Union[bytes, str]) -> None:
        """Sends bytes to the process's standard input (spawned with `stdin=True` or `tty=True`)."""
        payload = data.encode() if isinstance(data, str) else data
        for i in range(0, len(payload), _CHUNK):
            await self._ws.send(b"\x00" + payload[i:i + _CHUNK])

    async def close_stdin(self) -> None:
        """End of input: the process reads EOF."""
        await self._ws.send(b"\x04")

    async def signal(self, sig: Union[str, int] = "TERM") -> None:
        await self._ws.send(json.dumps({"type": "signal", "signal": str(sig)}))

    async def kill(self) -> None:
        await self.signal("KILL")

    async def resize(self, cols: int, rows: int) -> None:
        await self._ws.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    async def wait(self, *, check: bool = False) -> CommandResult:
        """Reads the rest of the stream; returns what it printed and how it ended."""
        out, err = bytearray(), bytearray()
        async for ev in self:
            if isinstance(ev, Stdout):
                out += ev.data
            elif isinstance(ev, Stderr):
                err += ev.data
        assert self.exit is not None
        result = CommandResult(cmd=self.cmd, exit_code=self.exit.exit_code,
                               stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"),
                               signal=self.exit.signal)
        if check and result.exit_code != 0:
            raise CommandError(self.cmd, result)
        return result

    async def close(self) -> None:
        await self._ws.close()

    async def __aenter__(self) -> "AsyncProcess":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncSessions:
    """Every exec is a session; running ones can be re-attached (with their recent output
    replayed) and killed."""

    def __init__(self, conn: _Conn, p: str) -> None:
        self._c, self._p = conn, p

    async def list(self) -> list[SessionInfo]:
        j = await self._c.json("GET", f"{self._p}/sessions")
        return [SessionInfo.from_json(s) for s in j["sessions"]]

    async def attach(self, session_id: str) -> AsyncProcess:
        ws = await self._c.ws(f"{self._p}/sessions/{_q(session_id)}/attach")
        proc = AsyncProcess(ws, [])
        try:
            await proc._handshake()
        except BaseException:
            await proc.close()
            raise
        return proc

    async def kill(self, session_id: str, signal: Union[str, int, None] = None) -> None:
        body = {"signal": str(signal)} if signal is not None else {}
        await self._c.request("POST", f"{self._p}/sessions/{_q(session_id)}/kill", json_body=body)


class AsyncFiles:
    """The sandbox's filesystem, as its processes see it."""

    def __init__(self, conn: _Conn, p: str) -> None:
        self._c, self._p = conn, p

    async def read(self, path: str) -> bytes:
        return (await self._c.request("GET", f"{self._p}/files", params={"path": path})).content

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def write(self, path: str, data: Union[bytes, str], *, mode: Optional[int] = None,
                    mkdir: bool = True) -> None:
        """Writes a whole file atomically (parents made unless `mkdir=False`)."""
        params = {"path": path, "mkdir": "true" if mkdir else "false"}
        if mode is not None:
            params["mode"] = format(mode, "o")
        content = data.encode() if isinstance(data, str) else data
        await self._c.request("PUT", f"{self._p}/files", params=params, content=content)

    async def upload(self, local: Union[str, Path], path: str, *, mode: Optional[int] = None) -> None:
        """Streams a local file to `path`."""
        params = {"path": path, "mkdir": "true"}
        if mode is not None:
            params["mode"] = format(mode, "o")
        with open(local, "rb") as f:
            await self._c.request("PUT", f"{self._p}/files", params=params, content=_aread(f))

    async def download(self, path: str, local: Union[str, Path]) -> None:
        """Streams `path` to a local file."""
        resp = await self._c.stream("GET", f"{self._p}/files", params={"path": path})
        try:
            with open(local, "wb") as f:
                async for chunk in resp.aiter_bytes(_CHUNK):
                    f.write(chunk)
        finally:
            await resp.aclose()

    async def list(self, path: str) -> list[FileEntry]:
        j = await self._c.json("GET", f"{self._p}/files/list", params={"path": path})
        return [FileEntry.from_json(e) for e in j["entries"]]

    async def exists(self, path: str) -> bool:
        parent, _, name = path.rstrip("/").rpartition("/")
        try:
            return any(e.name == name for e in await self.list(parent or "/"))
        except errors.NotFound:
            return False

    async def make_dir(self, path: str) -> None:
        await self._c.request("PUT", f"{self._p}/files/archive", params={"path": path, "mkdir": "true"},
                              content=_EMPTY_TAR)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        params = {"path": path}
        if recursive:
            params["recursive"] = "true"
        await self._c.request("DELETE", f"{self._p}/files", params=params)

    async def rename(self, src: str, dst: str) -> None:
        await self._c.request("POST", f"{self._p}/files/rename", json_body={"from": src, "to": dst})

    async def upload_dir(self, local: Union[str, Path], path: str) -> None:
        """Copies the contents of the local directory into `path` (made when missing), as a tar
        stream."""
        with tempfile.TemporaryFile() as tmp:
            await asyncio.to_thread(_tar_dir, Path(local), tmp)
            tmp.seek(0)
            await self._c.request("PUT", f"{self._p}/files/archive", params={"path": path},
                                  content=_aread(tmp), headers={"content-type": "application/x-tar"})

    async def download_dir(self, path: str, local: Union[str, Path]) -> None:
        """Copies the contents of the sandbox's directory `path` into the local directory
        (made when missing)."""
        resp = await self._c.stream("GET", f"{self._p}/files/archive", params={"path": path})
        with tempfile.TemporaryFile() as tmp:
            try:
                async for chunk in resp.aiter_bytes(_CHUNK):
                    tmp.write(chunk)
            finally:
                await resp.aclose()
            tmp.seek(0)
            await asyncio.to_thread(_untar_dir, tmp, Path(local))


def _tar_tree() -> bytes:
    import io
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w"):
        pass
    return buf.getvalue()


_EMPTY_TAR = _tar_tree()


async def _aread(f: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


def _tar_dir(local: Path, out: IO[bytes]) -> None:
    if not local.is_dir():
        raise NotADirectoryError(str(local))
    with tarfile.open(fileobj=out, mode="w") as tar:
        for child in sorted(local.iterdir()):
            tar.add(child, arcname=child.name)


def _untar_dir(src: IO[bytes], local: Path) -> None:
    local.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=src, mode="r|") as tar:
        for m in tar:
            # Entries are named after the directory itself (`b`, `b/…`): strip that.
            parts = m.name.split("/", 1)
            if len(parts) == 1:
                continue
            m.name = parts[1]
            tar.extract(m, local, filter="data")


class AsyncServices:
    """Long-running processes the sandbox's agent keeps up (restarted per policy, started
    at every boot)."""

    def __init__(self, conn: _Conn, p: str) -> None:
        self._c, self._p = conn, p

    async def put(self, name: str, cmd: Command, *, env: Optional[Mapping[str, str]] = None,
                  cwd: Optional[str] = None, user: Optional[str] = None, http_port: Optional[int] = None,
                  restart: Optional[str] = None, needs: Optional[Sequence[str]] = None) -> Service:
        """Defines (or replaces) service `name`; it starts at once."""
        body = _drop_none(dict(cmd=_argv(cmd), env=dict(env) if env else None, cwd=cwd, user=user,
                               http_port=http_port, restart=restart, needs=list(needs) if needs else None))
        return Service.from_json(await self._c.json("PUT", f"{self._p}/services/{_q(name)}", json_body=body))

    create = put

    async def list(self) -> list[Service]:
        j = await self._c.json("GET", f"{self._p}/services")
        return [Service.from_json(s) for s in j["services"]]

    async def get(self, name: str) -> Service:
        return Service.from_json(await self._c.json("GET", f"{self._p}/services/{_q(name)}"))

    async def start(self, name: str) -> Service:
        return Service.from_json(await self._c.json("POST", f"{self._p}/services/{_q(name)}/start"))

    async def stop(self, name: str) -> Service:
        return Service.from_json(await self._c.json("POST", f"{self._p}/services/{_q(name)}/stop"))

    async def delete(self, name: str) -> None:
        await self._c.request("DELETE", f"{self._p}/services/{_q(name)}")

    async def logs(self, name: str, *, tail: Optional[int] = None) -> str:
        params = {"tail": str(tail)} if tail is not None else None
        return (await self._c.request("GET", f"{self._p}/services/{_q(name)}/logs", params=params)).text


class AsyncSecrets:
    """Secrets for the credential proxy. Values go in and never come back out."""

    def __init__(self, conn: _Conn) -> None:
        self._c = conn

    async def create(self, name: str, value: str, hosts: Sequence[str], *, header: Optional[str] = None,
                     format: Optional[str] = None) -> Secret:
        """`header`/`format` say how the proxy injects it (default `Authorization: Bearer %s`)."""
        body: dict[str, Any] = {"name": name, "value": value, "hosts": list(hosts)}
        inject = _drop_none({"header": header, "format": format})
        if inject:
            body["inject"] = inject
        return Secret.from_json(await self._c.json("POST", "/v1/secrets", json_body=body))

    async def list(self) -> list[Secret]:
        return [Secret.from_json(s) for s in (await self._c.json("GET", "/v1/secrets"))["secrets"]]

    async def get(self, name: str) -> Secret:
        return Secret.from_json(await self._c.json("GET", f"/v1/secrets/{_q(name)}"))

    async def delete(self, name: str) -> None:
        await self._c.request("DELETE", f"/v1/secrets/{_q(name)}")


class AsyncTokens:
    """API tokens (macaroons). `burrow.attenuate` narrows one offline."""

    def __init__(self, conn: _Conn) -> None:
        self._c = conn

    async def create(self, *, sandboxes: Optional[Sequence[str]] = None, actions: Optional[Sequence[str]] = None,
                     expires_at: Optional[Expiry] = None) -> str:
        """A new token with the caller's caveats plus these (actions: read, create, delete,
        config, lifecycle, exec, files, checkpoints, services, policy, secrets, images, http,
        tunnel)."""
        import datetime as dt
        cav: dict[str, Any] = {}
        if sandboxes is not None:
            cav["sandboxes"] = list(sandboxes)
        if actions is not None:
            cav["actions"] = list(actions)
        if expires_at is not None:
            cav["expires_at"] = dt.datetime.fromtimestamp(_unix(expires_at), dt.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ")
        return str((await self._c.json("POST", "/v1/tokens", json_body={"caveats": cav}))["token"])


__all__ = ["AsyncBurrow", "AsyncSandbox", "AsyncProcess", "AsyncFiles", "AsyncSessions", "AsyncServices",
           "AsyncSecrets", "AsyncTokens", "SandboxCreation", "Command", "DEFAULT_SOCKET"]
