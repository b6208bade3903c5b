"""The matcher contract: who is paired with whom, independent of where the queue lives.

Everything that crosses this interface is a string, a number or a frozen dataclass,
so a distributed implementation (Redis) can sit behind the same protocol as the
in-memory one and pass the same contract tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
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

    The rules, for a seeker s (a user just enqueued, or one the sweep re-tries):

    - Eligible: every other waiting user w of the same pool that s may meet (neither
      one's avoid list meets the other's tags) and that is compatible: they share an
      interest, or both are "open" (named no interest, or their interest_timeout ran out).
    - Fresh: eligible and not s's recent partner (each one's most recent partner is the
      other). The pool is the fresh candidates; only if there are none, the recent partner,
      when both have waited rematch_after and the partner has no fresh candidate either.
    - The longest-waiting candidate of the pool who was passed over max_skips times is
      chosen; otherwise one at random. Every other member of the pool was "passed over
      while eligible": its skip count goes up by one.

    How the implementations find that pool without reading everyone (issue 10): waiting
    users are indexed by (pool, interest) and by (pool, open); the eligible set is exactly
    the union of the seeker's interest sets and, if the seeker is open, the open set, so
    skips are counted on the same pool the rules above define, not on a sample. Two
    eligible fresh users never both stay waiting (the later one is paired on arrival), so
    what can change while nobody arrives is only a timer: an interest window running out
    or a rematch wait ending. The sweep therefore re-tries only users whose timer has
    expired since (longest-waiting first), not everyone; a re-try the old full sweep made
    for anyone else found an empty pool and changed nothing, skips included.
    """

    async def start(self) -> None:
        """Start background work (the sweep that re-tries waiting users)."""
        ...

    async def close(self) -> None:
        """Stop background work; no task is left behind."""
        ...

    async def enqueue(
        self,
        user_id: str,
        interests: Sequence[str] = (),
        *,
        tags: Collection[str] = (),
        avoid: Collection[str] = (),
        pool: str = "",
    ) -> None:
        """Start waiting and try to pair at once.

        tags describe this user and avoid lists what they must never meet (both opaque):
        x and y are never paired if x's avoid meets y's tags or y's avoid meets x's tags,
        however long they wait. Users are paired only within one pool ("" = video).
        Raises AlreadyWaiting if the user is already waiting, ValueError (see
        check_enqueue) if tags, avoid or pool are out of bounds.
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


# Bounds on what one enqueue may carry, so one user cannot make decisions expensive.
# (The signalling protocol allows far fewer interests; these bound any caller.)
MAX_INTERESTS = 64
MAX_INTEREST_CHARS = 256
MAX_TAGS = 64
MAX_AVOID = 256
MAX_TAG_CHARS = 256
MAX_POOL_CHARS = 64


@dataclass(frozen=True)
class EnqueueOptions:
    """What one enqueue asks for, checked and normalized."""

    interests: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    avoid: frozenset[str] = frozenset()
    pool: str = ""

    def blocks(self, other: EnqueueOptions) -> bool:
        """Whether these two users must never be paired (either one avoids the other)."""
        return not self.avoid.isdisjoint(other.tags) or not other.avoid.isdisjoint(self.tags)


def check_enqueue(
    interests: Iterable[str] = (),
    tags: Collection[str] = (),
    avoid: Collection[str] = (),
    pool: str = "",
) -> EnqueueOptions:
    """An enqueue's arguments as every matcher compares them, or ValueError/TypeError."""
    normalized = normalize_interests(interests)
    if len(normalized) > MAX_INTERESTS:
        raise ValueError(f"at most {MAX_INTERESTS} interests per user, got {len(normalized)}")
    if any(len(i) > MAX_INTEREST_CHARS for i in normalized):
        raise ValueError(f"each of interests must be at most {MAX_INTEREST_CHARS} characters long")
    if not isinstance(pool, str):
        raise TypeError("pool must be a string")
    if len(pool) > MAX_POOL_CHARS:
        raise ValueError(f"pool must be at most {MAX_POOL_CHARS} characters long")
    return EnqueueOptions(
        normalized,
        _opaque_strings("tags", tags, MAX_TAGS),
        _opaque_strings("avoid", avoid, MAX_AVOID),
        pool,
    )


def _opaque_strings(name: str, values: Collection[str], most: int) -> frozenset[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a collection of strings, not a string")
    for v in values:
        if not isinstance(v, str):
            raise TypeError(f"each of {name} must be a string, got {type(v).__name__}")
        if not 1 <= len(v) <= MAX_TAG_CHARS:
            raise ValueError(f"each of {name} must be 1 to {MAX_TAG_CHARS} characters long")
    distinct = frozenset(values)
    if len(distinct) > most:
        raise ValueError(f"at most {most} distinct {name} per user, got {len(distinct)}")
    return distinct
