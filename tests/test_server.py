"""The real server in its own process, driven by real aiortc clients over loopback.

Nothing on the media path is mocked: frames are encoded by the clients,
relayed by the server, decoded by the partner and identified by the stamp
drawn into them (tag = who sent it, counter = which frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest

from rtc.client import ChatClient
from tests.visits import connected, matched

TIMEOUT = 20.0


async def paired(server, clients: list, tag_a: int = 1, tag_b: int = 2, **kwargs):
    a = await connected(server, clients, tag_a, **kwargs)
    b = await connected(server, clients, tag_b, **kwargs)
    await matched(a, b)
    return a, b


def counters(frames) -> list[int]:
    return [f.stamp.counter for f in frames]


async def test_hello_then_answer(relay_server, clients) -> None:
    a = await connected(relay_server, clients, 1)
    assert a.hello["type"] == "hello" and a.hello["id"]
    assert a.hello["iceServers"] == []
    assert a.hello["limits"]["maxMessageBytes"] == 65536
    answer = a.pc.remoteDescription.sdp
    # One send track per kind in the answer, so partner changes never renegotiate.
    assert re.findall(r"^m=(audio|video)", answer, re.M) == ["audio", "video"]
    assert answer.count("a=sendrecv") == 2


async def test_a_pair_sees_and_hears_each_other(relay_server, clients) -> None:
    a, b = await paired(relay_server, clients, tone_hz=440.0)
    b_frames = await a.wait_frames(tag=2, count=30, timeout=TIMEOUT)
    a_frames = await b.wait_frames(tag=1, count=30, timeout=TIMEOUT)
    # The frames that arrived are the ones that were sent: right sender, in order.
    for got in (counters(a_frames), counters(b_frames)):
        assert got == sorted(got) and len(set(got)) == len(got)
    # Each hears the other's tone (each client sends its own frequency).
    await asyncio.wait_for(
        _until(lambda: a.audio_peak_hz is not None and b.audio_peak_hz is not None), TIMEOUT
    )
    assert a.audio_peak_hz == pytest.approx(b.tone_hz, rel=0.05)
    assert b.audio_peak_hz == pytest.approx(a.tone_hz, rel=0.05)


async def test_chat_and_typing_reach_the_partner(relay_server, clients) -> None:
    a, b = await paired(relay_server, clients)
    await a.chat("hello stranger")
    assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == "hello stranger"
    await b.send({"type": "typing", "active": True})
    assert (await a.wait_for("typing", timeout=TIMEOUT))["active"] is True
    await b.chat("  hi  ")
    assert (await a.wait_for("chat", timeout=TIMEOUT))["text"] == "hi"
    await a.send({"type": "media_state", "camera": False, "mic": True})
    state = await b.wait_for("media_state", timeout=TIMEOUT)
    assert (state["camera"], state["mic"]) == (False, True)


async def test_lone_surrogates_in_chat_and_reports_are_replaced(relay_server, clients) -> None:
    a, b = await paired(relay_server, clients)
    await a.send_raw('{"type": "chat", "text": "a\\ud800b"}')
    assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == "a\ufffdb"
    # The report is saved (SQLite refused the surrogate: 'internal' and a traceback).
    await a.send_raw('{"type": "report", "reason": "rude \\udc00", "moveOn": false}')
    assert await a.wait_for("reported", timeout=TIMEOUT)
    assert not [m for m in a.messages if m["type"] == "error"]


async def test_next_moves_on_to_a_third_user(packet_path_mode, relay_server, clients) -> None:
    # The server runs the packet path this test is for.
    assert f"packet path {packet_path_mode}" in relay_server.log()
    a, b = await paired(relay_server, clients)
    await a.wait_frames(tag=2, count=5, timeout=TIMEOUT)
    c = await connected(relay_server, clients, 3)
    await c.start()
    await c.wait_for("waiting", timeout=TIMEOUT)

    sent_next = time.time()
    await a.next()
    left = await b.wait_for("partner_left", timeout=TIMEOUT)
    assert left["reason"] == "next"
    await a.wait_for("waiting", timeout=TIMEOUT)
    await a.wait_for("matched", timeout=TIMEOUT)
    await c.wait_for("matched", timeout=TIMEOUT)

    # The new partner's picture arrives on the same connection, no renegotiation.
    c_frames = await a.wait_frames(tag=3, count=10, after=sent_next, timeout=TIMEOUT)
    assert counters(c_frames) == sorted(counters(c_frames))
    # What A receives is one continuous stream: the media clock moves forward
    # across the partner change, by about the time that passed (a backwards
    # step would show up here as a 13-hour jump after aiortc's wrap handling).
    times = [f.media_time for f in a.frames if f.stamp is not None]
    assert all(t is not None for t in times)
    steps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0 < step < 5 for step in steps), max(steps)
    await c.wait_frames(tag=1, count=10, timeout=TIMEOUT)
    # B was left behind and is idle, not re-queued: it has no partner to chat to.
    await b.chat("anyone?")
    err = await b.wait_for("error", timeout=TIMEOUT)
    assert err["code"] == "not_paired"


async def test_stop_tells_the_partner(relay_server, clients) -> None:
    a, b = await paired(relay_server, clients)
    await a.stop()
    assert (await a.wait_for("stopped", timeout=TIMEOUT))["type"] == "stopped"
    assert (await b.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "stop"
    # Both can start again and find each other (nobody else is around).
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)


async def test_closing_the_websocket_tells_the_partner(relay_server, clients) -> None:
    a, b = await paired(relay_server, clients)
    await a.close()
    left = await b.wait_for("partner_left", timeout=5)
    assert left["reason"] == "disconnect"


@pytest.mark.parametrize("relay_server_args", [["--media-timeout", "3", "--resume-grace", "2"]])
async def test_silent_media_counts_as_a_disconnect(relay_server, clients) -> None:
    a, b = await paired(relay_server, clients)
    await b.wait_frames(tag=1, count=5, timeout=TIMEOUT)
    # A's WebSocket stays open but its media stops, as when a network drops UDP.
    for sender in a.pc.getSenders():
        sender.replaceTrack(None)
    # The pair is held for the resume grace: A may bring new media back in time.
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    err = await a.wait_for("error", timeout=TIMEOUT)
    assert err["code"] == "media_lost"
    assert "new offer within 2 s" in err["message"]
    left = await b.wait_for("partner_left", timeout=TIMEOUT)
    assert left["reason"] == "disconnect"
    assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "disconnect"


async def test_interests_prefer_a_shared_one(relay_server, clients) -> None:
    plain = await connected(relay_server, clients, 1)
    music_a = await connected(relay_server, clients, 2)
    music_b = await connected(relay_server, clients, 3)
    await music_a.start(["Music", "films"])
    await plain.start()
    await music_b.start(["music"])
    matched = await music_a.wait_for("matched", timeout=TIMEOUT)
    assert matched["interests"] == ["music"]
    assert (await music_b.wait_for("matched", timeout=TIMEOUT))["interests"] == ["music"]
    await music_a.wait_frames(tag=3, count=3, timeout=TIMEOUT)


async def test_answer_never_carries_another_users_address(relay_server, clients) -> None:
    a, b = await paired(relay_server, clients)

    def candidates(sdp: str) -> set[tuple[str, str]]:
        return {
            (m[0], m[1]) for m in re.findall(r"a=candidate:\S+ \d+ \S+ \d+ (\S+) (\d+) typ", sdp)
        }

    a_own = candidates(a.pc.localDescription.sdp)
    b_own = candidates(b.pc.localDescription.sdp)
    a_got = candidates(a.pc.remoteDescription.sdp)
    b_got = candidates(b.pc.remoteDescription.sdp)
    assert a_own and b_own and a_got and b_got
    assert not a_got & b_own, "A was given B's address"
    assert not b_got & a_own, "B was given A's address"
    for message in a.messages + b.messages:
        text = json.dumps(message)
        for host, port in b_own | a_own:
            assert f"{host} {port}" not in text or message["type"] in ("answer",)


async def test_codecs_that_do_not_meet_are_transcoded(relay_server, clients) -> None:
    a = await connected(relay_server, clients, 1, video_codec="H264")
    b = await connected(relay_server, clients, 2, video_codec="VP8")
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    assert counters(await a.wait_frames(tag=2, count=10, timeout=TIMEOUT))
    assert counters(await b.wait_frames(tag=1, count=10, timeout=TIMEOUT))
    assert "decoding and re-encoding" in relay_server.log()


AUDIO_ONLY_OFFER = """v=0\r
o=- 1 1 IN IP4 0.0.0.0\r
s=-\r
t=0 0\r
m=audio 9 UDP/TLS/RTP/SAVPF 111\r
c=IN IP4 0.0.0.0\r
a=rtpmap:111 opus/48000/2\r
a=mid:0\r
a=sendrecv\r
"""

BAD_INPUT = [
    ("not json", "bad_json"),
    ("[]", "bad_message"),
    ('{"no": "type"}', "bad_message"),
    ('{"type": "teleport"}', "unknown_type"),
    ('{"type": "chat", "text": 5}', "bad_field"),
    ('{"type": "chat", "text": "' + "x" * 3000 + '"}', "bad_field"),
    ('{"type": "chat", "text": "' + "x" * 70000 + '"}', "too_large"),
    ('{"type": "start", "interests": "music"}', "bad_field"),
    ('{"type": "chat", "text": "hello?"}', "not_paired"),
    ('{"type": "next"}', "bad_state"),
    ('{"type": "candidate", "candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host"}', "bad_state"),
    ('{"type": "offer", "sdp": "this is not sdp"}', "bad_sdp"),
    (json.dumps({"type": "offer", "sdp": AUDIO_ONLY_OFFER}), "bad_sdp"),
]


async def test_bad_input_gets_an_error_and_the_other_pair_keeps_flowing(
    relay_server, clients
) -> None:
    a, b = await paired(relay_server, clients)
    await a.wait_frames(tag=2, count=5, timeout=TIMEOUT)
    c = ChatClient(relay_server.ws_url, tag=3)
    clients.append(c)
    await c.connect_signalling()
    for data, code in BAD_INPUT:
        await c.send_raw(data)
        err = await c.wait_for("error", timeout=TIMEOUT)
        assert err["code"] == code, (data[:60], err)
        assert err["message"]
    await c.send_raw(b"\x00binary")
    assert (await c.wait_for("error", timeout=TIMEOUT))["code"] == "bad_json"
    # Still usable: a proper offer after the bad ones gets an answer.
    await c.negotiate()
    await c.send({"type": "candidate", "candidate": "candidate:garbage", "sdpMid": "0"})
    assert (await c.wait_for("error", timeout=TIMEOUT))["code"] == "bad_candidate"
    await c.start()
    await c.wait_for("waiting", timeout=TIMEOUT)
    # The pair was never disturbed.
    now = time.time()
    await a.wait_frames(tag=2, count=10, after=now, timeout=TIMEOUT)
    await b.wait_frames(tag=1, count=10, after=now, timeout=TIMEOUT)


async def test_messages_out_of_order_get_bad_state(relay_server, clients) -> None:
    a = await connected(relay_server, clients, 1)
    # A second offer replaces the media connection (a network change); a third while
    # that one is still being set up makes no sense.
    await a.send({"type": "offer", "sdp": a.pc.localDescription.sdp})
    await a.wait_for("answer", timeout=TIMEOUT)
    await a.send({"type": "offer", "sdp": a.pc.localDescription.sdp})
    err = await a.wait_for("error", timeout=TIMEOUT)
    assert err["code"] == "bad_state" and "being set up" in err["message"]
    await a.start()
    await a.wait_for("waiting", timeout=TIMEOUT)
    await a.start()
    err = await a.wait_for("error", timeout=TIMEOUT)
    assert err["code"] == "bad_state" and err["inReplyTo"] == "start"


async def test_start_before_offer_waits_for_media(relay_server, clients) -> None:
    a = ChatClient(relay_server.ws_url, tag=1)
    clients.append(a)
    b = await connected(relay_server, clients, 2)
    await b.start()
    await a.connect_signalling()
    await a.start()
    await a.wait_for("waiting", timeout=TIMEOUT)
    await a.negotiate()
    await a.wait_for("matched", timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=5, timeout=TIMEOUT)


async def test_flooding_is_refused_then_closed(relay_server) -> None:
    # A bare WebSocket that floods as a hostile client would. It reads what
    # arrives meanwhile: a client that never reads can lose the server's last
    # messages to the TCP reset that closing a socket with unread data causes.
    async with aiohttp.ClientSession() as http, http.ws_connect(relay_server.ws_url) as ws:
        assert json.loads((await ws.receive()).data)["type"] == "hello"
        codes: list[str] = []

        async def read() -> None:
            while (msg := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
                codes.append(json.loads(msg.data)["code"])

        reader = asyncio.create_task(read())
        with contextlib.suppress(ConnectionError):
            for _ in range(1000):
                if reader.done():
                    break
                await ws.send_str('{"type": "typing", "active": true}')
                # Let the reader take each answer as it arrives.
                await asyncio.sleep(0)
        await asyncio.wait_for(reader, TIMEOUT)
        assert "rate_limited" in codes
        # The first messages were within the allowance and were handled normally.
        assert codes[0] == "not_paired"
        assert ws.close_code == 4008


async def test_server_shutdown_closes_clients_cleanly(relay_server, clients) -> None:
    a, _ = await paired(relay_server, clients)
    code = await asyncio.to_thread(relay_server.stop)
    assert code == 0
    await asyncio.wait_for(_until(lambda: a.close_code is not None), TIMEOUT)
    assert a.close_code == 1001


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.05)


CHROMIUM_OFFER = (Path(__file__).parent / "data" / "chromium_offer.sdp").read_bytes().decode()


async def test_hostile_offers_and_candidates_get_errors_not_tracebacks(relay_server) -> None:
    """Each of these once reached a traceback in aiortc or aioice (the fixture checks the log)."""

    async def reply(ws, message: dict) -> dict:
        await ws.send_json(message)
        return json.loads((await ws.receive(timeout=TIMEOUT)).data)

    no_direction = re.sub(r"a=sendrecv\r\n", "", CHROMIUM_OFFER)
    async with aiohttp.ClientSession() as http, http.ws_connect(relay_server.ws_url) as ws:
        assert json.loads((await ws.receive()).data)["type"] == "hello"
        for bad in (
            CHROMIUM_OFFER.replace("a=mid:1\r\n", "a=mid:0\r\n"),
            re.sub(r"a=mid:0\r\n", "", CHROMIUM_OFFER),
            CHROMIUM_OFFER.replace("BUNDLE 0 1", "BUNDLE 7 1"),
        ):
            err = await reply(ws, {"type": "offer", "sdp": bad})
            assert (err["type"], err["code"]) == ("error", "bad_sdp"), err
        # A corrected offer is answered: nothing was left half-open. No direction means sendrecv.
        assert (await reply(ws, {"type": "offer", "sdp": no_direction}))["type"] == "answer"
        # No end-of-candidates in a browser offer: ICE keeps checking what is trickled.
        bad = "candidate:1 1 udp 2122194687 127.0.0.1 65536 typ host"
        err = await reply(ws, {"type": "candidate", "candidate": bad, "sdpMid": "0"})
        assert err["code"] == "bad_candidate" and "port" in err["message"]
        for i in range(51):
            good = f"candidate:{i} 1 udp 2122194687 127.0.0.1 {20000 + i} typ host"
            await ws.send_json({"type": "candidate", "candidate": good, "sdpMid": "0"})
        err = json.loads((await ws.receive(timeout=TIMEOUT)).data)
        assert err["code"] == "bad_candidate" and "at most 50" in err["message"]
        await asyncio.sleep(2)  # aioice checks the pairs it was given
    async with (
        aiohttp.ClientSession() as http,
        http.get(relay_server.http_url + "/healthz") as response,
    ):
        assert response.status == 200


async def test_interests_change_while_waiting_and_while_paired(relay_server, clients) -> None:
    # Waiting for chess, then go: the search goes on with go, and finds go at once.
    a = await connected(relay_server, clients, 1)
    await a.start(["chess"])
    await a.wait_for("waiting", timeout=TIMEOUT)
    await a.send({"type": "interests", "interests": ["Go"]})
    b = await connected(relay_server, clients, 2)
    await b.start(["go"])
    matched = await a.wait_for("matched", timeout=TIMEOUT)
    assert matched["interests"] == ["go"]

    # Paired: kept for the next search, which finds the one who likes tennis.
    await a.send({"type": "interests", "interests": ["tennis"]})
    c = await connected(relay_server, clients, 3)
    await c.start(["tennis"])
    await c.wait_for("waiting", timeout=TIMEOUT)
    await a.next()
    matched = await a.wait_for("matched", timeout=TIMEOUT)
    assert matched["interests"] == ["tennis"]

    # Bad interests are refused with the field named, as for start.
    await a.send({"type": "interests", "interests": "tennis"})
    error = await a.wait_for("error", timeout=TIMEOUT)
    assert (error["code"], error["field"], error["inReplyTo"]) == (
        "bad_field",
        "interests",
        "interests",
    )
