"""RedisBus on a real redis-server: messages between nodes across a Redis outage.

Pub/sub keeps nothing, so what a node sends while Redis is away (or while the
other node has not yet subscribed again) is held by the sender and published
again, in order, for up to HOLD_SECONDS (cluster/bus.py). The buses sign with a
cluster secret, as every clustered node does; what is not signed with it is
refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis_server import RedisServer

from cluster import bus as bus_module
from cluster.bus import RedisBus
from cluster.connect import connect
from cluster.node import SessionRef

SECRET = b"the cluster secret, 16+ bytes"
TO_B = SessionRef("someone", "B")
FROM_A = SessionRef("sender", "A")


def client(server: RedisServer) -> Redis:
    return connect(server.url)


class Received:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    def __call__(self, to: str, sender: SessionRef, message: dict[str, Any]) -> None:
        assert (to, sender) == (TO_B.id, FROM_A)
        self.messages.append(message)
        self.changed.set()

    async def until(self, count: int, within: float) -> list[str]:
        async with asyncio.timeout(within):
            while len(self.messages) < count:
                self.changed.clear()
                await self.changed.wait()
        return [m["t"] for m in self.messages]


@pytest.fixture
async def buses() -> AsyncIterator[tuple[list[RedisServer], RedisBus, Received]]:
    server = RedisServer()
    clients = [client(server), client(server)]
    a, b = RedisBus(clients[0], "A", secret=SECRET), RedisBus(clients[1], "B", secret=SECRET)
    received = Received()
    b.set_handler(received)
    await a.start()
    await b.start()
    holder = [server]
    try:
        yield holder, a, received
    finally:
        await a.close()
        await b.close()
        for c in clients:
            await c.aclose()
        holder[0].stop()


async def test_what_is_sent_while_redis_is_away_arrives_in_order_when_it_is_back(buses) -> None:
    holder, a, received = buses
    a.send(TO_B, FROM_A, {"t": "before"})
    assert await received.until(1, within=5) == ["before"]

    holder[0].stop()
    a.send(TO_B, FROM_A, {"t": "during"})
    a.send(TO_B, FROM_A, {"t": "in order"})
    # Longer than one resubscribe attempt: the receiving node retries until Redis is back.
    await asyncio.sleep(2.5)
    assert received.messages[1:] == []
    holder[0] = RedisServer(holder[0].port)
    assert await received.until(3, within=8) == ["before", "during", "in order"]
    a.send(TO_B, FROM_A, {"t": "after"})
    assert (await received.until(4, within=5))[-1] == "after"
    assert a.dropped == 0


async def test_what_nobody_can_receive_is_dropped_after_the_hold(buses, monkeypatch) -> None:
    _holder, a, received = buses
    monkeypatch.setattr(bus_module, "HOLD_SECONDS", 1.0)
    # A node that does not exist (a dead one): PUBLISH reaches nobody.
    a.send(SessionRef("ghost", "C"), FROM_A, {"t": "to a dead node"})
    # Held messages for one node do not hold up another's.
    a.send(TO_B, FROM_A, {"t": "to a live node"})
    assert await received.until(1, within=5) == ["to a live node"]
    async with asyncio.timeout(5):
        while a.dropped == 0:
            await asyncio.sleep(0.1)
    assert a.dropped == 1


def _signed(secret: bytes, body: dict[str, Any]) -> str:
    text = json.dumps(body)
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest() + text


async def test_a_message_not_signed_with_the_cluster_secret_is_refused(caplog) -> None:
    """Whoever can publish on Redis cannot speak for a session: an unsigned message,
    one signed with another secret, a replay older than a minute and garbage are
    dropped, with one warning rather than a line (or a traceback) each; a message
    from a node of the cluster still arrives."""
    server = RedisServer()
    clients = [client(server), client(server), client(server)]
    a, b = RedisBus(clients[0], "A", secret=SECRET), RedisBus(clients[1], "B", secret=SECRET)
    received = Received()
    b.set_handler(received)
    await a.start()
    await b.start()
    try:
        forged = {"to": TO_B.id, "from": FROM_A.id, "node": FROM_A.node, "m": {"t": "forged"}}
        attacker = clients[2]
        channel = b.channel("B")
        await attacker.publish(channel, json.dumps(forged))
        await attacker.publish(channel, _signed(b"another secret entirely", forged))
        await attacker.publish(channel, _signed(SECRET, forged | {"at": time.time() - 120}))
        await attacker.publish(channel, _signed(SECRET, forged | {"at": "now"}))
        await attacker.publish(channel, b"\xff\xfe not text")
        await attacker.publish(channel, "0" * 64 + "[1, 2]")
        a.send(TO_B, FROM_A, {"t": "real"})
        assert await received.until(1, within=5) == ["real"]
        await asyncio.sleep(0.2)  # nothing forged trails in after it
        assert [m["t"] for m in received.messages] == ["real"]
        assert b.refused == 6
        warnings = [r for r in caplog.records if r.name == "cluster.signing"]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "not signed with the cluster secret" in warnings[0].getMessage()
        assert not [r for r in caplog.records if r.exc_info], "a traceback for bad input"
    finally:
        await a.close()
        await b.close()
        for c in clients:
            await c.aclose()
        server.stop()
