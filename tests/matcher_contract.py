"""The behaviour every Matcher implementation must show, as a reusable test class.

A test module subclasses MatcherContract and provides a `make_matcher` fixture that
builds the implementation under test with a clock the test can move forward, so
timers are exercised without sleeping.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from matcher_reference import ReferenceMatcher

from matcher import (
    AlreadyWaiting,
    EnqueueOptions,
    Match,
    Matcher,
    MatcherError,
    MatcherSettings,
    MatchHandler,
    check_enqueue,
    normalize_interests,
)
from matcher.base import (
    MAX_AVOID,
    MAX_INTEREST_CHARS,
    MAX_INTERESTS,
    MAX_POOL_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
)


@dataclass
class Subject:
    """A matcher under test and the knobs a test turns instead of waiting."""

    matcher: Matcher
    # Moves the matcher's clock forward by this many seconds.
    advance: Callable[[float], None]
    # Runs one sweep now, as the background task would.
    sweep: Callable[[], Awaitable[object]]


class MakeMatcher(Protocol):
    async def __call__(
        self,
        on_match: MatchHandler,
        settings: MatcherSettings = ...,
        *,
        seed: int = ...,
    ) -> Subject: ...


@dataclass
class Recorder:
    """An on_match handler that keeps every match."""

    matches: list[Match] = field(default_factory=list)

    def __call__(self, match: Match) -> None:
        self.matches.append(match)

    def pairs(self) -> list[frozenset[str]]:
        return [frozenset((m.a, m.b)) for m in self.matches]


def pair(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


SETTINGS = MatcherSettings(interest_timeout=5.0, rematch_after=5.0, max_skips=3)
# Interest windows that never run out, for tests about who is chosen, not when.
NO_FALLBACK = MatcherSettings(interest_timeout=1e9, rematch_after=1e9, max_skips=3)


class MatcherContract:
    """Subclass this and provide a `make_matcher` fixture returning a MakeMatcher."""

    async def assert_holds_nothing(self, subject: Subject) -> None:
        """After everyone is forgotten the matcher holds nothing; implementations may check more."""
        assert await subject.matcher.waiting() == 0

    # --- pairing basics -------------------------------------------------------------

    async def test_two_waiting_users_are_paired(self, make_matcher: MakeMatcher) -> None:
        rec = Recorder()
        m = (await make_matcher(rec, SETTINGS)).matcher

        await m.enqueue("alice")
        assert rec.matches == []
        assert await m.waiting() == 1

        await m.enqueue("bob")
        assert rec.pairs() == [pair("alice", "bob")]
        assert rec.matches[0].shared_interests == ()
        assert await m.waiting() == 0

    async def test_nobody_is_matched_with_themselves(self, make_matcher: MakeMatcher) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)

        await s.matcher.enqueue("alice", ["music"])
        s.advance(1000)
        await s.sweep()
        with pytest.raises(AlreadyWaiting):
            await s.matcher.enqueue("alice")
        await s.sweep()

        assert rec.matches == []
        assert await s.matcher.waiting() == 1

    async def test_enqueue_while_waiting_raises(self, make_matcher: MakeMatcher) -> None:
        m = (await make_matcher(Recorder(), SETTINGS)).matcher
        await m.enqueue("alice")
        with pytest.raises(MatcherError):
            await m.enqueue("alice", ["music"])
        assert await m.waiting() == 1

    async def test_matched_user_can_enqueue_again(self, make_matcher: MakeMatcher) -> None:
        # The matcher does not re-queue anyone, and does not consider them waiting either.
        rec = Recorder()
        m = (await make_matcher(rec, SETTINGS)).matcher
        await m.enqueue("alice")
        await m.enqueue("bob")
        assert await m.dequeue("alice") is False
        await m.enqueue("alice")
        assert await m.waiting() == 1

    async def test_dequeued_user_is_not_matched(self, make_matcher: MakeMatcher) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)

        await s.matcher.enqueue("alice")
        assert await s.matcher.dequeue("alice") is True
        assert await s.matcher.dequeue("alice") is False
        await s.matcher.enqueue("bob")
        s.advance(1000)
        await s.sweep()

        assert rec.matches == []
        assert await s.matcher.waiting() == 1

    async def test_forgotten_user_is_not_matched(self, make_matcher: MakeMatcher) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)

        await s.matcher.enqueue("alice")
        await s.matcher.forget("alice")
        await s.matcher.forget("never-seen")
        await s.matcher.enqueue("bob")
        s.advance(1000)
        await s.sweep()

        assert rec.matches == []
        assert await s.matcher.waiting() == 1

    async def test_failing_handler_does_not_undo_the_match(self, make_matcher: MakeMatcher) -> None:
        seen: list[Match] = []

        def explode(match: Match) -> None:
            seen.append(match)
            raise RuntimeError("handler bug")

        m = (await make_matcher(explode, SETTINGS)).matcher
        await m.enqueue("alice")
        await m.enqueue("bob")  # must not raise: the match is made and recorded
        await m.enqueue("carol")
        await m.enqueue("dave")

        assert [frozenset((x.a, x.b)) for x in seen] == [
            pair("alice", "bob"),
            pair("carol", "dave"),
        ]
        assert await m.waiting() == 0

    # --- interests ------------------------------------------------------------------

    @pytest.mark.parametrize("seed", range(10))
    async def test_shared_interest_is_preferred(self, make_matcher: MakeMatcher, seed: int) -> None:
        rec = Recorder()
        m = (await make_matcher(rec, SETTINGS, seed=seed)).matcher

        await m.enqueue("alice", ["music"])
        await m.enqueue("bob")  # alice is still in her interest window
        assert rec.matches == []
        await m.enqueue("carol", ["music"])

        assert rec.pairs() == [pair("alice", "carol")]
        assert rec.matches[0].shared_interests == ("music",)
        assert await m.waiting() == 1  # bob

    async def test_anyone_will_do_after_interest_timeout(self, make_matcher: MakeMatcher) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)

        await s.matcher.enqueue("alice", ["music"])
        await s.matcher.enqueue("bob")
        s.advance(SETTINGS.interest_timeout * 0.9)
        await s.sweep()
        assert rec.matches == []

        s.advance(SETTINGS.interest_timeout * 0.2)
        await s.sweep()
        assert rec.pairs() == [pair("alice", "bob")]
        assert rec.matches[0].shared_interests == ()

    async def test_each_user_keeps_their_own_interest_window(
        self, make_matcher: MakeMatcher
    ) -> None:
        # Alice's window has run out, but Bob just arrived asking for chess: he gets his
        # own interest_timeout to find a chess partner before anyone will do for him too.
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)

        await s.matcher.enqueue("alice", ["music"])
        s.advance(SETTINGS.interest_timeout)
        await s.sweep()
        await s.matcher.enqueue("bob", ["chess"])
        assert rec.matches == []

        s.advance(SETTINGS.interest_timeout)
        await s.sweep()
        assert rec.pairs() == [pair("alice", "bob")]

    async def test_shared_interests_are_normalized(self, make_matcher: MakeMatcher) -> None:
        rec = Recorder()
        m = (await make_matcher(rec, SETTINGS)).matcher

        await m.enqueue("alice", ["  Music ", "ART", "art", "", "   ", "Go"])
        await m.enqueue("bob", ["music", "Art  ", "chess"])

        assert rec.pairs() == [pair("alice", "bob")]
        assert rec.matches[0].shared_interests == ("art", "music")

    async def test_interests_must_not_be_a_bare_string(self, make_matcher: MakeMatcher) -> None:
        m = (await make_matcher(Recorder(), SETTINGS)).matcher
        with pytest.raises(TypeError):
            await m.enqueue("alice", "music")
        assert await m.waiting() == 0

    # --- recent partners ------------------------------------------------------------

    async def _pair_then_requeue(self, s: Subject, rec: Recorder) -> None:
        await s.matcher.enqueue("alice")
        await s.matcher.enqueue("bob")
        assert rec.pairs() == [pair("alice", "bob")]
        # Both press "next" and queue again at once.
        await s.matcher.enqueue("alice")
        await s.matcher.enqueue("bob")
        assert len(rec.matches) == 1

    async def test_recent_partners_wait_for_someone_else(self, make_matcher: MakeMatcher) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)
        await self._pair_then_requeue(s, rec)

        # Carol asks for chess, so nobody can take her until her window runs out...
        await s.matcher.enqueue("carol", ["chess"])
        assert len(rec.matches) == 1
        # ...which is also when alice and bob would be allowed to meet again.
        s.advance(max(SETTINGS.interest_timeout, SETTINGS.rematch_after))
        await s.sweep()

        assert len(rec.matches) == 2
        assert rec.pairs()[1] != pair("alice", "bob")
        assert "carol" in rec.pairs()[1]
        assert await s.matcher.waiting() == 1

    @pytest.mark.parametrize("seed", range(10))
    async def test_newcomer_takes_one_of_recent_partners(
        self, make_matcher: MakeMatcher, seed: int
    ) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS, seed=seed)
        await self._pair_then_requeue(s, rec)
        s.advance(SETTINGS.rematch_after)

        await s.matcher.enqueue("carol")
        await s.sweep()

        assert len(rec.matches) == 2
        assert "carol" in rec.pairs()[1]
        assert await s.matcher.waiting() == 1

    async def test_once_one_has_moved_on_they_are_not_recent(
        self, make_matcher: MakeMatcher
    ) -> None:
        # alice left bob for carol; later alice and bob both look again. alice's
        # last partner is carol, so alice and bob did not just leave each other.
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)
        await s.matcher.enqueue("alice")
        await s.matcher.enqueue("bob")
        await s.matcher.enqueue("carol")
        await s.matcher.enqueue("alice")
        assert rec.pairs() == [pair("alice", "bob"), pair("alice", "carol")]
        await s.matcher.enqueue("bob")
        await s.matcher.enqueue("alice")
        assert rec.pairs()[2] == pair("alice", "bob"), "no waiting: only the mutual last pair waits"

    async def test_recent_partners_meet_again_when_alone(self, make_matcher: MakeMatcher) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)
        await self._pair_then_requeue(s, rec)

        s.advance(SETTINGS.rematch_after * 0.9)
        await s.sweep()
        assert len(rec.matches) == 1

        s.advance(SETTINGS.rematch_after * 0.2)
        await s.sweep()
        assert rec.pairs() == [pair("alice", "bob")] * 2

    async def test_rematch_needs_both_to_have_waited(self, make_matcher: MakeMatcher) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)
        await s.matcher.enqueue("alice")
        await s.matcher.enqueue("bob")

        await s.matcher.enqueue("alice")
        s.advance(SETTINGS.rematch_after)
        await s.matcher.enqueue("bob")
        await s.sweep()
        assert len(rec.matches) == 1

        s.advance(SETTINGS.rematch_after)
        await s.sweep()
        assert rec.pairs() == [pair("alice", "bob")] * 2

    async def test_forget_drops_recent_partner(self, make_matcher: MakeMatcher) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)
        await s.matcher.enqueue("alice")
        await s.matcher.enqueue("bob")

        await s.matcher.forget("alice")
        await s.matcher.enqueue("alice")
        await s.matcher.enqueue("bob")

        assert rec.pairs() == [pair("alice", "bob")] * 2

    # --- choice: random, but fair ---------------------------------------------------

    async def test_partner_is_chosen_at_random(self, make_matcher: MakeMatcher) -> None:
        chosen: set[str] = set()
        for seed in range(40):
            rec = Recorder()
            m = (await make_matcher(rec, NO_FALLBACK, seed=seed)).matcher
            # Disjoint interests keep the two candidates from pairing with each other.
            await m.enqueue("alice", ["music"])
            await m.enqueue("bob", ["chess"])
            await m.enqueue("carol", ["music", "chess"])
            assert len(rec.matches) == 1
            (partner,) = rec.pairs()[0] - {"carol"}
            chosen.add(partner)
        assert chosen == {"alice", "bob"}

    @pytest.mark.parametrize("seed", range(10))
    async def test_nobody_is_skipped_more_than_max_skips(
        self, make_matcher: MakeMatcher, seed: int
    ) -> None:
        # Each round a newcomer joins the candidate left over from the round before, and a
        # seeker sharing an interest with both picks one. Candidates never pair with each
        # other (disjoint interests, endless windows). Picked purely at random, the
        # left-over would be passed over four rounds running within a few dozen rounds.
        rec = Recorder()
        m = (await make_matcher(rec, NO_FALLBACK, seed=seed)).matcher
        await m.enqueue("c0", ["topic0"])
        skips = {"c0": 0}
        newcomer_chosen = leftover_chosen = 0

        for r in range(1, 200):
            await m.enqueue(f"c{r}", [f"topic{r}"])
            skips[f"c{r}"] = 0
            await m.enqueue(f"s{r}", [f"topic{c[1:]}" for c in skips])
            (chosen,) = rec.pairs()[-1] - {f"s{r}"}
            if chosen == f"c{r}":
                newcomer_chosen += 1
            else:
                leftover_chosen += 1
            del skips[chosen]
            for c in skips:
                skips[c] += 1
            assert max(skips.values()) <= NO_FALLBACK.max_skips, (r, skips)

        assert len(rec.matches) == 199
        # Fair, and still random: neither "always the newcomer" nor plain first-come-first-served.
        assert newcomer_chosen > 20
        assert leftover_chosen > 20

    @pytest.mark.parametrize("seed", range(10))
    async def test_overdue_candidates_go_first_longest_waiting_first(
        self, make_matcher: MakeMatcher, seed: int
    ) -> None:
        # A busier queue: several candidates can reach max_skips together, and then the
        # one who has waited longest must be chosen.
        rec = Recorder()
        m = (await make_matcher(rec, NO_FALLBACK, seed=seed)).matcher
        arrivals = random.Random(seed)
        skips: dict[str, int] = {}  # insertion order is enqueue order
        next_id = 0
        overdue_rounds = 0

        for r in range(300):
            for _ in range(arrivals.choice((0, 1, 1, 1, 2)) if len(skips) > 1 else 2):
                await m.enqueue(f"c{next_id}", [f"topic{next_id}"])
                skips[f"c{next_id}"] = 0
                next_id += 1
            overdue = [c for c, n in skips.items() if n >= NO_FALLBACK.max_skips]

            await m.enqueue(f"s{r}", [f"topic{c[1:]}" for c in skips])
            (chosen,) = rec.pairs()[-1] - {f"s{r}"}
            if overdue:
                overdue_rounds += 1
                assert chosen == overdue[0], (skips, chosen)
            del skips[chosen]
            for c in skips:
                skips[c] += 1

        assert overdue_rounds > 10  # the rule was really exercised

    # --- tags, avoid and pools ---------------------------------------------------------

    @pytest.mark.parametrize("direction", ["a avoids b", "b avoids a"])
    async def test_avoided_users_are_never_paired(
        self, make_matcher: MakeMatcher, direction: str
    ) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)
        a_avoid, b_avoid = (["browser-b"], []) if direction == "a avoids b" else ([], ["s-a"])

        await s.matcher.enqueue("alice", tags=["s-a", "browser-a"], avoid=a_avoid)
        await s.matcher.enqueue("bob", tags=["s-b", "browser-b"], avoid=b_avoid)
        for _ in range(3):
            s.advance(1e6)  # however long they wait
            await s.sweep()
        assert rec.matches == []
        assert await s.matcher.waiting() == 2

        # Each of them is still paired with anyone else.
        await s.matcher.enqueue("carol", tags=["s-c"])
        await s.matcher.enqueue("dave")
        assert sorted(map(sorted, rec.pairs())) in (
            [["alice", "carol"], ["bob", "dave"]],
            [["alice", "dave"], ["bob", "carol"]],
        )

    async def test_avoid_holds_against_a_shared_interest_and_a_recent_partner(
        self, make_matcher: MakeMatcher
    ) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)
        await s.matcher.enqueue("alice", tags=["a"])
        await s.matcher.enqueue("bob", tags=["b"])
        assert rec.pairs() == [pair("alice", "bob")]
        # Bob reports alice: from now on his avoid names her.
        await s.matcher.enqueue("alice", ["music"], tags=["a"])
        await s.matcher.enqueue("bob", ["music"], tags=["b"], avoid=["a"])
        s.advance(1e6)
        await s.sweep()
        assert len(rec.matches) == 1

    async def test_users_are_paired_only_within_their_pool(self, make_matcher: MakeMatcher) -> None:
        rec = Recorder()
        s = await make_matcher(rec, SETTINGS)
        await s.matcher.enqueue("alice", ["music"], pool="text")
        await s.matcher.enqueue("bob", ["music"])
        s.advance(1e6)
        await s.sweep()
        assert rec.matches == []

        await s.matcher.enqueue("carol", ["music"], pool="text")
        assert rec.pairs() == [pair("alice", "carol")]
        await s.matcher.enqueue("dave", pool="text")
        await s.matcher.enqueue("erin")
        assert rec.pairs()[1] == pair("bob", "erin")
        assert await s.matcher.waiting() == 1  # dave, alone in "text"

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, ValueError),
            ({"avoid": [f"t{i}" for i in range(MAX_AVOID + 1)]}, ValueError),
            ({"tags": ["x" * (MAX_TAG_CHARS + 1)]}, ValueError),
            ({"avoid": [""]}, ValueError),
            ({"tags": "session-1"}, TypeError),
            ({"avoid": [7]}, TypeError),
            ({"pool": "p" * (MAX_POOL_CHARS + 1)}, ValueError),
            ({"interests": [f"i{i}" for i in range(MAX_INTERESTS + 1)]}, ValueError),
            ({"interests": ["i" * (MAX_INTEREST_CHARS + 1)]}, ValueError),
        ],
    )
    async def test_enqueue_bounds_what_one_user_may_carry(
        self, make_matcher: MakeMatcher, kwargs: dict[str, Any], error: type[Exception]
    ) -> None:
        m = (await make_matcher(Recorder(), SETTINGS)).matcher
        with pytest.raises(error, match=r"interests|tags|avoid|pool"):
            await m.enqueue("alice", **kwargs)
        assert await m.waiting() == 0
        # The largest allowed is accepted.
        await m.enqueue(
            "bob",
            [f"i{i}" for i in range(MAX_INTERESTS)],
            tags=[f"t{i}" for i in range(MAX_TAGS)],
            avoid=["a" * MAX_TAG_CHARS] * 2 + [f"t{i}" for i in range(MAX_AVOID - 1)],
            pool="p" * MAX_POOL_CHARS,
        )
        assert await m.waiting() == 1

    # --- the sweep re-tries whoever a timer frees ---------------------------------------

    async def test_held_back_rematch_is_retried_when_the_other_option_goes(
        self, make_matcher: MakeMatcher
    ) -> None:
        # alice and bob just met. Their rematch wait ends when carol's and dave's interest
        # windows do: bob (first in line) may not have alice yet, since she could have
        # carol or dave, who both avoid bob. If carol then takes dave, alice and bob are
        # alone, and the next sweep must let them meet without anyone new arriving.
        outcomes = set()
        for seed in range(16):
            rec = Recorder()
            s = await make_matcher(rec, SETTINGS, seed=seed)
            for _ in range(2):
                await s.matcher.enqueue("alice", tags=["alice"])
                await s.matcher.enqueue("bob", tags=["bob"])
            await s.matcher.enqueue("carol", ["chess"], avoid=["bob"])
            await s.matcher.enqueue("dave", ["go"], avoid=["bob"])
            assert rec.pairs() == [pair("alice", "bob")]

            s.advance(max(SETTINGS.interest_timeout, SETTINGS.rematch_after))
            await s.sweep()
            await s.sweep()
            outcome = tuple(rec.pairs()[1:])
            assert outcome in (
                (pair("carol", "alice"),),  # bob and dave are left: they may not meet
                (pair("carol", "dave"), pair("alice", "bob")),
            )
            assert await s.matcher.waiting() == (2 if len(outcome) == 1 else 0)
            outcomes.add(outcome)
        assert len(outcomes) == 2  # both ways were exercised

    # --- the indexes decide what a scan of everyone would -------------------------------

    @pytest.mark.parametrize(("seed", "rematch_after"), [(0, 0.0), (1, 3.0), (2, 0.0), (3, 3.0)])
    async def test_enqueue_decides_as_a_scan_of_everyone_would(
        self, make_matcher: MakeMatcher, seed: int, rematch_after: float
    ) -> None:
        # max_skips=0 makes every choice "the longest-waiting candidate", so any correct
        # implementation must make exactly the reference's matches, whatever its rng.
        settings = MatcherSettings(interest_timeout=2.0, rematch_after=rematch_after, max_skips=0)
        await compare_with_reference(make_matcher, settings, seed)

    # --- concurrency ----------------------------------------------------------------

    @pytest.mark.parametrize(
        ("seed", "with_options"), [(0, False), (1, False), (2, False), (3, False), (4, True)]
    )
    async def test_concurrent_clients_never_break_invariants(
        self, make_matcher: MakeMatcher, seed: int, with_options: bool
    ) -> None:
        # with_options: clients also use pools and avoid each other's browsers.
        settings = MatcherSettings(interest_timeout=1.0, rematch_after=1.0, max_skips=2)
        model = _Model(settings)
        s = await make_matcher(model.on_match, settings, seed=seed)
        model.subject = s

        clients = [
            _Client(model, slot, random.Random(seed * 1000 + slot), with_options=with_options)
            for slot in range(24)
        ]
        done = asyncio.Event()

        async def clock_and_sweep() -> None:
            rng = random.Random(seed)
            while not done.is_set():
                model.advance(rng.uniform(0.0, 0.2))
                await s.sweep()
                await asyncio.sleep(0)

        ticker = asyncio.create_task(clock_and_sweep())
        await asyncio.gather(*(c.run(steps=300) for c in clients))
        done.set()
        await ticker

        assert model.violations == []
        assert len(model.matches) > 300  # the run really exercised pairing
        assert await s.matcher.waiting() == model.count("waiting")

        for user_id in list(model.state):
            await s.matcher.forget(user_id)
        await self.assert_holds_nothing(s)

    # --- lifecycle ------------------------------------------------------------------

    async def test_sweep_task_applies_timers_and_stops_on_close(
        self, make_matcher: MakeMatcher
    ) -> None:
        matched = asyncio.Event()

        def on_match(match: Match) -> None:
            matched.set()

        settings = MatcherSettings(interest_timeout=5.0, sweep_interval=0.01)
        s = await make_matcher(on_match, settings)
        before = asyncio.all_tasks()

        await s.matcher.start()
        await s.matcher.start()  # a second start does not add a second sweeper
        await s.matcher.enqueue("alice", ["music"])
        await s.matcher.enqueue("bob")
        s.advance(settings.interest_timeout)
        # Nobody enqueues or sweeps by hand: only the background sweep can pair them.
        await asyncio.wait_for(matched.wait(), timeout=10)

        await s.matcher.close()
        assert asyncio.all_tasks() == before
        await s.matcher.close()  # closing twice is harmless

    async def test_close_without_start(self, make_matcher: MakeMatcher) -> None:
        s = await make_matcher(Recorder(), SETTINGS)
        before = asyncio.all_tasks()
        await s.matcher.close()
        assert asyncio.all_tasks() == before


async def compare_with_reference(
    make_matcher: MakeMatcher, settings: MatcherSettings, seed: int, steps: int = 600
) -> None:
    """Drive an implementation and ReferenceMatcher with the same enqueues, dequeues,
    forgets and clock (no sweeps: those re-try in an order of their own); same matches."""
    got, expected = Recorder(), Recorder()
    s = await make_matcher(got, settings, seed=seed)
    now = [0.0]
    reference = ReferenceMatcher(expected, settings, clock=lambda: now[0], rng=random.Random(seed))
    rng = random.Random(seed)
    waiting: set[str] = set()

    def was_matched(rec: Recorder, before: int) -> None:
        for m in rec.matches[before:]:
            waiting.difference_update((m.a, m.b))

    for _ in range(steps):
        user = f"u{rng.randrange(14)}"
        roll = rng.random()
        if roll < 0.15:
            seconds = rng.choice((0.5, 1.0, 2.5))
            now[0] += seconds
            s.advance(seconds)
        elif user in waiting:
            if roll < 0.8:
                assert await s.matcher.dequeue(user) is await reference.dequeue(user) is True
            else:
                await s.matcher.forget(user)
                await reference.forget(user)
            waiting.discard(user)
        else:
            interests = rng.sample(["a", "b", "c", "d"], rng.randint(0, 2))
            tags = [user, f"g{int(user[1:]) % 4}"]
            avoid = [f"g{rng.randrange(4)}"] if rng.random() < 0.2 else []
            pool = "text" if rng.random() < 0.15 else ""
            before = len(expected.matches)
            waiting.add(user)
            await s.matcher.enqueue(user, interests, tags=tags, avoid=avoid, pool=pool)
            await reference.enqueue(user, interests, tags=tags, avoid=avoid, pool=pool)
            was_matched(expected, before)
        assert got.matches == expected.matches
    assert len(expected.matches) > 100
    assert await s.matcher.waiting() == len(waiting)


class _Model:
    """What the server believes about each user, checked against every match."""

    def __init__(self, settings: MatcherSettings) -> None:
        self.settings = settings
        self.subject: Subject | None = None
        self.time = 0.0
        # idle | waiting | leaving (dequeue/forget in flight) | paired
        self.state: dict[str, str] = {}
        self.partner: dict[str, str] = {}
        self.last_partner: dict[str, str] = {}
        self.interests: dict[str, frozenset[str]] = {}
        self.options: dict[str, EnqueueOptions] = {}
        self.since: dict[str, float] = {}
        self.gone: set[str] = set()
        self.matched_while_leaving: set[str] = set()
        # A second enqueue in flight for a waiting user -> matches of theirs seen meanwhile.
        # A matcher with latency (Redis) may pair them before that enqueue runs; the
        # enqueue then rightly starts a new wait (no interests), which may pair too.
        self.rejoining: dict[str, int] = {}
        self.rejoin_called: dict[str, float] = {}
        self.matches: list[Match] = []
        self.violations: list[str] = []

    def advance(self, seconds: float) -> None:
        assert self.subject is not None
        self.time += seconds
        self.subject.advance(seconds)

    def count(self, state: str) -> int:
        return sum(1 for s in self.state.values() if s == state)

    def on_match(self, match: Match) -> None:
        # The matcher logs and swallows handler exceptions, so record them as violations.
        try:
            self._check(match)
        except Exception as exc:
            self.violations.append(f"{match}: checking raised {exc!r}")

    def _check(self, match: Match) -> None:
        self.matches.append(match)
        a, b = match.a, match.b
        for u in (a, b):
            if self.rejoining.get(u) == 1:
                self.rejoin(u)
        if a == b:
            self.violations.append(f"{a} matched with themselves")
        if self.options[a].pool != self.options[b].pool:
            self.violations.append(f"{match}: paired across pools")
        if self.options[a].blocks(self.options[b]):
            self.violations.append(f"{match}: paired though one avoids the other")
        for u in (a, b):
            if u in self.gone:
                self.violations.append(f"{u} matched after forget")
            if self.state.get(u) not in ("waiting", "leaving"):
                self.violations.append(f"{u} matched while {self.state.get(u)}")
        expected = tuple(sorted(self.interests[a] & self.interests[b]))
        if match.shared_interests != expected:
            self.violations.append(f"{match} shared should be {expected}")
        if not expected:
            for u in (a, b):
                waited = self.time - self.since[u]
                if self.interests[u] and waited < self.settings.interest_timeout:
                    self.violations.append(f"{match}: {u} lost interest window after {waited}")
        if self.last_partner.get(a) == b and self.last_partner.get(b) == a:
            for u in (a, b):
                if self.time - self.since[u] < self.settings.rematch_after:
                    self.violations.append(f"{match}: rematched too soon")
        for u, other in ((a, b), (b, a)):
            if u in self.rejoining:
                self.rejoining[u] += 1
            if self.state.get(u) == "leaving":
                self.matched_while_leaving.add(u)
            self.state[u] = "paired"
            self.partner[u] = other
            self.last_partner[u] = other

    def rejoin(self, user_id: str) -> None:
        """The second enqueue of a user matched meanwhile started a new wait."""
        self.part(user_id)
        self.state[user_id] = "waiting"
        self.interests[user_id] = frozenset()
        self.options[user_id] = EnqueueOptions()
        # When the enqueue was called: no later than the wait began, so checks stay lenient.
        self.since[user_id] = self.rejoin_called[user_id]

    def part(self, user_id: str) -> None:
        """user_id leaves their partner, who becomes idle (the matcher never re-queues)."""
        other = self.partner.pop(user_id, None)
        if other is not None:
            del self.partner[other]
            self.state[other] = "idle"


class _Client:
    """One browser tab: starts, stops, skips and leaves at random, with awaits in between."""

    TOPICS = ("music", "Music ", "chess", " ART", "art", "go", "")

    def __init__(
        self, model: _Model, slot: int, rng: random.Random, *, with_options: bool = False
    ) -> None:
        self.model = model
        self.slot = slot
        self.rng = rng
        self.with_options = with_options
        self.visit = 0
        self.user_id = self._new_id()

    def _new_id(self) -> str:
        user_id = f"u{self.slot}.{self.visit}"
        self.model.state[user_id] = "idle"
        return user_id

    @property
    def matcher(self) -> Matcher:
        assert self.model.subject is not None
        return self.model.subject.matcher

    async def run(self, steps: int) -> None:
        for _ in range(steps):
            await asyncio.sleep(0)
            roll = self.rng.random()
            state = self.model.state[self.user_id]
            if roll < 0.04:
                await self._leave_site()
            elif state == "idle":
                await self._start()
            elif state == "waiting":
                if roll < 0.3:
                    await self._stop_waiting()
                elif roll < 0.4:
                    await self._start_again_while_waiting()
            elif state == "paired":
                if roll < 0.5:
                    self.model.part(self.user_id)
                    await self._start()  # "next": queued again with new interests
                elif roll < 0.7:
                    self.model.part(self.user_id)
                    self.model.state[self.user_id] = "idle"

    async def _start(self) -> None:
        m, u = self.model, self.user_id
        raw = self.rng.sample(self.TOPICS, self.rng.randint(0, 2))
        tags: list[str] = []
        avoid: list[str] = []
        pool = ""
        if self.with_options:
            # Six browsers: a tab is its session and its browser; some avoid a browser
            # (their own included: a user who never wants to meet themselves).
            tags = [u, f"browser{self.slot % 6}"]
            avoid = [f"browser{k}" for k in self.rng.sample(range(6), self.rng.randint(0, 2))]
            pool = self.rng.choice(("", "", "text"))
        m.state[u] = "waiting"
        m.interests[u] = normalize_interests(raw)
        m.options[u] = check_enqueue(raw, tags, avoid, pool)
        m.since[u] = m.time
        try:
            await self.matcher.enqueue(u, raw, tags=tags, avoid=avoid, pool=pool)
        except AlreadyWaiting:
            m.violations.append(f"{u} AlreadyWaiting though not waiting")

    async def _start_again_while_waiting(self) -> None:
        m, u = self.model, self.user_id
        m.rejoining[u] = 0
        m.rejoin_called[u] = m.time
        try:
            await self.matcher.enqueue(u)
        except AlreadyWaiting:
            m.rejoining.pop(u)
            return
        matched_meanwhile = m.rejoining.pop(u)
        if matched_meanwhile == 0:
            m.violations.append(f"{u} enqueued twice")
        elif matched_meanwhile == 1:
            m.rejoin(u)

    async def _stop_waiting(self) -> None:
        m, u = self.model, self.user_id
        m.state[u] = "leaving"
        was_waiting = await self.matcher.dequeue(u)
        matched = u in m.matched_while_leaving
        m.matched_while_leaving.discard(u)
        if was_waiting and matched:
            m.violations.append(f"{u} matched although dequeue said they were waiting")
        if not was_waiting and not matched:
            m.violations.append(f"{u} was waiting but dequeue said no")
        if was_waiting:
            m.state[u] = "idle"

    async def _leave_site(self) -> None:
        m, u = self.model, self.user_id
        m.part(u)
        m.state[u] = "leaving"
        await self.matcher.forget(u)
        if u in m.matched_while_leaving:  # the match raced the forget; the server ends it
            m.matched_while_leaving.discard(u)
            m.part(u)
        m.gone.add(u)
        del m.state[u]
        self.visit += 1
        self.user_id = self._new_id()
