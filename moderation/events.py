"""Events for the dashboard: a small broadcast of "what changed", pushed over SSE.

The dashboard used to redraw everything every second. Now it listens on
`GET /api/moderate/events` (server-sent events) and reloads only the part that
changed: `queue` (a report was made, claimed, resolved, a ban made from one) or
`sessions` (someone arrived, left, was paired or unpaired). An event carries no
data a moderator's fetch would not give; it only says when to fetch.

Each listener holds a bounded set of pending names, so a slow dashboard
coalesces events instead of queueing them without bound.
"""

from __future__ import annotations

import asyncio
from typing import Final

# Most dashboards listening at once per node; more are refused (503).
MAX_LISTENERS: Final = 64
NAMES: Final = ("queue", "sessions")
# Pushed once when the server stops: every stream ends.
CLOSED: Final = "closed"


class Listener:
    """One dashboard's pending events, coalesced."""

    def __init__(self) -> None:
        self._pending: dict[str, None] = {}
        self._ready = asyncio.Event()

    def push(self, name: str) -> None:
        self._pending[name] = None
        self._ready.set()

    async def next(self) -> list[str]:
        """The names pending since the last call (waits for at least one)."""
        await self._ready.wait()
        self._ready.clear()
        names, self._pending = list(self._pending), {}
        return names


class EventHub:
    """Broadcasts change names to every listening dashboard of this node."""

    def __init__(self) -> None:
        self._listeners: set[Listener] = set()

    def __len__(self) -> int:
        return len(self._listeners)

    def listen(self) -> Listener:
        if len(self._listeners) >= MAX_LISTENERS:
            raise OverflowError("too many dashboards listening")
        listener = Listener()
        self._listeners.add(listener)
        return listener

    def forget(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    def publish(self, name: str) -> None:
        for listener in self._listeners:
            listener.push(name)

    def close(self) -> None:
        """End every stream (server shutdown)."""
        self.publish(CLOSED)
