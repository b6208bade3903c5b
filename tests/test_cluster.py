"""Several real server processes on one real redis-server: one lobby across nodes.

Each node is `server.py --redis ... --cluster-secret ...` as an operator runs it;
clients are real aiortc ChatClients. Media across nodes travels through the
pipe between the two nodes (rtc/pipe.py, rtc/pipe_bridge.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from redis import Redis

from rtc.client import ChatClient
from tests.visits import connected, matched, metric

TIMEOUT = 20.0
# The promise: a dead node's partners are told within 5 s (3 s heartbeat TTL + 1 s
# check). The test allows slack for a loaded machine; the log shows the real delay.
NODE_DEATH_TIMEOUT = 8.0

# conftest.RelayServer (pytest gives its fixtures, not its names, to test modules).
RelayServer = Any


async def cross_pair(one: RelayServer, two: RelayServer, clients: list):
    a = await connected(one, clients, 1)
    b = await connected(two, clients, 2)
    assert a.hello["node"] != b.hello["node"]
    await matched(a, b)
    return a, b


def waiting_in_redis(url: str) -> int:
    client = Redis.from_url(url)
    try:
        return int(client.zcard("{rr:matcher}:waiting"))
    finally:
        client.close()


async def test_a_pair_across_nodes_chats_and_parts(nodes, clients) -> None:
    one, two = nodes(), nodes()
    a, b = await cross_pair(one, two, clients)
    assert (
        metric(one, "relay_matches_cross_node_total")
        + metric(two, "relay_matches_cross_node_total")
        == 1
    )

    await a.chat("hello from node one")
    assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == "hello from node one"
    await b.chat("and back")
    assert (await a.wait_for("chat", timeout=TIMEOUT))["text"] == "and back"
    await b.send({"type": "typing", "active": True})
    assert (await a.wait_for("typing", timeout=TIMEOUT))["active"] is True
    await a.send({"type": "media_state", "camera": False, "mic": True})
    state = await b.wait_for("media_state", timeout=TIMEOUT)
    assert (state["camera"], state["mic"]) == (False, True)

    # next crosses; the one left behind is idle and can start again.
    await a.next()
    assert (await b.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "next"
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)

    await b.stop()
    assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "stop"
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)

    await b.close()
    assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "disconnect"


async def test_both_sides_of_a_pair_across_nodes_are_told_their_shared_interests(
    nodes, clients
) -> None:
    """Found by the two-browser test: the user on the node that made the match got
    `matched` with no interests, as if they shared none."""
    one, two = nodes(), nodes()
    a = await connected(one, clients, 1)
    b = await connected(two, clients, 2)
    await a.start(["chess", "music"])
    await b.start(["travel", "chess"])
    assert (await a.wait_for("matched", timeout=TIMEOUT))["interests"] == ["chess"]
    assert (await b.wait_for("matched", timeout=TIMEOUT))["interests"] == ["chess"]


async def test_a_killed_node_frees_its_partners_and_the_queue(nodes, clients, redis_url) -> None:
    one, two = nodes(), nodes()
    a, _b = await cross_pair(one, two, clients)
    # A user waiting on the node about to die: it must leave the queue with it.
    ghost = await connected(two, clients, 3)
    await ghost.start()
    await ghost.wait_for("waiting", timeout=TIMEOUT)
    await asyncio.wait_for(_until(lambda: waiting_in_redis(redis_url) == 1), TIMEOUT)

    two.send_signal(signal.SIGKILL)
    two.wait(TIMEOUT)
    left = await a.wait_for("partner_left", timeout=NODE_DEATH_TIMEOUT)
    assert left["reason"] == "disconnect"

    # A newcomer on the surviving node is never matched with the dead node's user.
    newcomer = await connected(one, clients, 4)
    await newcomer.start()
    await newcomer.wait_for("waiting", timeout=TIMEOUT)
    await asyncio.sleep(4)
    assert not any(m["type"] == "matched" for m in newcomer.messages)
    assert waiting_in_redis(redis_url) == 1
    # ...but with a live one at once.
    await a.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await newcomer.wait_for("matched", timeout=TIMEOUT)


async def test_sigterm_drains_a_node(nodes, clients, redis_url) -> None:
    one, two = nodes(), nodes()
    a, b = await cross_pair(one, two, clients)
    waiter = await connected(two, clients, 3)
    await waiter.start()
    await waiter.wait_for("waiting", timeout=TIMEOUT)

    two.send_signal(signal.SIGTERM)
    assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "disconnect"
    await asyncio.wait_for(_until(lambda: b.close_code is not None), TIMEOUT)
    assert b.close_code == 1012  # service restart: the page reconnects soon
    await asyncio.wait_for(_until(lambda: waiter.close_code is not None), TIMEOUT)
    assert waiter.close_code == 1012
    assert await asyncio.to_thread(two.wait, TIMEOUT) == 0
    assert waiting_in_redis(redis_url) == 0


async def test_a_redis_restart_keeps_pairs_and_matching_resumes(nodes, clients) -> None:
    from redis_server import RedisServer

    redis = RedisServer()
    one = two = None
    try:
        one, two = nodes(redis=redis.url), nodes(redis=redis.url)
        a, b = await cross_pair(one, two, clients)
        waiter = await connected(one, clients, 3)
        await waiter.start()
        await waiter.wait_for("waiting", timeout=TIMEOUT)

        redis.stop()
        redis = RedisServer(redis.port)  # empty: no persistence
        # Past the heartbeat TTL: each node has rejoined and put its waiters back.
        # (What the bus holds while Redis is away: tests/test_bus.py.)
        await asyncio.sleep(6)
        assert not any(m["type"] == "partner_left" for m in a.messages + b.messages)
        await a.chat("still here")
        assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == "still here"
        newcomer = await connected(two, clients, 4)
        await newcomer.start()
        await newcomer.wait_for("matched", timeout=TIMEOUT)
        await waiter.wait_for("matched", timeout=TIMEOUT)
    finally:
        for node in (one, two):
            if node is not None:
                node.stop()  # before their Redis goes
        redis.stop()


async def test_a_same_node_pair_still_gets_frames_with_redis(nodes, clients) -> None:
    one, _two = nodes(), nodes()
    a = await connected(one, clients, 1)
    b = await connected(one, clients, 2)
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=20, timeout=TIMEOUT)
    await b.wait_frames(tag=1, count=20, timeout=TIMEOUT)


async def test_a_pair_across_nodes_sees_and_hears_each_other(nodes, clients) -> None:
    one, two = nodes(), nodes()
    a, b = await cross_pair(one, two, clients)
    # The frames that arrived are the ones sent: the right sender, in order, none twice.
    for receiver, tag in ((a, 2), (b, 1)):
        frames = await receiver.wait_frames(tag=tag, count=30, timeout=TIMEOUT)
        got = [f.stamp.counter for f in frames]
        assert got == sorted(got) and len(set(got)) == len(got), got
    await asyncio.wait_for(
        _until(lambda: a.audio_peak_hz is not None and b.audio_peak_hz is not None), TIMEOUT
    )
    assert metric(one, 'relay_forwarded_packets_total{kind="video"}') > 0
    # The media crossed in the pipe, none of it refused by the socket.
    for node in (one, two):
        datagrams = metric(node, 'relay_pipe_datagrams_total{direction="received"}')
        assert metric(node, 'relay_pipe_messages_total{direction="received"}') >= datagrams > 0
        assert metric(node, "relay_pipe_send_errors_total") == 0


async def test_next_between_a_remote_and_a_local_partner_keeps_one_stream(nodes, clients) -> None:
    """a (node one) meets b (node two), then c (node one), then b again: a's browser
    sees one RTP stream throughout, as it would for local partners only."""
    one, two = nodes(), nodes()
    a, b = await cross_pair(one, two, clients)
    await a.wait_frames(tag=2, count=15, timeout=TIMEOUT)
    c = await connected(one, clients, 3)
    await c.start()
    await a.next()
    await a.wait_for("matched", timeout=TIMEOUT)
    await a.wait_frames(tag=3, count=15, timeout=TIMEOUT)
    await c.stop()
    await a.wait_for("partner_left", timeout=TIMEOUT)
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=15, timeout=TIMEOUT)
    # One continuous stream: a jump in sequence numbers at a partner change
    # would show as thousands of packets lost (or a negative count).
    for receiver in a.pc.getReceivers():
        for stats in (await receiver.getStats()).values():
            if getattr(stats, "type", None) == "inbound-rtp":
                assert 0 <= stats.packetsLost < 50, (receiver.track.kind, stats)


async def one_client_per_worker(server: RelayServer, clients: list) -> dict[str, ChatClient]:
    """Connect until two clients sit on two different workers; the others are closed."""
    by_node: dict[str, ChatClient] = {}
    for tag in range(1, 40):
        client = await connected(server, clients, tag)
        if client.hello["node"] in by_node:
            await client.close()
        else:
            by_node[client.hello["node"]] = client
        if len(by_node) == 2:
            return by_node
    raise AssertionError(f"the kernel gave every connection to one worker: {list(by_node)}")


async def pair_and_chat(a: ChatClient, b: ChatClient, text: str) -> None:
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    await a.chat(text)
    assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == text


async def test_two_workers_share_a_port_and_pair_across(nodes, clients) -> None:
    server = nodes("--workers", "2")
    a, b = (await one_client_per_worker(server, clients)).values()
    await pair_and_chat(a, b, "across workers")


def worker_pids(server: RelayServer) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    pid = server.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {
        int(child)
        for child in children
        if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    }


async def test_a_worker_killed_is_restarted_and_its_partner_told(nodes, clients) -> None:
    server = nodes("--workers", "2")
    before = worker_pids(server)
    assert len(before) == 2, before
    first = await one_client_per_worker(server, clients)
    a, b = first.values()
    await pair_and_chat(a, b, "before the crash")

    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # Whichever client sat on the killed worker lost its socket; the other is told.
    told = await asyncio.wait_for(
        _first_ok(
            a.wait_for("partner_left", timeout=None),
            b.wait_for("partner_left", timeout=None),
        ),
        NODE_DEATH_TIMEOUT,
    )
    assert told["reason"] == "disconnect", told

    async with asyncio.timeout(TIMEOUT):
        while len(after := worker_pids(server)) < 2:
            await asyncio.sleep(0.1)
    assert victim not in after and len(after - before) == 1, (before, after)
    # The restarted worker takes visitors again: two new clients meet across the workers,
    # one of them on a node that did not exist before the crash.
    second = await one_client_per_worker(server, clients)
    assert set(second) - set(first), (list(first), list(second))
    c, d = second.values()
    await pair_and_chat(c, d, "after the restart")
    assert "exited with code -9" in server.log()


async def _first_ok(*waits: Any) -> Any:
    """The result of the first awaitable that succeeds (a closed socket's ConnectionError is not)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        for next_done in asyncio.as_completed(tasks):
            try:
                return await next_done
            except ConnectionError:
                continue
        raise AssertionError("no awaitable succeeded")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.05)
