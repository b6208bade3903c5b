"""The dashboard of node one in real Chromium, with 1,000 people on two nodes.

Two `server.py --redis ...` nodes share one real redis-server and PostgreSQL. A pair of
real aiortc clients (camera and microphone) is paired across the nodes, the rest of the
crowd are idle WebSockets (the cheapest kind of visitor). The moderator pages, searches
and kicks the person held by node two from node one's dashboard, on a desktop and on a
phone; docs/dashboard-cluster.png and docs/dashboard-cluster-phone.png are copies of the
screenshots this test saves.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from chatpage import PHONE, eventually, moderator_page
from crowd import UNLIMITED, crowd
from moderators import moderators_file
from playwright.async_api import Browser

from rtc.client import ChatClient

pytestmark = pytest.mark.browser

SECRET = "dashboard-cluster-secret-0123456789"
PEOPLE = 1000
TIMEOUT = 30.0


async def test_node_ones_dashboard_pages_searches_and_kicks_across_a_thousand_people(
    nodes: Any,
    clients: list[Any],
    browser: Browser,
    tmp_path: Path,
    postgres_url: str,
    artifacts: Path,
) -> None:
    args = [
        "--moderators-file",
        str(moderators_file(tmp_path, "mia", SECRET)),
        "--db",
        postgres_url,
        "--analyzer-interval",
        "1",
        *UNLIMITED,
    ]
    one, two = (
        nodes(*args, "--recordings-dir", str(tmp_path / "r1")),
        nodes(*args, "--recordings-dir", str(tmp_path / "r2")),
    )
    # First, so they head the list (longest online first): a pair across the nodes.
    a = ChatClient(f"{one.ws_url}?clientId=browser-a-abcdef", tag=1)
    b = ChatClient(f"{two.ws_url}?clientId=browser-b-abcdef", tag=2)
    clients += [a, b]
    await asyncio.gather(a.connect(), b.connect())
    await a.start(["chess"])
    await b.start(["chess"])
    await asyncio.gather(
        a.wait_for("matched", timeout=TIMEOUT), b.wait_for("matched", timeout=TIMEOUT)
    )
    node_two = b.hello["node"]

    async with crowd(one, two, PEOPLE - 2), moderator_page(browser, SECRET) as (page, errors):
        await page.goto(one.http_url + "/moderate")
        await eventually(
            lambda: page.text_content("#summary"),
            lambda text: f"{PEOPLE} online" in (text or "") and "2 nodes" in (text or ""),
            what="everyone on both nodes counted",
            within=TIMEOUT,
        )
        assert "1–60 of 1000" in (await page.text_content("#live-range") or "")
        assert await page.locator("#sessions .card").count() == 60
        # B, on node two, is listed by node one's dashboard with the node holding them.
        card = page.locator(f'.card[data-session="{b.id}"]')
        assert await card.get_attribute("data-node") == node_two

        async def thumbnails() -> int:
            return int(
                await page.evaluate(
                    "[...document.querySelectorAll('#sessions img[data-thumb]')]"
                    ".filter(i => i.complete && i.naturalWidth > 0).length"
                )
            )

        # Both of the pair's thumbnails; B's comes from node two through the channel.
        await eventually(thumbnails, lambda n: n >= 2, what="both thumbnails", within=TIMEOUT)
        await page.evaluate("document.querySelector('#live-title').scrollIntoView()")
        await page.screenshot(path=str(artifacts / "dashboard-cluster.png"))

        # Live updates rebuild only what changed: a card stays the same element while
        # people arrive (a sessions event from node two) and the counts follow.
        await page.evaluate(
            f"document.querySelector('.card[data-session=\"{a.id}\"]').__kept = true"
        )
        late = ChatClient(two.ws_url, tag=3)
        clients.append(late)
        await late.connect_signalling()
        await eventually(
            lambda: page.text_content("#summary"),
            lambda text: f"{PEOPLE + 1} online" in (text or ""),
            what="the newcomer on node two counted",
            within=TIMEOUT,
        )
        assert await page.evaluate(
            f"document.querySelector('.card[data-session=\"{a.id}\"]').__kept === true"
        )

        # The last page, then back.
        await page.click("#live-next")
        await eventually(
            lambda: page.text_content("#live-range"),
            lambda text: (text or "").startswith("61–120 of"),
            what="the second page",
        )
        await page.click("#live-prev")

        # Search by id finds the one person, on node two, and the kick reaches them there.
        await page.fill("#live-q", b.id)
        await eventually(
            lambda: page.locator("#sessions .card").count(), lambda n: n == 1, what="one match"
        )
        assert "1–1 of 1" in (await page.text_content("#live-range") or "")
        await page.click(f'.card[data-session="{b.id}"] button[data-act=kick]')
        await page.fill("#kick-message", "not here, please")
        await page.click("#kick-submit")
        error = await b.wait_for(
            "error", timeout=TIMEOUT, predicate=lambda m: m["code"] == "kicked"
        )
        assert error["message"] == "not here, please"
        assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "disconnect"
        await eventually(
            lambda: page.text_content("#live-range"),
            lambda text: "nobody matches" in (text or ""),
            what="the kicked person leaving the list",
        )

        # Search by interest and filter by node, on a phone.
        await page.set_viewport_size(PHONE)
        await page.fill("#live-q", "")
        await page.select_option("#live-node", node_two)
        await eventually(
            lambda: page.text_content("#live-range"),
            lambda text: f"of {PEOPLE // 2}" in (text or ""),
            what="node two's people only",
        )
        await page.select_option("#live-node", "")
        await eventually(
            lambda: page.locator("#sessions .card").count(), lambda n: n == 60, what="a full page"
        )
        await page.evaluate("document.querySelector('#live-title').scrollIntoView()")
        await page.screenshot(path=str(artifacts / "dashboard-cluster-phone.png"))
        assert not errors, errors
