"""Every use of aiortc's private names, in one place.

aiortc always decodes what it receives and has no public API for encoded
frames (aiortc issues #449, #544). The relay needs four things aiortc keeps
private:

1. the complete encoded frames its receiver reassembles (we replace the
   receiver's decoder queue with a `ReceiverTap`, which sees each frame on the
   event loop before deciding whether the decoder thread gets it at all);
2. sending a PLI upstream to the publisher's browser;
3. catching the PLI/FIR a subscriber's browser sends to our sender, which
   aiortc would otherwise turn into a "force keyframe" flag that packets ignore;
4. the codec negotiated for a transceiver.

tests/test_aiortc_seam.py exercises each of these against the installed aiortc,
so an upgrade that renames or reshapes them fails loudly there. setup.cfg pins
aiortc to the minor version those tests pass on.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from typing import Any, Protocol

from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from av.frame import Frame

logger = logging.getLogger(__name__)

# Private attribute names, spelled out so a reader can grep aiortc for them.
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_REMOTE_STREAMS = "_RTCRtpReceiver__remote_streams"
_RTX_SSRC = "_RTCRtpReceiver__rtx_ssrc"
_SEND_PLI = "_send_rtcp_pli"
_SEND_KEYFRAME = "_send_keyframe"
_CODECS = "_codecs"

# Decoded-on-demand frames waiting for aiortc's decoder thread. Beyond this the
# decoder is behind; dropping is better than growing.
DECODER_BACKLOG = 8


class SeamError(RuntimeError):
    """The installed aiortc no longer has the private names this module relies on."""


class EncodedFrameLike(Protocol):
    """What aiortc's jitter buffer produces: one complete encoded frame."""

    data: bytes
    timestamp: int


FrameHandler = Callable[[RTCRtpCodecParameters, EncodedFrameLike], None]


class ReceiverTap:
    """Stands in for an `RTCRtpReceiver`'s decoder queue.

    aiortc calls `put((codec, frame))` on the event loop for every reassembled
    frame, and its decoder thread calls `get()`. Frames go to `on_frame`
    first; the decoder thread only sees them while `decode` is on, so
    passthrough costs no decoding at all.
    """

    def __init__(self, receiver: RTCRtpReceiver, on_frame: FrameHandler) -> None:
        self._receiver = receiver
        self._on_frame = on_frame
        self._decoder_input: queue.Queue[Any] = queue.Queue()
        self.decode = False
        self.decoder_drops = 0

    def put(self, item: Any) -> None:
        if item is None:
            # aiortc's way of ending the decoder thread: always pass it on.
            self._decoder_input.put(None)
            return
        codec, frame = item
        try:
            self._on_frame(codec, frame)
        except Exception:
            # A bug in forwarding must not kill aiortc's receive path.
            logger.exception("frame handler failed")
        if self.decode:
            if self._decoder_input.qsize() < DECODER_BACKLOG:
                self._decoder_input.put(item)
            else:
                self.decoder_drops += 1

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self._decoder_input.get(block, timeout)

    def qsize(self) -> int:
        return self._decoder_input.qsize()

    async def next_decoded(self) -> Frame:
        """The next frame aiortc's decoder thread produced (only while `decode` is on).

        Raises MediaStreamError when the receiver has ended.
        """
        frame = await self._receiver.track.recv()
        assert isinstance(frame, Frame)
        return frame

    async def request_keyframe(self) -> int:
        """Send a PLI upstream for every media stream; returns how many were asked."""
        return await send_pli(self._receiver)


class PromptJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, but a frame leaves as soon as it is complete.

    aiortc's own buffer only knows a frame is complete when the first packet
    of the *next* frame arrives, which holds every frame back one frame
    interval (33 ms at 30 fps) before the relay can forward it. A video frame
    is complete when the contiguous packets from its first one reach the
    packet carrying the RTP marker bit (RFC 7741 / RFC 6184: last packet of
    the frame); an audio packet is a whole frame by itself.
    """

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        packets: list[RtpPacket] = []
        timestamp: int | None = None
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]  # type: ignore[operator]
            if packet is None:
                return None
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                # The previous frame ended without a marker (lost or a sender
                # that does not set it): it is complete all the same.
                return self._release(packets, timestamp, count)
            packets.append(packet)
            if packet.marker or not self._is_video:
                return self._release(packets, timestamp, count + 1)
        return None

    def _release(self, packets: list[RtpPacket], timestamp: int, count: int) -> JitterFrame:
        self.remove(count)
        return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)  # type: ignore[attr-defined]


def _require(obj: object, name: str) -> None:
    if not hasattr(obj, name):
        raise SeamError(
            f"aiortc changed: {type(obj).__name__} has no '{name}'; rtc/aiortc_seam.py needs updating"
        )


def tap_receiver(receiver: RTCRtpReceiver, on_frame: FrameHandler) -> ReceiverTap:
    """Route `receiver`'s encoded frames to `on_frame`.

    Must run before the receiver starts (aiortc starts it once DTLS is up,
    after the answer is created), because the decoder thread captures the
    queue when it starts.
    """
    _require(receiver, _DECODER_QUEUE)
    _require(receiver, _DECODER_THREAD)
    if getattr(receiver, _DECODER_THREAD) is not None:
        raise SeamError("tap_receiver() called after the receiver started")
    tap = ReceiverTap(receiver, on_frame)
    setattr(receiver, _DECODER_QUEUE, tap)
    # Forward each frame as soon as it is complete (see PromptJitterBuffer);
    # the browser that finally plays it has its own jitter buffer.
    _require(receiver, _JITTER_BUFFER)
    old = getattr(receiver, _JITTER_BUFFER)
    for name in ("_capacity", "_is_video", "_packets", "_origin"):
        _require(old, name)
    setattr(
        receiver,
        _JITTER_BUFFER,
        PromptJitterBuffer(capacity=old._capacity, prefetch=0, is_video=old._is_video),
    )
    return tap


def media_ssrcs(receiver: RTCRtpReceiver) -> list[int]:
    """SSRCs of the media (not retransmission) streams this receiver has seen."""
    _require(receiver, _REMOTE_STREAMS)
    _require(receiver, _RTX_SSRC)
    rtx: dict[int, int] = getattr(receiver, _RTX_SSRC)
    streams: dict[int, object] = getattr(receiver, _REMOTE_STREAMS)
    return [ssrc for ssrc in streams if ssrc not in rtx]


async def send_pli(receiver: RTCRtpReceiver) -> int:
    """Ask the publisher's browser for a keyframe; returns how many streams were asked."""
    _require(receiver, _SEND_PLI)
    ssrcs = media_ssrcs(receiver)
    for ssrc in ssrcs:
        await getattr(receiver, _SEND_PLI)(ssrc)
    return len(ssrcs)


def on_keyframe_request(sender: RTCRtpSender, handler: Callable[[], None]) -> Callable[[], None]:
    """Call `handler` when the remote browser sends PLI or FIR to `sender`.

    Returns aiortc's own behaviour (force the encoder's next frame to be a
    keyframe), which only matters when the relay re-encodes.
    """
    _require(sender, _SEND_KEYFRAME)
    original: Callable[[], None] = getattr(sender, _SEND_KEYFRAME)
    setattr(sender, _SEND_KEYFRAME, handler)
    return original


def negotiated_codec(transceiver: RTCRtpTransceiver) -> RTCRtpCodecParameters | None:
    """The codec both sides agreed to send with (first of the common codecs)."""
    _require(transceiver, _CODECS)
    codecs: list[RTCRtpCodecParameters] = getattr(transceiver, _CODECS)
    return codecs[0] if codecs else None
