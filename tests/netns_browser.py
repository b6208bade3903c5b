"""Real Chromium on the real page, run by tests/netns.py inside a client namespace.

    python tests/netns_browser.py --url http://198.51.100.10:443/

Presses Start, waits until the page has decoded `--frames` frames of the
partner's video (getStats), prints ``{"ready": ...}``, stays until stdin
closes, then prints every signalling message the page received and the ICE
candidate pair Chromium chose. Same two-line contract as tests/netns_visitor.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "browser"))

from chatpage import INBOUND_STATS, RECORD_PEER_CONNECTIONS, ChatPage, eventually
from conftest import BASE_FLAGS, CHROMIUM, GRANT_MEDIA
from playwright.async_api import async_playwright

SELECTED_PAIR = """
async () => {
  const pc = window.__relayTest.peerConnections.at(-1);
  if (!pc) return null;
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) return null;
  const side = (c) => ({ type: c.candidateType, address: c.address, port: c.port,
                         protocol: c.protocol, relayProtocol: c.relayProtocol ?? null });
  return { local: side(stats.get(pair.localCandidateId)),
           remote: side(stats.get(pair.remoteCandidateId)) };
}
"""


def _emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


async def visit(args: argparse.Namespace) -> int:
    origin = args.url.rstrip("/")
    flags = [
        *BASE_FLAGS,
        GRANT_MEDIA,
        # The test serves plain HTTP on an address; getUserMedia needs a secure origin.
        f"--unsafely-treat-insecure-origin-as-secure={origin}",
    ]
    received: list[Any] = []
    ready = False
    pair = None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=flags, timeout=60_000
        )
        try:
            context = await browser.new_context()
            await context.add_init_script(RECORD_PEER_CONNECTIONS)
            page = await context.new_page()
            page.on(
                "websocket",
                lambda ws: ws.on("framereceived", lambda payload: received.append(payload)),
            )
            chat = ChatPage(context, page, "browser")
            try:
                await page.goto(origin + "/")
                await chat.start()
                await eventually(
                    lambda: page.evaluate(INBOUND_STATS),
                    lambda s: s.get("video", {}).get("framesDecoded", 0) >= args.frames,
                    what="partner video decoded",
                    within=args.timeout,
                )
                ready = True
                _emit({"ready": True})
            except Exception as exc:
                _emit({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
            if ready:
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            pair = await page.evaluate(SELECTED_PAIR)
            stats = await page.evaluate(INBOUND_STATS)
        finally:
            await browser.close()
    messages = [json.loads(p) for p in received if isinstance(p, str)]
    _emit({"messages": messages, "pair": pair, "stats": stats, "errors": chat.errors})
    return 0 if ready else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the page, http://host:port/")
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=30.0)
    return asyncio.run(visit(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
