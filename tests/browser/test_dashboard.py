"""The moderation dashboard in real Chromium, while two fake-camera browsers are paired."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from chatpage import OpenChat, eventually, moderator_page
from moderators import moderation_args
from playwright.async_api import Browser

pytestmark = pytest.mark.browser

SECRET = "dashboard-secret-0123456789abcdef"


@pytest.fixture
def relay_server_args(tmp_path: Path) -> list[str]:
    return [
        *moderation_args(tmp_path, SECRET),
        "--analyzer-interval",
        "1",
    ]


async def test_dashboard_shows_thumbnails_and_watches_a_pair_live(
    open_chat: OpenChat, browser: Browser, relay_server, artifacts: Path
) -> None:
    alice = await open_chat("alice")
    bob = await open_chat("bob")
    await asyncio.gather(alice.start(("chess",)), bob.start(("chess",)))
    await asyncio.gather(alice.expect_status("matched"), bob.expect_status("matched"))
    await alice.send_chat("hi bob")

    async with moderator_page(browser, SECRET) as (page, errors):
        response = await page.goto(relay_server.http_url + "/moderate")
        assert response is not None
        assert "frame-ancestors 'none'" in (await response.all_headers())["content-security-policy"]

        # A thumbnail for each of the pair, made on the server.
        async def thumbnails() -> int:
            return int(
                await page.evaluate(
                    "[...document.querySelectorAll('img[data-thumb]')]"
                    ".filter(i => i.complete && i.naturalWidth > 0).length"
                )
            )

        await eventually(thumbnails, lambda n: n >= 2, what="two thumbnails", within=30)
        assert "2 online" in (await page.text_content("#summary") or "")

        # Watch the pair: both users' video plays in the dashboard, frames advancing.
        await page.click("button[data-act=watch]")

        async def decoded() -> list[int]:
            return list(
                await page.evaluate(
                    "[0, 1].map(i => document.querySelector(`#watch-video-${i}`)"
                    ".getVideoPlaybackQuality().totalVideoFrames)"
                )
            )

        first = await eventually(decoded, lambda n: min(n) >= 5, what="watched video", within=30)
        await eventually(
            decoded,
            lambda n: all(b >= a + 10 for a, b in zip(first, n, strict=True)),
            what="watched frames advancing",
            within=30,
        )
        # The pair's chat shows live beside the videos.
        await eventually(
            lambda: page.text_content("#watch-chat"),
            lambda text: "hi bob" in (text or ""),
            what="the pair's chat in the watch view",
            within=10,
        )
        # The pair's own streams are undisturbed.
        await asyncio.gather(alice.expect_video_flowing(), bob.expect_video_flowing())

        shot = artifacts / "browser" / "dashboard.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(shot), full_page=False)
        await page.click("#watch-stop")

        # Record the pair for a few seconds, then play one file in the dashboard.
        await page.click("button[data-act=record][data-ids*=',']")
        await eventually(
            lambda: page.locator(".rec").count(), lambda n: n >= 2, what="recording shown"
        )
        await asyncio.gather(alice.expect_video_flowing(frames=60), bob.expect_video_flowing())
        await page.click("button[data-act=stoprec]")
        await page.click("button[data-act=stoprec]")
        await eventually(
            lambda: page.locator("#recordings button[data-act=play]").count(),
            lambda n: n >= 1,
            what="a finished recording listed",
            within=15,
        )
        await page.click("#recordings button[data-act=play]")

        async def played() -> int:
            return int(
                await page.evaluate(
                    "document.querySelector('#player').getVideoPlaybackQuality().totalVideoFrames"
                )
            )

        await eventually(played, lambda n: n >= 20, what="the recording playing", within=30)
        assert await page.evaluate("document.querySelector('#player').error") is None
        assert not errors, errors
