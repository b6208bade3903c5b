"""axe-core checks the real page in each state: no serious or critical violations.

axe-core comes from npm, pinned in tests/browser/axe/package.json and installed
by `make test`. It is run through the DevTools protocol (page.evaluate), so the
page's Content-Security-Policy stays as strict as it is for visitors.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from chatpage import PHONE, ChatPage, OpenChat, expect

pytestmark = pytest.mark.browser

AXE = Path(__file__).parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
RUN_AXE = """
async () => {
  const result = await axe.run(document, {
    runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] },
  });
  return result.violations.map((v) => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")),
  }));
}
"""


async def serious_violations(person: ChatPage) -> list[dict[str, Any]]:
    if not AXE.exists():
        pytest.fail(f"axe-core is not installed at {AXE} (make test installs it)", pytrace=False)
    if not await person.page.evaluate("typeof window.axe === 'object'"):
        await person.page.evaluate(AXE.read_text())
    found: list[dict[str, Any]] = await person.page.evaluate(RUN_AXE)
    return [v for v in found if v["impact"] in ("serious", "critical")]


async def check(person: ChatPage, state: str) -> None:
    bad = await serious_violations(person)
    assert not bad, f"{person.name} {state}: {json.dumps(bad, indent=1)}"


@pytest.mark.parametrize("viewport", [None, PHONE], ids=["desktop", "phone"])
async def test_no_serious_violations_in_any_state(
    open_chat: OpenChat, viewport: dict[str, int] | None, artifacts: Path
) -> None:
    options = {"viewport": viewport, "has_touch": True, "is_mobile": True} if viewport else {}
    alice = await open_chat("alice", **options)
    bob = await open_chat("bob")
    await check(alice, "first screen")
    await alice.click("start-button")  # without the age box: the banner
    await alice.expect_banner("18 or older")
    await check(alice, "first screen with the age banner")

    await alice.start(("chess",))
    await alice.expect_status("waiting")
    await check(alice, "waiting")

    await bob.start(("chess",))
    await asyncio.gather(alice.expect_status("matched"), bob.expect_status("matched"))
    await bob.send_chat("hello there")
    await alice.expect_chat_line("hello there")
    await check(alice, "matched")

    await alice.click("report-button")
    await expect(alice.page.locator("#report-dialog")).to_be_visible()
    await check(alice, "report dialog")
    await alice.page.keyboard.press("Escape")

    await alice.click("devices-button")
    await expect(alice.page.locator("#devices-dialog")).to_be_visible()
    await check(alice, "settings")
    await alice.screenshot(str(artifacts / f"settings-{'phone' if viewport else 'desktop'}.png"))
    await alice.page.keyboard.press("Escape")

    await bob.click("stop-button")
    await alice.expect_status("left")
    await check(alice, "partner left")

    await alice.click("next-button")
    await alice.expect_status("waiting")
    await alice.click("stop-button")
    await alice.expect_status("stopped")
    await check(alice, "stopped, camera released")
