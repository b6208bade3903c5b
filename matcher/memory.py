"""MemoryMatcher: the matcher for a single server process, with its queue in a dict."""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .base import (
    AlreadyWaiting,
    EnqueueOptions,
    Match,
    MatcherSettings,
    MatchHandler,
    check_enqueue,
)

logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class _Waiter:
    user_id: str
    options: EnqueueOptions
    since: float
    # Enqueue order across everyone: lower waited longer.
    seq: int
    # Times this user was an eligible candidate for someone else and not chosen.
    skips: int = 0
    # In its pool's open index (no interests, or interest window over).
    open: bool = False

    @property
    def interests(self) -> frozenset[str]:
        return self.options.interests


# A timer entry: (when, seq of the wait it belongs to, user). A user who left or started
# a new wait leaves stale entries behind; they are skipped when popped (seq differs).
_Timer = tuple[float, int, str]


class MemoryMatcher:
    """In-process Matcher.

    No method awaits between choosing a pair and removing both users from the queue,
    so every decision is atomic with respect to the event loop. Waiting users are
    indexed by (pool, interest) and by pool's open set, so a decision reads only its
    eligible candidates, and the sweep re-tries only users whose timer expired
    (see the Matcher docstring in matcher/base.py).
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
        self._waiting: dict[str, _Waiter] = {}
        self._seq = 0
        # (pool, interest) -> waiting users who named it; pool -> open waiting users.
        self._by_interest: dict[tuple[str, str], dict[str, _Waiter]] = {}
        self._open: dict[str, dict[str, _Waiter]] = {}
        # Interest windows still running (moved to _open when they end), and the times
        # at which the sweep must re-try someone (a window ended, a rematch wait ended).
        self._windows: list[_Timer] = []
        self._due: list[_Timer] = []
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

    async def enqueue(
        self,
        user_id: str,
        interests: Sequence[str] = (),
        *,
        tags: Collection[str] = (),
        avoid: Collection[str] = (),
        pool: str = "",
    ) -> None:
        options = check_enqueue(interests, tags, avoid, pool)
        if user_id in self._waiting:
            raise AlreadyWaiting(user_id)
        now = self._clock()
        self._promote(now)
        self._seq += 1
        w = _Waiter(user_id, options, now, self._seq)
        self._waiting[user_id] = w
        for i in w.interests:
            self._by_interest.setdefault((w.options.pool, i), {})[user_id] = w
        if self._is_open(w, now):
            self._set_open(w)
        else:
            end = _at_least(now, self._settings.interest_timeout)
            heapq.heappush(self._windows, (end, w.seq, user_id))
            heapq.heappush(self._due, (end, w.seq, user_id))
        last = self._last_partner.get(user_id)
        if last is not None and last in self._waiting and self._recently_paired(user_id, last):
            # The newer of the two waits longest before a rematch is allowed.
            heapq.heappush(
                self._due, (_at_least(now, self._settings.rematch_after), w.seq, user_id)
            )
        self._try_match(w, now)

    async def dequeue(self, user_id: str) -> bool:
        w = self._waiting.get(user_id)
        if w is None:
            return False
        self._remove(w)
        return True

    async def forget(self, user_id: str) -> None:
        await self.dequeue(user_id)
        for other in self._last_partner_of.pop(user_id, set()):
            del self._last_partner[other]
        self._drop_last_partner(user_id)

    async def waiting(self) -> int:
        return len(self._waiting)

    async def sweep(self) -> int:
        """Re-try the users whose timer expired, longest-waiting first; return matches made.

        The background task calls this every sweep_interval; tests call it directly.
        """
        now = self._clock()
        self._promote(now)
        due: dict[str, _Waiter] = {}
        while self._due and self._due[0][0] <= now:
            _, seq, user_id = heapq.heappop(self._due)
            w = self._waiting.get(user_id)
            if w is not None and w.seq == seq:
                due[user_id] = w
        made = 0
        again: list[_Waiter] = []
        for w in sorted(due.values(), key=_by_seq):
            if self._waiting.get(w.user_id) is not w:
                continue  # paired earlier in this sweep
            matched, retry = self._try_match(w, now)
            made += matched
            if retry:
                again.append(w)
        for w in again:
            heapq.heappush(self._due, (now, w.seq, w.user_id))
        return made

    def remembered(self) -> int:
        """How many users the matcher holds any state about (waiting, indexed, timers,
        last-partner records)."""
        users = self._waiting.keys() | self._last_partner.keys() | self._last_partner_of.keys()
        for index in (*self._by_interest.values(), *self._open.values()):
            users |= index.keys()
        users |= {user_id for _, _, user_id in (*self._windows, *self._due)}
        return len(users)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval)
            try:
                await self.sweep()
            except Exception:
                # One bad sweep must not stop the timers for everyone still waiting.
                logger.exception("matcher sweep failed; retrying next interval")

    def _promote(self, now: float) -> None:
        """Move users whose interest window has ended into their pool's open index."""
        while self._windows and self._windows[0][0] <= now:
            _, seq, user_id = heapq.heappop(self._windows)
            w = self._waiting.get(user_id)
            if w is not None and w.seq == seq and not w.open:
                self._set_open(w)

    def _set_open(self, w: _Waiter) -> None:
        w.open = True
        self._open.setdefault(w.options.pool, {})[w.user_id] = w

    def _remove(self, w: _Waiter) -> None:
        del self._waiting[w.user_id]
        pool = w.options.pool
        for i in w.interests:
            _discard(self._by_interest, (pool, i), w.user_id)
        if w.open:
            _discard(self._open, pool, w.user_id)
        if not self._waiting:
            self._windows.clear()
            self._due.clear()
        elif len(self._windows) + len(self._due) > 4 * len(self._waiting) + 64:
            # Stale timers of users who left early; bounded by the live ones.
            self._windows = self._live(self._windows)
            self._due = self._live(self._due)

    def _live(self, timers: list[_Timer]) -> list[_Timer]:
        kept = [t for t in timers if (w := self._waiting.get(t[2])) is not None and w.seq == t[1]]
        heapq.heapify(kept)
        return kept

    def _try_match(self, seeker: _Waiter, now: float) -> tuple[bool, bool]:
        """Pair the seeker if the rules allow; (matched, re-try at the next sweep)."""
        pool, retry = self._pool(seeker, now)
        if not pool:
            return False, retry
        overdue = [w for w in pool if w.skips >= self._settings.max_skips]
        # Pool order is enqueue order, so overdue[0] is the longest-waiting overdue candidate.
        chosen = overdue[0] if overdue else self._rng.choice(pool)
        for w in pool:
            if w is not chosen:
                w.skips += 1
        self._remove(seeker)
        self._remove(chosen)
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
        return True, False

    def _pool(self, seeker: _Waiter, now: float) -> tuple[list[_Waiter], bool]:
        """The users the seeker may be paired with now, in enqueue order, and whether a
        rematch was held back only because the partner has someone else (so the sweep
        must look again: that someone may be paired elsewhere meanwhile).

        Interest preference needs no separate step: while a user's interest window runs,
        only sharing partners are compatible, and once two waiting users share an
        interest the later arrival has already been paired. So by the time anyone
        non-sharing becomes compatible, the only sharing candidates left are recent partners.
        """
        eligible = self._eligible(seeker, now)
        fresh = [w for w in eligible if not self._recently_paired(seeker.user_id, w.user_id)]
        if fresh or not eligible:
            return fresh, False
        # A recent partner is an option only when nobody fresh is.
        (partner,) = eligible  # a mutual last partner is unique
        wait = self._settings.rematch_after
        if now - seeker.since < wait or now - partner.since < wait:
            return [], False  # the newer one's due timer re-tries them
        # The seeker has no fresh option; the partner must have none either (the only
        # user recently paired with the partner is the seeker, so excluding them suffices).
        if self._eligible(partner, now, besides=seeker):
            return [], True
        return [partner], False

    def _eligible(self, x: _Waiter, now: float, besides: _Waiter | None = None) -> list[_Waiter]:
        """Everyone x may meet now, recent partners included, in enqueue order."""
        pool = x.options.pool
        found: dict[str, _Waiter] = {}
        for i in x.interests:
            found.update(self._by_interest.get((pool, i), {}))
        if self._is_open(x, now):
            found.update(self._open.get(pool, {}))
        return sorted(
            (
                w
                for w in found.values()
                if w is not x
                and w is not besides
                and self._compatible(x, w, now)
                and not x.options.blocks(w.options)
            ),
            key=_by_seq,
        )

    def _is_open(self, w: _Waiter, now: float) -> bool:
        return not w.interests or now - w.since >= self._settings.interest_timeout

    def _compatible(self, x: _Waiter, y: _Waiter, now: float) -> bool:
        if x.interests & y.interests:
            return True
        # Without a shared interest, everyone who named interests must be past their window.
        return self._is_open(x, now) and self._is_open(y, now)

    def _recently_paired(self, x: str, y: str) -> bool:
        # Mutual: each one's most recent partner is the other. Once either has
        # been with someone else since, they did not "just" leave each other.
        return self._last_partner.get(x) == y and self._last_partner.get(y) == x

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


_K = TypeVar("_K")


def _by_seq(w: _Waiter) -> int:
    return w.seq


def _discard(index: dict[_K, dict[str, _Waiter]], key: _K, user_id: str) -> None:
    members = index.get(key)
    if members is not None:
        members.pop(user_id, None)
        if not members:
            del index[key]


def _at_least(since: float, wait: float) -> float:
    """The first time t with t - since >= wait, as the rules compute it in floats."""
    t = since + wait
    while t - since < wait:
        t = math.nextafter(t, math.inf)
    return t
