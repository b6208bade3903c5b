"""RedisMatcher: the shared matcher contract against a real redis-server, then what only
a shared queue can show (several nodes, script reloads, expiring records)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from matcher_contract import MakeMatcher, MatcherContract, Recorder, Subject, pair
from redis import Redis as SyncRedis
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


async def test_a_dead_nodes_waiters_leave_the_queue_at_a_live_nodes_sweep(nodes: Nodes) -> None:
    # Nobody ever considers the ghost (an interest nobody shares), yet it must not stay
    # counted as waiting, nor leave keys behind.
    settings = MatcherSettings(sweep_interval=0.01)
    rec = Recorder()
    dead = nodes.node(rec, settings, node_id="dead", waiting_ttl=0.1)
    alive = nodes.node(rec, settings, node_id="alive", waiting_ttl=0.1)
    await dead.enqueue("ghost", ["only-me"], tags=["g"], avoid=["x"], pool="text")
    assert await alive.waiting() == 1
    await asyncio.sleep(0.3)
    await alive.sweep()
    assert await alive.waiting() == 0
    assert await nodes.keys() == ["{" + nodes.prefix + "}:seq"]


async def test_a_decision_reads_its_candidates_not_the_whole_queue(
    nodes: Nodes, redis_server
) -> None:
    # Issue 10: with a backlog, each decision used to read every waiting user. Counted
    # in Redis commands, an enqueue, a match and a sweep must cost the same with 500
    # users waiting (each inside their own interest window) as with one.
    rec = Recorder()
    node = nodes.node(rec, NO_FALLBACK)
    admin = SyncRedis.from_url(redis_server.url, decode_responses=True)

    async def commands_for_a_match() -> int:
        admin.config_resetstat()
        await node.enqueue("alice")
        await node.enqueue("bob")
        await node.sweep()
        await node.forget("alice")
        await node.forget("bob")
        stats = admin.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")

    await node.enqueue("backlog0", ["solo0"])
    one = await commands_for_a_match()
    for i in range(1, 500):
        await node.enqueue(f"backlog{i}", [f"solo{i}"])
    assert await node.waiting() == 500
    assert await commands_for_a_match() == one
    assert len(rec.matches) == 2
    admin.close()


# --- several processes, one queue ---------------------------------------------------

RACE_NODES = 4


def _owner(user_id: str) -> str:
    return user_id.split(".", 1)[0]


def test_nodes_in_separate_processes_never_break_invariants(redis_server, tmp_path) -> None:
    """Nodes race in their own processes; the audit stream is Redis's order of every
    decision, and each node's log of what it saw must agree with it."""
    prefix = f"race-{uuid.uuid4().hex[:12]}"
    driver = Path(__file__).with_name("redis_race_node.py")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(driver),
                redis_server.url,
                prefix,
                f"n{i}",
                str(i),
                "5",
                "40",
                str(tmp_path / f"n{i}.json"),
            ],
        )
        for i in range(RACE_NODES)
    ]
    try:
        # Each node gives up by itself (and says where it was stuck) 30 s after its run.
        codes = [proc.wait(timeout=90) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == [0] * RACE_NODES, f"node exit codes {codes}; their stderr is above"
    results = {
        r["node"]: r
        for r in (json.loads((tmp_path / f"n{i}.json").read_text()) for i in range(RACE_NODES))
    }
    client = SyncRedis.from_url(redis_server.url, decode_responses=True)
    base = "{" + prefix + "}"
    audit = [fields for _id, fields in client.xrange(f"{base}:audit")]

    # Replay Redis's own order: every match takes two distinct users who are waiting.
    violations = [v for r in results.values() for v in r["violations"]]
    waiting: set[str] = set()
    forgotten: set[str] = set()
    matches: list[dict[str, str]] = []
    dequeued: dict[str, list[bool]] = {}
    for entry in audit:
        op = entry["op"]
        if op == "enqueue":
            if entry["user"] in waiting or entry["user"] in forgotten:
                violations.append(f"enqueue of {entry['user']} while waiting or after forget")
            waiting.add(entry["user"])
        elif op == "match":
            a, b = entry["a"], entry["b"]
            if a == b:
                violations.append(f"{a} matched with themselves")
            for u in (a, b):
                if u not in waiting:
                    violations.append(f"{u} matched while not waiting ({entry})")
                waiting.discard(u)
            matches.append(entry)
        elif op in ("dequeue", "forget"):
            u = entry["user"]
            if bool(entry["ticket"]) != (u in waiting):
                violations.append(f"{op} of {u} misreported waiting ({entry})")
            waiting.discard(u)
            if op == "dequeue":
                dequeued.setdefault(u, []).append(bool(entry["ticket"]))
            else:
                forgotten.add(u)
        else:
            violations.append(f"unexpected {entry}")
    assert violations == []
    assert waiting == set()

    # Each node saw exactly the matches of its users (its own on_match or its feed), and
    # every dequeue told its caller what Redis decided.
    for node, result in results.items():
        seen = Counter((e["user"], e["other"]) for e in result["log"] if e["op"] == "seen")
        expected = Counter(
            (u, other)
            for m in matches
            for u, other in ((m["a"], m["b"]), (m["b"], m["a"]))
            if _owner(u) == node
        )
        assert seen == expected, node
        told: dict[str, list[bool]] = {}
        for e in result["log"]:
            if e["op"] == "dequeue":
                told.setdefault(e["user"], []).append(e["result"])
        assert told == {u: r for u, r in dequeued.items() if _owner(u) == node}
        made_here = [m for m in matches if m["node"] == node]
        assert result["matches_made"] == len(made_here)
        assert result["matches_cross_node"] == sum(
            _owner(m["a"]) != _owner(m["b"]) for m in made_here
        )

    # The run exercised both kinds of pairs, and everyone's records are gone.
    crossed = sum(_owner(m["a"]) != _owner(m["b"]) for m in matches)
    assert crossed > 100
    assert len(matches) - crossed > 100
    leftovers = [
        k
        for k in client.keys(base + "*")
        if k.split(":")[1] in ("waiting", "user", "last", "lastof")
    ]
    assert leftovers == []
    client.close()
