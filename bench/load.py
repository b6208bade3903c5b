"""Load clients: aiortc peers that send pre-encoded media and time what arrives, undecoded.

A :class:`LoadPeer` is one RTCPeerConnection. It sends the loops of
:mod:`bench.media` (no encoder runs) and takes what it receives packet by
packet through :func:`rtc.aiortc_seam.receive_packets`, the relay's own
receive path, so every frame is reassembled from its packets, logged with its
arrival time and RTP timestamp and never decoded; its senders are the relay's
:class:`rtc.aiortc_seam.PacketSender` too. The clients are as cheap as the
relay knows how to be, so the machine's CPU goes to what is measured. What the
logs mean is worked out afterwards, by :mod:`bench.analysis`.

A :class:`RelayUser` is a visitor of our server (a LoadPeer plus the
signalling WebSocket of docs/protocol.md); :func:`connect_direct` wires two
LoadPeers straight to each other, the baseline the relay's added latency is
read against. bench/janus.py drives the same LoadPeers through Janus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from bench.media import LoadMedia, LoopAudioTrack, LoopVideoTrack, SendLog
from rtc import aiortc_seam
from rtc.media import FrameAssembler
from rtc.rtp import RtpView

Message = dict[str, Any]

# The server answers in milliseconds; these only bound a broken run.
SIGNALLING_TIMEOUT = 20.0


@dataclass
class ReceiveLog:
    """What one load client received: ``(monotonic arrival, RTP timestamp, bytes)`` per video frame.

    The timestamp is unwrapped and counted from the first frame this receiver
    saw (as aiortc's own receiver does); only differences between timestamps
    carry meaning.
    """

    video: list[tuple[float, int, int]] = field(default_factory=list)
    audio_frames: int = 0


def _preferred(kind: str, name: str) -> list[Any]:
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [c for c in codecs if c.mimeType.lower() == f"{kind}/{name}"]
    return chosen + [c for c in codecs if c.mimeType.lower() == f"{kind}/rtx"]


class LoadPeer:
    """One load client's peer connection: pre-encoded media out, timed frames in.

    ``send=False`` makes a receive-only connection and ``receive=False`` a
    send-only one (Janus publishes and subscribes on separate connections).
    """

    def __init__(
        self,
        media: LoadMedia,
        *,
        tag: int,
        send: bool = True,
        receive: bool = True,
        sent: SendLog | None = None,
        received: ReceiveLog | None = None,
    ) -> None:
        self.tag = tag
        self.sent = sent if sent is not None else SendLog()
        self.received = received if received is not None else ReceiveLog()
        self.pc = RTCPeerConnection()
        self._media = media
        self._send = send
        self._receive = receive
        self._listening: set[int] = set()
        self._video_frames = FrameAssembler(video=True)
        self.video: LoopVideoTrack | None = None
        self.audio: LoopAudioTrack | None = None
        if send:
            self.video = LoopVideoTrack(media.video, self.sent, random.Random(tag))
            self.audio = LoopAudioTrack(media.audio, self.sent)

    # -- negotiation -------------------------------------------------------

    async def offer(self) -> str:
        """Create the offer; aiortc gathers every candidate first, so nothing trickles."""
        if self._send:
            self._add_tracks()
            if not self._receive:
                for transceiver in self.pc.getTransceivers():
                    transceiver.direction = "sendonly"
        else:
            for kind in ("audio", "video"):
                self.pc.addTransceiver(kind, direction="recvonly")
        self._prefer_vp8()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        # Only now are the transports final (the answer may bundle them).
        self._listen()

    async def answer(self, offer_sdp: str) -> str:
        """Answer someone else's offer (a direct partner, or Janus offering a subscription)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        if self._send:
            self._add_tracks()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._listen()
        return str(self.pc.localDescription.sdp)

    def _add_tracks(self) -> None:
        assert self.video is not None and self.audio is not None
        aiortc_seam.PacketSender(self.pc.addTrack(self.audio))
        sender = self.pc.addTrack(self.video)
        aiortc_seam.PacketSender(sender)
        # The relay's PLI must become a keyframe: aiortc's own handling only
        # flags its encoder, and these tracks send packets.
        aiortc_seam.on_keyframe_request(sender, self.video.request_keyframe)

    def _prefer_vp8(self) -> None:
        # The loops are VP8: never let another codec be negotiated.
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video":
                transceiver.setCodecPreferences(_preferred("video", "vp8"))

    def _listen(self) -> None:
        if not self._receive:
            return
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if id(receiver) in self._listening:
                continue
            self._listening.add(id(receiver))
            if transceiver.kind == "video":
                aiortc_seam.receive_packets(receiver, self._on_video)
            else:
                aiortc_seam.receive_packets(receiver, self._on_audio)

    def _on_video(self, codec: RTCRtpCodecParameters, view: RtpView) -> None:
        frame = self._video_frames.add(codec, view)
        if frame is not None:
            self.received.video.append((time.monotonic(), frame.timestamp, len(frame.data)))

    def _on_audio(self, codec: RTCRtpCodecParameters, view: RtpView) -> None:
        self.received.audio_frames += 1

    async def wait_connected(self, timeout: float = SIGNALLING_TIMEOUT) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while self.pc.connectionState != "connected":
                if self.pc.connectionState in ("failed", "closed"):
                    raise ConnectionError(f"media connection {self.pc.connectionState}")
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        for track in (self.video, self.audio):
            if track is not None:
                track.stop()
        await self.pc.close()


async def connect_direct(a: LoadPeer, b: LoadPeer) -> None:
    """Connect two load peers to each other, with no server in between."""
    offer = await a.offer()
    await a.accept(await b.answer(offer))
    await asyncio.gather(a.wait_connected(), b.wait_connected())


class RelayUser:
    """A visitor of the relay: one LoadPeer and the signalling WebSocket.

    ``events`` logs ``(monotonic time, what)`` for what the analysis needs:
    ``start`` and ``next`` sent, ``matched`` and ``partner_left`` received.
    """

    def __init__(self, url: str, media: LoadMedia, *, tag: int) -> None:
        self.url = url
        self.tag = tag
        self.peer = LoadPeer(media, tag=tag)
        self.events: list[tuple[float, str]] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inbox: dict[str, asyncio.Queue[Message]] = {}
        self._closed = asyncio.Event()

    async def connect(self, http: aiohttp.ClientSession) -> None:
        """WebSocket, hello, offer, answer, connected media."""
        self._ws = await http.ws_connect(self.url, heartbeat=None)
        self._reader = asyncio.create_task(self._read(), name=f"load user {self.tag}")
        await self.wait_for("hello")
        await self.send({"type": "offer", "sdp": await self.peer.offer()})
        answer = await self.wait_for("answer")
        await self.peer.accept(str(answer["sdp"]))
        await self.peer.wait_connected()

    async def send(self, message: Message) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps(message))

    async def start(self) -> None:
        self.events.append((time.monotonic(), "start"))
        await self.send({"type": "start"})

    async def next(self) -> None:
        self.events.append((time.monotonic(), "next"))
        await self.send({"type": "next"})

    async def wait_for(self, kind: str, timeout: float = SIGNALLING_TIMEOUT) -> Message:  # noqa: ASYNC109
        """The oldest unread message of type ``kind``; raises TimeoutError or ConnectionError."""
        queue = self._inbox.setdefault(kind, asyncio.Queue())
        closed = asyncio.ensure_future(self._closed.wait())
        got = asyncio.ensure_future(queue.get())
        try:
            done, _ = await asyncio.wait(
                {got, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closed.cancel()
            if not got.done():
                got.cancel()
        if got in done:
            return got.result()
        if closed in done:
            raise ConnectionError(f"load user {self.tag}: WebSocket closed before {kind!r}")
        raise TimeoutError(f"load user {self.tag}: no {kind!r} within {timeout} s")

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                kind = str(message.get("type"))
                if kind in ("matched", "partner_left"):
                    self.events.append((time.monotonic(), kind))
                elif kind == "error":
                    self.events.append((time.monotonic(), f"error:{message.get('code')}"))
                self._inbox.setdefault(kind, asyncio.Queue()).put_nowait(message)
        finally:
            self._closed.set()

    async def close(self) -> None:
        await self.peer.close()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
