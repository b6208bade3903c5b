"""One person using the real page in Chromium, as the browser tests drive it.

Every wait here is on a condition with a deadline, never a bare sleep: the
tests must hold on a busy 2-core machine as well as on a fast one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

try:
    from playwright.async_api import expect
except ImportError:  # the `playwright` fixture reports it: a skip, or a failure under CI
    expect = None

T = TypeVar("T")

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# Enough for ICE, a keyframe and decoding on a loaded 2-core machine.
MEDIA_TIMEOUT = 30.0
UI_TIMEOUT = 15.0

# Record every RTCPeerConnection the page makes, so a test can read its stats
# without the page carrying any test hooks of its own.
RECORD_PEER_CONNECTIONS = """
(() => {
  const Native = window.RTCPeerConnection;
  const made = [];
  window.__relayTest = { peerConnections: made };
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      made.push(this);
    }
  };
})();
"""

# A visitor who unticked "When a stranger leaves, look for someone new right away".
AUTO_SEARCH_OFF = """
try { localStorage.getItem("relay.autoSearch") ?? localStorage.setItem("relay.autoSearch", "off"); } catch {}
"""

# Every Content-Security-Policy violation becomes a console error that
# `watch_for_csp_violations` collects (Chromium logs most of them itself; this
# catches the ones it reports only as events).
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`Content Security Policy violation: ${e.violatedDirective} ${e.blockedURI}`);
});
"""


def watch_for_csp_violations(page: Page, errors: list[str]) -> None:
    """Add every CSP violation the page logs to `errors`: the headers must not break the page."""
    page.on(
        "console",
        lambda m: "Content Security Policy" in m.text and errors.append(f"CSP: {m.text}"),
    )


@contextlib.asynccontextmanager
async def moderator_page(
    browser: Browser, secret: str, name: str = "mia"
) -> AsyncIterator[tuple[Page, list[str]]]:
    """A moderator's desktop browser, logged in, collecting page errors and CSP violations."""
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900},
        http_credentials={"username": name, "password": secret},
    )
    await context.add_init_script(REPORT_CSP_VIOLATIONS)
    errors: list[str] = []
    try:
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        watch_for_csp_violations(page, errors)
        yield page, errors
    finally:
        await context.close()


INBOUND_STATS = """
async () => {
  const pc = window.__relayTest.peerConnections.at(-1);
  if (!pc || pc.connectionState === "closed") return {};
  const out = {};
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp") {
      out[s.kind] = {
        packetsReceived: s.packetsReceived ?? 0,
        framesDecoded: s.framesDecoded ?? 0,
        totalSamplesReceived: s.totalSamplesReceived ?? 0,
        totalAudioEnergy: s.totalAudioEnergy ?? 0,
      };
    }
  });
  return out;
}
"""

# Frames the <video> element actually presented during `ms`, counted by the browser.
PRESENTED_FRAMES = """
async (ms) => {
  const video = document.getElementById("remote-video");
  let frames = 0;
  const until = performance.now() + ms;
  await new Promise((resolve) => {
    const onFrame = () => {
      frames += 1;
      if (performance.now() < until) video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    setTimeout(resolve, ms);
  });
  return { frames, width: video.videoWidth, height: video.videoHeight, paused: video.paused };
}
"""


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    what: str,
    within: float = MEDIA_TIMEOUT,
    interval: float = 0.25,
) -> T:
    """Poll `probe` until `accept` likes its value; fail with the last value seen."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s; last value {value!r}")
        await asyncio.sleep(interval)


class ChatPage:
    """A visitor: one browser context (its own fake camera and microphone) on the page."""

    def __init__(self, context: BrowserContext, page: Page, name: str) -> None:
        self.context = context
        self.page = page
        self.name = name
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        watch_for_csp_violations(page, self.errors)
        # Printed, so pytest shows the page's own log next to a failure.
        page.on(
            "console",
            lambda m: (
                m.type in ("error", "warning") and print(f"[{name}] console.{m.type}: {m.text}")
            ),
        )

    def __repr__(self) -> str:
        return f"<ChatPage {self.name}>"

    # -- actions -------------------------------------------------------------

    async def start(self, interests: tuple[str, ...] = ()) -> None:
        """Fill in the first screen and press Start."""
        for interest in interests:
            await self.page.fill("#interest-input", interest)
            await self.page.press("#interest-input", "Enter")
        await self.page.check("#age-check")
        await self.page.click("#start-button")

    async def click(self, button_id: str) -> None:
        await self.page.click(f"#{button_id}")

    async def press_escape_twice(self) -> None:
        await self.page.keyboard.press("Escape")
        await expect(self.page.locator("#next-label")).to_have_text("Really?")
        await self.page.keyboard.press("Escape")

    async def type_slowly(self, text: str) -> None:
        await self.page.locator("#chat-input").press_sequentially(text, delay=30)

    async def send_chat(self, text: str) -> None:
        await self.page.fill("#chat-input", text)
        await self.page.press("#chat-input", "Enter")

    # -- what the person sees ------------------------------------------------

    async def expect_status(
        self, state: str, text: str | None = None, within: float = MEDIA_TIMEOUT
    ) -> None:
        """The status line is in `state` (its data-state) and, if given, says `text`."""
        status = self.page.locator("#status")
        await expect(status).to_have_attribute("data-state", state, timeout=within * 1000)
        if text is not None:
            await expect(status).to_contain_text(
                re.compile(re.escape(text), re.IGNORECASE), timeout=UI_TIMEOUT * 1000
            )

    async def expect_banner(self, pattern: str, within: float = UI_TIMEOUT) -> None:
        await expect(self.page.locator("#banner")).to_be_visible(timeout=within * 1000)
        await expect(self.page.locator("#banner-text")).to_contain_text(
            re.compile(pattern, re.IGNORECASE), timeout=within * 1000
        )

    async def expect_chat_line(self, text: str, within: float = UI_TIMEOUT) -> None:
        await expect(self.page.locator("#chat-log")).to_contain_text(text, timeout=within * 1000)

    async def expect_visible(self, selector: str, visible: bool = True) -> None:
        locator = self.page.locator(selector)
        if visible:
            await expect(locator).to_be_visible(timeout=UI_TIMEOUT * 1000)
        else:
            await expect(locator).to_be_hidden(timeout=UI_TIMEOUT * 1000)

    async def chat_log(self) -> str:
        return await self.page.inner_text("#chat-log")

    # -- media, measured by the browser itself -------------------------------

    async def inbound(self) -> dict[str, dict[str, float]]:
        stats: dict[str, dict[str, float]] = await self.page.evaluate(INBOUND_STATS)
        return stats

    async def frames_decoded(self) -> int:
        return int((await self.inbound()).get("video", {}).get("framesDecoded", 0))

    async def expect_video_flowing(self, frames: int = 15, within: float = MEDIA_TIMEOUT) -> None:
        """The partner's video decodes, advances and is painted, and the page shows it."""
        first = await self.frames_decoded()
        await eventually(
            self.frames_decoded,
            lambda n: n >= first + frames,
            what=f"{self.name}: {frames} more decoded frames after {first}",
            within=within,
        )
        presented: dict[str, Any] = await eventually(
            lambda: self.page.evaluate(PRESENTED_FRAMES, 1000),
            lambda p: p["frames"] >= 3 and p["width"] > 0 and not p["paused"],
            what=f"{self.name}: the <video> presenting frames",
            within=within,
        )
        assert presented["width"] > 0 and presented["height"] > 0
        await expect(self.page.locator("#partner")).to_have_attribute(
            "data-video", "live", timeout=within * 1000
        )

    async def expect_audio_flowing(self, within: float = MEDIA_TIMEOUT) -> None:
        """Audio packets arrive and carry sound (the fake microphone beeps)."""

        async def audio() -> dict[str, float]:
            return (await self.inbound()).get("audio", {})

        first = await audio()
        await eventually(
            audio,
            lambda a: (
                a.get("packetsReceived", 0) >= first.get("packetsReceived", 0) + 25
                and a.get("totalAudioEnergy", 0) > first.get("totalAudioEnergy", 0)
            ),
            what=f"{self.name}: audio packets with sound",
            within=within,
        )

    async def screenshot(self, path: str) -> None:
        await self.page.screenshot(path=path)

    async def close(self) -> None:
        await self.context.close()


# `await open_chat("alice")`: the page opened for one more person (see conftest.py).
OpenChat = Callable[..., Awaitable[ChatPage]]
# `await open_page("alice", server.http_url)`: the same, on the page of a server of your choice.
OpenPage = Callable[..., Awaitable[ChatPage]]
