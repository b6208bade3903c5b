"""The page resumes by itself: its WebSocket is cut by a proxy mid-call, the pair goes on."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from chatpage import OpenPage
from cut_proxy import CutProxy

from rtc.client import ChatClient

pytestmark = pytest.mark.browser

TIMEOUT = 20.0


@pytest.fixture
def relay_server_args() -> list[str]:
    return ["--media-timeout", "5", "--resume-grace", "20"]


async def test_the_page_resumes_after_its_websocket_is_cut(
    relay_server: Any, open_page: OpenPage
) -> None:
    proxy = CutProxy(relay_server.port)
    await proxy.start()
    partner = ChatClient(relay_server.ws_url, tag=7)
    try:
        # The page reaches the server only through the proxy; its partner directly.
        alice = await open_page("alice", f"http://127.0.0.1:{proxy.port}")
        await partner.connect()
        await partner.start()
        await alice.start()
        await alice.expect_status("matched")
        await partner.wait_for("matched", timeout=TIMEOUT)
        await alice.expect_video_flowing()
        await partner.wait_frames(count=10, after=time.time(), timeout=TIMEOUT)

        proxy.cut()
        await partner.wait_for("partner_reconnecting", timeout=TIMEOUT)
        # The page takes its session back with its token: no new partner, no new search.
        await partner.wait_for("partner_back", timeout=TIMEOUT)
        await alice.expect_status("matched")
        await alice.send_chat("back again")
        assert (await partner.wait_for("chat", timeout=TIMEOUT))["text"] == "back again"
        await partner.chat("welcome back")
        await alice.expect_chat_line("welcome back")
        await alice.expect_video_flowing()
        await partner.wait_frames(count=10, after=time.time(), timeout=TIMEOUT)
        assert not [m for m in partner.messages if m["type"] in ("partner_left", "matched")][1:]
        assert sum(m["type"] == "matched" for m in partner.messages) == 1
    finally:
        await partner.close()
        await proxy.close()


async def test_after_a_network_change_the_page_renews_socket_and_media(
    relay_server: Any, open_page: OpenPage
) -> None:
    partner = ChatClient(relay_server.ws_url, tag=7)
    try:
        alice = await open_page("alice", relay_server.http_url)
        await partner.connect()
        await partner.start()
        await alice.start()
        await alice.expect_status("matched")
        await partner.wait_for("matched", timeout=TIMEOUT)
        await alice.expect_video_flowing()
        await partner.wait_frames(count=10, after=time.time(), timeout=TIMEOUT)

        # What a phone's browser fires when it moves to another network.
        changed_at = time.time()
        await alice.page.evaluate("navigator.connection.dispatchEvent(new Event('change'))")
        await partner.wait_for("partner_reconnecting", timeout=TIMEOUT)
        await partner.wait_for("partner_back", timeout=TIMEOUT)
        await alice.expect_status("matched")
        # A new media connection took the old one's place in the pair, on the server.
        await eventually_in_log(relay_server, "media connection replaced")
        await partner.wait_frames(count=30, after=time.time(), timeout=TIMEOUT)
        await alice.expect_video_flowing()
        arrivals = [f.recv_time for f in partner.frames if f.recv_time >= changed_at - 1]
        pause = max(b - a for a, b in itertools.pairwise(arrivals))
        print(f"Chromium after a network change: the partner's longest pause {pause * 1000:.0f} ms")
        assert sum(m["type"] == "matched" for m in partner.messages) == 1
        assert not [m for m in partner.messages if m["type"] == "partner_left"]
        await alice.send_chat("new network, same stranger")
        assert (await partner.wait_for("chat", timeout=TIMEOUT))["text"].startswith("new network")
    finally:
        await partner.close()


async def eventually_in_log(server: Any, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in server.log():
        assert time.monotonic() < deadline, f"{text!r} not in the server log"
        await asyncio.sleep(0.2)
