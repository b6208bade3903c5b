"""The SessionBus: how a message reaches a session, on this node or on another.

Messages between partners (chat, typing, camera state, a partner leaving, the pair
handshake) go through here, so the Lobby never needs the partner's Session object.
LocalBus serves one process; RedisBus adds one Redis pub/sub channel per node.

Why pub/sub rather than streams: these messages only matter while both nodes live,
and a node that is gone has lost its sessions anyway (the registry tells partners).
Pub/sub costs one PUBLISH per message with nothing stored, trimmed or acknowledged;
a stream per node would need trimming and cleanup of dead nodes' streams to buy
delivery that nobody could use. Matches, which must not be lost, already travel in
the matcher's per-node stream (matcher/redis.py).

What pub/sub does not give, the sender adds: a message that could not be published
(Redis away) or that nobody received (PUBLISH answered 0: the other node is
resubscribing after a Redis restart) is held and tried again, in order per node,
for up to HOLD_SECONDS. So chat typed during a short Redis outage arrives late
rather than never; a node that is really gone is declared dead by the registry
within that time, and what was held for it is dropped.

With the cluster secret every message is signed (cluster/signing.py): a message
published by anyone who can reach Redis but does not hold the secret, or replayed
later than a minute, is dropped and logged, so nobody can speak for a session of
this cluster (chat in its name, a forged pair handshake) from Redis alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import Redis

from .node import SessionRef
from .signing import Signer
from .subscription import Subscription

logger = logging.getLogger(__name__)

# (recipient session id, sender, message). Runs on the event loop; must not block.
BusHandler = Callable[[str, SessionRef, dict[str, Any]], None]
# Messages waiting to be published; past this they are dropped (and logged), never
# letting a stalled Redis grow this node's memory.
OUTBOX_SIZE = 10_000
# How long an undelivered message is tried again, and how often.
HOLD_SECONDS = 10.0
RETRY_INTERVAL = 0.25


class SessionBus(Protocol):
    """Delivers a message to a session, wherever it lives."""

    node: str

    def set_handler(self, handler: BusHandler) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def send(self, to: SessionRef, sender: SessionRef, message: dict[str, Any]) -> None:
        """Never blocks; a session on this node is reached before send returns."""
        ...


def _drop(to: str, sender: SessionRef, message: dict[str, Any]) -> None:
    logger.debug("no handler for a bus message to %s", to)


class LocalBus:
    """One node: every session is here, so sending is a call."""

    def __init__(self, node: str = "local") -> None:
        self.node = node
        self._handler: BusHandler = _drop

    def set_handler(self, handler: BusHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def send(self, to: SessionRef, sender: SessionRef, message: dict[str, Any]) -> None:
        self._handler(to.id, sender, message)


class RedisBus:
    """Sessions on this node are called; others get a PUBLISH on their node's channel."""

    def __init__(
        self, redis: Redis, node: str, *, key_prefix: str = "rr", secret: bytes | None = None
    ) -> None:
        self.node = node
        self._signer = Signer(secret, "bus message")
        self._redis = redis
        self._prefix = "{" + key_prefix + "}:bus:"
        self._handler: BusHandler = _drop
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue(OUTBOX_SIZE)
        # Per node, messages not yet delivered, oldest first: (first try, payload).
        # Counted against OUTBOX_SIZE with the outbox, so the two stay bounded together.
        self._held: dict[str, deque[tuple[float, str]]] = {}
        self._held_count = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription: Subscription | None = None
        self.dropped = 0
        # Messages dropped because they were not signed with the cluster secret.
        self.refused = 0

    def channel(self, node: str) -> str:
        return self._prefix + node

    def set_handler(self, handler: BusHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        # Subscribed before start returns, so nothing sent once we are known is missed.
        self._subscription = Subscription(self._redis, [self.channel(self.node)], "bus")
        await self._subscription.open()
        self._tasks = [
            asyncio.create_task(self._read(), name="bus reader"),
            asyncio.create_task(self._write(), name="bus writer"),
        ]

    async def close(self) -> None:
        """Publish what is queued (a drain's partner_left notices), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outbox.join(), timeout=2)
        if self._held_count:
            logger.warning("bus closing with %d undelivered messages", self._held_count)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []
        if self._subscription is not None:
            await self._subscription.close()

    def send(self, to: SessionRef, sender: SessionRef, message: dict[str, Any]) -> None:
        if to.node == self.node:
            self._handler(to.id, sender, message)
            return
        # Sealed now: a message held for a while is still well inside its minute.
        payload = self._signer.seal(
            {"to": to.id, "from": sender.id, "node": sender.node, "m": message}
        )
        try:
            if self._held_count + self._outbox.qsize() >= OUTBOX_SIZE:
                raise asyncio.QueueFull
            self._outbox.put_nowait((to.node, payload))
        except asyncio.QueueFull:
            self.dropped += 1
            logger.warning("bus outbox full; dropped a %s for %s", message.get("t"), to)

    async def _read(self) -> None:
        assert self._subscription is not None
        async for message in self._subscription.messages():
            try:
                data = self._signer.open(message["data"])
                if data is None:
                    self.refused += 1
                    continue
                sender = SessionRef(str(data["from"]), str(data["node"]))
                self._handler(str(data["to"]), sender, dict(data["m"]))
            except Exception:
                logger.exception("bad or failing bus message %r", message.get("data"))

    async def _write(self) -> None:
        while True:
            try:
                # While something is held, wake up to retry it even if nothing new comes.
                timeout = RETRY_INTERVAL if self._held else None
                node, payload = await asyncio.wait_for(self._outbox.get(), timeout)
            except TimeoutError:
                await self._retry_held()
                continue
            try:
                if node in self._held:
                    # Behind what is already held for that node: order per node is kept.
                    self._hold(node, time.monotonic(), payload)
                elif not await self._publish(node, payload):
                    self._hold(node, time.monotonic(), payload)
            finally:
                self._outbox.task_done()
            if self._held and self._outbox.empty():
                await self._retry_held()

    async def _publish(self, node: str, payload: str) -> bool:
        """True once some subscriber received the message."""
        try:
            return bool(await self._redis.publish(self.channel(node), payload))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("bus publish to %s failed (%s); holding it", node, exc)
            return False

    def _hold(self, node: str, since: float, payload: str) -> None:
        self._held.setdefault(node, deque()).append((since, payload))
        self._held_count += 1

    async def _retry_held(self) -> None:
        now = time.monotonic()
        for node in list(self._held):
            queue = self._held[node]
            while queue:
                since, payload = queue[0]
                if now - since > HOLD_SECONDS:
                    queue.popleft()
                    self._held_count -= 1
                    self.dropped += 1
                    logger.warning(
                        "bus message to %s undelivered for %.0f s; dropped", node, now - since
                    )
                    continue
                if not await self._publish(node, payload):
                    break
                queue.popleft()
                self._held_count -= 1
            if not queue:
                del self._held[node]
