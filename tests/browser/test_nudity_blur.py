"""--nudity-blur in real Chromium: the page covers a held partner, the dashboard releases them.

The flagged stranger is a headless aiortc client sending the generated
positive (tests/data/nudity-positive.png, see tests/test_moderation_nudity.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from chatpage import OpenChat, eventually, moderator_page
from moderators import moderation_args
from playwright.async_api import Browser, expect

from rtc.client import ChatClient
from tests.test_moderation_nudity import positive_clip

pytestmark = pytest.mark.browser

SECRET = "nudity-secret-0123456789abcdef"
HIDDEN = "The stranger's video is hidden: an automatic check flagged it, and a moderator will look."


@pytest.fixture
def relay_server_args(tmp_path: Path) -> list[str]:
    return [
        *moderation_args(tmp_path, SECRET),
        "--analyzer-interval",
        "0.5",
        "--nudity-blur",
    ]


async def test_the_page_covers_a_held_partner_until_the_dashboard_shows_them_again(
    open_chat: OpenChat,
    browser: Browser,
    relay_server: Any,
    clients: list[Any],
    tmp_path: Path,
    artifacts: Path,
) -> None:
    clip = positive_clip(tmp_path / "p.webm")
    alice = await open_chat("alice")
    await alice.start()
    await alice.expect_status("waiting")
    flagged = ChatClient(relay_server.ws_url, tag=9, media_file=clip)
    clients.append(flagged)
    await flagged.connect()
    await flagged.start()
    await flagged.wait_for("matched", timeout=30)

    partner_tile = alice.page.locator("#partner")
    await expect(partner_tile).to_have_attribute("data-video", "held", timeout=30_000)
    await expect(alice.page.locator("#placeholder-text")).to_have_text(HIDDEN)
    assert not await alice.page.locator("#remote-video").is_visible()
    await alice.screenshot(str(artifacts / "nudity-held-page.png"))

    async with moderator_page(browser, SECRET) as (page, errors):
        await page.goto(relay_server.http_url + "/moderate")
        card = page.locator(f"article[data-session='{flagged.id}']")
        await expect(card.locator(".flag.held")).to_have_text("video held from partners")
        # The model's score is on the flag.
        await expect(card.locator(".flag", has_text="nudity")).to_have_text(
            re.compile(r"^nudity (0\.\d\d|1\.00)$")
        )
        # Its automatic report is in the queue, marked as flagged now.
        await expect(page.locator(".flagged-now")).to_have_text("flagged now")
        await page.screenshot(path=str(artifacts / "nudity-held-dashboard.png"), full_page=True)
        await card.locator("button[data-act=release]").click()
        await expect(card.locator(".flag.held")).to_have_count(0)
    assert errors == []

    # Released: the page shows the stranger's video again.
    await alice.expect_video_flowing()
    await eventually(
        lambda: partner_tile.get_attribute("data-video"), lambda v: v == "live", what="live tile"
    )
