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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from redis.asyncio import Redis

from .node import SessionRef

logger = logging.getLogger(__name__)

# (recipient session id, sender, message). Runs on the event loop; must not block.
BusHandler = Callable[[str, SessionRef, dict[str, Any]], None]
# Messages waiting to be published; past this they are dropped (and logged), never
# letting a stalled Redis grow this node's memory.
OUTBOX_SIZE = 10_000


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

    def __init__(self, redis: Redis, node: str, *, key_prefix: str = "rr") -> None:
        self.node = node
        self._redis = redis
        self._prefix = "{" + key_prefix + "}:bus:"
        self._handler: BusHandler = _drop
        self._outbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue(OUTBOX_SIZE)
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        self.dropped = 0

    def channel(self, node: str) -> str:
        return self._prefix + node

    def set_handler(self, handler: BusHandler) -> None:
        self._handler = handler

    async def start(self) -> None:
        # Subscribed before start returns, so nothing sent once we are known is missed.
        self._pubsub = await self._subscribe()
        self._tasks = [
            asyncio.create_task(self._read(), name="bus reader"),
            asyncio.create_task(self._write(), name="bus writer"),
        ]

    async def close(self) -> None:
        """Publish what is queued (a drain's partner_left notices), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outbox.join(), timeout=2)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks = []
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    def send(self, to: SessionRef, sender: SessionRef, message: dict[str, Any]) -> None:
        if to.node == self.node:
            self._handler(to.id, sender, message)
            return
        payload = json.dumps({"to": to.id, "from": sender.id, "node": sender.node, "m": message})
        try:
            self._outbox.put_nowait((to.node, payload))
        except asyncio.QueueFull:
            self.dropped += 1
            logger.warning("bus outbox full; dropped a %s for %s", message.get("t"), to)

    async def _subscribe(self) -> Any:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.channel(self.node))
        return pubsub

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Redis went away: subscribe again once it is back.
                logger.warning("bus subscription lost (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()
                with contextlib.suppress(Exception):
                    self._pubsub = await self._subscribe()
                continue
            if message is None or message.get("type") != "message":
                continue
            try:
                data = json.loads(message["data"])
                sender = SessionRef(str(data["from"]), str(data["node"]))
                self._handler(str(data["to"]), sender, dict(data["m"]))
            except Exception:
                logger.exception("bad or failing bus message %r", message.get("data"))

    async def _write(self) -> None:
        while True:
            node, payload = await self._outbox.get()
            try:
                await self._redis.publish(self.channel(node), payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("bus publish to %s failed (%s); message dropped", node, exc)
            finally:
                self._outbox.task_done()
