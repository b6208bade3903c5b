"""What a person is told when something is wrong: no camera, no server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from chatpage import OpenChat, eventually

pytestmark = pytest.mark.browser


async def test_camera_denied_is_explained(open_chat: OpenChat, browser_without_media: Any) -> None:
    visitor = await open_chat("visitor", on=browser_without_media)

    # Start without the age confirmation is refused before any camera prompt.
    await visitor.click("start-button")
    await visitor.expect_banner("18 or older")

    await visitor.start()
    await visitor.expect_banner("camera and microphone access is blocked")
    # Still on the first screen, ready for another try; nothing was sent to the server.
    await visitor.expect_visible("#intro")
    await visitor.expect_visible("#room", visible=False)
    await visitor.expect_visible("#start-button")


async def test_server_going_away_and_coming_back(open_chat: OpenChat, relay_server: Any) -> None:
    alice = await open_chat("alice")
    bob = await open_chat("bob")
    carol = await open_chat("carol")  # has the page open, has not pressed Start yet
    await asyncio.gather(alice.start(), bob.start())
    await asyncio.gather(alice.expect_status("matched"), bob.expect_status("matched"))

    await asyncio.to_thread(relay_server.stop)
    first_run = relay_server.log()
    assert "Traceback" not in first_run, first_run

    # The pair was connected: they are told the connection dropped and is being retried.
    for person in (alice, bob):
        await person.expect_banner("lost the connection to the server. reconnecting in")
        await person.expect_status("reconnecting")
        await person.expect_chat_line("connection was interrupted")
    # Carol never reached the server: she is told it cannot be reached.
    await carol.start()
    await carol.expect_banner("can't reach the roulette relay server. trying again in")
    await carol.expect_status("connecting")

    # The server comes back at the same address; every page reconnects on its
    # own (back-off 1, 2, 4 s...) and looks for someone again.
    await asyncio.to_thread(relay_server.start)
    everyone = (alice, bob, carol)

    async def states() -> list[str | None]:
        return [await p.page.get_attribute("#status", "data-state") for p in everyone]

    await eventually(
        states,
        lambda s: sorted(s) == ["matched", "matched", "waiting"],
        what="two of three matched again after the restart",
        within=45,
    )
    for person, state in zip(everyone, await states(), strict=True):
        await person.expect_visible("#banner", visible=False)
        if state == "matched":
            await person.expect_video_flowing(frames=5)
