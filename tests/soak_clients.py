"""Soak driver: many short visits with real aiortc clients, in a process of its own.

tests/test_soak.py runs this against a server in the test's process, so the
clients' objects are not counted with the server's. Each of `--workers`
concurrent visitors loops: connect, start, get matched, receive a few frames,
press Next `--nexts` times (each time until the next partner's frames
arrive), close. A visit that times out is counted as failed and the worker
goes on: the server must clean up after those too. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtc.client import ChatClient

STEP_TIMEOUT = 15.0


class VisitFailed(Exception):
    """The server ended this visit's media or refused a message it should have taken."""


async def visit(
    url: str, tag: int, nexts: int, frames: int, alone: Callable[[], bool], totals: dict[str, int]
) -> None:
    """One visitor from connect to close, counting partners met and Next presses in `totals`.

    A partner may press Next first, which leaves this visitor idle
    (`partner_left`): then it starts again, as the page does. The last visitor
    of the run, with nobody left to meet, just leaves.
    """
    client = ChatClient(url, tag=tag, width=160, height=120, fps=10)
    presses = 0
    try:
        await client.connect()
        await client.start()
        seen = 0
        while True:
            seen = await _until(client, seen, "matched", alone)
            matched_at = time.time()
            left = await _frames_or_left(client, seen, matched_at, frames)
            if left is not None:
                seen = left
                await client.start()
                continue
            totals["partners"] += 1
            if presses == nexts:
                return
            presses += 1
            totals["nexts"] += 1
            await client.next()
    except _Alone:
        return
    finally:
        await client.close()


class _Alone(Exception):
    """Nobody else is visiting any more."""


async def _until(client: ChatClient, seen: int, wanted: str, alone: Callable[[], bool]) -> int:
    """Wait for a `wanted` message after the first `seen`; answers the index after it.

    A `next` the server refused because the partner had just left is answered
    with a start, as the page does.
    """
    async with asyncio.timeout(STEP_TIMEOUT):
        while True:
            messages = client.messages
            while seen < len(messages):
                message = messages[seen]
                seen += 1
                if message.get("type") == wanted:
                    return seen
                if message.get("type") == "error":
                    if message.get("inReplyTo") == "next":
                        await client.start()
                    else:
                        raise VisitFailed(message)
            if alone():
                raise _Alone
            await asyncio.sleep(0.02)


async def _frames_or_left(client: ChatClient, seen: int, since: float, count: int) -> int | None:
    """None once `count` frames arrived after `since`; the index after `partner_left` if first."""
    async with asyncio.timeout(STEP_TIMEOUT):
        while True:
            for index in range(seen, len(client.messages)):
                if client.messages[index].get("type") == "partner_left":
                    return index + 1
            if sum(1 for f in client.frames if f.recv_time >= since) >= count:
                return None
            await asyncio.sleep(0.02)


async def main(args: argparse.Namespace) -> dict[str, int]:
    tags = itertools.count(1)
    totals = {"visits": 0, "failed": 0, "partners": 0, "nexts": 0}
    remaining = args.visits
    working = args.workers

    def alone() -> bool:
        return working == 1 and remaining == 0

    async def worker() -> None:
        nonlocal remaining, working
        while remaining > 0:
            remaining -= 1
            try:
                await visit(args.url, next(tags), args.nexts, args.frames, alone, totals)
                totals["visits"] += 1
            except (TimeoutError, ConnectionError, OSError, VisitFailed) as exc:
                totals["failed"] += 1
                print(f"visit failed: {exc!r}", file=sys.stderr)
        working -= 1

    await asyncio.gather(*(worker() for _ in range(args.workers)))
    return totals


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--visits", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--nexts", type=int, default=2)
    parser.add_argument("--frames", type=int, default=2)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
