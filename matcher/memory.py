"""MemoryMatcher: the matcher for a single server process, with its queue in a dict."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .base import AlreadyWaiting, Match, MatcherSettings, MatchHandler, normalize_interests

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Waiter:
    user_id: str
    interests: frozenset[str]
    since: float
    # Times this user was an eligible candidate for someone else and not chosen.
    skips: int = 0


class MemoryMatcher:
    """In-process Matcher.

    No method awaits between choosing a pair and removing both users from the queue,
    so every decision is atomic with respect to the event loop.
    """

    def __init__(
        self,
        on_match: MatchHandler,
        settings: MatcherSettings = MatcherSettings(),  # noqa: B008 - frozen, so sharing is safe
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._on_match = on_match
        self._settings = settings
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        # Insertion order is enqueue order, so iterating gives longest-waiting first.
        self._waiting: dict[str, _Waiter] = {}
        self._last_partner: dict[str, str] = {}
        # Reverse of _last_partner, so forget() can drop records pointing at a user
        # without scanning everyone.
        self._last_partner_of: dict[str, set[str]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="matcher-sweep")

    async def close(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            # wait() rather than awaiting the task: a cancel of close() itself still propagates.
            await asyncio.wait({sweeper})

    async def enqueue(self, user_id: str, interests: Sequence[str] = ()) -> None:
        if user_id in self._waiting:
            raise AlreadyWaiting(user_id)
        now = self._clock()
        self._waiting[user_id] = _Waiter(user_id, normalize_interests(interests), now)
        self._try_match(user_id, now)

    async def dequeue(self, user_id: str) -> bool:
        return self._waiting.pop(user_id, None) is not None

    async def forget(self, user_id: str) -> None:
        self._waiting.pop(user_id, None)
        for other in self._last_partner_of.pop(user_id, set()):
            del self._last_partner[other]
        self._drop_last_partner(user_id)

    async def waiting(self) -> int:
        return len(self._waiting)

    async def sweep(self) -> int:
        """Re-try every waiting user, longest-waiting first; return how many matches were made.

        The background task calls this every sweep_interval; tests call it directly.
        """
        now = self._clock()
        made = 0
        for user_id in list(self._waiting):
            if user_id in self._waiting and self._try_match(user_id, now):
                made += 1
        return made

    def remembered(self) -> int:
        """How many users the matcher holds any state about (waiting or last-partner records)."""
        return len(self._waiting.keys() | self._last_partner.keys() | self._last_partner_of.keys())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval)
            try:
                await self.sweep()
            except Exception:
                # One bad sweep must not stop the timers for everyone still waiting.
                logger.exception("matcher sweep failed; retrying next interval")

    def _try_match(self, user_id: str, now: float) -> bool:
        seeker = self._waiting[user_id]
        pool = self._candidates(seeker, now)
        if not pool:
            return False
        overdue = [w for w in pool if w.skips >= self._settings.max_skips]
        # Pool order is enqueue order, so overdue[0] is the longest-waiting overdue candidate.
        chosen = overdue[0] if overdue else self._rng.choice(pool)
        for w in pool:
            if w is not chosen:
                w.skips += 1
        del self._waiting[seeker.user_id]
        del self._waiting[chosen.user_id]
        self._set_last_partner(seeker.user_id, chosen.user_id)
        self._set_last_partner(chosen.user_id, seeker.user_id)
        match = Match(
            seeker.user_id,
            chosen.user_id,
            tuple(sorted(seeker.interests & chosen.interests)),
        )
        try:
            self._on_match(match)
        except Exception:
            # The match is already recorded; a failing handler must not undo it or break
            # the caller who merely triggered it (an enqueue or the sweep).
            logger.exception("match handler failed for %s", match)
        return True

    def _candidates(self, seeker: _Waiter, now: float) -> list[_Waiter]:
        """The users the seeker may be paired with now, in enqueue order.

        Interest preference needs no separate step: while a user's interest window runs,
        only sharing partners are compatible, and once two waiting users share an
        interest the later arrival has already been paired. So by the time anyone
        non-sharing becomes compatible, the only sharing candidates left are recent partners.
        """
        eligible = [
            w
            for w in self._waiting.values()
            if w is not seeker and self._compatible(seeker, w, now)
        ]
        fresh = [w for w in eligible if not self._recently_paired(seeker.user_id, w.user_id)]
        # A recent partner is an option only when nobody fresh is.
        return fresh or [w for w in eligible if self._rematch_allowed(seeker, w, now)]

    def _compatible(self, x: _Waiter, y: _Waiter, now: float) -> bool:
        if x.interests & y.interests:
            return True
        # Without a shared interest, everyone who named interests must be past their window.
        timeout = self._settings.interest_timeout
        return all(not w.interests or now - w.since >= timeout for w in (x, y))

    def _recently_paired(self, x: str, y: str) -> bool:
        # Mutual: each one's most recent partner is the other. Once either has
        # been with someone else since, they did not "just" leave each other.
        return self._last_partner.get(x) == y and self._last_partner.get(y) == x

    def _rematch_allowed(self, seeker: _Waiter, partner: _Waiter, now: float) -> bool:
        """A recent pair meets again only if both waited long enough and have no one else."""
        wait = self._settings.rematch_after
        if now - seeker.since < wait or now - partner.since < wait:
            return False
        # The seeker has no fresh option (the caller checked); the partner must have none either.
        return not any(
            w is not seeker
            and w is not partner
            and self._compatible(partner, w, now)
            and not self._recently_paired(partner.user_id, w.user_id)
            for w in self._waiting.values()
        )

    def _set_last_partner(self, user_id: str, partner: str) -> None:
        self._drop_last_partner(user_id)
        self._last_partner[user_id] = partner
        self._last_partner_of.setdefault(partner, set()).add(user_id)

    def _drop_last_partner(self, user_id: str) -> None:
        old = self._last_partner.pop(user_id, None)
        if old is not None:
            pointing = self._last_partner_of[old]
            pointing.discard(user_id)
            if not pointing:
                del self._last_partner_of[old]
