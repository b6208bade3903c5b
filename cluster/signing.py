"""Messages one node sends the others through Redis, signed with the cluster secret.

Redis is shared by every node, and whoever can publish on it could otherwise speak
for any node: forge chat or a pair handshake on the sessions bus, or kick, ban and
read evidence on the moderation channel. Each message carries an HMAC-SHA256 of
its text, which includes the time it was sent. A message that is unsigned, signed
with another secret, or older than MAX_AGE (a replay) is dropped and logged, never
acted on. Without a secret (one process, or tests that say so) messages are plain
JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

# Seconds a signed message stays valid (the nodes' clocks are assumed NTP-synchronised).
MAX_AGE = 60.0
_MAC_CHARS = 64
# At most one warning this often (seconds) per kind of message: whoever can publish on
# Redis can send refused messages as fast as it likes, and must not fill the log.
WARN_INTERVAL = 10.0


class Signer:
    """Seals and opens the JSON messages of one kind (named in the logs as `what`)."""

    def __init__(self, secret: bytes | None, what: str) -> None:
        self._secret = secret
        self._what = what
        # Refused since the last warning, and when that was (monotonic).
        self._unwarned = 0
        self._warned_at = -WARN_INTERVAL

    @property
    def signs(self) -> bool:
        return self._secret is not None

    def seal(self, body: dict[str, Any]) -> str:
        if self._secret is None:
            return json.dumps(body)
        text = json.dumps(body | {"at": time.time()})
        return hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest() + text

    def open(self, raw: str | bytes) -> dict[str, Any] | None:
        """The message, or None (logged) when it is not signed by a node of this cluster."""
        try:
            text = raw.decode() if isinstance(raw, bytes) else raw
            if self._secret is None:
                return self._parse(text)
            mac, text = text[:_MAC_CHARS], text[_MAC_CHARS:]
            expected = hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()
        except UnicodeError:
            self._refuse("not text")
            return None
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            self._refuse("not signed with the cluster secret")
            return None
        data = self._parse(text)
        if data is None:
            return None
        try:
            at = float(data.get("at", 0))
        except (TypeError, ValueError):
            at = 0.0
        if not abs(time.time() - at) <= MAX_AGE:
            self._refuse(f"older than {MAX_AGE:g} s (replayed?)")
            return None
        return data

    def _parse(self, text: str) -> dict[str, Any] | None:
        try:
            data = json.loads(text)
        except ValueError:
            self._refuse("not JSON")
            return None
        if not isinstance(data, dict):
            self._refuse("not a JSON object")
            return None
        return data

    def _refuse(self, why: str) -> None:
        self._unwarned += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_INTERVAL:
            logger.warning(
                "dropped %d %s(s) in %g s; the last one: %s",
                self._unwarned,
                self._what,
                WARN_INTERVAL,
                why,
            )
            self._warned_at, self._unwarned = now, 0
        return None
