"""The Relay: owns every Peer and decides whose media each one receives."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from rtc.bridge import MediaBridge, NullBridge
from rtc.peer import KINDS, MediaCounters, Peer, PeerSettings, StateHandler

logger = logging.getLogger(__name__)


class Relay:
    """Connects peers' publishers to other peers' subscribers.

    Pairing only re-points subscribers; no peer connection is renegotiated.
    """

    def __init__(self, settings: PeerSettings, bridge: MediaBridge | None = None) -> None:
        self.settings = settings
        # Media for partners on other nodes (rtc/bridge.py); none without a pipe.
        self.bridge: MediaBridge = bridge if bridge is not None else NullBridge()
        # Peers that are open or closing; a closed one is referenced by nothing here.
        self._peers: set[Peer] = set()
        # The final counters of every closed peer, so totals stay monotonic without them.
        self._retired: MediaCounters = Counter()

    def __len__(self) -> int:
        return len(self._peers)

    def create_peer(self, name: str, on_state: StateHandler) -> Peer:
        peer = Peer(name, self.settings, on_state)
        self._peers.add(peer)
        return peer

    async def close_peer(self, peer: Peer) -> None:
        try:
            await peer.close()
        finally:
            self._retire(peer)

    def _retire(self, peer: Peer) -> None:
        # One synchronous step: a peer is counted either live or retired, never both or neither.
        if peer in self._peers:
            self._peers.remove(peer)
            self._retired.update(peer.counters())

    def counters(self) -> MediaCounters:
        """Media counters of every peer there ever was: the retired plus the live ones now."""
        values = Counter(self._retired)
        for peer in self._peers:
            values.update(peer.counters())
        return values

    @staticmethod
    def pair(a: Peer, b: Peer) -> None:
        """Send each one's media to the other, starting at a fresh keyframe."""
        for kind in KINDS:
            _watch(a, b, kind)
            _watch(b, a, kind)

    @staticmethod
    def unpair(a: Peer, b: Peer) -> None:
        """Stop forwarding between a and b (each keeps its connection)."""
        for viewer, source in ((a, b), (b, a)):
            for kind in KINDS:
                subscriber = viewer.subscribers.get(kind)
                if subscriber is not None and subscriber.source is source.publishers.get(kind):
                    subscriber.detach()

    async def close(self) -> None:
        peers = list(self._peers)
        await asyncio.gather(*(self.close_peer(peer) for peer in peers), return_exceptions=True)
        await self.bridge.close()


def _watch(viewer: Peer, source: Peer, kind: str) -> None:
    subscriber = viewer.subscribers.get(kind)
    publisher = source.publishers.get(kind)
    if subscriber is None or publisher is None:
        logger.warning("%r cannot receive %s from %r: no such track", viewer, kind, source)
        return
    subscriber.attach(publisher)
