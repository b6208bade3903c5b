"""A Peer: one user's RTCPeerConnection with the server, for their whole visit."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

from rtc import aiortc_seam
from rtc.candidate import MAX_REMOTE_CANDIDATES, CandidateError, check_candidate
from rtc.host_addresses import HostAddresses
from rtc.mux import MediaMux
from rtc.offer import KINDS as KINDS
from rtc.offer import OfferError, check_offer
from rtc.publisher import Publisher
from rtc.subscriber import Subscriber

logger = logging.getLogger(__name__)

# What `Peer.counters()` counts for each kind (signalling/metrics.py exports relay_<name>_total).
COUNTER_NAMES = (
    "received_frames",
    "received_bytes",
    "forwarded_frames",
    "forwarded_packets",
    "forwarded_bytes",
    "dropped_frames",
    "keyframe_requests_received",
    "keyframe_requests_sent",
)
# (name from COUNTER_NAMES, kind) -> count.
MediaCounters = Counter[tuple[str, str]]


class PeerError(Exception):
    """The client's offer or candidate cannot be used; `code` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class MediaState(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    # Failed, closed, silent for too long, or never connected in time.
    LOST = "lost"


def _no_ice_servers() -> list[RTCIceServer]:
    return []


@dataclass(frozen=True)
class PeerSettings:
    # Called per connection: TURN credentials, when the server uses TURN, are minted per use.
    ice_servers: Callable[[], list[RTCIceServer]] = _no_ice_servers
    # Which local addresses to gather on and announce (rtc/host_addresses.py); None: aioice's own.
    host_addresses: HostAddresses | None = None
    keyframe_interval: float = 0.5
    media_timeout: float = 5.0
    connect_timeout: float = 20.0
    watchdog_interval: float = 0.5
    # Decode and re-encode every frame instead of forwarding it (a baseline to measure against).
    transcode: bool = False
    # The shared media port(s) every connection gathers on; None: a socket per connection.
    media: MediaMux | None = None


StateHandler = Callable[["Peer", MediaState, str], None]


class Peer:
    """Owns one RTCPeerConnection: its publishers (what the user sends) and
    subscribers (what the server sends back, whoever the partner is)."""

    def __init__(self, name: str, settings: PeerSettings, on_state: StateHandler) -> None:
        self.name = name
        self.state = MediaState.CONNECTING
        self.publishers: dict[str, Publisher] = {}
        self.subscribers: dict[str, Subscriber] = {}
        # Our RTP sending per kind (it counts the packets and bytes that left).
        self._outputs: dict[str, aiortc_seam.PacketSender] = {}
        # What media objects this peer has let go of had counted.
        self._discarded: MediaCounters = Counter()
        self._settings = settings
        self._on_state = on_state
        self._loop = asyncio.get_running_loop()
        self._pc: RTCPeerConnection | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._answered_at = 0.0
        self._connected_at: float | None = None
        self._closed = False
        # Remote candidates given so far (in the offer and trickled).
        self._remote_candidates = 0

    def __repr__(self) -> str:
        return f"<Peer {self.name} {self.state.value}>"

    @property
    def connection(self) -> RTCPeerConnection | None:
        return self._pc

    async def answer(self, offer_sdp: str) -> str:
        """Apply the client's offer and return the server's answer SDP.

        The answer carries a send track for audio and for video, so partner
        changes never need renegotiation.
        """
        if self._pc is not None:
            raise PeerError("bad_state", "this connection already has a media session")
        try:
            checked = check_offer(offer_sdp)
        except OfferError as exc:
            raise PeerError("bad_sdp", str(exc)) from None
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._settings.ice_servers()))
        self._pc = pc
        self._remote_candidates = checked.candidates
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            return await self._negotiate(pc, checked.sdp)
        except BaseException:
            # Leave nothing half-built: the client may send a corrected offer.
            await self._discard_media()
            raise

    async def _negotiate(self, pc: RTCPeerConnection, offer_sdp: str) -> str:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except Exception as exc:  # aiortc raises ValueError, OperationError, KeyError...
            raise PeerError(
                "bad_sdp", f"the offer was rejected: {exc or type(exc).__name__}"
            ) from exc
        encoder_keyframe = {}
        for transceiver in pc.getTransceivers():
            kind = transceiver.kind
            self.publishers[kind] = Publisher(
                self.name,
                kind,
                transceiver.receiver,
                keyframe_interval=self._settings.keyframe_interval,
            )
            subscriber = Subscriber(self.name, kind, transcode=self._settings.transcode)
            self.subscribers[kind] = subscriber
            sender = pc.addTrack(subscriber)
            output = self._outputs[kind] = aiortc_seam.PacketSender(sender)
            subscriber.set_output(output)
            encoder_keyframe[kind] = aiortc_seam.on_keyframe_request(
                sender, subscriber.on_keyframe_request
            )
        hosts = self._settings.host_addresses
        if self._settings.media is not None:
            # The shared sockets were bound on the chosen addresses, announced as configured.
            aiortc_seam.use_media_mux(pc, self._settings.media)
        elif hosts is not None:
            aiortc_seam.offer_addresses(pc, hosts.local, hosts.advertised)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            # rtc/offer.py should have refused this offer: say so, without a traceback.
            logger.error("%r: aiortc could not answer a checked offer: %r", self, exc)
            raise PeerError("bad_sdp", "the offer could not be answered") from exc
        for transceiver in pc.getTransceivers():
            self.subscribers[transceiver.kind].set_codec(
                aiortc_seam.negotiated_codec(transceiver), encoder_keyframe[transceiver.kind]
            )
            # Transports are final now, and no media has flowed yet.
            self.publishers[transceiver.kind].start_receiving()
        self._answered_at = self._loop.time()
        self._watchdog = asyncio.create_task(self._watch(), name=f"watchdog {self.name}")
        return pc.localDescription.sdp

    async def add_candidate(
        self, candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> None:
        if self._pc is None:
            raise PeerError("bad_state", "send the offer before ICE candidates")
        if self._remote_candidates >= MAX_REMOTE_CANDIDATES:
            raise PeerError(
                "bad_candidate",
                f"at most {MAX_REMOTE_CANDIDATES} remote candidates per connection",
            )
        try:
            parsed = candidate_from_sdp(check_candidate(candidate))
        except CandidateError as exc:
            raise PeerError("bad_candidate", f"the ICE candidate is not usable: {exc}") from None
        self._remote_candidates += 1
        parsed.sdpMid = sdp_mid
        parsed.sdpMLineIndex = sdp_mline_index
        if sdp_mid is None and sdp_mline_index is None:
            parsed.sdpMLineIndex = 0
        try:
            await self._pc.addIceCandidate(parsed)
        except Exception as exc:
            raise PeerError("bad_candidate", f"the ICE candidate was rejected: {exc}") from exc

    # -- counters --------------------------------------------------------

    def counters(self) -> MediaCounters:
        """Everything this peer's media counted so far; it never goes down, even after close."""
        values = Counter(self._discarded)
        values.update(self._media_counters())
        return values

    def _media_counters(self) -> MediaCounters:
        values: MediaCounters = Counter()
        for kind, publisher in self.publishers.items():
            values["received_frames", kind] += publisher.frames
            values["received_bytes", kind] += publisher.bytes
            values["keyframe_requests_sent", kind] += publisher.keyframe_requests
        for kind, subscriber in self.subscribers.items():
            values["forwarded_frames", kind] += subscriber.forwarded
            values["dropped_frames", kind] += subscriber.dropped
            values["keyframe_requests_received", kind] += subscriber.keyframe_requests
        for kind, output in self._outputs.items():
            values["forwarded_packets", kind] += output.packets
            values["forwarded_bytes", kind] += output.bytes
        return values

    # -- liveness --------------------------------------------------------

    def _on_connection_state(self) -> None:
        if self._pc is None:
            return
        state = self._pc.connectionState
        logger.debug("%r: connection %s", self, state)
        if state == "connected":
            self._set_state(MediaState.CONNECTED, "connected")
        elif state in ("failed", "closed"):
            self._set_state(MediaState.LOST, f"media connection {state}")

    def _set_state(self, state: MediaState, why: str) -> None:
        if self.state == state or self.state == MediaState.LOST or self._closed:
            return
        self.state = state
        if state == MediaState.CONNECTED:
            self._connected_at = self._loop.time()
        logger.info("%r: %s", self, why)
        self._on_state(self, state, why)

    def last_media_at(self) -> float | None:
        times = [p.last_frame_at for p in self.publishers.values() if p.last_frame_at is not None]
        return max(times) if times else None

    async def _watch(self) -> None:
        """Declare the media lost when it never connects or goes silent."""
        settings = self._settings
        while self.state != MediaState.LOST:
            await asyncio.sleep(settings.watchdog_interval)
            now = self._loop.time()
            if self.state == MediaState.CONNECTING:
                if now - self._answered_at > settings.connect_timeout:
                    self._set_state(MediaState.LOST, "media did not connect in time")
                continue
            last = self.last_media_at() or self._connected_at or now
            if now - last > settings.media_timeout:
                self._set_state(MediaState.LOST, f"no media for {now - last:.1f} s")

    # -- lifecycle -------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._discard_media()

    async def _discard_media(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
            self._watchdog = None
        try:
            for subscriber in self.subscribers.values():
                subscriber.stop()
            for publisher in self.publishers.values():
                await publisher.close()
            pc, self._pc = self._pc, None
            if pc is not None:
                await _close_connection(pc)
        finally:
            # Packets keep arriving until the connection is closed: read the
            # final numbers after that, in the step that lets the objects go.
            self._discarded.update(self._media_counters())
            self.subscribers.clear()
            self.publishers.clear()
            self._outputs.clear()


async def _close_connection(pc: RTCPeerConnection) -> None:
    """Close `pc`; when aiortc's close() fails half-way, stop what it did not."""
    try:
        await pc.close()
        return
    except Exception as exc:
        # Never call close() again: it would wait forever for the failed first call.
        logger.warning("closing a media connection failed (%r); stopping its transports", exc)
    for transceiver in pc.getTransceivers():
        parts: list[Any] = [transceiver]
        for dtls in {transceiver.receiver.transport, transceiver.sender.transport}:
            if dtls is not None:
                parts += [dtls, dtls.transport]  # the ICE transport holds the sockets
        for part in parts:
            try:
                await part.stop()
            except Exception as exc:
                logger.warning("stopping %r failed: %r", part, exc)
