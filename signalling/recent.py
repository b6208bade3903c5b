"""Recent partners: who a visitor met lately, so they can report or block someone who left.

Each pair gets a `pair_id`, an opaque random token sent to both people in `matched`
(never a session id, nothing that identifies either person). A visitor's
`RecentPartners` keeps the pairs of the last `window` seconds (at most MAX_RECENT),
with what a report or a block needs once the partner is gone: the partner's
reference, their pseudonymous person and address keys (keyed hashes, see
moderation/pseudonyms.py) and the pair's chat.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from cluster.node import SessionRef

# Partners kept per visitor whatever the window: someone pressing Next every second
# for five minutes keeps the last few, not three hundred.
MAX_RECENT: Final = 20
# Chat lines kept per pair for a report: the last ones (a pair may talk for hours).
MAX_TRANSCRIPT: Final = 500
DEFAULT_WINDOW: Final = 300.0
# Matcher tags: a visit ("s:") and a browser identity's keyed hash ("p:").
SESSION_TAG: Final = "s:"
PERSON_TAG: Final = "p:"


def new_pair_id() -> str:
    """An unguessable token naming one pair (96 random bits)."""
    return secrets.token_urlsafe(12)


def tags_of(session_id: str, person: str | None) -> frozenset[str]:
    """What a block against this visitor avoids: the visit, and the browser if known."""
    if person is None:
        return frozenset({SESSION_TAG + session_id})
    return frozenset({SESSION_TAG + session_id, PERSON_TAG + person})


@dataclass
class RecentPartner:
    """One pair as one side saw it."""

    pair_id: str
    partner: SessionRef
    # The partner's keyed identity hash and address hash (from the pair handshake when
    # the partner is on another node); None when unknown (no client id).
    person: str | None
    address: str | None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    # The pair's chat, the last MAX_TRANSCRIPT lines: (time.time(), sender session id, text).
    transcript: deque[tuple[float, str, str]] = field(
        default_factory=lambda: deque(maxlen=MAX_TRANSCRIPT)
    )

    @property
    def tags(self) -> frozenset[str]:
        return tags_of(self.partner.id, self.person)

    def live_at(self, now: float, window: float) -> bool:
        return self.ended_at is None or now - self.ended_at <= window


class RecentPartners:
    """A visitor's partners of the last `window` seconds, newest last."""

    def __init__(self, window: float = DEFAULT_WINDOW) -> None:
        self.window = window
        self._pairs: deque[RecentPartner] = deque(maxlen=MAX_RECENT)

    def __len__(self) -> int:
        return len(self._pairs)

    def __iter__(self) -> Iterator[RecentPartner]:
        """Oldest first, including pairs past the window not yet pushed out."""
        return iter(self._pairs)

    def add(self, partner: RecentPartner) -> None:
        self._pairs.append(partner)

    def find(self, pair_id: str, now: float | None = None) -> RecentPartner | None:
        """The pair `pair_id` if it is current or ended within the window."""
        at = time.time() if now is None else now
        for recent in self._pairs:
            if recent.pair_id == pair_id:
                return recent if recent.live_at(at, self.window) else None
        return None
