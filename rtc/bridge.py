"""MediaBridge: how a peer's media reaches a partner on another node.

The Lobby calls it when a pair across nodes starts and ends; the pipe between nodes
(rtc/pipe.py) implements it. The two descriptions are exchanged in the pair
handshake over the SessionBus, so each node hands the other what it needs.

Order on each node for a pair across nodes:
  1. `offer_streams(local_peer)` before the handshake message is sent;
  2. `connect(local_peer, remote_description)` once the partner's description is in
     (attach the remote streams to local_peer's subscribers and start sending
     local_peer's publishers to the other node);
  3. `disconnect(local_peer)` when the pair ends for any reason (next, stop, leave,
     the other node gone), at most once per connect, and also after an
     `offer_streams` whose pair never formed.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from rtc.peer import Peer

logger = logging.getLogger(__name__)


class MediaBridge(Protocol):
    async def offer_streams(self, local_peer: Peer) -> dict[str, Any]:
        """What the other node needs to receive local_peer's media: JSON-able
        (e.g. the pipe's address and a stream id per kind)."""
        ...

    async def connect(self, local_peer: Peer, remote_description: dict[str, Any]) -> None:
        """Start media both ways between local_peer and the partner described."""
        ...

    async def disconnect(self, local_peer: Peer) -> None:
        """Stop both ways; local_peer keeps its connection for the next partner."""
        ...

    async def close(self) -> None: ...


class NullBridge:
    """No media across nodes: such pairs chat without video (logged once)."""

    def __init__(self) -> None:
        self._warned = False

    async def offer_streams(self, local_peer: Peer) -> dict[str, Any]:
        return {}

    async def connect(self, local_peer: Peer, remote_description: dict[str, Any]) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(
                "a pair across nodes has no media: this server has no pipe between nodes yet"
            )

    async def disconnect(self, local_peer: Peer) -> None:
        pass

    async def close(self) -> None:
        pass
