"""Trust and safety in real Chromium: the page's recent strangers, and the moderators' queue.

A stranger who pressed Next is reported from the page's "recent" list (phone and
desktop size); the moderator works the queue from the keyboard: the most severe
report first, claim, both people's evidence side by side, a ban from the dialog
(a custom length is validated in place), and the banned person's page says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chatpage import (
    PHONE,
    OpenChat,
    eventually,
    expect,
    moderator_page,
)
from moderators import moderation_args
from playwright.async_api import Browser

from rtc.client import ChatClient

pytestmark = pytest.mark.browser

SECRET = "queue-secret-0123456789abcdef"


@pytest.fixture
def relay_server_args(tmp_path: Path) -> list[str]:
    return [
        *moderation_args(tmp_path, SECRET),
        "--evidence-seconds",
        "10",
        "--appeal-url",
        "https://example.org/appeal",
    ]


async def test_a_stranger_who_left_is_reported_from_the_recent_list_and_banned_from_the_queue(
    open_chat: OpenChat, browser: Browser, relay_server, artifacts: Path, clients
) -> None:
    alice = await open_chat("alice", viewport=PHONE)
    bob = await open_chat("bob")
    await alice.start()
    await bob.start()
    await alice.expect_status("matched")
    await bob.expect_status("matched")
    await alice.expect_video_flowing(frames=30)  # seconds of bob for the evidence
    await alice.send_chat("hi")
    await bob.expect_chat_line("hi")

    # Two headless visitors make a second, less severe report (spam) first.
    x = ChatClient(relay_server.ws_url + "?clientId=headless-x-0123", tag=1)
    y = ChatClient(relay_server.ws_url + "?clientId=headless-y-0123", tag=2)
    clients.extend([x, y])
    for c in (x, y):
        await c.connect()
        await c.start()
    await x.wait_for("matched", timeout=30)
    await x.send({"type": "report", "reason": "spam or scam", "category": "spam"})
    await x.wait_for("reported", timeout=30)

    # Bob skips; alice reports him afterwards from her recent list (phone size).
    await bob.click("next-button")
    await alice.expect_status("left")
    page = alice.page
    recent = page.locator("#recent")
    await expect(recent).to_be_visible()
    if not await recent.evaluate("d => d.open"):
        await page.click("#recent summary")
    item = page.locator("#recent-list li").first
    await expect(item).to_contain_text("Stranger 1")
    await alice.screenshot(str(artifacts / "recent-phone.png"))
    await item.get_by_role("button", name="Report stranger 1").click()
    await page.check("input[name=reason][value='looks under 18']")
    await page.click("#report-send")
    await expect(item).to_contain_text("Reported")
    # Bob's own list on a desktop page: alice is there, just now.
    # (Bob may already be talking to a headless visitor: that one is "Stranger 2".)
    bob_recent = bob.page.locator("#recent-list li", has_text="Stranger 1")
    await expect(bob_recent).to_contain_text("just now")
    await bob.screenshot(str(artifacts / "recent-desktop.png"))

    async with moderator_page(browser, SECRET) as (mod, errors):
        await mod.goto(relay_server.http_url + "/moderate")
        items = mod.locator("#queue li[data-id]")
        await expect(items).to_have_count(2, timeout=15_000)
        # The minor comes first though it is the newer report.
        selected = mod.locator("#queue li[aria-selected=true]")
        await expect(selected).to_contain_text("minor")
        await mod.keyboard.press("j")
        await expect(selected).to_contain_text("spam")
        await mod.keyboard.press("k")
        await expect(selected).to_contain_text("minor")
        await mod.keyboard.press("c")
        await expect(mod.locator("#queue-status")).to_contain_text("is yours")
        await expect(mod.locator("#queue-detail")).to_contain_text("claimed by mia")
        await expect(mod.locator("#queue-detail .transcript")).to_contain_text("hi")

        # Evidence: both people, side by side, playing.
        await mod.keyboard.press("e")

        async def frames() -> list[int]:
            return list(
                await mod.evaluate(
                    "['reported', 'reporter'].map(p => document.querySelector("
                    "`#evidence-${p}`).getVideoPlaybackQuality().totalVideoFrames)"
                )
            )

        await eventually(frames, lambda n: min(n) >= 10, what="both evidence videos", within=30)
        # docs/dashboard-queue.png is a copy of this one.
        await mod.screenshot(path=str(artifacts / "queue-evidence.png"))

        # The ban dialog: a bad custom length is refused in place, then a preset is made.
        await mod.keyboard.press("b")
        dialog = mod.locator("#ban-dialog")
        await expect(dialog).to_be_visible()
        await expect(mod.locator("#ban-address-note")).to_contain_text("share this address")
        await mod.check("input[name=length][value=custom]")
        await mod.fill("#ban-custom-n", "0")
        await mod.click("#ban-submit")
        await expect(mod.locator("#ban-error")).to_contain_text("whole number")
        await expect(dialog).to_be_visible()
        await mod.check("input[name=length][value='7d']")
        await mod.screenshot(path=str(artifacts / "queue-ban-dialog.png"))
        await mod.click("#ban-submit")
        await expect(dialog).to_be_hidden()
        await expect(items).to_have_count(1)
        await expect(mod.locator("#queue-status")).to_contain_text("Banned")
        await bob.expect_banner("banned")
        await bob.expect_banner("example.org/appeal")
        await mod.screenshot(path=str(artifacts / "queue.png"))

        # Kick from the live view: a dialog with the message, no prompt.
        await mod.click(f"[data-session='{y.id}'] button[data-act=kick]")
        await mod.fill("#kick-message", "please be kind")
        await mod.click("#kick-submit")
        kicked = await y.wait_for("error", timeout=30, predicate=lambda m: m["code"] == "kicked")
        assert kicked["message"] == "please be kind"
        assert not errors, errors
