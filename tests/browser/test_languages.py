"""The page speaks the browser's language, switches on request, lays Arabic out
right to left, and translates the server's error codes."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from chatpage import PHONE, OpenChat, expect

pytestmark = pytest.mark.browser

SECRET = "languages-test-secret-0123456789ab"
LANGUAGES = ("en", "es", "pt", "de", "tr", "ar")

# Every catalog has exactly English's keys, and every key the HTML names exists.
CATALOGS = """
async (codes) => {
  const english = (await import("/static/locales/en.js")).default;
  const want = Object.keys(english).sort().join("|");
  const out = {};
  for (const code of codes) {
    const keys = Object.keys((await import(`/static/locales/${code}.js`)).default).sort();
    out[code] = keys.join("|") === want ? "ok" : keys.filter((k) => !(k in english)).concat(
      Object.keys(english).filter((k) => !keys.includes(k)));
  }
  const named = [...document.querySelectorAll("[data-i18n]")].map((e) => e.dataset.i18n);
  for (const e of document.querySelectorAll("[data-i18n-attr]")) {
    for (const pair of e.dataset.i18nAttr.split(";")) named.push(pair.split(":")[1].trim());
  }
  out.unknown = named.filter((k) => !(k in english));
  return out;
}
"""


@pytest.fixture
def relay_server_args(tmp_path: Path) -> list[str]:
    moderators = tmp_path / "moderators"
    moderators.write_text(f"mia:{SECRET}\n")
    moderators.chmod(0o600)
    return ["--moderators-file", str(moderators), "--db", str(tmp_path / "moderation.sqlite3")]


async def test_follows_the_browser_and_every_language_is_complete(open_chat: OpenChat) -> None:
    visitor = await open_chat("visitor", locale="es-ES")
    page = visitor.page
    await expect(page.locator("html")).to_have_attribute("lang", "es")
    await expect(page.locator("h1")).to_have_text("Conoce a alguien nuevo, cara a cara.")
    await expect(page.locator("#start-button")).to_contain_text("Empezar")
    await expect(page.locator("#interest-input")).to_have_attribute(
        "placeholder", "música, viajes, ajedrez…"
    )
    await expect(page.locator("#lang-select")).to_have_value("es")
    assert await page.locator("#lang-select option").all_inner_texts() == [
        "English",
        "Español",
        "Português",
        "Deutsch",
        "Türkçe",
        "العربية",
    ]
    found = await page.evaluate(CATALOGS, list(LANGUAGES))
    assert found == {**dict.fromkeys(LANGUAGES, "ok"), "unknown": []}

    # The state texts come from the same catalog.
    await visitor.start()
    await visitor.expect_status("waiting", "Buscando a alguien con quien hablar")
    await expect(page.locator("#next-label")).to_have_text("Siguiente")


async def test_switching_to_arabic_lays_the_page_out_right_to_left(
    open_chat: OpenChat, artifacts: Path
) -> None:
    alice = await open_chat("alice", viewport=PHONE, has_touch=True, is_mobile=True)
    bob = await open_chat("bob")
    await alice.page.select_option("#lang-select", "ar")
    await expect(alice.page.locator("html")).to_have_attribute("dir", "rtl")
    await expect(alice.page.locator("#start-button")).to_contain_text("ابدأ")
    await alice.screenshot(str(artifacts / "rtl-intro-390x844.png"))
    await alice.page.set_viewport_size({"width": 1280, "height": 800})
    await alice.screenshot(str(artifacts / "rtl-intro-1280x800.png"))

    await asyncio.gather(alice.start(), bob.start())
    await asyncio.gather(alice.expect_status("matched"), bob.expect_status("matched"))
    await bob.send_chat("hello")
    await alice.send_chat("مرحبا")
    await alice.expect_chat_line("hello")
    await alice.expect_video_flowing(frames=5)
    for size in ({"width": 1280, "height": 800}, PHONE):
        await alice.page.set_viewport_size(size)
        # Mirrored: the chat left of the video on desktop, the self-view at the start
        # (left) corner, the status pill at the right, my own line on the left.
        tile = await alice.page.locator("#partner").bounding_box()
        me = await alice.page.locator("#self").bounding_box()
        mine = await alice.page.locator(".msg-mine").bounding_box()
        theirs = await alice.page.locator(".msg-theirs").bounding_box()
        assert tile and me and mine and theirs
        assert me["x"] < tile["x"] + tile["width"] / 2, "self-view not on the left"
        assert mine["x"] < theirs["x"], "own messages not on the left"
        if size["width"] > 900:
            chat = await alice.page.locator(".chat").bounding_box()
            assert chat and chat["x"] < tile["x"], "chat not left of the video"
        await alice.screenshot(str(artifacts / f"rtl-matched-{size['width']}x{size['height']}.png"))


async def test_a_server_error_code_is_told_in_the_page_language(
    open_chat: OpenChat, relay_server: Any
) -> None:
    visitor = await open_chat("visitor", locale="tr-TR")
    # The page makes its client id when it first needs it: wait for it on a slow machine.
    await visitor.page.wait_for_function("localStorage.getItem('relay.clientId') !== null")
    identity = await visitor.page.evaluate("localStorage.getItem('relay.clientId')")
    token = base64.b64encode(f"mia:{SECRET}".encode()).decode()
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as http,
        http.post(
            f"{relay_server.http_url}/api/moderate/bans",
            json={"identity": identity, "reason": "spam", "seconds": "permanent"},
        ) as r,
    ):
        assert r.status == 200, await r.text()
    await visitor.page.reload()
    # `banned` in Turkish, with the moderator's reason as they wrote it.
    await visitor.expect_banner("Roulette Relay'den yasaklandın. Neden: spam")
    await expect(visitor.page.locator("#start-note")).to_have_text(
        "Yasak sürdüğü sürece sohbet başlatamazsın."
    )
