"""One real Chromium visitor, run by a test inside a client namespace (tests/netns.py).

    python tests/netns_browser.py --url http://198.51.100.10:443/

Opens the page, presses Start, waits until the partner's video decodes and
plays, then prints one JSON line: ``{"ready": true, "pair": {...}}`` (the ICE
pair Chromium selected: protocol, candidate types, remote port) or
``{"ready": false, "error": ...}``. It stays until its stdin closes, so the
partner keeps receiving, then prints how many frames it decoded in all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "browser"))

from chatpage import MEDIA_TIMEOUT, RECORD_PEER_CONNECTIONS, ChatPage
from conftest import BASE_FLAGS, CHROMIUM, GRANT_MEDIA
from playwright.async_api import async_playwright

SELECTED_PAIR = """
async () => {
  const pc = window.__relayTest.peerConnections.at(-1);
  if (!pc) return null;
  const stats = new Map();
  (await pc.getStats()).forEach((s) => stats.set(s.id, s));
  for (const s of stats.values()) {
    if (s.type !== "transport" || !s.selectedCandidatePairId) continue;
    const pair = stats.get(s.selectedCandidatePairId);
    const local = stats.get(pair.localCandidateId);
    const remote = stats.get(pair.remoteCandidateId);
    return {
      protocol: local.protocol,
      local: { type: local.candidateType, tcpType: local.tcpType ?? null },
      remote: { type: remote.candidateType, address: remote.address, port: remote.port },
    };
  }
  return null;
}
"""


def _emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


async def visit(url: str, seconds: float) -> int:
    origin = url.rstrip("/")
    flags = [
        *BASE_FLAGS,
        GRANT_MEDIA,
        # getUserMedia needs a secure origin; this test net has no certificates.
        f"--unsafely-treat-insecure-origin-as-secure={origin}",
    ]
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=flags, timeout=60_000
        )
        try:
            context = await browser.new_context()
            await context.add_init_script(RECORD_PEER_CONNECTIONS)
            page = await context.new_page()
            chat = ChatPage(context, page, "browser")
            try:
                async with asyncio.timeout(seconds):
                    await page.goto(origin + "/")
                    await chat.start()
                    await chat.expect_video_flowing(within=min(seconds, MEDIA_TIMEOUT))
                    pair = await page.evaluate(SELECTED_PAIR)
                _emit({"ready": True, "pair": pair, "errors": chat.errors})
            except Exception as exc:
                _emit({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
                return 1
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            _emit({"frames_decoded": await chat.frames_decoded()})
        finally:
            await browser.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    return asyncio.run(visit(args.url, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
