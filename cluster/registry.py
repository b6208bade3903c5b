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
        # Every node that has beaten since Redis started (the dead are pruned at beats):
        # where the cluster's online count is read from without scanning keys.
        self._members = "{" + key_prefix + "}:nodes"
        self._interval = beat_interval
        self._ttl_ms = round(ttl * 1000)
        self._info: dict[str, object] = {"pid": os.getpid(), "started": time.time()}
        self._beater: asyncio.Task[None] | None = None
        self._ttl = ttl
        # Called when this node's key was gone at a beat: Redis restarted (or this
        # node stalled past its TTL), so what this node had put there is gone too.
        self.on_rejoin: Callable[[], None] | None = None
        # The online count (--show-online): each beat publishes this node's `count()`
        # and reads the other live nodes' back into `others_online`, so a count shown
        # is the cluster's, the other nodes' part at most a beat or two old.
        self.count: Callable[[], int] | None = None
        self.others_online = 0

    def key(self, node: str) -> str:
        return self._prefix + node

    async def start(self) -> None:
        await self.beat()
        await self._read_others()
        self._beater = asyncio.create_task(self._beat_forever(), name="node heartbeat")

    async def close(self) -> None:
        """Stop beating and leave the registry at once (a drained node is gone now)."""
        beater, self._beater = self._beater, None
        if beater is not None:
            beater.cancel()
            await asyncio.wait({beater})
        try:
            await self._redis.delete(self.key(self.node_id))
            if self.count is not None:
                await self._redis.srem(self._members, self.node_id)
        except Exception:
            logger.warning("could not remove this node from the registry; it expires on its own")

    async def beat(self) -> bool:
        """Renew this node's key; False when it had to be made anew."""
        key = self.key(self.node_id)
        info = self._info if self.count is None else self._info | {"online": self.count()}
        value = json.dumps(info)
        if self.count is not None:
            # Each beat, not only the first: another node may have pruned this one in
            # the instant its key was missing.
            await self._redis.sadd(self._members, self.node_id)
        if await self._redis.set(key, value, px=self._ttl_ms, xx=True):
            return True
        await self._redis.set(key, value, px=self._ttl_ms)
        return False

    async def _read_others(self) -> None:
        """Sum the other live nodes' published counts into `others_online`."""
        if self.count is None:
            return
        nodes = sorted(_text(n) for n in await self._redis.smembers(self._members))
        others = [n for n in nodes if n != self.node_id]
        values = await self._redis.mget([self.key(n) for n in others]) if others else []
        total = 0
        gone = []
        for node, value in zip(others, values, strict=True):
            if value is None:
                gone.append(node)
                continue
            try:
                online = json.loads(value).get("online", 0)
            except (ValueError, AttributeError):
                continue
            if isinstance(online, int) and online > 0:
                total += online
        if gone:
            # Dead (or not yet re-registered after a Redis restart: it adds itself back).
            await self._redis.srem(self._members, *gone)
        self.others_online = total

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

    async def live_nodes(self) -> set[str]:
        """Every node alive now, this one included (from the members the beats keep)."""
        members = {_text(n) for n in await self._redis.smembers(self._members)}
        return await self.alive(members | {self.node_id})

    async def _beat_forever(self) -> None:
        # redis-py can swallow the CancelledError of a command cancelled mid-way (it
        # drops the connection, then returns or raises something else): without this
        # check stop() awaited the task forever and a node ignored SIGINT about one
        # time in four.
        while not _cancelling():
            await asyncio.sleep(self._interval)
            try:
                kept = await self.beat()
                await self._read_others()
            except Exception as exc:
                logger.warning("node heartbeat failed (%s); retrying", exc)
                continue
            if not kept and not _cancelling():
                logger.warning("this node was missing from the registry (Redis restarted?)")
                if self.on_rejoin is not None:
                    self.on_rejoin()


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
