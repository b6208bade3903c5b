"""Resume tokens: what lets a new WebSocket take over a session whose socket dropped.

A token is `<session id>.<secret>`. The session keeps only its current secret; every
`hello` and `resumed` hands out a new one, so a token works once, a copy of an old
one (stolen, or replayed by a confused client) is refused, and nothing works once the
session has ended (its grace passed). Secrets are compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Final

# 192 bits: guessing one during a 20 s grace is out of reach.
SECRET_BYTES: Final = 24


@dataclass(frozen=True)
class ResumeSettings:
    """How long a dropped session and its pair are held, and how many may be held at once."""

    # Seconds; 0 turns resuming off (a dropped socket ends the session at once).
    grace: float = 20.0
    # Held sessions per node; past this a dropped session ends at once, so a flood of
    # dropped sockets cannot pin memory and media connections.
    max_held: int = 1000


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def make_token(session_id: str, secret: str) -> str:
    return f"{session_id}.{secret}"


def split_token(token: str) -> tuple[str, str] | None:
    """(session id, secret), or None when `token` has not the shape of a token."""
    session_id, dot, secret = token.partition(".")
    if not dot or not session_id or not secret:
        return None
    return session_id, secret


def secret_matches(expected: str | None, given: str) -> bool:
    """Whether `given` is the session's current secret (in constant time)."""
    if expected is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())
