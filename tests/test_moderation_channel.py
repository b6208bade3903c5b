"""The moderation channel (moderation/channel.py) on a real redis-server: two nodes, each
a RedisChannel with its NodeRegistry, as the server wires them.

What a moderator waits for must answer or fail with the reason, within bounds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from cluster.connect import connect
from cluster.registry import NodeRegistry
from moderation import channel as channel_module
from moderation.channel import ChannelError, LocalChannel, RedisChannel

Node = tuple[RedisChannel, NodeRegistry, Redis]
CLUSTER_SECRET = b"test-cluster-secret-0123"


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[list[Node]]:
    made: list[Node] = []
    for name in ("A", "B"):
        redis = connect(redis_url)
        registry = NodeRegistry(redis, name)
        registry.count = lambda: 0  # members are kept only with a count, as the Lobby sets
        await registry.start()
        channel = RedisChannel(redis, name, registry, timeout=0.5, secret=CLUSTER_SECRET)
        await channel.start()
        made.append((channel, registry, redis))
    try:
        yield made
    finally:
        for channel, registry, redis in made:
            await channel.close()
            await registry.close()
            await redis.aclose()


async def test_a_request_runs_on_the_node_named_and_its_refusal_comes_back(pair) -> None:
    (a, _, _), (b, _, _) = pair
    seen: list[dict[str, Any]] = []

    async def kick(args: dict[str, Any]) -> dict[str, Any]:
        seen.append(args)
        if args["id"] == "gone":
            raise ChannelError(404, "no such session on node B")
        return {"kicked": True, "node": "B"}

    b.handle("kick", kick)
    assert await a.call("B", "kick", {"id": "x"}) == {"kicked": True, "node": "B"}
    assert seen == [{"id": "x"}]
    with pytest.raises(ChannelError) as refused:
        await a.call("B", "kick", {"id": "gone"})
    assert (refused.value.status, refused.value.message) == (404, "no such session on node B")
    with pytest.raises(ChannelError) as unknown:
        await a.call("B", "explode", {})
    assert unknown.value.status == 501 and "'explode'" in unknown.value.message
    # This node's own requests are calls, not Redis round trips.
    a.handle("kick", kick)
    assert await a.call("A", "kick", {"id": "y"}) == {"kicked": True, "node": "B"}


async def test_only_messages_signed_with_the_cluster_secret_are_served(pair) -> None:
    # Anyone who can publish on Redis could otherwise kick, ban or read evidence.
    (a, _, redis), (b, _, _) = pair
    served: list[dict[str, Any]] = []

    async def kick(args: dict[str, Any]) -> dict[str, Any]:
        served.append(args)
        return {"kicked": True}

    b.handle("kick", kick)
    forged = json.dumps({"id": "1", "from": "A", "op": "kick", "args": {"id": "x"}})
    assert await redis.publish(b.channel("B"), "0" * 64 + forged) == 1
    assert await redis.publish(b.channel("B"), forged) == 1
    # A node with another secret is not heard either: its call goes unanswered.
    stranger = RedisChannel(redis, "A", pair[0][1], timeout=0.5, secret=b"another-secret-0123456")
    await stranger.start()
    try:
        with pytest.raises(ChannelError) as unanswered:
            await stranger.call("B", "kick", {"id": "y"})
        assert unanswered.value.status == 504
    finally:
        await stranger.close()
    assert served == []
    assert await a.call("B", "kick", {"id": "z"}) == {"kicked": True}
    assert served == [{"id": "z"}]


async def test_every_live_node_answers_and_a_silent_one_is_named(pair) -> None:
    (a, _, _), (b, _, _) = pair

    def count(node: str) -> Any:
        async def handler(args: dict[str, Any]) -> dict[str, Any]:
            return {"node": node}

        return handler

    a.handle("count", count("A"))
    b.handle("count", count("B"))
    answers, missed = await a.call_all("count", {})
    assert answers == {"A": {"node": "A"}, "B": {"node": "B"}} and missed == {}

    async def stuck(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(30)
        return {}

    b.handle("count", stuck)
    started = asyncio.get_running_loop().time()
    answers, missed = await a.call_all("count", {})
    assert asyncio.get_running_loop().time() - started < 5
    assert answers == {"A": {"node": "A"}}
    assert missed == {
        "B": "node B did not answer within 0.5 s (stalled or stopping); nothing was done there"
    }


async def test_a_node_that_left_is_explained_at_once(pair) -> None:
    (a, _, _), (b, registry_b, _) = pair
    await b.close()
    await registry_b.close()
    with pytest.raises(ChannelError) as gone:
        await a.call("B", "kick", {"id": "x"})
    assert gone.value.status == 410
    assert "node B is not in the cluster any more" in gone.value.message
    answers, missed = await a.call_all("nothing", {})
    assert "B" not in answers and "B" not in missed  # not a member any more: not asked


async def test_waiting_calls_are_bounded(pair, monkeypatch) -> None:
    (a, _, _), (b, _, _) = pair
    monkeypatch.setattr(channel_module, "MAX_PENDING", 3)
    release = asyncio.Event()

    async def slow(args: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return {"ok": True}

    b.handle("slow", slow)
    waiting = [asyncio.create_task(a.call("B", "slow", {})) for _ in range(3)]
    await asyncio.sleep(0.05)
    with pytest.raises(ChannelError) as busy:
        await a.call("B", "slow", {})
    assert busy.value.status == 503 and "too many" in busy.value.message
    release.set()
    assert [await t for t in waiting] == [{"ok": True}] * 3


async def test_notices_reach_the_other_nodes_not_the_sender(pair) -> None:
    (a, _, _), (b, _, _) = pair
    heard_a: list[str] = []
    heard_b: list[str] = []
    a.on_notice(heard_a.append)
    b.on_notice(heard_b.append)
    a.notify("sessions")
    async with asyncio.timeout(5):
        while not heard_b:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert heard_b == ["sessions"] and heard_a == []


async def test_one_node_alone_answers_for_itself_and_names_no_other() -> None:
    alone = LocalChannel("solo")

    async def hello(args: dict[str, Any]) -> dict[str, Any]:
        return {"hi": args["who"]}

    alone.handle("hello", hello)
    assert await alone.call("solo", "hello", {"who": "me"}) == {"hi": "me"}
    assert await alone.call_all("hello", {"who": "all"}) == ({"solo": {"hi": "all"}}, {})
    with pytest.raises(ChannelError) as other:
        await alone.call("elsewhere", "hello", {})
    assert other.value.status == 404 and "runs alone" in other.value.message
