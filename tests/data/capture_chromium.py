"""Capture a real Chromium offer and its trickled candidates into tests/data.

Run once (not part of the suite): `.venv/bin/python tests/data/capture_chromium.py`.
Debian's Chromium, launched with the flags tests/browser uses, on a localhost
page (getUserMedia needs a secure context), with its fake camera and microphone.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from playwright.async_api import async_playwright

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "browser"))
from conftest import BASE_FLAGS, CHROMIUM, GRANT_MEDIA  # noqa: E402

CAPTURE = """
async () => {
  const stream = await navigator.mediaDevices.getUserMedia({audio: true, video: true});
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTrack(track, stream);
  const candidates = [];
  const gathered = new Promise((resolve) => {
    pc.onicecandidate = (e) => (e.candidate ? candidates.push(e.candidate.toJSON()) : resolve());
  });
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  await Promise.race([gathered, new Promise((resolve) => setTimeout(resolve, 5000))]);
  return {offer: offer.sdp, candidates};
}
"""


async def main() -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*BASE_FLAGS, GRANT_MEDIA]
        )
        page = await browser.new_page()
        await page.route(
            "http://localhost/",
            lambda route: route.fulfill(body="<html></html>", content_type="text/html"),
        )
        await page.goto("http://localhost/")
        got = await page.evaluate(CAPTURE)
        await browser.close()
    # As the browser sent it: CRLF line ends, no candidates (they are trickled).
    (HERE / "chromium_offer.sdp").write_bytes(got["offer"].encode())
    (HERE / "chromium_candidates.json").write_text(json.dumps(got["candidates"], indent=1) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
