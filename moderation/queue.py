"""The moderators' queue: which open report to look at first.

Open reports are ordered by the severity of what they are about (a minor and
sexual content first, then violence, harassment, other, spam), then by how
many distinct people reported that person in the last day (a person several
strangers reported comes before a one-off), then oldest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from moderation.store import Report
from signalling.protocol import REPORT_CATEGORIES

# Index in REPORT_CATEGORIES is the rank: 0 is looked at first.
SEVERITY: Final = {name: rank for rank, name in enumerate(REPORT_CATEGORIES)}
# The words of the page's report reasons (web/index.html) and of older clients,
# for reports that came without a category.
_WORDS: Final = (
    ("minor", ("under 18", "minor", "child", "underage", "kid")),
    ("sexual", ("nudity", "sexual", "naked", "nude", "porn", "flash")),
    ("violence", ("violence", "self-harm", "weapon", "suicide")),
    ("harassment", ("harassment", "hate", "racis", "threat", "bully")),
    ("spam", ("spam", "scam", "advert", "bot")),
)
DAY: Final = 86400.0


def category_of(reason: str, given: str | None = None) -> str:
    """The category a report is filed under: the one given, else read from its reason."""
    if given in SEVERITY:
        return given
    text = reason.casefold()
    for category, words in _WORDS:
        if any(word in text for word in words):
            return category
    return "other"


def order(reports: Iterable[Report], reporters: Mapping[str, int]) -> list[Report]:
    """Open reports in the order a moderator should take them.

    `reporters` maps a reported subject to the distinct people who reported them
    in the last day (ModerationStore.reporters_since).
    """
    return sorted(
        reports,
        key=lambda r: (
            SEVERITY.get(r.category, SEVERITY["other"]),
            -reporters.get(r.subject, 1),
            r.created_at,
            r.id,
        ),
    )
