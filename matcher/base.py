"""The matcher contract: who is paired with whom, independent of where the queue lives.

Everything that crosses this interface is a string, a number or a frozen dataclass,
so a distributed implementation (Redis) can sit behind the same protocol as the
in-memory one and pass the same contract tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Match:
    """Two users the matcher has just paired; both have left the waiting set."""

    a: str
    b: str
    # Normalized interests both users have, sorted; may be empty.
    shared_interests: tuple[str, ...]
    # The nodes holding a and b, when the matcher spans nodes (None: this process).
    # Not compared: a match is who met whom, wherever they sit.
    node_a: str | None = field(default=None, compare=False)
    node_b: str | None = field(default=None, compare=False)


# Called once per match, synchronously on the event loop, after the match is recorded.
# It must be cheap and must not block; exceptions are logged by the matcher, not raised.
MatchHandler = Callable[[Match], None]


@dataclass(frozen=True)
class MatcherSettings:
    """Timers and bounds that shape who may be paired with whom."""

    # Seconds a user with interests waits for an interest match before anyone will do.
    interest_timeout: float = 5.0
    # Two users who were just paired with each other are paired again only if neither
    # has anyone else available AND both have waited this long.
    rematch_after: float = 5.0
    # A waiting user passed over this many times while eligible is chosen first.
    max_skips: int = 3
    # How often the background sweep re-tries waiting users, so the timers above take
    # effect without new arrivals.
    sweep_interval: float = 0.25

    def __post_init__(self) -> None:
        if self.interest_timeout < 0:
            raise ValueError("interest_timeout must be >= 0")
        if self.rematch_after < 0:
            raise ValueError("rematch_after must be >= 0")
        if self.max_skips < 0:
            raise ValueError("max_skips must be >= 0")
        if self.sweep_interval <= 0:
            raise ValueError("sweep_interval must be > 0")


class MatcherError(Exception):
    """Base class for errors the matcher reports to its caller."""


class AlreadyWaiting(MatcherError):
    """enqueue() was called for a user who is already waiting."""


class Matcher(Protocol):
    """Pairs waiting users at random, honouring interests, fairness and rematch rules.

    A match is decided atomically: nobody is matched with themselves, nobody is in two
    matches, and nobody is matched after dequeue() or forget() has returned. The matcher
    never re-queues anyone; after a match, the server decides who waits again.
    """

    async def start(self) -> None:
        """Start background work (the sweep that re-tries waiting users)."""
        ...

    async def close(self) -> None:
        """Stop background work; no task is left behind."""
        ...

    async def enqueue(self, user_id: str, interests: Sequence[str] = ()) -> None:
        """Start waiting and try to pair at once.

        Raises AlreadyWaiting if the user is already waiting.
        """
        ...

    async def dequeue(self, user_id: str) -> bool:
        """Stop waiting; True if the user was waiting (and so has not been matched)."""
        ...

    async def forget(self, user_id: str) -> None:
        """The user left for good: dequeue them and drop every record about them."""
        ...

    async def waiting(self) -> int:
        """How many users are waiting now."""
        ...


@runtime_checkable
class RemoteMatches(Protocol):
    """A matcher spanning nodes: matches other nodes made for this node's users."""

    def remote_matches(self) -> AsyncIterator[Match]: ...


def normalize_interests(interests: Iterable[str]) -> frozenset[str]:
    """Interests as compared by every matcher: trimmed, caseless, deduplicated, non-empty."""
    if isinstance(interests, str):
        # A bare string is an Iterable[str] too; taking it letter by letter is never meant.
        raise TypeError("interests must be a sequence of strings, not a string")
    # casefold() rather than lower(): it is Python's caseless comparison ("Straße" == "STRASSE").
    return frozenset(n for n in (i.strip().casefold() for i in interests) if n)
