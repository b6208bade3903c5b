"""Resume in a cluster: a phone's new socket reaches another node, and its session moves there.

Real server processes on one real redis-server (`nodes`), real aiortc clients sending
stamped video. A client's socket is cut with no closing handshake, then its token is
sent to another node, as a balancer without affinity does after a network change.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from rtc.client import ChatClient, SignallingError
from tests.visits import connected, matched, metric

TIMEOUT = 20.0
GRACE = "6"

# conftest.RelayServer (pytest gives its fixtures, not its names, to test modules).
RelayServer = Any


async def paired(a_on: RelayServer, b_on: RelayServer, clients: list):
    a = await connected(a_on, clients, 1)
    b = await connected(b_on, clients, 2)
    await matched(a, b, frames=5)
    return a, b


async def holds_nothing(server: RelayServer) -> None:
    """The node the session left keeps no session, no held one and no media connection."""
    deadline = time.monotonic() + TIMEOUT
    names = ("relay_users_connected", "relay_users_held", "relay_media_connections")
    while any(metric(server, n) for n in names):
        assert time.monotonic() < deadline, {n: metric(server, n) for n in names}
        await asyncio.sleep(0.2)


async def chat_both_ways(a: ChatClient, b: ChatClient, text: str) -> None:
    await a.chat(text + " from a")
    assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == text + " from a"
    await b.chat(text + " from b")
    assert (await a.wait_for("chat", timeout=TIMEOUT))["text"] == text + " from b"


async def move(a: ChatClient, b: ChatClient, to: RelayServer) -> float:
    """Cut A's socket, resume on `to` (another node, or A's own) with a new media
    connection there; B keeps A. Answers when the socket was cut."""
    cut_at = time.time()
    await a.drop_socket()
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    token, moving = a.resume_token, a.url != to.ws_url
    a.url = to.ws_url
    resumed = await a.resume()
    assert resumed["state"] == "paired" and resumed["id"] == a.id
    # A new node, a new media connection: the page sees media false and offers anew.
    assert resumed["media"] is not moving and resumed["resumeToken"] != token
    # A network change kills the media path too: a new connection (the old closed first).
    await a.negotiate()
    await b.wait_for("partner_back", timeout=TIMEOUT)
    after = time.time()
    await b.wait_frames(tag=1, count=15, after=after, timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=15, after=after, timeout=TIMEOUT)
    assert not [m for m in a.messages + b.messages if m["type"] == "partner_left"]
    return cut_at


@pytest.mark.parametrize("partner_on", ["old_node", "new_node", "third_node"])
async def test_a_resume_on_another_node_moves_the_session_and_keeps_the_partner(
    nodes, clients, partner_on
) -> None:
    old, new = nodes("--resume-grace", GRACE), nodes("--resume-grace", GRACE)
    where = {"old_node": old, "new_node": new}
    third = where.get(partner_on) or nodes("--resume-grace", GRACE)
    a, b = await paired(old, third, clients)
    cut_at = await move(a, b, new)
    await chat_both_ways(a, b, "moved")
    if third is old:
        # Only B is left there.
        assert metric(old, "relay_users_connected") == 1
        assert metric(old, "relay_users_held") == 0
    else:
        await holds_nothing(old)
    assert metric(new, "relay_resumes_total") == 1
    missing, ms = b.largest_gap(1, cut_at)
    print(
        f"resume moved ({partner_on}): B's largest gap in A's video {missing} frames, {ms:.0f} ms"
    )
    # The pair moved with the session: A can still block it by its pairId, which ends it.
    pair_id = next(m for m in a.messages if m["type"] == "matched")["pairId"]
    await a.send({"type": "block", "pairId": pair_id})
    assert (await a.wait_for("blocked", timeout=TIMEOUT))["pairId"] == pair_id
    assert (await b.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "next"
    await a.close()
    if third is not new:
        await holds_nothing(new)


async def test_one_token_sent_to_two_nodes_resumes_once(nodes, clients) -> None:
    old, one, two = (nodes("--resume-grace", GRACE) for _ in range(3))
    a, b = await paired(old, old, clients)
    await a.drop_socket()
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    racers = [ChatClient(server.ws_url, tag=3) for server in (one, two)]
    clients.extend(racers)
    for racer in racers:
        racer.resume_token = a.resume_token
    outcomes = await asyncio.gather(*(r.resume() for r in racers), return_exceptions=True)
    won = [o for o in outcomes if isinstance(o, dict)]
    lost = [o for o in outcomes if isinstance(o, SignallingError)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert won[0]["state"] == "paired" and lost[0].message["code"] == "resume_failed"
    # The loser's socket is a new visit of its own, and the old node still has B only.
    assert metric(old, "relay_users_held") == 0
    assert metric(one, "relay_resumes_total") + metric(two, "relay_resumes_total") == 1


async def test_a_resume_cannot_move_a_session_off_a_dead_node(nodes, clients) -> None:
    old, new = nodes("--resume-grace", GRACE), nodes("--resume-grace", GRACE)
    a, b = await paired(old, new, clients)
    await a.drop_socket()
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    os.kill(old.pid, signal.SIGKILL)
    # The node watch tells B within seconds; the token can no longer be checked anywhere.
    assert (await b.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "disconnect"
    a.url = new.ws_url
    with pytest.raises(SignallingError) as refused:
        await a.resume()
    assert refused.value.message["code"] == "resume_failed"
    assert "gone" in refused.value.message["message"]
    # The socket stays open with a visit of its own (the page shows its held-back hello).
    assert a.messages[-2]["type"] == "hello" and a.messages[-2]["id"] != a.id


async def test_a_text_only_pair_moves_and_chats_on(nodes, clients) -> None:
    old, new = nodes("--resume-grace", GRACE), nodes("--resume-grace", GRACE)
    a, b = ChatClient(old.ws_url, tag=1), ChatClient(new.ws_url, tag=2)
    clients.extend((a, b))
    for client in (a, b):
        await client.connect_signalling()
        await client.start(mode="text")
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    await a.drop_socket()
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    a.url = new.ws_url
    resumed = await a.resume()
    assert resumed["state"] == "paired" and resumed["mode"] == "text"
    # Nothing to set up: the partner hears partner_back at once, and now shares A's node.
    await b.wait_for("partner_back", timeout=TIMEOUT)
    await chat_both_ways(a, b, "text moved")
    await holds_nothing(old)


async def test_a_network_change_on_its_own_node_keeps_a_pair_across_nodes(nodes, clients) -> None:
    """The socket and the media both die; the resume stays on A's node, and the new media
    connection there is bridged to B's node anew (it used to end the pair)."""
    one, two = nodes("--resume-grace", GRACE), nodes("--resume-grace", GRACE)
    a, b = await paired(one, two, clients)
    cut_at = await move(a, b, one)
    await chat_both_ways(a, b, "same node")
    missing, ms = b.largest_gap(1, cut_at)
    print(f"network change, pair across nodes: B's largest gap {missing} frames, {ms:.0f} ms")


async def test_both_sides_of_a_pair_across_nodes_replace_their_media_at_once(
    nodes, clients
) -> None:
    """Each node offers the other a new bridge at the same moment; one offer is taken."""
    one, two = nodes("--resume-grace", GRACE), nodes("--resume-grace", GRACE)
    a, b = await paired(one, two, clients)
    await asyncio.gather(a.negotiate(keep_old=True), b.negotiate(keep_old=True))
    after = time.time()
    await b.wait_frames(tag=1, count=15, after=after, timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=15, after=after, timeout=TIMEOUT)
    assert not [m for m in a.messages + b.messages if m["type"] == "partner_left"]


async def test_a_waiting_visitor_moves_and_is_matched_from_the_new_node(nodes, clients) -> None:
    old, new = nodes("--resume-grace", GRACE), nodes("--resume-grace", GRACE)
    a = await connected(old, clients, 1)
    await a.start(["chess"])
    await a.wait_for("waiting", timeout=TIMEOUT)
    await a.drop_socket()
    a.url = new.ws_url
    resumed = await a.resume()
    assert resumed["state"] == "waiting" and resumed["interests"] == ["chess"]
    await a.negotiate()
    # Queued again from its new node once its media is up; a newcomer on the old one meets it.
    c = await connected(old, clients, 3)
    await c.start(["chess"])
    assert (await c.wait_for("matched", timeout=TIMEOUT))["interests"] == ["chess"]
    await a.wait_for("matched", timeout=TIMEOUT)
    await c.wait_frames(tag=1, count=5, timeout=TIMEOUT)
    await a.wait_frames(tag=3, count=5, timeout=TIMEOUT)
    assert metric(old, "relay_users_connected") == 1  # only C
