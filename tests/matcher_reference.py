"""The matching rules as a plain scan of everyone waiting: what the indexed matchers
must decide, written the obvious way (matcher/memory.py before issue 10's indexes).

Only for tests: every decision reads the whole queue.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from matcher import EnqueueOptions, Match, MatcherSettings, MatchHandler, check_enqueue


@dataclass(slots=True, eq=False)
class _Waiter:
    user_id: str
    options: EnqueueOptions
    since: float
    skips: int = 0


class ReferenceMatcher:
    """Decides each enqueue like the Matcher docstring in matcher/base.py says, by scanning."""

    def __init__(
        self,
        on_match: MatchHandler,
        settings: MatcherSettings,
        *,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._on_match = on_match
        self._settings = settings
        self._clock = clock
        self._rng = rng
        self._waiting: dict[str, _Waiter] = {}  # insertion order is enqueue order
        self._last_partner: dict[str, str] = {}

    async def enqueue(
        self,
        user_id: str,
        interests: Sequence[str] = (),
        *,
        tags: Collection[str] = (),
        avoid: Collection[str] = (),
        pool: str = "",
    ) -> None:
        assert user_id not in self._waiting
        now = self._clock()
        seeker = _Waiter(user_id, check_enqueue(interests, tags, avoid, pool), now)
        self._waiting[user_id] = seeker
        candidates = self._candidates(seeker, now)
        if not candidates:
            return
        overdue = [w for w in candidates if w.skips >= self._settings.max_skips]
        chosen = overdue[0] if overdue else self._rng.choice(candidates)
        for w in candidates:
            if w is not chosen:
                w.skips += 1
        del self._waiting[seeker.user_id]
        del self._waiting[chosen.user_id]
        self._last_partner[seeker.user_id] = chosen.user_id
        self._last_partner[chosen.user_id] = seeker.user_id
        shared = seeker.options.interests & chosen.options.interests
        self._on_match(Match(seeker.user_id, chosen.user_id, tuple(sorted(shared))))

    async def dequeue(self, user_id: str) -> bool:
        return self._waiting.pop(user_id, None) is not None

    async def forget(self, user_id: str) -> None:
        self._waiting.pop(user_id, None)
        self._last_partner.pop(user_id, None)
        for other in [o for o, p in self._last_partner.items() if p == user_id]:
            del self._last_partner[other]

    def _candidates(self, seeker: _Waiter, now: float) -> list[_Waiter]:
        eligible = [
            w for w in self._waiting.values() if w is not seeker and self._may_meet(seeker, w, now)
        ]
        fresh = [w for w in eligible if not self._recent(seeker, w)]
        return fresh or [w for w in eligible if self._rematch_allowed(seeker, w, now)]

    def _may_meet(self, x: _Waiter, y: _Waiter, now: float) -> bool:
        if x.options.pool != y.options.pool or x.options.blocks(y.options):
            return False
        if x.options.interests & y.options.interests:
            return True
        timeout = self._settings.interest_timeout
        return all(not w.options.interests or now - w.since >= timeout for w in (x, y))

    def _recent(self, x: _Waiter, y: _Waiter) -> bool:
        return (
            self._last_partner.get(x.user_id) == y.user_id
            and self._last_partner.get(y.user_id) == x.user_id
        )

    def _rematch_allowed(self, seeker: _Waiter, partner: _Waiter, now: float) -> bool:
        wait = self._settings.rematch_after
        if now - seeker.since < wait or now - partner.since < wait:
            return False
        return not any(
            w is not seeker
            and w is not partner
            and self._may_meet(partner, w, now)
            and not self._recent(partner, w)
            for w in self._waiting.values()
        )
