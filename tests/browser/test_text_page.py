"""Text-only mode in the page: no camera is no dead end.

A visitor whose camera permission is refused is offered text-only, reaches it
without being asked for the camera again, and chats with a headless text client
(rtc.client.ChatClient without media). A visitor who picks text on the first
screen is never asked for the camera and meets another text browser, then switches
to video in the settings (meets a video visitor) and back. The room in
text mode has no video tiles, every control on screen from 320x568 to desktop,
and no serious axe-core violations. Screenshots: test-artifacts/browser/text-*.png.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from chatpage import DESKTOP, PHONE, ChatPage, expect
from test_accessibility import serious_violations

from rtc.client import ChatClient

pytestmark = pytest.mark.browser

TIMEOUT = 15.0
SIZES = [
    {"width": 1280, "height": 800},
    {"width": 390, "height": 844},
    {"width": 320, "height": 568},
    {"width": 844, "height": 390},
    {"width": 568, "height": 320},
]
TEXT_ROOM_CONTROLS = (
    "#stop-button",
    "#next-button",
    "#report-button",
    "#text-settings-button",
    "#chat-input",
    "#chat-send",
)
VIDEO_ONLY = ("#mic-button", "#camera-button", "#self", "#remote-video")

# Counts camera prompts the page makes (getUserMedia calls), from the first script on.
COUNT_CAMERA_PROMPTS = """
(() => {
  window.__cameraPrompts = 0;
  const devices = navigator.mediaDevices;
  if (!devices) return;
  const native = devices.getUserMedia.bind(devices);
  devices.getUserMedia = (...args) => {
    window.__cameraPrompts += 1;
    return native(...args);
  };
})();
"""


@pytest.fixture
def relay_server_args() -> list[str]:
    # The online count is the one thing the search line shows in text mode.
    return ["--show-online"]


async def open_counting(open_page: Any, name: str, url: str, **options: Any) -> ChatPage:
    person: ChatPage = await open_page(name, url, **options)
    await person.context.add_init_script(COUNT_CAMERA_PROMPTS)
    await person.page.reload()
    return person


async def camera_prompts(person: ChatPage) -> int:
    return int(await person.page.evaluate("window.__cameraPrompts"))


async def peer_connections(person: ChatPage) -> int:
    return int(await person.page.evaluate("window.__relayTest.peerConnections.length"))


async def no_serious_violations(person: ChatPage, state: str) -> None:
    bad = await serious_violations(person)
    assert not bad, f"{person.name} {state}: {bad}"


async def assert_text_room_fits(person: ChatPage, size: dict[str, int]) -> None:
    """Every text-mode control wholly inside the window; no video tile shown."""
    for selector in TEXT_ROOM_CONTROLS:
        locator = person.page.locator(selector)
        await expect(locator).to_be_visible()
        b = await locator.bounding_box()
        assert b is not None
        where = f"{selector} at {size}: {b}"
        assert b["x"] >= -0.5 and b["x"] + b["width"] <= size["width"] + 0.5, where
        assert b["y"] >= -0.5 and b["y"] + b["height"] <= size["height"] + 0.5, where
    for selector in VIDEO_ONLY:
        await expect(person.page.locator(selector)).to_be_hidden()


async def test_no_camera_permission_reaches_text_mode_and_chats(
    relay_server: Any,
    open_page: Any,
    browser_without_media: Any,
    clients: list[Any],
    artifacts: Path,
) -> None:
    person = await open_counting(
        open_page, "no-camera", relay_server.http_url, on=browser_without_media
    )
    await person.start()  # Start: the camera prompt is refused
    await person.expect_banner("blocked")
    await person.expect_banner("Text only, no camera")
    text_button = person.page.locator("#text-button")
    await expect(text_button).to_be_focused()
    await expect(text_button).to_have_class("btn btn-text btn-primary")
    await no_serious_violations(person, "first screen, camera refused")
    for size in (PHONE, DESKTOP):
        await person.page.set_viewport_size(size)
        await person.screenshot(
            str(artifacts / f"text-offered-{size['width']}x{size['height']}.png")
        )
    prompts = await camera_prompts(person)
    assert prompts == 1

    await text_button.click()
    await person.expect_status("waiting")
    await expect(person.page.locator("#banner")).to_be_hidden()
    await expect(person.page.locator("#room")).to_have_attribute("aria-label", "Text-only chat")
    await person.page.set_viewport_size(PHONE)
    await assert_text_room_fits(person, PHONE)
    await expect(person.page.locator("#online-count")).to_have_text("1 online")
    await no_serious_violations(person, "text mode, waiting")
    await person.screenshot(str(artifacts / "text-waiting-390x844.png"))

    # A headless text client: signalling only, no media connection.
    stranger = ChatClient(relay_server.ws_url, tag=7)
    clients.append(stranger)
    await stranger.connect_signalling()
    await stranger.start(mode="text")
    await stranger.wait_for("matched", timeout=TIMEOUT)
    await person.expect_status("matched")
    await expect(person.page.locator("#partner")).to_be_hidden()
    await stranger.chat("hi from a terminal")
    await person.expect_chat_line("hi from a terminal")
    await person.send_chat("hello from a phone without a camera")
    assert (await stranger.wait_for("chat", timeout=TIMEOUT))["text"] == (
        "hello from a phone without a camera"
    )
    await no_serious_violations(person, "text mode, matched")
    for size in SIZES:
        await person.page.set_viewport_size(size)
        await assert_text_room_fits(person, size)
        await person.screenshot(
            str(artifacts / f"text-matched-{size['width']}x{size['height']}.png")
        )
    # Never asked for the camera again, and no media connection was ever made.
    assert await camera_prompts(person) == prompts
    assert await peer_connections(person) == 0

    await stranger.stop()
    await person.expect_chat_line("Stranger left")
    # Start again: still text, still no camera.
    await person.click("next-button")
    await person.expect_status("waiting")
    await stranger.start(mode="text")
    await person.expect_status("matched")
    assert await camera_prompts(person) == prompts


async def test_text_chosen_on_the_first_screen_never_asks_for_the_camera(
    relay_server: Any, open_page: Any, clients: list[Any], artifacts: Path
) -> None:
    # Both browsers could use their (fake) cameras; both pick text.
    alice = await open_counting(open_page, "alice", relay_server.http_url, viewport=DESKTOP)
    bob = await open_counting(
        open_page, "bob", relay_server.http_url, viewport=PHONE, has_touch=True, is_mobile=True
    )
    # A video visitor waiting too: the text visitors are never paired with them.
    video = ChatClient(relay_server.ws_url, tag=9)
    clients.append(video)
    await video.connect()
    await video.start()
    await video.wait_for("waiting", timeout=TIMEOUT)

    for person in (alice, bob):
        await person.page.check("#age-check")
        await person.click("text-button")
    await asyncio.gather(alice.expect_status("matched"), bob.expect_status("matched"))
    await alice.send_chat("text only here")
    await bob.expect_chat_line("text only here")
    await bob.send_chat("and here")
    await alice.expect_chat_line("and here")
    assert not any(m["type"] == "matched" for m in video.messages)
    for person in (alice, bob):
        assert await camera_prompts(person) == 0
        assert await peer_connections(person) == 0
    await alice.screenshot(str(artifacts / "text-two-browsers-1280x800.png"))
    await bob.screenshot(str(artifacts / "text-two-browsers-390x844.png"))

    # Settings in text mode: interests, auto search and the mode; no device pickers.
    await alice.click("text-settings-button")
    await expect(alice.page.locator("#devices-dialog")).to_be_visible()
    await expect(alice.page.locator("#camera-select")).to_be_hidden()
    await expect(alice.page.locator("#text-mode")).to_be_checked()
    await no_serious_violations(alice, "text mode, settings")

    # Alice switches to video: her text partner is told, she meets the video visitor.
    await alice.page.uncheck("#text-mode")
    await alice.page.click("#devices-dialog button[value=use]")
    await bob.expect_chat_line("Stranger left")
    await video.wait_for("matched", timeout=TIMEOUT)
    await alice.expect_status("matched")
    await expect(alice.page.locator("#self")).to_be_visible()
    assert await camera_prompts(alice) == 1
    await alice.expect_video_flowing(frames=5)
    await video.wait_frames(count=5, timeout=TIMEOUT)

    # And back to text: the camera goes off, the video visitor is told.
    await alice.click("devices-button")
    await alice.page.check("#text-mode")
    await alice.page.click("#devices-dialog button[value=use]")
    left = await video.wait_for("partner_left", timeout=TIMEOUT)
    assert left["reason"] == "stop"
    await bob.click("next-button")
    await asyncio.gather(alice.expect_status("matched"), bob.expect_status("matched"))
    await expect(alice.page.locator("#self")).to_be_hidden()
    live = "window.__relayTest.peerConnections.filter(p => p.connectionState !== 'closed').length"
    assert await alice.page.evaluate(live) == 0
    await bob.send_chat("welcome back")
    await alice.expect_chat_line("welcome back")
