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


class Signer:
    """Seals and opens the JSON messages of one kind (named in the logs as `what`)."""

    def __init__(self, secret: bytes | None, what: str) -> None:
        self._secret = secret
        self._what = what

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
        text = raw.decode() if isinstance(raw, bytes) else raw
        if self._secret is None:
            return dict(json.loads(text))
        mac, text = text[:_MAC_CHARS], text[_MAC_CHARS:]
        expected = hmac.new(self._secret, text.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, expected):
            logger.warning("dropped a %s not signed with the cluster secret", self._what)
            return None
        data = dict(json.loads(text))
        if abs(time.time() - float(data.get("at", 0))) > MAX_AGE:
            logger.warning("dropped a %s older than %g s (replayed?)", self._what, MAX_AGE)
            return None
        return data
