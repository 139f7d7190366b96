"""What the API returns, as plain dataclasses shared by the sync and async clients. Each keeps
the daemon's whole JSON in `raw`, so fields added later are never out of reach."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union


def _str_map(v: Any) -> dict[str, str]:
    return {str(k): str(x) for k, x in (v or {}).items()}


@dataclass(frozen=True)
class SandboxConfig:
    cpus: float
    memory_mb: int
    disk_gb: int
    idle_timeout_s: int
    url_auth: str
    pids: Optional[int] = None
    cold_after_s: Optional[int] = None
    restart: Optional[str] = None

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> "SandboxConfig":
        return cls(cpus=float(j["cpus"]), memory_mb=int(j["memory_mb"]), disk_gb=int(j["disk_gb"]),
                   idle_timeout_s=int(j["idle_timeout_s"]), url_auth=str(j["url_auth"]),
                   pids=j.get("pids"), cold_after_s=j.get("cold_after_s"), restart=j.get("restart"))


@dataclass(frozen=True)
class ForkSource:
    sandbox: str
    checkpoint: Optional[str] = None


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox's record (`GET /v1/sandboxes/{name}`)."""
    id: str
    name: str
    status: str
    engine: str
    image: str
    created_at: str
    updated_at: str
    last_active_at: str
    url: str
    config: SandboxConfig
    env: dict[str, str]
    labels: dict[str, str]
    parent: Optional[ForkSource] = None
    failure_reason: Optional[str] = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> "SandboxInfo":
        p = j.get("parent")
        return cls(id=j["id"], name=j["name"], status=j["status"], engine=j["engine"], image=j["image"],
                   created_at=j["created_at"], updated_at=j["updated_at"],
                   last_active_at=j["last_active_at"], url=j["url"],
                   config=SandboxConfig.from_json(j["config"]), env=_str_map(j.get("env")),
                   labels=_str_map(j.get("labels")),
                   parent=ForkSource(p["sandbox"], p.get("checkpoint")) if p else None,
                   failure_reason=j.get("failure_reason"), raw=j)


def _decode(text: str, b64: Optional[str]) -> bytes:
    return base64.b64decode(b64) if b64 is not None else text.encode()


@dataclass(frozen=True)
class CommandResult:
    """The outcome of `run`, shaped like `subprocess.CompletedProcess`: `stdout` and `stderr`
    are text (bytes that are not UTF-8 come in `stdout_bytes`/`stderr_bytes`)."""
    cmd: list[str]
    exit_code: int
    stdout: str
    stderr: str
    signal: Optional[str] = None
    timed_out: bool = False
    duration_ms: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_b64: Optional[str] = field(default=None, repr=False)
    stderr_b64: Optional[str] = field(default=None, repr=False)

    @classmethod
    def from_json(cls, cmd: list[str], j: dict[str, Any]) -> "CommandResult":
        return cls(cmd=cmd, exit_code=int(j["exit_code"]), stdout=j.get("stdout", ""),
                   stderr=j.get("stderr", ""), signal=j.get("signal"), timed_out=bool(j.get("timed_out")),
                   duration_ms=int(j.get("duration_ms", 0)),
                   stdout_truncated=bool(j.get("stdout_truncated")),
                   stderr_truncated=bool(j.get("stderr_truncated")),
                   stdout_b64=j.get("stdout_b64"), stderr_b64=j.get("stderr_b64"))

    @property
    def returncode(self) -> int:
        """subprocess's name for `exit_code`."""
        return self.exit_code

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def stdout_bytes(self) -> bytes:
        return _decode(self.stdout, self.stdout_b64)

    @property
    def stderr_bytes(self) -> bytes:
        return _decode(self.stderr, self.stderr_b64)


@dataclass(frozen=True)
class Stdout:
    """A chunk of the process's standard output (the terminal's output in TTY mode)."""
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


@dataclass(frozen=True)
class Stderr:
    """A chunk of the process's standard error."""
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


@dataclass(frozen=True)
class Exit:
    """The last event of every stream: how the process ended. `reason` is set when the sandbox
    ended it (stop, restore, delete)."""
    exit_code: int
    signal: Optional[str] = None
    reason: Optional[str] = None


Event = Union[Stdout, Stderr, Exit]


@dataclass(frozen=True)
class Replay:
    """Sent first on attach: how much buffered output follows, and how much was dropped."""
    replay_bytes: int
    dropped_bytes: int


@dataclass(frozen=True)
class SessionInfo:
    id: str
    cmd: list[str]
    tty: bool
    started_at: str
    attached: bool
    exited_at: Optional[str] = None
    exit_code: Optional[int] = None
    signal: Optional[str] = None
    pid: Optional[int] = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> "SessionInfo":
        return cls(id=j["id"], cmd=list(j["cmd"]), tty=bool(j["tty"]), started_at=j["started_at"],
                   attached=bool(j["attached"]), exited_at=j.get("exited_at"), exit_code=j.get("exit_code"),
                   signal=j.get("signal"), pid=j.get("pid"), raw=j)

    @property
    def running(self) -> bool:
        return self.exited_at is None


@dataclass(frozen=True)
class FileEntry:
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    mtime: str

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> "FileEntry":
        return cls(name=j["name"], type=j["type"], size=int(j["size"]), mode=int(j["mode"]), mtime=j["mtime"])

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"


@dataclass(frozen=True)
class Checkpoint:
    id: str
    comment: str
    created_at: str
    size_bytes: int
    source: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> "Checkpoint":
        return cls(id=j["id"], comment=j.get("comment", ""), created_at=j["created_at"],
                   size_bytes=int(j.get("size_bytes", 0)), source=j.get("source", ""), raw=j)


@dataclass(frozen=True)
class RestoreResult:
    restored: str
    backup: str
    """The checkpoint that saved the state the restore replaced (a restore is never destructive)."""


@dataclass(frozen=True)
class Service:
    name: str
    cmd: list[str]
    status: str
    restart: str
    restarts: int
    http_port: Optional[int] = None
    pid: Optional[int] = None
    exit_code: Optional[int] = None
    error: Optional[str] = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> "Service":
        return cls(name=j["name"], cmd=list(j["cmd"]), status=j["status"], restart=j["restart"],
                   restarts=int(j.get("restarts", 0)), http_port=j.get("http_port"), pid=j.get("pid"),
                   exit_code=j.get("exit_code"), error=j.get("error"), raw=j)


@dataclass(frozen=True)
class NetworkRule:
    domain: str
    action: Literal["allow", "deny"]


@dataclass(frozen=True)
class NetworkPolicy:
    mode: Literal["none", "policy", "open"]
    rules: list[NetworkRule] = field(default_factory=list)

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> "NetworkPolicy":
        return cls(mode=j["mode"], rules=[NetworkRule(r["domain"], r["action"]) for r in j.get("rules") or []])

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "rules": [{"domain": r.domain, "action": r.action} for r in self.rules]}


@dataclass(frozen=True)
class Secret:
    """A secret as the API shows it: never its value."""
    name: str
    hosts: list[str]
    header: Optional[str] = None
    format: Optional[str] = None
    attached: list[dict[str, str]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, j: dict[str, Any]) -> "Secret":
        inject = j.get("inject") or {}
        return cls(name=j["name"], hosts=list(j.get("hosts") or []), header=inject.get("header"),
                   format=inject.get("format"), attached=list(j.get("attached") or []), raw=j)
