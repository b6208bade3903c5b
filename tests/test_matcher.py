"""MemoryMatcher: the shared matcher contract, plus what only the in-memory one can show."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from matcher_contract import (
    MakeMatcher,
    MatcherContract,
    Recorder,
    Subject,
    compare_with_reference,
    pair,
)

from matcher import Match, MatcherSettings, MatchHandler, MemoryMatcher

DEFAULTS = MatcherSettings()


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def memory_subject(
    on_match: MatchHandler, settings: MatcherSettings = DEFAULTS, *, seed: int = 0
) -> tuple[MemoryMatcher, Subject]:
    clock = FakeClock()
    matcher = MemoryMatcher(on_match, settings, clock=clock, rng=random.Random(seed))
    return matcher, Subject(matcher, clock.advance, matcher.sweep)


class TestMemoryMatcher(MatcherContract):
    @pytest.fixture
    def make_matcher(self) -> MakeMatcher:
        async def make(
            on_match: MatchHandler,
            settings: MatcherSettings = DEFAULTS,
            *,
            seed: int = 0,
        ) -> Subject:
            return memory_subject(on_match, settings, seed=seed)[1]

        return make

    async def assert_holds_nothing(self, subject: Subject) -> None:
        await super().assert_holds_nothing(subject)
        assert isinstance(subject.matcher, MemoryMatcher)
        assert subject.matcher.remembered() == 0


@pytest.mark.parametrize("seed", range(4))
async def test_random_choices_are_the_references_too(seed: int) -> None:
    # With the same seed, the same eligible candidates in the same order give the same
    # rng draws: the indexes change what is read, not what is decided.
    async def make(
        on_match: MatchHandler, settings: MatcherSettings = DEFAULTS, *, seed: int = 0
    ) -> Subject:
        return memory_subject(on_match, settings, seed=seed)[1]

    settings = MatcherSettings(interest_timeout=2.0, rematch_after=0.0, max_skips=3)
    await compare_with_reference(make, settings, seed)


async def test_forget_drops_every_record_of_a_user() -> None:
    # Memory must not grow with every visitor the server has ever seen.
    matcher, _ = memory_subject(Recorder())
    for i in range(0, 100, 2):
        await matcher.enqueue(f"u{i}")
        await matcher.enqueue(f"u{i + 1}")
    await matcher.enqueue("lonely")
    assert matcher.remembered() == 101

    # Forgetting one side of a pair also drops the partner's record pointing at them.
    for i in range(0, 100, 2):
        await matcher.forget(f"u{i}")
    assert matcher.remembered() == 1
    await matcher.forget("lonely")
    assert matcher.remembered() == 0


async def test_same_seed_same_pairs() -> None:
    async def run(seed: int) -> list[frozenset[str]]:
        rec = Recorder()
        matcher, _ = memory_subject(rec, seed=seed)
        for i in range(30):
            await matcher.enqueue(f"w{i}", [f"t{i}"])
        for i in range(30):
            await matcher.enqueue(f"s{i}", [f"t{j}" for j in range(30)])
        return rec.pairs()

    assert await run(7) == await run(7)
    assert await run(7) != await run(8)


async def test_failing_handler_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def explode(match: Match) -> None:
        raise RuntimeError("handler bug")

    matcher, _ = memory_subject(explode)
    with caplog.at_level(logging.ERROR, logger="matcher.memory"):
        await matcher.enqueue("alice")
        await matcher.enqueue("bob")
    assert "match handler failed" in caplog.text
    assert "handler bug" in caplog.text


async def test_sweep_task_survives_a_failing_sweep(caplog: pytest.LogCaptureFixture) -> None:
    matched = asyncio.Event()
    clock = FakeClock()
    failures = 0

    def flaky_clock() -> float:
        # Fails for the first two sweeps, as a broken backend would.
        nonlocal failures
        if failing and failures < 2:
            failures += 1
            raise OSError("clock source gone")
        return clock()

    failing = False
    matcher = MemoryMatcher(
        lambda match: matched.set(),
        MatcherSettings(interest_timeout=5.0, sweep_interval=0.01),
        clock=flaky_clock,
    )
    await matcher.enqueue("alice", ["music"])
    await matcher.enqueue("bob")
    clock.advance(5.0)
    failing = True

    with caplog.at_level(logging.ERROR, logger="matcher.memory"):
        await matcher.start()
        try:
            await asyncio.wait_for(matched.wait(), timeout=10)
        finally:
            await matcher.close()

    assert failures == 2
    assert caplog.text.count("matcher sweep failed") == 2
    assert await matcher.waiting() == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"interest_timeout": -1.0},
        {"rematch_after": -1.0},
        {"max_skips": -1},
        {"sweep_interval": 0.0},
    ],
)
def test_settings_are_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MatcherSettings(**bad)  # type: ignore[arg-type]


async def test_max_skips_zero_is_first_come_first_served() -> None:
    rec = Recorder()
    matcher, _ = memory_subject(rec, MatcherSettings(interest_timeout=1e9, max_skips=0))
    for name in ("a", "b", "c"):
        await matcher.enqueue(name, [name])
    for seeker in ("x", "y", "z"):
        await matcher.enqueue(seeker, ["a", "b", "c"])
    assert rec.pairs() == [pair("x", "a"), pair("y", "b"), pair("z", "c")]
