"""The node registry: each live node keeps a key in Redis that expires when it stops beating."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable

from redis.asyncio import Redis

logger = logging.getLogger(__name__)

# A beat each second and a key that lives 3 s: a node killed at t is gone from the
# registry by t+3 and noticed by a watcher checking each second by t+4, inside the 5 s
# the cluster promises; two missed beats (a stalled loop, a Redis blip) are forgiven.
BEAT_INTERVAL = 1.0
BEAT_TTL = 3.0


class NodeRegistry:
    """This node's heartbeat, and who else is alive."""

    def __init__(
        self,
        redis: Redis,
        node_id: str,
        *,
        key_prefix: str = "rr",
        beat_interval: float = BEAT_INTERVAL,
        ttl: float = BEAT_TTL,
    ) -> None:
        if ttl < 2 * beat_interval:
            raise ValueError("the TTL must cover at least two beats")
        self._redis = redis
        self.node_id = node_id
        self._prefix = "{" + key_prefix + "}:node:"
        self._interval = beat_interval
        self._ttl_ms = round(ttl * 1000)
        self._info = json.dumps({"pid": os.getpid(), "started": time.time()})
        self._beater: asyncio.Task[None] | None = None
        self._ttl = ttl
        # Called when this node's key was gone at a beat: Redis restarted (or this
        # node stalled past its TTL), so what this node had put there is gone too.
        self.on_rejoin: Callable[[], None] | None = None

    def key(self, node: str) -> str:
        return self._prefix + node

    async def start(self) -> None:
        await self.beat()
        self._beater = asyncio.create_task(self._beat_forever(), name="node heartbeat")

    async def close(self) -> None:
        """Stop beating and leave the registry at once (a drained node is gone now)."""
        beater, self._beater = self._beater, None
        if beater is not None:
            beater.cancel()
            await asyncio.wait({beater})
        try:
            await self._redis.delete(self.key(self.node_id))
        except Exception:
            logger.warning("could not remove this node from the registry; it expires on its own")

    async def beat(self) -> bool:
        """Renew this node's key; False when it had to be made anew."""
        key = self.key(self.node_id)
        if await self._redis.set(key, self._info, px=self._ttl_ms, xx=True):
            return True
        await self._redis.set(key, self._info, px=self._ttl_ms)
        return False

    async def settled(self) -> bool:
        """Whether Redis has run long enough for every live node to have beaten since
        it started: just after a restart, every key is missing, not every node dead."""
        info = await self._redis.info("server")
        return int(info["uptime_in_seconds"]) > math.ceil(self._ttl) + 1

    async def alive(self, nodes: Iterable[str]) -> set[str]:
        """Which of `nodes` are alive; raises when Redis cannot say (so nobody is
        declared dead because Redis is)."""
        wanted = list(dict.fromkeys(nodes))
        if not wanted:
            return set()
        values = await self._redis.mget([self.key(n) for n in wanted])
        return {n for n, v in zip(wanted, values, strict=True) if v is not None}

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                kept = await self.beat()
            except Exception as exc:
                logger.warning("node heartbeat failed (%s); retrying", exc)
                continue
            if not kept:
                logger.warning("this node was missing from the registry (Redis restarted?)")
                if self.on_rejoin is not None:
                    self.on_rejoin()
