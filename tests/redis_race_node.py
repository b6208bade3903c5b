"""One node of the multi-process race test: many users start, stop, skip and leave at
random against a shared RedisMatcher, and every outcome the node sees is logged.

Run by tests/test_matcher_redis.py as `python redis_race_node.py URL PREFIX NODE SEED
SECONDS USERS OUT`; writes a JSON log to OUT for the test to check against the audit.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from matcher import AlreadyWaiting, Match, MatcherSettings  # noqa: E402
from matcher.redis import RedisMatcher  # noqa: E402

SETTINGS = MatcherSettings(
    interest_timeout=0.05, rematch_after=0.05, max_skips=2, sweep_interval=0.02
)
TOPICS = ("music", "chess", "art", "go", "film", "food", "")


class Node:
    def __init__(self, url: str, prefix: str, node: str, seed: int, users: int) -> None:
        self.node = node
        self.rng = random.Random(seed)
        self.users = users
        self.state: dict[str, str] = {}  # idle | waiting | leaving | pending | paired
        self.arrived: dict[str, asyncio.Event] = {}
        self.gone: set[str] = set()
        self.log: list[dict[str, object]] = []
        self.violations: list[str] = []
        self.matcher = RedisMatcher(
            lambda m: self.seen(m, "local"),
            SETTINGS,
            redis_url=url,
            node_id=node,
            key_prefix=prefix,
            rng=random.Random(seed),
            audit_maxlen=10**7,
        )

    def mine(self, user_id: str) -> bool:
        return user_id.startswith(self.node + ".")

    def seen(self, match: Match, how: str) -> None:
        for u, other in ((match.a, match.b), (match.b, match.a)):
            if not self.mine(u):
                continue
            self.log.append({"op": "seen", "user": u, "other": other, "how": how})
            if u in self.gone:
                continue  # may have raced the forget; the audit order decides
            if self.state.get(u) not in ("waiting", "leaving", "pending"):
                self.violations.append(f"{u} matched while {self.state.get(u)} ({how})")
            self.state[u] = "paired"
            self.arrived[u].set()

    async def feed(self) -> None:
        async for match in self.matcher.remote_matches():
            self.seen(match, "remote")

    async def enqueue(self, u: str) -> None:
        self.state[u] = "waiting"
        self.arrived[u] = asyncio.Event()
        interests = self.rng.sample(TOPICS, self.rng.randint(0, 2))
        if self.rng.random() < 0.7:
            # A topic nobody shares: only the timers (so mostly the sweeps) pair this user.
            interests.append(u)
        try:
            await self.matcher.enqueue(u, interests)
        except AlreadyWaiting:
            self.violations.append(f"{u} AlreadyWaiting though not waiting")
        self.log.append({"op": "enqueue", "user": u})

    async def leave_queue(self, u: str) -> None:
        self.state[u] = "leaving"
        was_waiting = await self.matcher.dequeue(u)
        self.log.append({"op": "dequeue", "user": u, "result": was_waiting})
        if was_waiting:
            if self.state[u] != "leaving":
                self.violations.append(f"{u} matched although dequeue said waiting")
            self.state[u] = "idle"
        elif self.state[u] == "leaving":
            # Matched elsewhere just before: the notice is on its way through the feed.
            self.state[u] = "pending"
            try:
                await asyncio.wait_for(self.arrived[u].wait(), timeout=5)
            except TimeoutError:
                self.violations.append(f"{u}: dequeue said matched, no match arrived")

    async def user(self, slot: int, deadline: float) -> None:
        visit = 0
        u = f"{self.node}.s{slot}.v{visit}"
        self.state[u] = "idle"
        while time.monotonic() < deadline:
            await asyncio.sleep(self.rng.uniform(0, 0.05))
            roll = self.rng.random()
            state = self.state[u]
            if state == "idle":
                await self.enqueue(u)
            elif state == "waiting" and roll < 0.15:
                await self.leave_queue(u)
            elif (state == "waiting" and roll < 0.2) or (state == "paired" and roll < 0.1):
                self.state[u] = "leaving"
                await self.matcher.forget(u)
                self.log.append({"op": "forget", "user": u})
                self.gone.add(u)
                visit += 1
                u = f"{self.node}.s{slot}.v{visit}"
                self.state[u] = "idle"
            elif state == "paired" and roll < 0.5:
                await self.enqueue(u)  # "next"
            elif state == "paired" and roll < 0.6:
                self.state[u] = "idle"
        if u not in self.gone:
            self.state[u] = "leaving"
            await self.matcher.forget(u)
            self.log.append({"op": "forget", "user": u})
            self.gone.add(u)

    async def run(self, seconds: float) -> dict[str, object]:
        await self.matcher.start()
        feed = asyncio.create_task(self.feed())
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(self.user(slot, deadline) for slot in range(self.users)))
        await asyncio.sleep(1.0)  # late notices of matches that raced the last forgets
        feed.cancel()
        await asyncio.wait({feed})
        await self.matcher.close()
        return {
            "node": self.node,
            "log": self.log,
            "violations": self.violations,
            "matches_made": self.matcher.matches_made,
            "matches_cross_node": self.matcher.matches_cross_node,
        }


# A node still busy this long after its run should have ended is stuck: it says
# where every task is waiting (on stderr, which the test shows) instead of hanging.
STUCK_AFTER = 30.0


async def run_or_explain(node: Node, seconds: float) -> dict[str, object]:
    try:
        return await asyncio.wait_for(node.run(seconds), seconds + STUCK_AFTER)
    except TimeoutError:
        for task in asyncio.all_tasks():
            task.print_stack(file=sys.stderr)
        raise SystemExit(f"{node.node}: stuck {STUCK_AFTER:.0f} s after its run") from None


def main() -> None:
    url, prefix, node, seed, seconds, users, out = sys.argv[1:]
    result = asyncio.run(
        run_or_explain(Node(url, prefix, node, int(seed), int(users)), float(seconds))
    )
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
