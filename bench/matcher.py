"""`python -m bench.matcher`: how many matches per second the matcher sustains.

Signalling-only: the matchers are driven directly (``RedisMatcher`` and
``MemoryMatcher`` from matcher/), not through WebSockets. On a 2-core machine
thousands of WebSocket clients would measure aiohttp and the clients' own
Python long before the matcher; what a node adds around a decision (one
``enqueue`` per `start`/`next`, one ``on_match`` or feed entry per match) is
exactly what this drives.

A run has two populations, spread over ``--nodes`` matcher instances in
``--processes`` processes (one Redis client and one sweep per node, as a
server node has):

- ``--waiting`` users who wait and are never matched: each named one interest
  of its own, and the interest window is longer than the run. They are the
  lobby's backlog, which decisions used to read in full. They are enqueued
  through the matchers themselves (the same ``enqueue`` a server makes), spread
  over the nodes, before the window; their node's sweep keeps them alive, and
  ``waiting_at_end`` shows they were still waiting when it closed.
- ``--active`` users with no interests who churn: each one goes back into the
  queue the moment it is matched (as if it pressed `next`), so the matcher
  runs flat out. Matches per second is counted over the window, and time to
  match (from the ``enqueue`` call to the match reaching the user's node,
  through ``on_match`` or the node's feed) per active user.

``--matcher memory`` runs the same load through one MemoryMatcher (one node,
one process): the single-process baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.analysis import percentile
from bench.meter import Meter, cpu_percent, machine
from bench.redis_server import RedisServer
from matcher.base import Match, MatcherSettings
from matcher.memory import MemoryMatcher
from matcher.redis import RedisMatcher

KEY_PREFIX = "bench"
# Longer than any run: the backlog never becomes compatible with the active users.
INTEREST_WINDOW = 1e6
WARMUP = 2.0
# Target of issue 10.
TARGET_MATCHES_PER_S = 1000.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.matcher",
        description="Matches per second the matcher sustains with a backlog of waiting users.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--matcher", choices=("redis", "memory"), default="redis")
    p.add_argument("--waiting", type=int, default=5000, help="backlog users who stay waiting")
    p.add_argument("--active", type=int, default=200, help="users who churn (re-enqueue)")
    p.add_argument("--nodes", type=int, default=4, help="matcher instances (redis)")
    p.add_argument("--processes", type=int, default=2, help="processes the nodes run in (redis)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window")
    p.add_argument("--json", type=Path, metavar="PATH", help="write the result here")
    p.add_argument(
        "--max-other-cpu",
        type=float,
        default=-1.0,
        help="before the window, wait until other processes use at most this %% of a core "
        "(-1: do not wait)",
    )
    p.add_argument(
        "--quiet-wait", type=float, default=300.0, help="longest wait for a quiet machine, seconds"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.matcher == "memory":
        args.nodes = args.processes = 1
    if args.processes > args.nodes:
        p.error("--processes must not exceed --nodes")
    return args


class Node:
    """One matcher instance and its users, as one server node holds them."""

    def __init__(self, name: str, run: Run) -> None:
        self.name = name
        self.run = run
        self.matcher: RedisMatcher | MemoryMatcher | None = None

    def on_match(self, match: Match) -> None:
        self.run.matched(self, match, decided_here=True)


class Run:
    """The churn of one process: its nodes, its active users, what it measured."""

    def __init__(self, window: tuple[float, float]) -> None:
        self.window = window
        self.owner: dict[str, Node] = {}
        self.enqueued_at: dict[str, float] = {}
        self.match_times: list[float] = []
        self.ttm: list[float] = []
        self.enqueue_s: list[float] = []
        self.errors: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    def in_window(self, t: float) -> bool:
        return self.window[0] <= t <= self.window[1]

    def matched(self, node: Node, match: Match, *, decided_here: bool) -> None:
        now = time.time()
        if decided_here:
            self.match_times.append(now)
        for user in (match.a, match.b):
            if self.owner.get(user) is not node:
                continue  # the other node learns it from its own feed
            since = self.enqueued_at.pop(user, None)
            if since is not None and self.in_window(now):
                self.ttm.append(now - since)
            self.requeue(user)

    def requeue(self, user: str) -> None:
        if self.stopping:
            return
        task = asyncio.create_task(self.enqueue(user))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def enqueue(self, user: str) -> None:
        matcher = self.owner[user].matcher
        assert matcher is not None
        started = time.time()
        self.enqueued_at[user] = started
        try:
            await matcher.enqueue(user)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        if self.in_window(started):
            self.enqueue_s.append(time.time() - started)


async def _feed(node: Node, matcher: RedisMatcher) -> None:
    async for match in matcher.remote_matches():
        node.run.matched(node, match, decided_here=False)


async def _enqueue_backlog(nodes: list[Node], count: int) -> None:
    """The backlog, enqueued through the nodes' own matchers, each node's share in turn."""

    async def fill(k: int, node: Node) -> None:
        assert node.matcher is not None
        for i in range(k, count, len(nodes)):
            user = f"backlog-{node.name}-{i}"
            await node.matcher.enqueue(user, [f"solo-{user}"])

    await asyncio.gather(*(fill(k, node) for k, node in enumerate(nodes)))


async def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One process's nodes: load the backlog, say ready, churn through the window, report."""
    settings = MatcherSettings(interest_timeout=INTEREST_WINDOW)
    run = Run((0.0, 0.0))
    nodes = [Node(name, run) for name in spec["nodes"]]
    feeds: list[asyncio.Task[None]] = []
    for node in nodes:
        if spec["matcher"] == "redis":
            node.matcher = RedisMatcher(
                node.on_match,
                settings,
                redis_url=spec["redis_url"],
                node_id=node.name,
                key_prefix=KEY_PREFIX,
            )
        else:
            node.matcher = MemoryMatcher(node.on_match, settings)
    loading = time.perf_counter()
    await _enqueue_backlog(nodes, spec["waiting"])
    backlog_s = round(time.perf_counter() - loading, 2)
    # One explicit sweep per node before the churn: what the background sweep costs.
    sweep_ms: list[float | str] = []
    for node in nodes:
        assert node.matcher is not None
        started = time.perf_counter()
        try:
            await node.matcher.sweep()
        except Exception as exc:
            # A backlog too big for one script within the client's read timeout.
            took = round(time.perf_counter() - started, 1)
            sweep_ms.append(f"failed after {took} s: {type(exc).__name__}: {exc}")
            continue
        sweep_ms.append(round((time.perf_counter() - started) * 1000, 1))
    for node in nodes:
        assert node.matcher is not None
        await node.matcher.start()
        if isinstance(node.matcher, RedisMatcher):
            feeds.append(asyncio.create_task(_feed(node, node.matcher)))
    for i, user in enumerate(spec["active"]):
        run.owner[user] = nodes[i % len(nodes)]

    print(json.dumps({"ready": True}), flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    start_at = float(line)
    run.window = (start_at + WARMUP, start_at + WARMUP + spec["seconds"])
    await asyncio.sleep(max(0.0, start_at - time.time()))
    for user in spec["active"]:
        run.requeue(user)
    await asyncio.sleep(max(0.0, run.window[1] - time.time()))
    run.stopping = True
    assert nodes[0].matcher is not None
    waiting = await nodes[0].matcher.waiting()
    # Bounded: a feed reader blocked in XREAD, or a decision stuck behind a slow
    # script, must not keep the result from the parent.
    pending = [*feeds, *run.tasks]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=10)
    for node in nodes:
        assert node.matcher is not None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await node.matcher.close()
    return {
        "matches": sum(1 for t in run.match_times if run.in_window(t)),
        "ttm": run.ttm,
        "enqueue_s": run.enqueue_s,
        "errors": run.errors[:5],
        "error_count": len(run.errors),
        "sweep_ms": sweep_ms,
        "backlog_enqueue_s": backlog_s,
        "waiting_at_end": waiting,
    }


async def _quiet(meter: Meter, max_other_cpu: float, longest: float) -> float:
    """Wait until other people's processes leave the CPU (a shared machine); seconds waited."""
    if max_other_cpu < 0:
        return 0.0
    started = time.monotonic()
    while time.monotonic() - started < longest:
        before = meter.read()
        await asyncio.sleep(2.0)
        other = cpu_percent(before, meter.read())["other"]
        if other <= max_other_cpu:
            break
        print(f"other processes use {other:.0f}% of a core; waiting", file=sys.stderr)
    return round(time.monotonic() - started, 1)


def _ms(values: list[float], q: float) -> float | None:
    p = percentile(values, q)
    return None if p is None else round(p * 1000, 2)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    redis = RedisServer() if args.matcher == "redis" else None
    procs: list[asyncio.subprocess.Process] = []
    try:
        names = [f"node{i}" for i in range(args.nodes)]
        active = [f"active-{i}" for i in range(args.active)]
        for p in range(args.processes):
            own = names[p :: args.processes]
            spec = {
                "matcher": args.matcher,
                "redis_url": redis.url if redis else None,
                "nodes": own,
                # Backlog split evenly over nodes; each process writes its nodes' share.
                "waiting": args.waiting * len(own) // args.nodes,
                "active": active[p :: args.processes],
                "seconds": args.seconds,
            }
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.matcher",
                    "--child",
                    json.dumps(spec),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    limit=1 << 28,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            if not line:
                raise RuntimeError("a matcher process exited before it was ready")
        pids = [p.pid for p in procs]
        groups = {"matchers": pids} | ({"redis": [redis.pid]} if redis else {})
        meter = Meter(groups)
        waited = await _quiet(meter, args.max_other_cpu, args.quiet_wait)
        start_at = time.time() + 0.5
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at!r}\n".encode())
            await proc.stdin.drain()
        await asyncio.sleep(max(0.0, start_at + WARMUP - time.time()))
        before = meter.read()
        await asyncio.sleep(args.seconds)
        cpu = cpu_percent(before, meter.read())
        results = []
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 600)
            if not line:
                raise RuntimeError("a matcher process exited without a result")
            results.append(json.loads(line))
            await proc.wait()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if redis is not None:
            redis.stop()
    matches = sum(r["matches"] for r in results)
    ttm = [t for r in results for t in r["ttm"]]
    enq = [t for r in results for t in r["enqueue_s"]]
    rate = round(matches / args.seconds, 1)
    return {
        "matcher": args.matcher,
        "waiting": args.waiting,
        "active": args.active,
        "nodes": args.nodes,
        "processes": args.processes,
        "seconds": args.seconds,
        "matches": matches,
        "matches_per_s": rate,
        "time_to_match_ms_p50": _ms(ttm, 50),
        "time_to_match_ms_p95": _ms(ttm, 95),
        "time_to_match_ms_max": _ms(ttm, 100),
        "enqueue_ms_p50": _ms(enq, 50),
        "enqueue_ms_p95": _ms(enq, 95),
        "sweep_ms": [ms for r in results for ms in r["sweep_ms"]],
        # Seconds each process took to enqueue its share of the backlog (before the window).
        "backlog_enqueue_s": [r["backlog_enqueue_s"] for r in results],
        "waiting_at_end": results[0]["waiting_at_end"],
        "errors": sum(r["error_count"] for r in results),
        "error_examples": [e for r in results for e in r["errors"]][:5],
        "cpu_pct": cpu,
        "waited_for_quiet_s": waited,
        "target": {
            f"matches_per_s >= {TARGET_MATCHES_PER_S:.0f}": {
                "value": rate,
                "met": rate >= TARGET_MATCHES_PER_S,
            }
        },
        "command": "python -m bench.matcher " + shlex.join(sys.argv[1:]),
        "machine": machine(),
    }


def describe(r: dict[str, Any]) -> str:
    return (
        f"{r['matcher']}: {r['nodes']} nodes in {r['processes']} processes, "
        f"{r['waiting']} waiting + {r['active']} churning: {r['matches_per_s']} matches/s; "
        f"time to match p50 {r['time_to_match_ms_p50']} ms, p95 {r['time_to_match_ms_p95']} ms; "
        f"enqueue p50 {r['enqueue_ms_p50']} ms, p95 {r['enqueue_ms_p95']} ms; "
        f"one sweep {r['sweep_ms']} ms; errors {r['errors']}; cpu {r['cpu_pct']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(asyncio.run(child(json.loads(args.child)))), flush=True)
        return 0
    result = asyncio.run(amain(args))
    print(describe(result), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
