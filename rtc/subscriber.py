"""A Subscriber: what the relay sends down to one peer for one kind of media.

It is the track behind one of the server's RTCRtpSenders for the whole visit.
Its source (a Publisher) changes with every new partner, but what leaves it is
one continuous stream: timestamps keep moving forward with the wall clock, and
aiortc's sender keeps numbering packets in sequence.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.frame import Frame

from rtc.media import EncodedFrame, same_codec
from rtc.publisher import Publisher

logger = logging.getLogger(__name__)

# How much may wait for the sender before the oldest goes. About half a second
# of video or audio: a slow link loses frames rather than growing memory or delay.
MAX_QUEUED = {"video": 16, "audio": 25}
# The smallest gap between the last frame of one partner and the first of the
# next, so the browser's jitter buffer never sees time step back.
MIN_SWITCH_GAP = 0.02


class Subscriber(MediaStreamTrack):
    """A send track fed by whichever Publisher it is attached to."""

    def __init__(self, name: str, kind: str, *, transcode: bool = False) -> None:
        super().__init__()
        # Always decode and re-encode (the benchmark's baseline), even when codecs meet.
        self._transcode = transcode
        self.kind = kind
        self.name = name
        # The codec negotiated for sending to this peer; set once the answer exists.
        self.codec: RTCRtpCodecParameters | None = None
        self.forwarded = 0
        self.dropped = 0
        self.keyframe_requests = 0
        self._event_loop = asyncio.get_running_loop()
        self._queue: deque[av.Packet[Any] | Frame] = deque()
        self._max_queued = MAX_QUEUED[kind]
        self._ready = asyncio.Event()
        self._source: Publisher | None = None
        self._decoding = False
        self._need_keyframe = kind == "video"
        self._force_encoder_keyframe: Callable[[], None] | None = None
        # Timestamp rebasing (in `_clock` units): out = source timestamp + offset.
        self._clock = 90000 if kind == "video" else 48000
        self._time_base = Fraction(1, self._clock)
        # The last publisher codec found to match ours (frames pass as they are).
        self._forwardable: RTCRtpCodecParameters | None = None
        self._offset: int | None = None
        self._last_out: int | None = None
        self._last_out_at = 0.0

    def __repr__(self) -> str:
        return f"<Subscriber {self.name}/{self.kind}>"

    @property
    def source(self) -> Publisher | None:
        return self._source

    def set_codec(
        self, codec: RTCRtpCodecParameters | None, force_encoder_keyframe: Callable[[], None]
    ) -> None:
        self.codec = codec
        if codec is not None:
            self._clock = codec.clockRate
            self._time_base = Fraction(1, self._clock)
        self._forwardable = None
        self._force_encoder_keyframe = force_encoder_keyframe

    # -- source ----------------------------------------------------------

    def attach(self, publisher: Publisher) -> None:
        """Forward `publisher` from now on, starting at its next keyframe."""
        self.detach()
        self._source = publisher
        self._offset = None
        self._need_keyframe = self.kind == "video"
        publisher.add_subscriber(self)
        # Chromium sends keyframes rarely on its own: ask now, so the new
        # partner's first picture does not wait for the next natural one.
        publisher.request_keyframe()

    def detach(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.remove_subscriber(self)
        self._decoding = False
        self._queue.clear()

    # -- frames in -------------------------------------------------------

    def push_encoded(self, frame: EncodedFrame) -> None:
        if self._decoding or self.readyState != "live":
            return
        if frame.codec is not self._forwardable and self.codec is not None:
            if self._transcode or not same_codec(frame.codec, self.codec):
                self._start_decoding(frame.codec)
                return
            # aiortc hands over the same codec object with every frame of a
            # stream: compare once, not per frame.
            self._forwardable = frame.codec
        if self._need_keyframe:
            if not frame.keyframe:
                # Undecodable without the frames before it; counted as dropped.
                self.dropped += 1
                self._request_keyframe()
                return
            self._need_keyframe = False
        packet = av.Packet(frame.data)
        packet.pts = self._rebase(frame.timestamp, frame.codec.clockRate)
        packet.time_base = self._time_base
        self._enqueue(packet)

    def push_decoded(self, frame: Frame) -> None:
        if not self._decoding or self.readyState != "live" or frame.pts is None:
            return
        time_base = frame.time_base
        if time_base is None:
            return
        # Rebase in our clock: pts * time_base seconds, expressed in 1/_clock.
        clock = time_base.denominator // max(time_base.numerator, 1)
        frame.pts = self._rebase(frame.pts, clock)
        frame.time_base = self._time_base
        self._enqueue(frame)

    def _start_decoding(self, publisher_codec: RTCRtpCodecParameters) -> None:
        assert self.codec is not None
        if self._source is None:
            return
        if not self._transcode:
            logger.warning(
                "%r: codecs do not meet (%s in, %s out); decoding and re-encoding this direction",
                self,
                publisher_codec.mimeType,
                self.codec.mimeType,
            )
        self._decoding = True
        self._offset = None
        self._source.decode_for(self)

    def _rebase(self, timestamp: int, clock: int) -> int:
        if clock != self._clock:
            timestamp = timestamp * self._clock // clock
        now = self._event_loop.time()
        if self._offset is None:
            if self._last_out is None:
                self._offset = -timestamp
            else:
                gap = max(MIN_SWITCH_GAP, now - self._last_out_at)
                self._offset = self._last_out + round(gap * self._clock) - timestamp
        out = timestamp + self._offset
        if self._last_out is not None and out < self._last_out:
            # The source's clock stepped back (a restarted browser encoder):
            # continue from where we are instead of jumping backwards.
            self._offset += self._last_out - out
            out = self._last_out
        self._last_out = out
        self._last_out_at = now
        return out

    def _enqueue(self, item: av.Packet[Any] | Frame) -> None:
        if len(self._queue) >= self._max_queued:
            if self.kind == "video":
                # Later frames depend on the ones we would drop: start over at a keyframe.
                self.dropped += len(self._queue) + 1
                self._queue.clear()
                self._need_keyframe = True
                self._request_keyframe()
                return
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(item)
        self._ready.set()

    # -- keyframes -------------------------------------------------------

    def _request_keyframe(self) -> None:
        if self._decoding:
            if self._force_encoder_keyframe is not None:
                self._force_encoder_keyframe()
        elif self._source is not None:
            self._source.request_keyframe()

    def on_keyframe_request(self) -> None:
        """The receiving browser sent PLI/FIR to our sender."""
        self.keyframe_requests += 1
        self._request_keyframe()

    # -- MediaStreamTrack ------------------------------------------------

    async def recv(self) -> av.Packet[Any] | Frame:  # type: ignore[override]
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        self.forwarded += 1
        return self._queue.popleft()

    def stop(self) -> None:
        self.detach()
        super().stop()
        # Wake a pending recv() so the sender's loop ends.
        self._ready.set()
