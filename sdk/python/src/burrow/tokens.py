"""Burrow API tokens are macaroons (see crates/burrow-macaroon): `bm1_` + base64url(JSON
`{"i": id, "c": [caveat, …], "s": signature}`), the signature chained with HMAC-SHA256 over
each caveat. Whoever holds a token can narrow it without asking the daemon: append a caveat
and chain the signature on. Nobody can widen one."""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Iterable, Optional, Union

PREFIX = "bm1_"


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


@dataclass(frozen=True)
class Token:
    """A decoded token: its identifier and caveats (as written; only the daemon can verify)."""
    id: str
    caveats: list[str]
    signature: bytes

    @classmethod
    def parse(cls, text: str) -> "Token":
        text = text.strip()
        if not text.startswith(PREFIX):
            raise ValueError(f"not a Burrow token (it should start with {PREFIX})")
        try:
            wire = json.loads(_b64d(text[len(PREFIX):]))
            sig = _b64d(wire["s"])
            token = cls(id=str(wire["i"]), caveats=[str(c) for c in wire["c"]], signature=sig)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"token does not parse: {e}") from None
        if len(sig) != 32:
            raise ValueError("token does not parse: signature is not 32 bytes")
        return token

    def encode(self) -> str:
        wire = {"i": self.id, "c": self.caveats, "s": _b64e(self.signature)}
        return PREFIX + _b64e(json.dumps(wire, separators=(",", ":")).encode())

    def with_caveat(self, caveat: str) -> "Token":
        sig = hmac.new(self.signature, caveat.encode(), hashlib.sha256).digest()
        return Token(self.id, [*self.caveats, caveat], sig)


Expiry = Union[_dt.datetime, int, float]


def _unix(t: Expiry) -> int:
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        return int(t.timestamp())
    return int(t)


def attenuate(token: str, *, sandboxes: Optional[Iterable[str]] = None,
              actions: Optional[Iterable[str]] = None, expires_at: Optional[Expiry] = None) -> str:
    """A narrower token, made offline: every caveat given is added to those it has. A request
    must pass all of them, so the result can do at most what `token` could."""
    t = Token.parse(token)
    if sandboxes is not None:
        t = t.with_caveat("sandboxes=" + ",".join(sandboxes))
    if actions is not None:
        t = t.with_caveat("actions=" + ",".join(actions))
    if expires_at is not None:
        t = t.with_caveat(f"expires={_unix(expires_at)}")
    return t.encode()
