"""A Redis pub/sub subscription that outlives Redis going away.

The node bus (cluster/bus.py) and the moderation channel (moderation/channel.py)
each listen on channels of their own; both must subscribe before they announce
themselves (so nothing sent to them once they are known is missed) and both must
come back by themselves after a Redis restart, which closes every subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis

logger = logging.getLogger(__name__)

# How long one read waits for a message, and the pause before subscribing again.
READ_TIMEOUT = 1.0
RESUBSCRIBE_PAUSE = 0.5


class Subscription:
    """Messages published on `channels`, subscribed again whenever the connection is lost."""

    def __init__(self, redis: Redis, channels: Sequence[str], what: str) -> None:
        self._redis = redis
        self._channels = list(channels)
        # Names the subscription in the log ("bus", "moderation channel").
        self._what = what
        self._pubsub: Any = None

    async def open(self) -> None:
        """Subscribe now: once this returns, what is published on the channels is kept."""
        self._pubsub = await self._subscribe()

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Each published message (redis-py's dict: `channel`, `data`), for ever."""
        while True:
            try:
                message = await self._pubsub.get_message(timeout=READ_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Redis went away: subscribe again once it is back.
                logger.warning("%s subscription lost (%s); resubscribing", self._what, exc)
                await asyncio.sleep(RESUBSCRIBE_PAUSE)
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()
                with contextlib.suppress(Exception):
                    self._pubsub = await self._subscribe()
                continue
            if message is not None and message.get("type") == "message":
                yield message

    async def close(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None

    async def _subscribe(self) -> Any:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(*self._channels)
        return pubsub
