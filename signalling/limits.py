"""AddressLimits: how many sessions and media connections one address may hold.

An address is an IPv4 address, or an IPv6 /64: one household or office gets
a whole /64, so counting single IPv6 addresses would limit nothing.

Counts are held as `Slot`s: whoever is handed a slot (the Lobby, for a
session or a peer) releases it when the thing ends; releasing twice is
harmless, so every path that ends a session or a peer can simply release.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# Seconds of the sliding window for new sessions.
WINDOW: Final = 60.0
# The protocol error codes of a refusal (docs/protocol.md).
LIMIT_CODES: Final = ("too_many_sessions", "too_many_new_sessions", "too_many_peers")


class LimitExceeded(Exception):
    """An address is over one of its limits; `code` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class LimitSettings:
    """Per-address limits; 0 means no limit."""

    max_sessions: int = 64
    max_peers: int = 32
    max_new_sessions: int = 120  # per minute


def address_key(ip: str | None) -> str | None:
    """What an address is counted as: IPv4 as is, IPv6 by its /64; None is not counted."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip  # not an address (a proxy's odd header): counted as given
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Slot:
    """One counted session or peer of one address, until `release()`."""

    __slots__ = ("_counts", "_key")

    def __init__(self, counts: Counter[str] | None, key: str | None) -> None:
        self._counts = counts
        self._key = key

    def release(self) -> None:
        counts, self._counts = self._counts, None
        if counts is None or self._key is None:
            return
        counts[self._key] -= 1
        if counts[self._key] <= 0:
            del counts[self._key]


class AddressLimits:
    """Counts per address, and refusals past the limits."""

    def __init__(
        self, settings: LimitSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._sessions: Counter[str] = Counter()
        self._peers: Counter[str] = Counter()
        # Start times of the sessions admitted in the last WINDOW seconds, per
        # address: only admitted ones, so refusals cannot grow it.
        self._recent: dict[str, deque[float]] = {}
        self._swept = clock()
        self.refused: Counter[str] = Counter()

    def sessions(self, ip: str | None) -> int:
        key = address_key(ip)
        return 0 if key is None else self._sessions[key]

    def peers(self, ip: str | None) -> int:
        key = address_key(ip)
        return 0 if key is None else self._peers[key]

    @property
    def tracked_addresses(self) -> int:
        return len(self._sessions.keys() | self._peers.keys() | self._recent.keys())

    def open_session(self, ip: str | None) -> Slot:
        """A session slot for `ip`, or `LimitExceeded`."""
        key = address_key(ip)
        if key is None:
            return Slot(None, None)
        s = self.settings
        now = self._clock()
        self._sweep(now)
        if s.max_sessions and self._sessions[key] >= s.max_sessions:
            self._refuse("too_many_sessions")
            raise LimitExceeded(
                "too_many_sessions",
                f"{s.max_sessions} connections from your network are open already; "
                "close one and try again",
            )
        if s.max_new_sessions:
            recent = self._recent.get(key)
            if recent is not None:
                _expire(recent, now)
            if recent is not None and len(recent) >= s.max_new_sessions:
                self._refuse("too_many_new_sessions")
                retry = max(1, round(recent[0] + WINDOW - now))
                raise LimitExceeded(
                    "too_many_new_sessions",
                    f"more than {s.max_new_sessions} connections a minute from your network; "
                    f"try again in {retry} s",
                )
            self._recent.setdefault(key, deque()).append(now)
        self._sessions[key] += 1
        return Slot(self._sessions, key)

    def open_peer(self, ip: str | None) -> Slot:
        """A media connection slot for `ip`, or `LimitExceeded`."""
        key = address_key(ip)
        if key is None:
            return Slot(None, None)
        limit = self.settings.max_peers
        if limit and self._peers[key] >= limit:
            self._refuse("too_many_peers")
            raise LimitExceeded(
                "too_many_peers",
                f"{limit} media connections from your network are open already; "
                "close one and try again",
            )
        self._peers[key] += 1
        return Slot(self._peers, key)

    def _refuse(self, code: str) -> None:
        self.refused[code] += 1

    def _sweep(self, now: float) -> None:
        # Once a window, forget addresses whose recent sessions are all old.
        if now - self._swept < WINDOW:
            return
        self._swept = now
        for key in list(self._recent):
            recent = self._recent[key]
            _expire(recent, now)
            if not recent:
                del self._recent[key]


def _expire(recent: deque[float], now: float) -> None:
    while recent and recent[0] <= now - WINDOW:
        recent.popleft()
