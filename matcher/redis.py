"""RedisMatcher: one waiting set shared by every node, each decision one Lua script."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from .base import AlreadyWaiting, Match, MatcherSettings, MatchHandler, check_enqueue

logger = logging.getLogger(__name__)

_SCRIPT = resources.files(__package__).joinpath("redis.lua").read_text(encoding="utf-8")
# Park-Miller's modulus: the Lua generator takes a seed in [1, _SEED_MOD).
_SEED_MOD = 2147483647
# Fields per match in a script reply: a, b, node of a, node of b, shared interests (JSON).
_MATCH_FIELDS = 5


def _log_orphan_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a matcher decision failed: %s", task.exception())


def _text(value: bytes | str) -> str:
    # Works whether or not the caller's client was built with decode_responses.
    return value.decode() if isinstance(value, bytes) else value


class RedisMatcher:
    """Matcher whose queue lives in Redis, so users on different nodes can be paired.

    The rules are MemoryMatcher's; the Lua script (matcher/redis.lua) decides each
    enqueue, sweep, dequeue and forget atomically across every process using the same
    key prefix. Among candidates the rules rank equal, one on this node is preferred.

    on_match runs here for every match this node's script made. A match made on another
    node for one of our users arrives through remote_matches().
    """

    def __init__(
        self,
        on_match: MatchHandler,
        settings: MatcherSettings = MatcherSettings(),  # noqa: B008 - frozen, so sharing is safe
        *,
        redis_url: str | None = None,
        client: Redis | None = None,
        node_id: str | None = None,
        key_prefix: str = "rr:matcher",
        # Wall time, not monotonic: "since" written by one host is compared with "now"
        # on another, so nodes need clocks in step (NTP's milliseconds are fine here).
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        prefer_same_node: bool = True,
        # A node's waiting users outlive its last decision (enqueue or sweep) by this
        # long; then any other node drops them, so nobody is paired with a ghost.
        waiting_ttl: float = 30.0,
        # Last-partner records and match feeds: long enough for "no quick rematch".
        record_ttl: float = 3600.0,
        feed_maxlen: int = 10_000,
        # >0 writes every decision to a stream (the race tests read it as the one order).
        audit_maxlen: int = 0,
    ) -> None:
        if waiting_ttl < 10 * settings.sweep_interval:
            raise ValueError("waiting_ttl must cover several sweep intervals")
        if (redis_url is None) == (client is None):
            raise ValueError("give exactly one of redis_url or client")
        if client is None:
            assert redis_url is not None
            client = Redis.from_url(redis_url, decode_responses=True)
        self._on_match = on_match
        self._settings = settings
        self._own_client = redis_url is not None
        self._redis: Redis = client
        self.node_id = node_id or f"{socket.gethostname()}:{os.getpid()}"
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        # The hash tag keeps every key of one matcher in one Redis Cluster slot.
        base = "{" + key_prefix + "}"
        self._keys = [f"{base}:waiting", f"{base}:seq", f"{base}:audit"]
        self.audit_key = self._keys[2]
        self._feed_key = f"{base}:feed:{self.node_id}"
        self._cfg = json.dumps(
            {
                "base": base,
                "node": self.node_id,
                "interest_timeout": settings.interest_timeout,
                "rematch_after": settings.rematch_after,
                "max_skips": settings.max_skips,
                "prefer_same_node": prefer_same_node,
                "waiting_ttl_ms": max(1, round(waiting_ttl * 1000)),
                "record_ttl": max(1, round(record_ttl)),
                "feed_maxlen": feed_maxlen,
                "audit_maxlen": audit_maxlen,
            }
        )
        # register_script runs EVALSHA and falls back to EVAL after a SCRIPT FLUSH or a
        # restarted server, so the script is never loaded by hand.
        self._script = self._redis.register_script(_SCRIPT)
        # One decision in flight per node: Redis answers one connection in order, so a
        # match is handed to on_match before any later call of ours returns, as the
        # contract requires. (A pool would let a dequeue return before the reply of an
        # earlier script that matched the same user.) Pipelining is the next step if one
        # round trip per decision ever limits a node.
        self._turn = asyncio.Lock()
        self._sweeper: asyncio.Task[None] | None = None
        # Feed reads still running (see remote_matches); close() waits for them.
        self._reads: set[asyncio.Future[Any]] = set()
        self._feed_from: str | None = None
        # Matches this node's scripts made, and how many of them paired users of two nodes.
        self.matches_made = 0
        self.matches_cross_node = 0

    async def start(self) -> None:
        if self._feed_from is None:
            self._feed_from = await self._feed_tail()
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="matcher-sweep")

    async def close(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            # wait() rather than awaiting the task: a cancel of close() itself still propagates.
            await asyncio.wait({sweeper})
        # A feed read left behind by a cancelled reader ends its round (at most 1 s).
        if self._reads:
            await asyncio.wait(set(self._reads), timeout=2)
        # A decision still in flight (a leaving user's forget) ends before the caller
        # closes the connection under it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                async with self._turn:
                    pass
        if self._own_client:
            await self._redis.aclose()

    async def enqueue(
        self,
        user_id: str,
        interests: Sequence[str] = (),
        *,
        tags: Collection[str] = (),
        avoid: Collection[str] = (),
        pool: str = "",
    ) -> None:
        options = check_enqueue(interests, tags, avoid, pool)
        reply = await self._decide(
            "enqueue",
            user_id,
            json.dumps(sorted(options.interests)),
            options.pool,
            json.dumps(sorted(options.tags)),
            json.dumps(sorted(options.avoid)),
        )
        if reply[0] == "already_waiting":
            raise AlreadyWaiting(user_id)

    async def dequeue(self, user_id: str) -> bool:
        reply = await self._decide("dequeue", user_id)
        return bool(int(reply[0]))

    async def forget(self, user_id: str) -> None:
        await self._decide("forget", user_id)

    async def waiting(self) -> int:
        # Counts the users of a dead node until a live node's next decision drops them.
        return int(await self._redis.zcard(self._keys[0]))

    async def sweep(self) -> int:
        """Re-try this node's waiting users whose timer expired, longest-waiting first;
        return matches made.

        It also tells the others this node is alive (so its waiters are not dropped as
        ghosts), so it must run more often than waiting_ttl, and drops dead nodes' waiters.
        The background task calls this every sweep_interval; tests call it directly.
        """
        reply = await self._decide("sweep")
        return (len(reply) - 1) // _MATCH_FIELDS

    async def remote_matches(self) -> AsyncIterator[Match]:
        """Matches other nodes made for this node's users, in the order they were made.

        Starts from where start() found the feed (or from now, without start()), so a
        node sees every match made for it since it started.
        """
        last = self._feed_from if self._feed_from is not None else await self._feed_tail()
        while True:
            # Block in short rounds so a cancelled reader never holds a connection long.
            # The read runs as a task of its own behind a shield: a cancel of the reader
            # then ends it at once, while the read finishes its round and hands its
            # connection back whole. Cancelling redis-py inside a blocking read could
            # swallow the cancel or leave the reader stuck (redis-py #2028, #2579; seen
            # here as a hung node shutdown in the race test).
            read = asyncio.ensure_future(
                self._redis.xread({self._feed_key: last}, count=100, block=1000)
            )
            self._reads.add(read)
            read.add_done_callback(self._read_done)
            reply: Any = await asyncio.shield(read)
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    last = _text(entry_id)
                    # A reader started again (after a Redis error) goes on from here.
                    self._feed_from = last
                    f = {_text(k): _text(v) for k, v in fields.items()}
                    # The script's seeker (a) is always on the node that decided ("by").
                    yield Match(
                        f["a"],
                        f["b"],
                        tuple(json.loads(f["shared"])),
                        node_a=f["by"],
                        node_b=self.node_id,
                    )

    def _read_done(self, read: asyncio.Future[Any]) -> None:
        self._reads.discard(read)
        if not read.cancelled() and read.exception() is not None:
            # Seen by the reader when it still waits; logged here when nobody did.
            logger.debug("feed read failed: %s", read.exception())

    async def _feed_tail(self) -> str:
        newest: Any = await self._redis.xrevrange(self._feed_key, count=1)
        return _text(newest[0][0]) if newest else "0-0"

    async def _decide(self, op: str, *args: str) -> list[Any]:
        """Run one decision and hand the matches it made to on_match; return the reply."""
        # Shielded: once the script is sent, a cancelled caller must not lose the reply,
        # or a match would be made in Redis and never reported.
        decision = asyncio.ensure_future(self._decide_in_turn(op, *args))
        # A cancelled caller no longer awaits it; its failure is logged, not lost.
        decision.add_done_callback(_log_orphan_failure)
        return await asyncio.shield(decision)

    async def _decide_in_turn(self, op: str, *args: str) -> list[Any]:
        async with self._turn:
            raw = await self._script(
                keys=self._keys,
                args=[op, self._cfg, repr(self._clock()), self._rng.randrange(1, _SEED_MOD), *args],
            )
            reply = [_text(v) if isinstance(v, bytes | str) else v for v in raw]
            if op in ("enqueue", "sweep") and reply[0] == "ok":
                self._deliver(reply[1:])
            return reply

    def _deliver(self, flat: list[Any]) -> None:
        """Hand each match in a script reply to on_match."""
        for i in range(0, len(flat) - _MATCH_FIELDS + 1, _MATCH_FIELDS):
            a, b, node_a, node_b, shared = flat[i : i + _MATCH_FIELDS]
            self.matches_made += 1
            if node_a != node_b:
                self.matches_cross_node += 1
            match = Match(a, b, tuple(json.loads(shared)), node_a=node_a, node_b=node_b)
            try:
                self._on_match(match)
            except Exception:
                # The match is already recorded; a failing handler must not undo it or
                # break the caller who merely triggered it (an enqueue or the sweep).
                logger.exception("match handler failed for %s", match)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval)
            try:
                await self.sweep()
            except RedisConnectionError as exc:
                # Redis restarting: said once per failed sweep, without a traceback.
                logger.warning("matcher sweep failed (%s); retrying next interval", exc)
            except Exception:
                # One bad sweep must not stop the timers for good.
                logger.exception("matcher sweep failed; retrying next interval")
