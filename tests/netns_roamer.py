"""A headless visitor whose network changes mid-call, run inside a client namespace.

    python tests/netns_roamer.py --url ws://198.51.100.10:443/ws --tag 1 --partner 2

Connects, starts, waits for the partner's stamped frames and prints
``{"ready": true}``. When a line arrives on stdin (the test changed its network,
as a phone's OS tells apps), it does what the page does: a new WebSocket that
resumes the session, then a new media connection from the new address. It prints
``{"resumed": state, "gap_frames": N, "gap_ms": M, ...}`` once the partner's video
flows again, and its messages and summary when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from rtc.client import ChatClient


def _emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


async def _stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def roam(args: argparse.Namespace) -> int:
    client = ChatClient(args.url, tag=args.tag, fps=args.fps)
    try:
        async with asyncio.timeout(args.timeout):
            await client.connect()
            await client.start()
            await client.wait_for("matched", timeout=None)
            await client.wait_frames(tag=args.partner, count=10, timeout=None)
        _emit({"ready": True})
        await _stdin_line()
        changed_at = time.time()
        async with asyncio.timeout(args.timeout):
            # The old socket is dead (its NAT mapping is gone): cut it here, resume anew.
            with contextlib.suppress(OSError, RuntimeError):
                await client.drop_socket()
            resumed = await client.resume()
            await client.negotiate()
            await client.wait_frames(tag=args.partner, count=15, after=time.time(), timeout=None)
        frames, ms = client.largest_gap(args.partner, changed_at)
        _emit(
            {
                "resumed": resumed.get("state"),
                "seconds_to_video": round(time.time() - changed_at, 3),
                "gap_frames": frames,
                "gap_ms": round(ms),
            }
        )
    except Exception as exc:
        _emit({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
    await _stdin_line()
    summary = client.summary()
    await client.close()
    _emit({"messages": client.messages, "summary": summary})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tag", type=int, required=True)
    parser.add_argument("--partner", type=int, required=True)
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--timeout", type=float, default=30.0)
    return asyncio.run(roam(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
