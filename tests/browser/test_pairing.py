"""Strangers meeting in real browsers: media both ways, Next, chat, Stop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from chatpage import PHONE, ChatPage, OpenChat, eventually

pytestmark = pytest.mark.browser


async def matched_pair(
    open_chat: OpenChat, *, second_viewport: dict[str, int] | None = None
) -> tuple[ChatPage, ChatPage]:
    extra = {"viewport": second_viewport} if second_viewport else {}
    alice = await open_chat("alice")
    bob = await open_chat("bob", **extra)
    await asyncio.gather(alice.start(("music", "Chess")), bob.start(("chess", "travel")))
    await asyncio.gather(
        alice.expect_status("matched", "you both like chess"),
        bob.expect_status("matched", "you both like chess"),
    )
    return alice, bob


async def test_two_strangers_see_and_hear_each_other(open_chat: OpenChat, artifacts: Path) -> None:
    # Bob is on a phone-sized screen: the same page has to work there too.
    alice, bob = await matched_pair(open_chat, second_viewport=PHONE)

    await asyncio.gather(alice.expect_video_flowing(), bob.expect_video_flowing())
    await asyncio.gather(alice.expect_audio_flowing(), bob.expect_audio_flowing())
    await alice.expect_visible("#local-video")
    await alice.expect_visible("#partner-camera-off", visible=False)

    # Shared interests are shown as such.
    await alice.expect_visible(".msg-system .shared")
    assert "chess" in (await alice.chat_log()).lower()

    # Nothing on the phone is wider than the screen, and every control fits on it.
    overflow = await bob.page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the phone layout scrolls sideways by {overflow}px"
    for selector in (
        "#remote-video",
        "#local-video",
        "#next-button",
        "#stop-button",
        "#chat-input",
    ):
        box = await bob.page.locator(selector).bounding_box()
        assert box is not None, selector
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 1, selector
        assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"] + 1, selector

    # A finished-looking pair with a little conversation, as a test artifact.
    await bob.send_chat("Hey! Where are you from?")
    await alice.expect_chat_line("Where are you from?")
    await alice.send_chat("Hi! Lisbon. You?")
    await bob.expect_chat_line("Lisbon")
    await alice.screenshot(str(artifacts / "matched-pair-desktop.png"))
    await bob.screenshot(str(artifacts / "matched-pair-phone.png"))


async def test_next_moves_on_to_a_third_stranger(open_chat: OpenChat) -> None:
    alice, bob = await matched_pair(open_chat)
    await alice.expect_video_flowing(frames=5)
    await bob.send_chat("only for alice")
    await alice.expect_chat_line("only for alice")

    carol = await open_chat("carol")
    await carol.start()
    await carol.expect_status("waiting", "looking for someone")

    # Esc twice means Next, as on Omegle.
    await alice.press_escape_twice()
    await asyncio.gather(
        alice.expect_status("matched"),
        carol.expect_status("matched"),
        bob.expect_status("left", "stranger left"),
    )
    await bob.expect_status("left", "moved on")
    await asyncio.gather(alice.expect_video_flowing(), carol.expect_video_flowing())
    await carol.expect_audio_flowing()

    # The chat starts empty with each new partner.
    assert "only for alice" not in await alice.chat_log()
    # Bob is idle, not searching, and the page says how to go on.
    await bob.expect_chat_line("Press Start")
    await bob.expect_visible("#partner[data-video='none'] .placeholder")


async def test_chat_typing_camera_off_and_report(open_chat: OpenChat) -> None:
    alice, bob = await matched_pair(open_chat)

    await alice.type_slowly("hello the")
    await bob.expect_visible("#typing")
    await alice.page.press("#chat-input", "Enter")
    await bob.expect_chat_line("hello the")
    await bob.expect_visible("#typing", visible=False)
    await bob.send_chat("hi alice 👋")
    await alice.expect_chat_line("hi alice 👋")

    # Camera off: the partner sees that it is off, not a frozen last frame.
    await bob.expect_video_flowing(frames=5)
    await alice.click("camera-button")
    await alice.expect_visible("#self-camera-off")
    await bob.expect_visible("#partner-camera-off")
    await alice.click("camera-button")
    await bob.expect_visible("#partner-camera-off", visible=False)

    # Report without skipping: the dialog sends it and says so.
    await alice.click("report-button")
    await alice.page.check("input[name=reason][value='spam or scam']")
    await alice.page.uncheck("#report-skip")
    await alice.click("report-send")
    await alice.expect_visible(".toast:has-text('report was recorded')")
    await alice.expect_status("matched")


async def test_stop_and_start_again(open_chat: OpenChat) -> None:
    alice, bob = await matched_pair(open_chat)

    await alice.click("stop-button")
    await alice.expect_status("stopped", "you stopped")
    await bob.expect_status("left", "stranger left: they stopped")
    await alice.expect_visible("#partner[data-video='none']")

    # Both start again; with nobody else around, they meet again.
    await alice.click("next-button")
    await alice.expect_status("waiting", "looking for someone")
    await bob.page.keyboard.press("Escape")  # idle, one Esc is enough to start
    await asyncio.gather(alice.expect_status("matched"), bob.expect_status("matched"))
    await alice.expect_video_flowing(frames=5)


async def test_the_page_runs_under_its_security_headers(open_chat: OpenChat) -> None:
    alice = await open_chat("alice")
    response = await alice.page.reload()
    assert response is not None
    headers = await response.all_headers()
    csp = headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert "camera=(self)" in headers["permissions-policy"]

    # The policy is enforced, and a violation would be noticed: inline script is refused.
    await alice.page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__inline = 1'; document.body.append(s); }"
    )

    async def logged() -> list[str]:
        return list(alice.errors)

    await eventually(
        logged, lambda errors: any("Content Security Policy" in e for e in errors), what="CSP log"
    )
    assert await alice.page.evaluate("window.__inline") is None
    alice.errors.clear()

    # The page itself, camera to partner, breaks none of it (open_chat checks the log).
    bob = await open_chat("bob")
    await asyncio.gather(alice.start(), bob.start())
    await asyncio.gather(alice.expect_status("matched"), bob.expect_status("matched"))
    await asyncio.gather(alice.expect_video_flowing(), bob.expect_video_flowing())
