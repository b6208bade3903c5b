"""Who is paired with whom: the Matcher protocol and its implementations."""

from .base import (
    AlreadyWaiting,
    Match,
    Matcher,
    MatcherError,
    MatcherSettings,
    MatchHandler,
    normalize_interests,
)
from .memory import MemoryMatcher

__all__ = [
    "AlreadyWaiting",
    "Match",
    "MatchHandler",
    "Matcher",
    "MatcherError",
    "MatcherSettings",
    "MemoryMatcher",
    "normalize_interests",
]
