"""RedisMatcher: the shared matcher contract against a real redis-server, then what only
a shared queue can show (several nodes, script reloads, expiring records)."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest
from matcher_contract import MakeMatcher, MatcherContract, Recorder, Subject, pair
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


async def test_match_across_nodes_reaches_the_other_node(nodes: Nodes) -> None:
    made_on_a, made_on_b = Recorder(), Recorder()
    a = nodes.node(made_on_a, node_id="a")
    b = nodes.node(made_on_b, node_id="b")
    await a.start()
    await b.start()
    feed = b.remote_matches()

    await b.enqueue("bob", ["Music"])
    await a.enqueue("alice", ["music"])

    # Made by a's script, so a's on_match has it; b hears through its feed.
    assert made_on_a.pairs() == [pair("alice", "bob")]
    assert made_on_b.matches == []
    remote = await asyncio.wait_for(anext(feed), timeout=5)
    assert remote == made_on_a.matches[0]
    assert remote.shared_interests == ("music",)
    assert (a.matches_made, a.matches_cross_node) == (1, 1)
    assert (b.matches_made, b.matches_cross_node) == (0, 0)

    # A match within one node tells nobody else.
    await a.enqueue("carol")
    await a.enqueue("dave")
    assert (a.matches_made, a.matches_cross_node) == (2, 1)
    await b.enqueue("erin")
    await a.enqueue("frank")
    assert await asyncio.wait_for(anext(feed), timeout=5) == made_on_a.matches[-1]
    await feed.aclose()


@pytest.mark.parametrize("seed", range(5))
async def test_same_node_partner_is_preferred_within_the_fairness_rules(
    nodes: Nodes, seed: int
) -> None:
    # A seeker on node a shares an interest with one candidate on a and one on b each
    # round; candidates never pair with each other. The local one is chosen until the
    # remote one has been passed over max_skips times, then the remote one must be.
    rec = Recorder()
    a = nodes.node(rec, NO_FALLBACK, node_id="a", seed=seed)
    b = nodes.node(rec, NO_FALLBACK, node_id="b", seed=seed)
    await b.enqueue("remote", ["r"])
    for r in range(NO_FALLBACK.max_skips + 1):
        await a.enqueue(f"local{r}", [f"l{r}"])
        await a.enqueue(f"seeker{r}", ["r", f"l{r}"])
        expected = "remote" if r == NO_FALLBACK.max_skips else f"local{r}"
        assert rec.pairs()[-1] == pair(f"seeker{r}", expected)
    assert a.matches_cross_node == 1


async def test_scripts_survive_a_script_flush(nodes: Nodes) -> None:
    rec = Recorder()
    m = nodes.node(rec)
    await m.enqueue("alice")
    await nodes.client.script_flush()
    await m.enqueue("bob")
    assert rec.pairs() == [pair("alice", "bob")]


async def test_a_waiter_whose_node_stopped_sweeping_expires(nodes: Nodes) -> None:
    # Node "dead" never sweeps, so its waiter's record lapses and nobody is paired with it.
    settings = MatcherSettings(sweep_interval=0.01)
    rec = Recorder()
    dead = nodes.node(rec, settings, node_id="dead", waiting_ttl=0.1)
    alive = nodes.node(rec, settings, node_id="alive", waiting_ttl=0.1)
    await dead.enqueue("ghost")
    await asyncio.sleep(0.3)
    await alive.enqueue("bob")
    assert rec.matches == []
    assert await alive.waiting() == 1


async def test_own_sweep_keeps_waiters_alive(nodes: Nodes) -> None:
    settings = MatcherSettings(sweep_interval=0.01)
    rec = Recorder()
    node = nodes.node(rec, settings, waiting_ttl=0.1)
    await node.start()
    await node.enqueue("alice")
    await asyncio.sleep(0.3)
    await node.enqueue("bob")
    assert rec.pairs() == [pair("alice", "bob")]
