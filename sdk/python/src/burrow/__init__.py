"""Burrow's Python SDK: persistent, isolated sandboxes from code.

    from burrow import Burrow
    bw = Burrow()
    with bw.create("job-1") as sb:
        print(sb.run(["python3", "-c", "print(6*7)"]).stdout)

`Burrow` blocks; `AsyncBurrow` is the same API for asyncio.
"""

from ._async import (DEFAULT_SOCKET, AsyncBurrow, AsyncFiles, AsyncProcess, AsyncSandbox, AsyncSecrets,
                     AsyncServices, AsyncSessions, AsyncTokens, Command, SandboxCreation)
from ._sync import Burrow, Events, Files, Process, Sandbox, Secrets, Services, Sessions, Tokens
from .errors import (BurrowError, CommandError, CommandTimeout, Conflict, ConnectionFailed, Forbidden, Gone,
                     InsufficientStorage, InvalidRequest, NotFound, PayloadTooLarge, RateLimited, ServerError,
                     Timeout, Unauthorized, Unavailable)
from .models import (Checkpoint, CommandResult, Event, Exit, FileEntry, ForkSource, NetworkPolicy, NetworkRule,
                     Replay, RestoreResult, SandboxConfig, SandboxInfo, Secret, Service, SessionInfo, Stderr,
                     Stdout)
from .tokens import Token, attenuate

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SOCKET", "AsyncBurrow", "AsyncFiles", "AsyncProcess", "AsyncSandbox", "AsyncSecrets",
    "AsyncServices", "AsyncSessions", "AsyncTokens", "Command", "SandboxCreation",
    "Burrow", "Events", "Files", "Process", "Sandbox", "Secrets", "Services", "Sessions", "Tokens",
    "BurrowError", "CommandError", "CommandTimeout", "Conflict", "ConnectionFailed", "Forbidden", "Gone",
    "InsufficientStorage", "InvalidRequest", "NotFound", "PayloadTooLarge", "RateLimited", "ServerError",
    "Timeout", "Unauthorized", "Unavailable",
    "Checkpoint", "CommandResult", "Event", "Exit", "FileEntry", "ForkSource", "NetworkPolicy", "NetworkRule",
    "Replay", "RestoreResult", "SandboxConfig", "SandboxInfo", "Secret", "Service", "SessionInfo", "Stderr",
    "Stdout", "Token", "attenuate",
]
