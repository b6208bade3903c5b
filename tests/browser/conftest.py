"""Real Chromium, driven by Playwright, against the real server on loopback.

Debian's Chromium (`apt-get install chromium`) is used as installed: browsers
cannot be downloaded here, so `playwright install` is never run. Without
Chromium or the playwright package these tests fail, saying what is missing:
a skipped browser test would hide a broken page, and `make test` installs both.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from chatpage import (
    AUTO_SEARCH_OFF,
    DESKTOP,
    RECORD_PEER_CONNECTIONS,
    REPORT_CSP_VIOLATIONS,
    UI_TIMEOUT,
    ChatPage,
    OpenChat,
    OpenPage,
)

if TYPE_CHECKING:
    from playwright.async_api import Browser, Playwright

CHROMIUM = os.environ.get("RELAY_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"

# NOTES.md section 1: flags that work for Debian's Chromium on this kind of machine.
BASE_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A fake camera (test pattern) and microphone (beeps) instead of real devices.
    "--use-fake-device-for-media-stream",
]
# Grants camera and microphone without a prompt. It also keeps host candidates
# as plain addresses instead of mDNS names aioice cannot resolve, so
# WebRtcHideLocalIpsWithMdns need not be disabled.
GRANT_MEDIA = "--use-fake-ui-for-media-stream"


def _missing_browser() -> str | None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (make test installs it)"
    if shutil.which(CHROMIUM) is None:
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium; make test does)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: drives a real Chromium through Playwright")


@pytest.fixture
async def playwright() -> AsyncIterator[Playwright]:
    problem = _missing_browser()
    if problem is not None:
        pytest.fail(f"browser tests cannot run: {problem}", pytrace=False)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        yield p


async def _launch(playwright: Playwright, *, grant_media: bool) -> Browser:
    flags = [*BASE_FLAGS, GRANT_MEDIA] if grant_media else BASE_FLAGS
    return await playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=flags, timeout=60_000
    )


@pytest.fixture
async def browser(playwright: Playwright) -> AsyncIterator[Browser]:
    """Chromium that grants camera and microphone, like a person who says yes."""
    b = await _launch(playwright, grant_media=True)
    yield b
    await b.close()


@pytest.fixture
async def browser_without_media(playwright: Playwright) -> AsyncIterator[Browser]:
    """Chromium that never gets camera or microphone permission: the prompt is refused."""
    b = await _launch(playwright, grant_media=False)
    yield b
    await b.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[OpenPage]:
    """Opens a server's page for one more person; `await open_page("alice", url)`.

    Each person is a separate browser context (separate storage, devices and
    permissions). At the end every context is closed, and the test fails if a
    page threw an uncaught error.
    """
    opened: list[ChatPage] = []

    async def open_(
        name: str,
        url: str,
        *,
        viewport: dict[str, int] = DESKTOP,
        on: Browser | None = None,
        auto_search: bool = False,
        **context_options: Any,
    ) -> ChatPage:
        # context_options: Playwright's, e.g. has_touch=True, is_mobile=True for a phone.
        context = await (on or browser).new_context(viewport=viewport, **context_options)
        if not auto_search:
            # The page searches again by itself when a partner leaves (its default);
            # most tests follow one partner leaving, so their visitors turned that off.
            await context.add_init_script(AUTO_SEARCH_OFF)
        await context.add_init_script(RECORD_PEER_CONNECTIONS)
        await context.add_init_script(REPORT_CSP_VIOLATIONS)
        page = await context.new_page()
        page.set_default_timeout(UI_TIMEOUT * 1000)
        chat = ChatPage(context, page, name)
        opened.append(chat)
        await page.goto(url.rstrip("/") + "/")
        return chat

    yield open_
    # Uncaught errors, and any Content Security Policy violation.
    errors = {c.name: c.errors for c in opened if c.errors}
    for chat in opened:
        try:
            await chat.close()
        except Exception as exc:  # the browser may already be gone
            print(f"closing {chat.name}: {exc}")
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def open_chat(relay_server: Any, open_page: OpenPage) -> OpenChat:
    """Opens the `relay_server` fixture's page for one more person; `await open_chat("alice")`.

    The server is asked for first, so the pages close before it stops.
    """

    async def open_(name: str, **options: Any) -> ChatPage:
        return await open_page(name, relay_server.http_url, **options)

    return open_
