"""Resume: a visitor whose WebSocket or media connection drops keeps their partner.

Real server (a subprocess, or in this process where its objects are counted), real
aiortc clients sending stamped video; sockets are cut with no closing handshake, by
the client itself or by a TCP proxy in between (tests/cut_proxy.py).
"""

from __future__ import annotations

import asyncio
import gc
import time

import aiohttp
import pytest
from cut_proxy import CutProxy

from config import Settings
from rtc.client import ChatClient, ReceivedFrame, SignallingError
from rtc.peer import Peer
from signalling.session import Session
from signalling.web import LOBBY
from tests.visits import connected, matched

TIMEOUT = 20.0
GRACE = 4.0


@pytest.fixture
def relay_server_args() -> list[str]:
    return ["--media-timeout", "3", "--resume-grace", str(GRACE)]


async def paired(url_a: str, url_b: str, clients: list) -> tuple[ChatClient, ChatClient]:
    a = await connected(url_a, clients, 1)
    b = await connected(url_b, clients, 2)
    await matched(a, b, frames=5)
    return a, b


def largest_gap(client: ChatClient, tag: int, after: float) -> tuple[int, float]:
    """`client.largest_gap`, after checking `tag`'s counters only went up since `after`
    (nothing repeated, nothing out of order)."""
    counters = [
        f.stamp.counter
        for f in client.frames
        if f.stamp is not None and f.stamp.tag == tag and f.recv_time >= after
    ]
    assert counters == sorted(set(counters)), "frames repeated or out of order"
    return client.largest_gap(tag, after)


def media_times_go_on(frames: list[ReceivedFrame], after: float) -> None:
    """The RTP timestamps the receiver saw never went back (the subscriber's rewrite)."""
    times = [f.media_time for f in frames if f.recv_time >= after and f.media_time is not None]
    assert times == sorted(times), "the stream's timestamps went back"


async def chat_both_ways(a: ChatClient, b: ChatClient, text: str) -> None:
    await a.chat(text + " from a")
    assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == text + " from a"
    await b.chat(text + " from b")
    assert (await a.wait_for("chat", timeout=TIMEOUT))["text"] == text + " from b"


async def test_a_client_that_cuts_its_websocket_resumes_with_its_partner(
    relay_server, clients
) -> None:
    a, b = await paired(relay_server.ws_url, relay_server.ws_url, clients)
    assert a.resume_token and b.resume_token
    cut_at = time.time()
    await a.drop_socket()
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    # The media connection is the same server peer: A's video reaches B during the hold.
    await b.wait_frames(tag=1, count=10, after=time.time(), timeout=TIMEOUT)
    old_token = a.resume_token
    resumed = await a.resume()
    assert resumed["state"] == "paired" and resumed["media"] is True
    assert resumed["id"] == a.id and resumed["resumeToken"] != old_token
    await b.wait_for("partner_back", timeout=TIMEOUT)
    await chat_both_ways(a, b, "still here")
    await a.wait_frames(tag=2, count=10, after=time.time(), timeout=TIMEOUT)
    missing, ms = largest_gap(b, 1, cut_at)
    print(f"websocket resume: B's largest gap in A's video {missing} frames, {ms:.0f} ms")
    missing, ms = largest_gap(a, 2, cut_at)
    print(f"websocket resume: A's largest gap in B's video {missing} frames, {ms:.0f} ms")


async def test_a_proxy_that_drops_the_connection_is_survived(relay_server, clients) -> None:
    proxy = CutProxy(relay_server.port)
    await proxy.start()
    try:
        a, b = await paired(proxy.ws_url(), relay_server.ws_url, clients)
        cut_at = time.time()
        proxy.cut()
        await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
        resumed = await a.resume()
        assert resumed["state"] == "paired"
        await b.wait_for("partner_back", timeout=TIMEOUT)
        await chat_both_ways(a, b, "through the proxy")
        await b.wait_frames(tag=1, count=10, after=time.time(), timeout=TIMEOUT)
        largest_gap(b, 1, cut_at)
    finally:
        await proxy.close()


async def test_the_grace_ending_tells_the_partner_and_voids_the_token(
    relay_server, clients
) -> None:
    a, b = await paired(relay_server.ws_url, relay_server.ws_url, clients)
    await a.drop_socket()
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    dropped_at = time.monotonic()
    left = await b.wait_for("partner_left", timeout=GRACE + TIMEOUT)
    assert left["reason"] == "disconnect"
    assert time.monotonic() - dropped_at > GRACE - 1  # held, not ended at once
    with pytest.raises(SignallingError) as refused:
        await a.resume()
    assert refused.value.message["code"] == "resume_failed"
    assert "start a new visit" in refused.value.message["message"]


async def test_a_used_or_forged_token_is_refused(relay_server, clients) -> None:
    a, b = await paired(relay_server.ws_url, relay_server.ws_url, clients)
    first_token = a.resume_token
    assert first_token is not None
    await a.drop_socket()
    await a.resume()
    await b.wait_for("partner_back", timeout=TIMEOUT)
    session_id, _, secret = first_token.partition(".")
    forged = f"{session_id}.{'A' * len(secret)}"
    for token in (first_token, forged, "no-dot", ""):
        async with aiohttp.ClientSession() as http, http.ws_connect(relay_server.ws_url) as ws:
            hello = await ws.receive_json(timeout=TIMEOUT)
            assert hello["type"] == "hello"
            await ws.send_json({"type": "resume", "token": token})
            reply = await ws.receive_json(timeout=TIMEOUT)
            assert reply["type"] == "error" and reply["inReplyTo"] == "resume"
            assert reply["code"] == ("bad_field" if token == "" else "resume_failed"), reply
            # The connection goes on as a new visit of its own.
            await ws.send_json({"type": "start"})
            assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "waiting"
    # The pair was never disturbed by the attempts.
    await chat_both_ways(a, b, "unmoved")


async def test_resume_must_be_the_first_message(relay_server, clients) -> None:
    a = await connected(relay_server.ws_url, clients, 1)
    async with aiohttp.ClientSession() as http, http.ws_connect(relay_server.ws_url) as ws:
        assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "hello"
        await ws.send_json({"type": "stop"})
        await ws.receive_json(timeout=TIMEOUT)
        await ws.send_json({"type": "resume", "token": a.resume_token})
        reply = await ws.receive_json(timeout=TIMEOUT)
        assert reply["code"] == "bad_state" and "first message" in reply["message"]


async def test_a_resume_takes_over_from_a_socket_not_yet_seen_dead(relay_server, clients) -> None:
    a, b = await paired(relay_server.ws_url, relay_server.ws_url, clients)
    token = a.resume_token
    async with aiohttp.ClientSession() as http, http.ws_connect(relay_server.ws_url) as ws:
        assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "hello"
        await ws.send_json({"type": "resume", "token": token})
        resumed = await ws.receive_json(timeout=TIMEOUT)
        assert resumed["type"] == "resumed" and resumed["state"] == "paired"
        # The old socket is closed with a code that says why; the new one carries the pair.
        with pytest.raises(ConnectionError):
            await a.wait_for("never", timeout=TIMEOUT)
        assert a.close_code == 4009
        await ws.send_json({"type": "chat", "text": "from the new socket"})
        assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == "from the new socket"


async def test_leaving_on_purpose_is_not_held(relay_server, clients) -> None:
    a, b = await paired(relay_server.ws_url, relay_server.ws_url, clients)
    token = a.resume_token
    await a.close()  # close frame 1000: the visitor left
    assert (await b.wait_for("partner_left", timeout=5))["reason"] == "disconnect"
    async with aiohttp.ClientSession() as http, http.ws_connect(relay_server.ws_url) as ws:
        await ws.receive_json(timeout=TIMEOUT)
        await ws.send_json({"type": "resume", "token": token})
        assert (await ws.receive_json(timeout=TIMEOUT))["code"] == "resume_failed"


async def test_a_new_media_connection_keeps_the_partner_and_the_stream(
    relay_server, clients
) -> None:
    a, b = await paired(relay_server.ws_url, relay_server.ws_url, clients)
    switch_at = time.time()
    # What a phone does after a network change: a new connection, a new offer.
    await a.negotiate()
    await b.wait_for("partner_back", timeout=TIMEOUT)
    await b.wait_frames(tag=1, count=15, after=time.time(), timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=15, after=time.time(), timeout=TIMEOUT)
    await chat_both_ways(a, b, "new network")
    media_times_go_on(list(b.frames), switch_at - 1)
    missing, ms = largest_gap(b, 1, switch_at)
    print(f"media replacement: B's largest gap in A's video {missing} frames, {ms:.0f} ms")
    assert not [m for m in b.messages if m["type"] == "partner_left"]


async def test_a_resume_then_a_new_media_connection(relay_server, clients) -> None:
    """A network change: the socket and the media both die, then both come back."""
    a, b = await paired(relay_server.ws_url, relay_server.ws_url, clients)
    cut_at = time.time()
    await a.drop_socket()
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    await a.resume()
    await a.negotiate()
    await b.wait_for("partner_back", timeout=TIMEOUT)
    await b.wait_frames(tag=1, count=15, after=time.time(), timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=15, after=time.time(), timeout=TIMEOUT)
    largest_gap(b, 1, cut_at)


async def test_held_sessions_are_freed_after_the_grace(local_server, clients) -> None:
    server = await local_server(Settings(media_timeout=3.0, resume_grace=1.0))
    lobby = server.app[LOBBY]
    pairs = [await paired(server.ws_url, server.ws_url, clients) for _ in range(2)]
    lone = await connected(server.ws_url, clients, 9)
    await lone.start()
    for a, b in pairs:
        await a.drop_socket()
        await b.drop_socket()
    await lone.drop_socket()
    await asyncio.sleep(0.5)
    assert len(lobby.held) == 5
    deadline = time.monotonic() + 15
    while (lobby.sessions or len(lobby.relay)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not lobby.sessions and not lobby.held and len(lobby.relay) == 0
    for client in clients:
        await client.close()
    # aiortc and aioice let go of a closed connection's objects within moments.
    deadline = time.monotonic() + 15
    while True:
        gc.collect()
        # Names only: a list of the objects would itself keep them alive.
        leaked = [repr(o) for o in gc.get_objects() if isinstance(o, Session | Peer)]
        if not leaked or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert not leaked, leaked
    assert lobby.limits.tracked_addresses <= 1  # only the sliding minute of new sessions


async def test_a_held_session_counts_against_its_address(local_server, clients) -> None:
    server = await local_server(Settings(resume_grace=1.0, ip_max_sessions=2))
    first = await connected(server.ws_url, clients, 1)
    await first.drop_socket()
    second = await connected(server.ws_url, clients, 2)
    # Two sessions (one held) from 127.0.0.1: a third is refused until the grace ends.
    with pytest.raises(SignallingError) as refused:
        await connected(server.ws_url, clients, 3)
    assert refused.value.message["code"] == "too_many_sessions"
    await asyncio.sleep(1.5)
    await connected(server.ws_url, clients, 4)
    assert second.id in server.app[LOBBY].sessions


async def test_in_a_cluster_a_resume_on_its_own_node_keeps_a_pair_across_nodes(
    nodes, clients
) -> None:
    """The partner on the other node is told both ways through the bus; a resume on
    another node moves the session (tests/test_resume_cluster.py)."""
    one, two = nodes("--resume-grace", "3"), nodes("--resume-grace", "3")
    a = await connected(one.ws_url, clients, 1)
    b = await connected(two.ws_url, clients, 2)
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    await a.drop_socket()
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    assert (await a.resume())["state"] == "paired"
    await b.wait_for("partner_back", timeout=TIMEOUT)
    await chat_both_ways(a, b, "across nodes")
    # A stale token is refused on the node holding the session, and the session ends
    # with its grace when nobody resumes it.
    stale = ChatClient(one.ws_url, tag=3)
    clients.append(stale)
    stale.resume_token = a.resume_token
    await a.drop_socket()
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    assert (await b.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "disconnect"
    with pytest.raises(SignallingError) as refused:
        await stale.resume()
    assert refused.value.message["code"] == "resume_failed"


async def test_a_moderator_ends_a_held_session_at_once(local_server, clients) -> None:
    server = await local_server(Settings(resume_grace=30.0))
    lobby = server.app[LOBBY]
    a, b = await paired(server.ws_url, server.ws_url, clients)
    token = a.resume_token
    await a.drop_socket()
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    assert lobby.kick(a.id, "kicked while away")
    # Not 30 s later: the partner is told now, and the token is void.
    assert (await b.wait_for("partner_left", timeout=5))["reason"] == "disconnect"
    assert a.id not in lobby.sessions and not lobby.held
    a.resume_token = token
    with pytest.raises(SignallingError) as refused:
        await a.resume()
    assert refused.value.message["code"] == "resume_failed"
