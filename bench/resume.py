"""How long the partner's video pauses when a visitor's connection is cut and comes back:
`python -m bench.resume [--rounds N] [--fps F] [--cluster]`.

A real server and two headless clients (stamped video at F fps) on loopback. Each round
measures, in the stream each side receives, the largest gap (stamped frames that never
arrived, and milliseconds between two arrivals) around three events:

- `websocket`: A's WebSocket is cut (no closing handshake) and resumed; media is untouched.
- `media`: A replaces its media connection (a new offer, as the page does after an ICE
  failure): make-before-break, the old connection carries media until the new one is up.
- `network_change`: both at once: A's WebSocket and its media connection die (the old
  connection is closed first), then A resumes and offers a new connection.

`baseline` is the largest gap in a quiet window of the same length, for comparison.

With `--cluster` there are two nodes on one redis-server, both clients start on the
first, and one more event is measured:

- `moved`: a network change whose resume reaches the other node (a balancer without
  affinity): the session moves there and A's new media connection is made there. A
  goes back and forth, so the pair is a cross-node one after odd rounds and a local one
  after even rounds. Every event but `baseline` is reported by the kind of pair it
  leaves, "(across nodes)" or "(same node)".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.redis_server import RedisServer
from bench.target import RelayServer
from rtc.client import ChatClient

# Frames to wait for after each event before the gap is read (--settle).
SETTLE_FRAMES = 30
CLUSTER_SECRET = "bench-cluster-secret-0123456789"


async def _gap(
    a: ChatClient, b: ChatClient, event: Callable[[], Awaitable[None]], settle: int
) -> dict[str, float]:
    at = time.time()
    await event()
    await b.wait_frames(tag=a.tag, count=settle, after=time.time(), timeout=30)
    await a.wait_frames(tag=b.tag, count=settle, after=time.time(), timeout=30)
    b_frames, b_ms = b.largest_gap(a.tag, at)
    a_frames, a_ms = a.largest_gap(b.tag, at)
    return {"frames": max(a_frames, b_frames), "ms": max(a_ms, b_ms)}


async def measure(
    rounds: int, fps: int, settle: int = SETTLE_FRAMES, *, cluster: bool = False
) -> dict[str, Any]:
    redis = RedisServer() if cluster else None
    args: tuple[str, ...] = ("--resume-grace", "20")
    if redis is not None:
        args += ("--redis", redis.url, "--cluster-secret", CLUSTER_SECRET)
    with tempfile.TemporaryDirectory() as tmp:
        servers = [
            RelayServer("passthrough", Path(tmp) / f"server{i}.log", args)
            for i in range(2 if cluster else 1)
        ]
        try:
            for server in servers:
                await server.start()
            async with (
                ChatClient(servers[0].ws_url, tag=1, fps=fps) as a,
                ChatClient(servers[0].ws_url, tag=2, fps=fps) as b,
            ):
                await a.start()
                await b.start()
                await a.wait_frames(tag=2, count=settle, timeout=30)
                await b.wait_frames(tag=1, count=settle, timeout=30)

                async def quiet() -> None:
                    await asyncio.sleep(settle / fps)

                async def websocket() -> None:
                    await a.drop_socket()
                    await a.resume()

                async def media() -> None:
                    await a.negotiate(keep_old=True)

                async def network_change() -> None:
                    await a.drop_socket()
                    await a.resume()
                    await a.negotiate()

                async def moved() -> None:
                    await a.drop_socket()
                    a.url = servers[1].ws_url if a.url == servers[0].ws_url else servers[0].ws_url
                    await a.resume()
                    await a.negotiate()

                events = {
                    "baseline": quiet,
                    "websocket": websocket,
                    "media": media,
                    "network_change": network_change,
                }
                if cluster:
                    events["moved"] = moved
                gaps: dict[str, list[dict[str, float]]] = {}
                for _ in range(rounds):
                    for name, event in events.items():
                        gap = await _gap(a, b, event, settle)
                        if cluster and name != "baseline":
                            # B stays on the first node: is the pair (now) across nodes?
                            across = a.url != servers[0].ws_url
                            name += " (across nodes)" if across else " (same node)"
                        gaps.setdefault(name, []).append(gap)
                partner_left = [m for m in a.messages + b.messages if m["type"] == "partner_left"]
        finally:
            for server in servers:
                await server.stop()
            if redis is not None:
                redis.stop()
    return {
        "rounds": rounds,
        "fps": fps,
        "cluster": cluster,
        "partner_left": len(partner_left),
        **{
            name: {
                "frames_p50": statistics.median(g["frames"] for g in values),
                "frames_max": max(g["frames"] for g in values),
                "ms_p50": round(statistics.median(g["ms"] for g in values)),
                "ms_max": round(max(g["ms"] for g in values)),
            }
            for name, values in gaps.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument(
        "--settle", type=int, default=SETTLE_FRAMES, help="frames to wait for after each event"
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="two nodes on one redis-server; adds `moved`, a resume on the other node",
    )
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.rounds, args.fps, args.settle, cluster=args.cluster))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
