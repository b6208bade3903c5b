"""One headless visitor, run by tests/netns.py inside a client namespace.

    python tests/netns_visitor.py --url ws://198.51.100.10:443/ws --tag 1 --partner 2

Connects, starts, waits for `--frames` stamped frames of the partner's tag,
then prints one JSON line, ``{"ready": true}`` or ``{"ready": false, "error": ...}``,
and stays connected (so the partner gets its frames too) until its stdin closes.
It then prints a second JSON line: every signalling message it received, its
summary (rtc.client) and the ICE pair its media used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from rtc import aiortc_seam
from rtc.client import ICE_TCP_CHOICES, ChatClient


def _emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def _pair(client: ChatClient) -> dict[str, Any] | None:
    try:
        pair = aiortc_seam.selected_pair(client.pc)
    except RuntimeError:
        return None
    if pair is None:
        return None
    local, remote = pair
    return {
        "local": {"type": local.type, "address": local.host, "port": local.port},
        "remote": {"type": remote.type, "address": remote.host, "port": remote.port},
    }


async def visit(args: argparse.Namespace) -> int:
    client = ChatClient(args.url, tag=args.tag, fps=args.fps, ice_tcp=args.ice_tcp)
    ready = False
    counters: list[int] = []
    try:
        async with asyncio.timeout(args.timeout):
            await client.connect()
            await client.start()
            await client.wait_for("matched", timeout=None)
            frames = await client.wait_frames(tag=args.partner, count=args.frames, timeout=None)
            counters = [f.stamp.counter for f in frames if f.stamp is not None]
        ready = True
        _emit({"ready": True})
    except Exception as exc:
        _emit({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
    if ready:
        # Stay until the test has heard from every visitor.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    pair = _pair(client)
    await client.close()
    _emit(
        {
            "messages": client.messages,
            "summary": client.summary(),
            "counters": counters,
            "pair": pair,
        }
    )
    return 0 if ready else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tag", type=int, required=True)
    parser.add_argument(
        "--partner", type=int, help="the partner's tag; without it any video counts (a browser)"
    )
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument(
        "--ice-tcp", choices=ICE_TCP_CHOICES, default="no", help="offer active ICE-TCP candidates"
    )
    return asyncio.run(visit(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
