"""Typed exceptions. Every error the daemon answers carries its `error.code` and message; the
class says what kind of failure it is (by HTTP status), so callers catch `NotFound` or
`Conflict` rather than parse messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .models import CommandResult


class BurrowError(Exception):
    """Base of every error this SDK raises.

    `code` is the API's `error.code` (e.g. `not_found`, `name_taken`), `status` the HTTP
    status (None for errors that never reached the daemon)."""

    def __init__(self, message: str, *, code: str = "error", status: Optional[int] = None,
                 body: Optional[dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.body = body or {}

    def __str__(self) -> str:
        where = f"{self.status} " if self.status is not None else ""
        return f"{self.message} ({where}{self.code})"


class ConnectionFailed(BurrowError, ConnectionError):
    """The daemon could not be reached (socket missing, nothing listening, connection lost)."""


class InvalidRequest(BurrowError, ValueError):
    """400, 415 or 422: the request was refused as it stands (bad name, bad value)."""


class Unauthorized(BurrowError):
    """401: no token, or one that does not parse or verify."""


class Forbidden(BurrowError, PermissionError):
    """403: the token does not allow this; `caveat` names the caveat that failed."""

    @property
    def caveat(self) -> Optional[str]:
        err = self.body.get("error")
        value = err.get("caveat") if isinstance(err, dict) else None
        return value if isinstance(value, str) else None


class NotFound(BurrowError, LookupError):
    """404 (or 410 for a session that is gone): no such sandbox, checkpoint, file, …"""


class Gone(NotFound):
    """410: the session has exited (it can no longer be attached to or signalled)."""


class Conflict(BurrowError):
    """409: the name is taken, or the sandbox's state does not allow this now."""


class PayloadTooLarge(BurrowError):
    """413: the body or the command line is larger than the daemon takes."""


class RateLimited(BurrowError):
    """429: a budget or limit is used up for now; `retry_after` is the daemon's hint (seconds)."""

    def __init__(self, message: str, *, retry_after: Optional[float] = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(BurrowError):
    """500 or another status no other class covers."""


class Unavailable(BurrowError):
    """503: the engine or the sandbox's agent is not available."""


class InsufficientStorage(BurrowError):
    """507: the storage pool or the sandbox's disk is full."""


class Timeout(BurrowError, TimeoutError):
    """An operation ran out of time (the client's own deadline, or a command's `timeout`)."""


class CommandTimeout(Timeout):
    """`run(..., timeout=…)` killed the command; `result` holds what it printed until then."""

    def __init__(self, message: str, result: "CommandResult") -> None:
        super().__init__(message, code="timeout")
        self.result = result
        self.stdout = result.stdout
        self.stderr = result.stderr


class CommandError(BurrowError):
    """`run(..., check=True)` and the command failed: like subprocess.CalledProcessError, with
    `exit_code`, `stdout`, `stderr` and the whole `result`."""

    def __init__(self, cmd: list[str], result: "CommandResult") -> None:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        how = f"signal {result.signal}" if result.signal else f"exit code {result.exit_code}"
        super().__init__(f"command {cmd!r} failed with {how}" + (f": {tail}" if tail else ""),
                         code="command_failed")
        self.cmd = cmd
        self.result = result
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr

    @property
    def returncode(self) -> int:
        return self.exit_code


_BY_STATUS: dict[int, type[BurrowError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    503: Unavailable,
    507: InsufficientStorage,
}


def error_for(status: int, code: str, message: str, body: Optional[dict[str, Any]] = None,
              retry_after: Optional[float] = None) -> BurrowError:
    """The typed exception for an API error answer."""
    cls = _BY_STATUS.get(status, ServerError)
    if cls is RateLimited:
        return RateLimited(message, retry_after=retry_after, code=code, status=status, body=body)
    return cls(message, code=code, status=status, body=body)
