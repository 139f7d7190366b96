"""The blocking client: thin wrappers over the asyncio implementation (`_async`), so both
clients behave the same by construction.

Plain requests run the core's coroutines inline: on a connection that uses a blocking
httpx.Client they never suspend, so one `send(None)` runs each to its end in the caller's
thread (no event loop, no thread hop: as fast as httpx itself). Streams (exec and attach
WebSockets, streamed file bodies) run on a private event loop thread, started on first use.
Either way it works in any thread, and inside a program that already runs an event loop."""

from __future__ import annotations

import asyncio
import builtins
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, AsyncGenerator, Callable, Coroutine, cast, Iterable, Iterator, Mapping, Optional, Sequence, TypeVar, Union

import httpx

from ._async import (AsyncBurrow, _Conn, AsyncFiles, AsyncProcess, AsyncSandbox, AsyncSecrets, AsyncServices,
                     AsyncSessions, AsyncTokens, Command, SandboxCreation)
from .models import (Checkpoint, CommandResult, Event, Exit, FileEntry, ForkSource, NetworkPolicy,
                     NetworkRule, Replay, RestoreResult, SandboxInfo, Secret, Service, SessionInfo)
from .tokens import Expiry

T = TypeVar("T")


class _Portal:
    """An event loop on a daemon thread; `call` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()
        self.thread = threading.Thread(target=run, name="burrow-sdk", daemon=True)
        self.thread.start()
        ready.wait()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a burrow sync call from inside its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
        self.loop.close()


def _drive(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine of the inline connection to its end (it never suspends)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coro.close()
    raise RuntimeError("burrow: an inline call suspended (an SDK bug: it needs the stream loop)")


class _Runtime:
    """The sync client's two ways of running the core: inline, and the stream loop thread."""

    def __init__(self, kw: dict[str, Any]) -> None:
        self.kw = kw
        self.inline = AsyncBurrow(**kw, _inline=True)
        self._lock = threading.Lock()
        self._portal: Optional[_Portal] = None
        self._streaming: Optional[AsyncBurrow] = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return _drive(coro)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.portal().call(coro)

    def portal(self) -> _Portal:
        with self._lock:
            if self._portal is None:
                self._portal = _Portal()
                self._streaming = AsyncBurrow(**self.kw)
            return self._portal

    def stream_conn(self) -> _Conn:
        self.portal()
        assert self._streaming is not None
        return self._streaming._c

    def close(self) -> None:
        _drive(self.inline.close())
        with self._lock:
            if self._portal is not None and self._streaming is not None:
                self._portal.call(self._streaming.close())
                self._portal.stop()
                self._portal = self._streaming = None


class Burrow:
    """A connection to burrowd (blocking). With no arguments: `BURROW_SOCKET`, else `BURROW_URL`
    with `BURROW_TOKEN`, else the default socket `/run/burrow/burrowd.sock`. `retries`: see
    AsyncBurrow."""

    def __init__(self, *, socket: Optional[str] = None, url: Optional[str] = None,
                 token: Optional[str] = None, timeout: float = 300.0, retries: int = 10) -> None:
        self._r = _Runtime(dict(socket=socket, url=url, token=token, timeout=timeout, retries=retries))
        self._a = self._r.inline
        self.secrets = Secrets(self._r, self._a.secrets)
        self.tokens = Tokens(self._r, self._a.tokens)

    def close(self) -> None:
        self._r.close()

    def __enter__(self) -> "Burrow":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wrap(self, sb: AsyncSandbox) -> "Sandbox":
        return Sandbox(self._r, sb)

    def create(self, name: str, *, image: Optional[str] = None, engine: Optional[str] = None,
               cpus: Optional[float] = None, memory_mb: Optional[int] = None, disk_gb: Optional[int] = None,
               env: Optional[Mapping[str, str]] = None, labels: Optional[Mapping[str, str]] = None,
               idle_timeout_s: Optional[int] = None, url_auth: Optional[str] = None,
               fork_from: Optional[ForkSource] = None, keep: bool = False, **extra: Any) -> "Sandbox":
        """Creates a sandbox and waits until it runs. As a context manager (`with bw.create(…)
        as sb:`) it is deleted on exit unless `keep=True`."""
        creation = self._a.create(name, image=image, engine=engine, cpus=cpus, memory_mb=memory_mb,
                                  disk_gb=disk_gb, env=env, labels=labels, idle_timeout_s=idle_timeout_s,
                                  url_auth=url_auth, fork_from=fork_from, keep=keep, **extra)
        return self._wrap(self._r.run(_await(creation)))

    def get(self, name: str) -> "Sandbox":
        return self._wrap(self._r.run(self._a.get(name)))

    def list(self, *, prefix: Optional[str] = None, labels: Optional[Mapping[str, str]] = None) -> list["Sandbox"]:
        return [self._wrap(s) for s in self._r.run(self._a.list(prefix=prefix, labels=labels))]

    def delete(self, name: str) -> None:
        self._r.run(self._a.delete(name))

    def version(self) -> dict[str, Any]:
        return self._r.run(self._a.version())

    def health(self) -> bool:
        return self._r.run(self._a.health())

    def images(self) -> "builtins.list[dict[str, Any]]":
        return self._r.run(self._a.images())


async def _await(c: SandboxCreation) -> AsyncSandbox:
    return await c


class Sandbox:
    """One sandbox (blocking). `info` is its record as last seen; `with sb:` deletes it on exit
    unless `keep` is true (a sandbox from `get`/`list` is kept)."""

    def __init__(self, runtime: _Runtime, sb: AsyncSandbox) -> None:
        self._r, self._a = runtime, sb
        self._streaming: Optional[AsyncSandbox] = None
        self.name = sb.name
        self.files = Files(runtime, sb.files, lambda: self._s().files)
        self.sessions = Sessions(runtime, sb.sessions, lambda: self._s().sessions)
        self.services = Services(runtime, sb.services)
        self.commands = self
        """E2B's spelling: `sb.commands.run(…)` is `sb.run(…)`."""

    def __repr__(self) -> str:
        return repr(self._a)

    def _s(self) -> AsyncSandbox:
        """This sandbox on the stream loop's connection."""
        if self._streaming is None:
            self._streaming = AsyncSandbox(self._r.stream_conn(), self._a.info)
        return self._streaming

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, et: Optional[type[BaseException]], ev: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self._r.run(self._a.__aexit__(et, ev, tb))

    @property
    def keep(self) -> bool:
        return self._a.keep

    @keep.setter
    def keep(self, value: bool) -> None:
        self._a.keep = value

    @property
    def info(self) -> SandboxInfo:
        return self._a.info

    @property
    def id(self) -> str:
        return self._a.id

    @property
    def status(self) -> str:
        return self._a.status

    @property
    def url(self) -> str:
        return self._a.url

    def refresh(self) -> SandboxInfo:
        return self._r.run(self._a.refresh())

    def update(self, **fields: Any) -> SandboxInfo:
        return self._r.run(self._a.update(**fields))

    def delete(self) -> None:
        self._r.run(self._a.delete())

    kill = delete
    destroy = delete

    def start(self) -> SandboxInfo:
        return self._r.run(self._a.start())

    def stop(self) -> SandboxInfo:
        return self._r.run(self._a.stop())

    def restart(self) -> SandboxInfo:
        return self._r.run(self._a.restart())

    def sleep(self, mode: Optional[str] = None) -> SandboxInfo:
        return self._r.run(self._a.sleep(mode))

    def wake(self) -> SandboxInfo:
        return self._r.run(self._a.wake())

    def run(self, cmd: Command, *, check: bool = False, timeout: Optional[float] = None,
            env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None, user: Optional[str] = None,
            stdin: Union[str, bytes, None] = None, max_output_bytes: Optional[int] = None) -> CommandResult:
        """Runs a command to completion (see AsyncSandbox.run)."""
        return self._r.run(self._a.run(cmd, check=check, timeout=timeout, env=env, cwd=cwd, user=user,
                                        stdin=stdin, max_output_bytes=max_output_bytes))

    exec = run

    def spawn(self, cmd: Command, *, tty: bool = False, stdin: bool = False,
              env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None, user: Optional[str] = None,
              cols: Optional[int] = None, rows: Optional[int] = None,
              detach_timeout_s: Optional[float] = None) -> "Process":
        """Starts a command and streams it (see AsyncSandbox.spawn)."""
        return Process(self._r, self._r.call(self._s().spawn(
            cmd, tty=tty, stdin=stdin, env=env, cwd=cwd, user=user, cols=cols, rows=rows,
            detach_timeout_s=detach_timeout_s)))

    def events(self, *, since: Optional[int] = None, timeout: Optional[float] = None) -> "Events":
        """The sandbox's events as they happen (see AsyncSandbox.events); `with` closes the stream."""
        return Events(self._r, self._s().events(since=since, timeout=timeout))

    def checkpoint(self, comment: Optional[str] = None) -> Checkpoint:
        return self._r.run(self._a.checkpoint(comment))

    def checkpoints(self) -> list[Checkpoint]:
        return self._r.run(self._a.checkpoints())

    def get_checkpoint(self, id: str) -> Checkpoint:
        return self._r.run(self._a.get_checkpoint(id))

    def delete_checkpoint(self, checkpoint: Union[Checkpoint, str]) -> None:
        self._r.run(self._a.delete_checkpoint(checkpoint))

    def restore(self, checkpoint: Union[Checkpoint, str]) -> RestoreResult:
        return self._r.run(self._a.restore(checkpoint))

    def fork(self, name: str, checkpoint: Union[Checkpoint, str, None] = None, *, keep: bool = False,
             **create: Any) -> "Sandbox":
        """A new sandbox `name` from this one's current state, or from `checkpoint`."""
        return Sandbox(self._r, self._r.run(_await(self._a.fork(name, checkpoint, keep=keep, **create))))

    def network_policy(self) -> NetworkPolicy:
        return self._r.run(self._a.network_policy())

    def set_network_policy(self, mode: str, rules: Iterable[Union[NetworkRule, tuple[str, str]]] = ()
                           ) -> NetworkPolicy:
        return self._r.run(self._a.set_network_policy(mode, list(rules)))

    def attach_secret(self, secret: str, env: str) -> Secret:
        return self._r.run(self._a.attach_secret(secret, env))

    def detach_secret(self, secret: str) -> None:
        self._r.run(self._a.detach_secret(secret))

    def fetch(self, path: str = "/", *, method: str = "GET", headers: Optional[Mapping[str, str]] = None,
              content: Union[str, bytes, None] = None, timeout: float = 60.0) -> httpx.Response:
        return self._r.run(self._a.fetch(path, method=method, headers=headers, content=content, timeout=timeout))


class Events:
    """An iterator over a sandbox's events (dicts); it never ends by itself: break, then close."""

    def __init__(self, runtime: _Runtime, agen: AsyncGenerator[dict[str, Any], None]) -> None:
        self._r, self._a = runtime, agen

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        try:
            return self._r.call(self._a.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._r.call(self._a.aclose())

    def __enter__(self) -> "Events":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Process:
    """A streaming command or attached session (blocking): iterate it for Stdout/Stderr events
    then Exit; `wait()` collects the rest."""

    def __init__(self, runtime: _Runtime, proc: AsyncProcess) -> None:
        self._r, self._a = runtime, proc

    @property
    def session_id(self) -> str:
        return self._a.session_id

    @property
    def pid(self) -> Optional[int]:
        return self._a.pid

    @property
    def replay(self) -> Optional[Replay]:
        return self._a.replay

    @property
    def exit(self) -> Optional[Exit]:
        return self._a.exit

    @property
    def exit_code(self) -> Optional[int]:
        return self._a.exit_code

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        try:
            return self._r.call(self._a.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def write(self, data: Union[bytes, str]) -> None:
        self._r.call(self._a.write(data))

    def close_stdin(self) -> None:
        self._r.call(self._a.close_stdin())

    def signal(self, sig: Union[str, int] = "TERM") -> None:
        self._r.call(self._a.signal(sig))

    def kill(self) -> None:
        self._r.call(self._a.kill())

    def resize(self, cols: int, rows: int) -> None:
        self._r.call(self._a.resize(cols, rows))

    def wait(self, *, check: bool = False) -> CommandResult:
        return self._r.call(self._a.wait(check=check))

    def close(self) -> None:
        self._r.call(self._a.close())

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sessions:
    def __init__(self, runtime: _Runtime, a: AsyncSessions, streaming: Callable[[], AsyncSessions]) -> None:
        self._r, self._a, self._s = runtime, a, streaming

    def list(self) -> list[SessionInfo]:
        return self._r.run(self._a.list())

    def attach(self, session_id: str) -> Process:
        return Process(self._r, self._r.call(self._s().attach(session_id)))

    def kill(self, session_id: str, signal: Union[str, int, None] = None) -> None:
        self._r.run(self._a.kill(session_id, signal))


class Files:
    def __init__(self, runtime: _Runtime, a: AsyncFiles, streaming: Callable[[], AsyncFiles]) -> None:
        self._r, self._a, self._s = runtime, a, streaming

    def read(self, path: str) -> bytes:
        return self._r.run(self._a.read(path))

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self._r.run(self._a.read_text(path, encoding))

    def write(self, path: str, data: Union[bytes, str], *, mode: Optional[int] = None, mkdir: bool = True) -> None:
        self._r.run(self._a.write(path, data, mode=mode, mkdir=mkdir))

    def upload(self, local: Union[str, Path], path: str, *, mode: Optional[int] = None) -> None:
        self._r.call(self._s().upload(local, path, mode=mode))

    def download(self, path: str, local: Union[str, Path]) -> None:
        self._r.call(self._s().download(path, local))

    def list(self, path: str) -> list[FileEntry]:
        return self._r.run(self._a.list(path))

    def exists(self, path: str) -> bool:
        return self._r.run(self._a.exists(path))

    def make_dir(self, path: str) -> None:
        self._r.run(self._a.make_dir(path))

    def remove(self, path: str, *, recursive: bool = False) -> None:
        self._r.run(self._a.remove(path, recursive=recursive))

    def rename(self, src: str, dst: str) -> None:
        self._r.run(self._a.rename(src, dst))

    def upload_dir(self, local: Union[str, Path], path: str) -> None:
        self._r.call(self._s().upload_dir(local, path))

    def download_dir(self, path: str, local: Union[str, Path]) -> None:
        self._r.call(self._s().download_dir(path, local))


class Services:
    def __init__(self, runtime: _Runtime, a: AsyncServices) -> None:
        self._r, self._a = runtime, a

    def put(self, name: str, cmd: Command, *, env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
            user: Optional[str] = None, http_port: Optional[int] = None, restart: Optional[str] = None,
            needs: Optional[Sequence[str]] = None) -> Service:
        return self._r.run(self._a.put(name, cmd, env=env, cwd=cwd, user=user, http_port=http_port,
                                         restart=restart, needs=needs))

    create = put

    def list(self) -> list[Service]:
        return self._r.run(self._a.list())

    def get(self, name: str) -> Service:
        return self._r.run(self._a.get(name))

    def start(self, name: str) -> Service:
        return self._r.run(self._a.start(name))

    def stop(self, name: str) -> Service:
        return self._r.run(self._a.stop(name))

    def delete(self, name: str) -> None:
        self._r.run(self._a.delete(name))

    def logs(self, name: str, *, tail: Optional[int] = None) -> str:
        return self._r.run(self._a.logs(name, tail=tail))


class Secrets:
    def __init__(self, runtime: _Runtime, a: AsyncSecrets) -> None:
        self._r, self._a = runtime, a

    def create(self, name: str, value: str, hosts: Sequence[str], *, header: Optional[str] = None,
               format: Optional[str] = None) -> Secret:
        return self._r.run(self._a.create(name, value, hosts, header=header, format=format))

    def list(self) -> list[Secret]:
        return self._r.run(self._a.list())

    def get(self, name: str) -> Secret:
        return self._r.run(self._a.get(name))

    def delete(self, name: str) -> None:
        self._r.run(self._a.delete(name))


class Tokens:
    def __init__(self, runtime: _Runtime, a: AsyncTokens) -> None:
        self._r, self._a = runtime, a

    def create(self, *, sandboxes: Optional[Sequence[str]] = None, actions: Optional[Sequence[str]] = None,
               expires_at: Optional[Expiry] = None) -> str:
        return self._r.run(self._a.create(sandboxes=sandboxes, actions=actions, expires_at=expires_at))
