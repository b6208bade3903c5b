"""Text-only mode: `start` with `"mode": "text"` chats without a media connection.

A real server process; text clients are ChatClients that never set up media
(`connect_signalling`), video clients are real aiortc ChatClients.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rtc.client import ChatClient

TIMEOUT = 10.0
# Long enough for the matcher to have paired two waiting users several times over
# (it pairs on arrival; interest windows here are 2 s and rematch waits 2 s).
NEVER_MATCHED_WITHIN = 3.0

RelayServer = Any


async def text_client(server: RelayServer, clients: list[Any], tag: int) -> ChatClient:
    client = ChatClient(server.ws_url, tag=tag)
    clients.append(client)
    await client.connect_signalling()
    return client


async def video_client(server: RelayServer, clients: list[Any], tag: int) -> ChatClient:
    client = ChatClient(server.ws_url, tag=tag)
    clients.append(client)
    await client.connect()
    return client


async def text_pair(server: RelayServer, clients: list[Any]) -> tuple[ChatClient, ChatClient]:
    a = await text_client(server, clients, 1)
    b = await text_client(server, clients, 2)
    await a.start(mode="text")
    await b.start(mode="text")
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    return a, b


async def test_a_text_pair_chats_types_reports_and_parts(relay_server, clients) -> None:
    server = relay_server
    a, b = await text_pair(server, clients)
    await a.chat("hi, no camera here")
    assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == "hi, no camera here"
    await b.chat("same")
    assert (await a.wait_for("chat", timeout=TIMEOUT))["text"] == "same"
    await b.send({"type": "typing", "active": True})
    assert (await a.wait_for("typing", timeout=TIMEOUT))["active"] is True

    # next: the partner is told and idle; both find each other again in the text pool.
    await a.next()
    assert (await b.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "next"
    await a.wait_for("waiting", timeout=TIMEOUT)
    await b.start(mode="text")
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)

    # A report keeps the chat as evidence and moves the reporter on (the default); the
    # two are not paired again, so a third text user comes.
    await b.send({"type": "report", "reason": "rude"})
    await b.wait_for("reported", timeout=TIMEOUT)
    assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "next"
    await b.wait_for("waiting", timeout=TIMEOUT)
    await b.stop()
    await b.wait_for("stopped", timeout=TIMEOUT)

    c = await text_client(server, clients, 3)
    await c.start(mode="text")
    await a.start(mode="text")
    await a.wait_for("matched", timeout=TIMEOUT)
    await c.wait_for("matched", timeout=TIMEOUT)
    await c.stop()
    await c.wait_for("stopped", timeout=TIMEOUT)
    assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "stop"

    await c.start(mode="text")
    await a.start(mode="text")
    await a.wait_for("matched", timeout=TIMEOUT)
    await c.wait_for("matched", timeout=TIMEOUT)
    await c.close()
    assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "disconnect"


async def test_a_text_user_never_meets_a_video_user(relay_server, clients) -> None:
    text = await text_client(relay_server, clients, 1)
    video = await video_client(relay_server, clients, 2)
    await text.start(mode="text")
    await video.start()
    await text.wait_for("waiting", timeout=TIMEOUT)
    await video.wait_for("waiting", timeout=TIMEOUT)
    # The only two waiting, no interests, past the rematch wait: still never paired.
    await asyncio.sleep(NEVER_MATCHED_WITHIN)
    assert not any(m["type"] == "matched" for m in text.messages + video.messages)

    # Each is paired at once with someone of their own mode.
    other_text = await text_client(relay_server, clients, 3)
    other_video = await video_client(relay_server, clients, 4)
    await other_text.start(mode="text")
    await other_video.start()
    for client in (text, video, other_text, other_video):
        await client.wait_for("matched", timeout=TIMEOUT)
    await text.chat("text to text")
    assert (await other_text.wait_for("chat", timeout=TIMEOUT))["text"] == "text to text"
    # The video pair's media flows as ever (stamped frames from the partner).
    await video.wait_frames(tag=other_video.tag, count=5, timeout=TIMEOUT)


async def test_media_messages_in_a_text_pair_get_a_clear_error(relay_server, clients) -> None:
    a, b = await text_pair(relay_server, clients)
    await a.send({"type": "media_state", "camera": False, "mic": False})
    await a.send({"type": "offer", "sdp": "v=0\r\n"})
    await a.send({"type": "candidate", "candidate": None})
    errors = [await a.wait_for("error", timeout=TIMEOUT) for _ in range(3)]
    assert [(e["code"], e["inReplyTo"]) for e in errors] == [
        ("text_mode", "media_state"),
        ("text_mode", "offer"),
        ("text_mode", "candidate"),
    ]
    assert "text-only mode" in errors[0]["message"] and '"mode": "video"' in errors[0]["message"]
    assert not any(m["type"] == "media_state" for m in b.messages)
    # The pair goes on.
    await a.chat("still here")
    assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == "still here"


async def test_an_unknown_mode_is_a_bad_field(relay_server, clients) -> None:
    a = await text_client(relay_server, clients, 1)
    for mode in ("audio", "", "TEXT", 1, None, ["text"]):
        await a.send({"type": "start", "mode": mode})
        error = await a.wait_for("error", timeout=TIMEOUT)
        assert (error["code"], error["field"], error["inReplyTo"]) == ("bad_field", "mode", "start")
        assert '"video" or "text"' in error["message"]
    assert not any(m["type"] == "waiting" for m in a.messages)


async def test_a_session_switches_mode_between_searches(relay_server, clients) -> None:
    """Video -> text -> video on one socket: each search meets its own mode only."""
    switcher = await video_client(relay_server, clients, 1)
    video_partner = await video_client(relay_server, clients, 2)
    text_partner = await text_client(relay_server, clients, 3)

    await text_partner.start(mode="text")
    await switcher.start()
    await video_partner.start()
    await switcher.wait_for("matched", timeout=TIMEOUT)
    await video_partner.wait_for("matched", timeout=TIMEOUT)
    await switcher.wait_frames(tag=video_partner.tag, count=3, timeout=TIMEOUT)

    # To text: stop, then start text (the media connection is closed by the server).
    await switcher.stop()
    await switcher.wait_for("stopped", timeout=TIMEOUT)
    await switcher.start(mode="text")
    await switcher.wait_for("matched", timeout=TIMEOUT)
    await text_partner.wait_for("matched", timeout=TIMEOUT)
    await switcher.chat("now in text")
    assert (await text_partner.wait_for("chat", timeout=TIMEOUT))["text"] == "now in text"

    # Back to video: stop, a new offer (allowed while idle), then start.
    await switcher.stop()
    await switcher.wait_for("stopped", timeout=TIMEOUT)
    await video_partner.start()
    await switcher.negotiate()
    await switcher.start()
    await switcher.wait_for("matched", timeout=TIMEOUT)
    await video_partner.wait_for("matched", timeout=TIMEOUT)
    rematched = time.time()
    await video_partner.wait_frames(tag=switcher.tag, count=3, after=rematched, timeout=TIMEOUT)


async def test_a_text_pair_survives_a_dropped_socket(relay_server, clients) -> None:
    """Resume needs no media in text mode: the pair is back once the socket is."""
    a, b = await text_pair(relay_server, clients)
    await a.drop_socket()
    await b.wait_for("partner_reconnecting", timeout=TIMEOUT)
    resumed = await a.resume()
    assert (resumed["state"], resumed["mode"], resumed["media"]) == ("paired", "text", False)
    await b.wait_for("partner_back", timeout=TIMEOUT)
    await a.chat("back, still no camera")
    assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == "back, still no camera"


async def test_a_text_pair_across_two_nodes(nodes, clients) -> None:
    """No media bridge is built between nodes for a text pair; chat and leaving cross."""
    one, two = nodes(), nodes()
    a = await text_client(one, clients, 1)
    b = await text_client(two, clients, 2)
    assert a.hello["node"] != b.hello["node"]
    await a.start(mode="text")
    await b.start(mode="text")
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    await a.chat("from node one")
    assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == "from node one"
    await b.chat("from node two")
    assert (await a.wait_for("chat", timeout=TIMEOUT))["text"] == "from node two"
    await b.next()
    assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "next"
