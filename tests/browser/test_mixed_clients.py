"""A browser and a headless aiortc client are strangers like any other pair."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from chatpage import OpenChat, eventually

from rtc.client import ChatClient

pytestmark = pytest.mark.browser


async def test_browser_and_headless_client_see_each_other(
    open_chat: OpenChat, relay_server: Any, clients: list[Any]
) -> None:
    alice = await open_chat("alice")
    await alice.start(("robots",))
    await alice.expect_status("waiting")

    bot = ChatClient(relay_server.ws_url, tag=7, tone_hz=440.0)
    clients.append(bot)
    await bot.connect()
    await bot.start(["Robots"])
    await bot.wait_for("matched", timeout=30)
    matched_at = time.time()
    await alice.expect_status("matched", "you both like robots")

    # The browser decodes and paints the client's synthetic video and hears its tone.
    await alice.expect_video_flowing()
    await alice.expect_audio_flowing()

    # The client decodes the browser's camera (not stamped: any frame counts) and its audio.
    frames = await bot.wait_frames(count=30, after=matched_at, timeout=30)
    assert all(f.stamp is None for f in frames), "the browser's frames carry no stamp"
    audio_before = bot.audio_frames
    await eventually(
        lambda: asyncio.sleep(0, bot.audio_frames),
        lambda n: n >= audio_before + 25,
        what="audio frames from the browser at the client",
    )

    await bot.chat("beep boop, hello human")
    await alice.expect_chat_line("beep boop, hello human")
    await alice.send_chat("hello robot")
    assert (await bot.wait_for("chat", timeout=15))["text"] == "hello robot"

    await bot.next()
    await alice.expect_status("left", "stranger left")
