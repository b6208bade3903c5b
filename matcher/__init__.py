"""Who is paired with whom: the Matcher protocol and its implementations."""

from .base import (
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
from .memory import MemoryMatcher

__all__ = [
    "AlreadyWaiting",
    "EnqueueOptions",
    "Match",
    "MatchHandler",
    "Matcher",
    "MatcherError",
    "MatcherSettings",
    "MemoryMatcher",
    "check_enqueue",
    "normalize_interests",
]
