"""Installable: the manifest and its icons are served, the service worker registers,
keeps the shell (never the API or the WebSocket) and opens the page offline."""

from __future__ import annotations

import pytest
from chatpage import OpenChat, eventually, expect

pytestmark = pytest.mark.browser

READY = """
async () => {
  // `ready` resolves once a worker is active, which may still be "activating" (its
  // activate handler clearing old caches): wait for the end of that step.
  const reg = await navigator.serviceWorker.ready;
  const worker = reg.active;
  if (worker.state === "activating") {
    await new Promise((done) => worker.addEventListener("statechange", done, { once: true }));
  }
  return { scope: reg.scope, state: worker.state };
}
"""
CACHED = """
async () => {
  const out = [];
  for (const name of await caches.keys()) {
    for (const request of await (await caches.open(name)).keys()) out.push(new URL(request.url).pathname);
  }
  return out.sort();
}
"""


async def test_manifest_icons_and_service_worker(open_chat: OpenChat, relay_server) -> None:
    visitor = await open_chat("visitor")
    page = visitor.page

    href = await page.get_attribute("link[rel=manifest]", "href")
    assert href == "/static/manifest.webmanifest"
    response = await page.request.get(relay_server.http_url + href)
    assert response.ok and response.headers["content-type"].startswith("application/manifest+json")
    manifest = await response.json()
    assert manifest["start_url"] == "/" and manifest["display"] == "standalone"
    assert manifest["name"] and manifest["short_name"]
    # Installability: a 192 and a 512 PNG that load and have the size they claim.
    sizes = {i["sizes"] for i in manifest["icons"] if i["type"] == "image/png"}
    assert {"192x192", "512x512"} <= sizes
    for icon in manifest["icons"]:
        got = await page.request.get(relay_server.http_url + icon["src"])
        assert got.ok, icon
        if icon["type"] == "image/png":
            body = await got.body()
            width = int.from_bytes(body[16:20], "big")
            assert f"{width}x{width}" == icon["sizes"], icon

    ready = await page.evaluate(READY)
    assert ready == {"scope": relay_server.http_url + "/", "state": "activated"}
    sw = await page.request.get(relay_server.http_url + "/sw.js")
    assert sw.headers["cache-control"] == "no-cache"

    # Chromium's own installability check (what Lighthouse reports): no errors.
    cdp = await visitor.context.new_cdp_session(page)
    verdict = await cdp.send("Page.getInstallabilityErrors")
    # Playwright's contexts are incognito ones, where nothing installs: that one is ours.
    errors = [e for e in verdict["installabilityErrors"] if e["errorId"] != "in-incognito"]
    assert errors == [], verdict
    await cdp.detach()

    # The shell is kept; the ban check (/api) is not, though the page fetched it.
    cached = await eventually(
        lambda: page.evaluate(CACHED), lambda c: "/static/app.js" in c, what="the shell cached"
    )
    assert "/" in cached and "/static/style.css" in cached
    assert not [p for p in cached if p.startswith(("/api", "/ws", "/moderate", "/sw.js"))]

    # Offline, the page still opens (from the cache) and says what it is.
    await visitor.context.set_offline(True)
    await page.reload()
    await expect(page.locator("#start-button")).to_be_visible()
    await expect(page.locator("h1")).to_contain_text("Meet someone new")
    await visitor.context.set_offline(False)
