"""A Watcher: a moderator's receive-only connection showing other peers' media.

It is a third partner that sends nothing: its Subscribers attach to the
watched peers' Publishers like any partner's, so frames are forwarded as they
arrive (no decoding) and the watched pair's own streams are not touched. A
person on another node is watched the same way, through the sources the pipe
brings (moderation/remote.py): anything `Watched`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription

from rtc import aiortc_seam
from rtc.peer import KINDS, PeerError, PeerSettings
from rtc.source import Source
from rtc.subscriber import Subscriber

logger = logging.getLogger(__name__)


class Watched(Protocol):
    """Someone to watch: a local Peer, or another node's person arriving by pipe."""

    @property
    def name(self) -> str: ...

    @property
    def publishers(self) -> Mapping[str, Source]: ...


class Watcher:
    """One moderator connection receiving audio and video of up to two peers.

    The offer carries, per watched peer, one audio and one video m-line
    (receive-only), in the order of `peers`.
    """

    def __init__(self, moderator: str, settings: PeerSettings | None = None) -> None:
        self.id = secrets.token_urlsafe(9)
        self.moderator = moderator
        self.watched: list[str] = []
        self.subscribers: list[Subscriber] = []
        # Each subscriber with the watched person it shows (a Peer's name is its session id).
        self._shows: list[tuple[str, Subscriber]] = []
        self._settings = settings if settings is not None else PeerSettings()
        self._pc: RTCPeerConnection | None = None
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        # Run once at close, whatever closes it (feeds from other nodes to release).
        self._on_close: list[Callable[[], Awaitable[None]]] = []

    def __repr__(self) -> str:
        return f"<Watcher {self.id} by {self.moderator} of {self.watched}>"

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await `callback()` when the watcher closes (stopped, or its connection ended)."""
        self._on_close.append(callback)

    async def answer(self, offer_sdp: str, peers: Sequence[Watched]) -> str:
        try:
            parsed = SessionDescription.parse(offer_sdp)
        except Exception as exc:
            raise PeerError("bad_sdp", f"the offer is not valid SDP: {exc}") from exc
        kinds = [m.kind for m in parsed.media]
        for kind in KINDS:
            if kinds.count(kind) < len(peers):
                raise PeerError("bad_sdp", f"the offer needs {len(peers)} {kind} m-lines")
        # aiortc's default "balanced" policy gives a second m-line of the same kind
        # the first one's transport before BUNDLE replaces it, leaving that
        # m-line on a dead transport; max-bundle puts every m-line on one.
        pc = self._pc = RTCPeerConnection(
            RTCConfiguration(
                iceServers=self._settings.ice_servers(), bundlePolicy=RTCBundlePolicy.MAX_BUNDLE
            )
        )
        pc.on("connectionstatechange", self._on_connection_state)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        keyframe_hooks = []
        # addTrack takes the first transceiver of its kind without a track, so
        # adding in peer order fills the m-lines in offer order.
        for peer in peers:
            self.watched.append(peer.name)
            for kind in KINDS:
                subscriber = Subscriber(f"watch:{peer.name}", kind)
                # A moderator must see what is hidden from the partner.
                subscriber.sees_held = True
                sender = pc.addTrack(subscriber)
                subscriber.set_output(aiortc_seam.PacketSender(sender))
                self._shows.append((peer.name, subscriber))
                hook = aiortc_seam.on_keyframe_request(sender, subscriber.on_keyframe_request)
                self.subscribers.append(subscriber)
                keyframe_hooks.append((subscriber, sender, hook))
        hosts = self._settings.host_addresses
        if hosts is not None:
            aiortc_seam.offer_addresses(pc, hosts.local, hosts.advertised)
        await pc.setLocalDescription(await pc.createAnswer())
        by_sender = {id(t.sender): t for t in pc.getTransceivers()}
        for (subscriber, sender, hook), peer in zip(
            keyframe_hooks, [p for p in peers for _ in KINDS], strict=True
        ):
            transceiver = by_sender[id(sender)]
            subscriber.set_codec(aiortc_seam.negotiated_codec(transceiver), hook)
            publisher = peer.publishers.get(subscriber.kind)
            if publisher is not None:
                subscriber.attach(publisher)
        return str(pc.localDescription.sdp)

    def follow(self, peer: Watched) -> None:
        """Show `peer` from now on where this watcher showed someone of that name.

        A watched person's media connection can be replaced (a changed network); the
        watcher goes on with the new one, from its next keyframe, like their partner.
        """
        if self._closed:
            return
        for name, subscriber in self._shows:
            if name != peer.name:
                continue
            publisher = peer.publishers.get(subscriber.kind)
            if publisher is not None and subscriber.source is not publisher:
                subscriber.attach(publisher)

    def _on_connection_state(self) -> None:
        if self._pc is not None and self._pc.connectionState in ("failed", "closed"):
            self._close_task = asyncio.ensure_future(self.close())

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        logger.info(
            "%r closed: %s",
            self,
            ", ".join(
                f"{s!r} forwarded {s.forwarded} dropped {s.dropped}" for s in self.subscribers
            ),
        )
        for subscriber in self.subscribers:
            subscriber.stop()
        pc, self._pc = self._pc, None
        if pc is not None:
            await pc.close()
        for callback in self._on_close:
            try:
                await callback()
            except Exception:
                logger.exception("%r: a close callback failed", self)
