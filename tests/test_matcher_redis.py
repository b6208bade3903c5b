"""RedisMatcher: the shared matcher contract against a real redis-server, then what only
a shared queue can show (several nodes, script reloads, expiring records)."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator

import pytest
from matcher_contract import MakeMatcher, MatcherContract, Subject
from redis.asyncio import Redis

from matcher import MatcherSettings, MatchHandler
from matcher.redis import RedisMatcher

DEFAULTS = MatcherSettings()
NO_FALLBACK = MatcherSettings(interest_timeout=1e9, rematch_after=1e9, max_skips=3)


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Nodes:
    """RedisMatchers sharing one key prefix (one cluster) and one clock, as separate nodes."""

    def __init__(self, client: Redis) -> None:
        self.client = client
        self.prefix = f"test-{uuid.uuid4().hex[:12]}"
        self.clock = FakeClock()
        self.made: list[RedisMatcher] = []

    def node(
        self,
        on_match: MatchHandler,
        settings: MatcherSettings = DEFAULTS,
        *,
        node_id: str = "n1",
        seed: int = 0,
        **kwargs: object,
    ) -> RedisMatcher:
        matcher = RedisMatcher(
            on_match,
            settings,
            client=self.client,
            node_id=node_id,
            key_prefix=self.prefix,
            clock=self.clock,
            rng=random.Random(seed),
            **kwargs,  # type: ignore[arg-type]
        )
        self.made.append(matcher)
        return matcher

    async def keys(self) -> list[str]:
        return sorted(await self.client.keys("{" + self.prefix + "}*"))


@pytest.fixture
async def nodes(redis_server) -> AsyncIterator[Nodes]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    made = Nodes(client)
    try:
        yield made
    finally:
        for matcher in made.made:
            await matcher.close()
        keys = await made.keys()
        if keys:
            await client.delete(*keys)
        await client.aclose()


class TestRedisMatcher(MatcherContract):
    @pytest.fixture
    def make_matcher(self, nodes: Nodes) -> MakeMatcher:
        async def make(
            on_match: MatchHandler,
            settings: MatcherSettings = DEFAULTS,
            *,
            seed: int = 0,
        ) -> Subject:
            # A fresh prefix per matcher: seeded tests build several in one test.
            nodes.prefix = f"test-{uuid.uuid4().hex[:12]}"
            nodes.clock = FakeClock()
            matcher = nodes.node(on_match, settings, seed=seed)
            return Subject(matcher, nodes.clock.advance, matcher.sweep)

        return make

    async def assert_holds_nothing(self, subject: Subject) -> None:
        await super().assert_holds_nothing(subject)
        assert isinstance(subject.matcher, RedisMatcher)
        # Only the ticket counter outlives everyone's forget.
        client = subject.matcher._redis
        prefix = subject.matcher.audit_key.rsplit(":", 1)[0]
        assert await client.keys(prefix + "*") == [prefix + ":seq"]
