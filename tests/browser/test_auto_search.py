"""When the partner leaves, the page looks for someone new by itself (on by default),
and says how many people are online while it searches (--show-online)."""

from __future__ import annotations

import asyncio

import pytest
from chatpage import OpenChat, expect

pytestmark = pytest.mark.browser


@pytest.fixture
def relay_server_args() -> list[str]:
    return [
        "--media-timeout",
        "3",
        "--interest-timeout",
        "2",
        "--rematch-after",
        "2",
        "--show-online",
    ]


async def test_auto_search_finds_the_next_stranger_and_can_be_turned_off(
    open_chat: OpenChat,
) -> None:
    alice = await open_chat("alice", auto_search=True)
    bob = await open_chat("bob")
    await asyncio.gather(alice.start(), bob.start())
    await asyncio.gather(alice.expect_status("matched"), bob.expect_status("matched"))

    # Bob stops: Alice reads why, then is searching again without pressing anything.
    await bob.click("stop-button")
    await alice.expect_status("left", "they stopped chatting")
    await alice.expect_chat_line("looking for someone new in a moment")
    await alice.expect_status("waiting")
    await expect(alice.page.locator("#online-count")).to_have_text("2 online")  # alice, bob
    carol = await open_chat("carol")
    await carol.start()
    await asyncio.gather(alice.expect_status("matched"), carol.expect_status("matched"))
    await alice.expect_video_flowing(frames=5)

    # Stop in the pause cancels the search.
    await carol.click("next-button")
    await alice.expect_status("left", "moved on")
    await alice.click("stop-button")
    await alice.expect_status("stopped")
    await asyncio.sleep(2.5)  # longer than the pause: nothing may restart the search
    await alice.expect_status("stopped")

    # Turned off in the settings (and remembered): the page waits for Start.
    await alice.click("next-button")
    await alice.expect_status("matched")  # carol is still waiting
    await alice.click("devices-button")
    toggle = alice.page.locator("#auto-search")
    await expect(toggle).to_be_checked()
    await toggle.uncheck()
    await alice.page.keyboard.press("Escape")
    assert await alice.page.evaluate("localStorage.getItem('relay.autoSearch')") == "off"
    await carol.click("stop-button")
    await alice.expect_status("left")
    await alice.expect_chat_line("Press Start")
    await asyncio.sleep(2.5)
    await alice.expect_status("left")


async def test_interests_changed_while_waiting_are_searched_with(open_chat: OpenChat) -> None:
    alice = await open_chat("alice")
    bob = await open_chat("bob")
    await alice.start(("chess",))
    await alice.expect_status("waiting")

    await alice.click("devices-button")
    await alice.page.click("#room-interests .tag button")  # remove chess
    await alice.page.fill("#room-interest-input", "go")
    await alice.page.press("#room-interest-input", "Enter")
    await alice.page.click("#devices-dialog button[value=use]")

    await bob.start(("go",))
    await asyncio.gather(
        alice.expect_status("matched", "you both like go"),
        bob.expect_status("matched", "you both like go"),
    )
