"""A Subscriber: what the relay sends down to one peer for one kind of media.

It is the track behind one of the server's RTCRtpSenders for the whole visit.
Its source (a Publisher) changes with every new partner, but what leaves it is
one continuous stream: sequence numbers, timestamps and VP8 picture ids carry
on from the previous partner's, so the browser sees one stream that paused,
never one that jumped back.

Packets are forwarded one by one with their header rewritten. Only when the
publisher's codec cannot be sent as it is (or in the benchmark's transcode
mode) are frames decoded, queued here, and re-encoded by aiortc.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Protocol

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.frame import Frame

from rtc.media import same_codec
from rtc.rtp import RtpView, read_vp8_picture_id
from rtc.source import Source

if TYPE_CHECKING:
    from rtc._fastpath import Lane

logger = logging.getLogger(__name__)

# How many decoded frames may wait for the encoder before the oldest goes.
# About half a second: a slow encoder loses frames rather than growing delay.
MAX_QUEUED = {"video": 16, "audio": 25}
# The smallest gap between the last packet of one partner and the first of the
# next, so the browser's jitter buffer never sees time step back.
MIN_SWITCH_GAP = 0.02
_U32 = 0xFFFFFFFF


class PacketOutput(Protocol):
    """Where forwarded packets go (rtc.aiortc_seam.PacketSender)."""

    ready: bool

    @property
    def sequence_number(self) -> int: ...

    def send(
        self,
        payload: bytes,
        marker: bool,
        timestamp: int,
        sequence_number: int | None = None,
        picture_id: int = -1,
    ) -> bool: ...


class Subscriber(MediaStreamTrack):
    """A send track fed by whichever Source (a Publisher, local or piped) it is attached to."""

    def __init__(self, name: str, kind: str, *, transcode: bool = False) -> None:
        super().__init__()
        # Always decode and re-encode (the benchmark's baseline), even when codecs meet.
        self._transcode = transcode
        self.kind = kind
        self.name = name
        # The codec negotiated for sending to this peer; set once the answer exists.
        self.codec: RTCRtpCodecParameters | None = None
        self._forwarded = 0
        self._dropped = 0
        self.keyframe_requests = 0
        self._event_loop = asyncio.get_running_loop()
        self._video = kind == "video"
        self._output: PacketOutput | None = None
        # The native path: the output's Lane (rtc/native/fanout.c) keeps the forwarding
        # state below and forwards the source's packets without Python once `active`.
        self._lane: Lane | None = None
        self._source: Source | None = None
        self._force_encoder_keyframe: Callable[[], None] | None = None
        self._clock = 90000 if self._video else 48000
        self._time_base = Fraction(1, self._clock)
        # The last publisher codec found to match ours (its packets pass as they are).
        self._forwardable: RTCRtpCodecParameters | None = None
        self._vp8 = False
        # Packet forwarding from the current source: waiting for a point to start
        # (a keyframe's first packet for video), then fixed offsets.
        self._need_start = True
        self._first_sequence = 0
        self._sequence_offset = 0
        self._timestamp_in = 0
        self._timestamp_out = 0
        self._picture_id_offset: int | None = None
        self._next_picture_id: int | None = None
        # The output timeline, unwrapped, in `_clock` units: both forwarded
        # packets and re-encoded frames continue from it.
        self._last_out: int | None = None
        self._last_out_at = 0.0
        # Decoded frames waiting for aiortc's encoder (codecs differ, or transcode mode).
        self._decoding = False
        self._offset: int | None = None
        self._queue: deque[Frame] = deque()
        self._max_queued = MAX_QUEUED[kind]
        self._ready = asyncio.Event()
        # A moderator's view: still forwarded while its source is held for review.
        self.sees_held = False

    def __repr__(self) -> str:
        return f"<Subscriber {self.name}/{self.kind}>"

    @property
    def source(self) -> Source | None:
        return self._source

    @property
    def lane(self) -> Lane | None:
        """Where the native path forwards (the PacketSender's Lane), or None."""
        return self._lane

    @property
    def forwarded(self) -> int:
        lane = self._lane
        return self._forwarded + (0 if lane is None else lane.forwarded)

    @property
    def dropped(self) -> int:
        lane = self._lane
        return self._dropped + (0 if lane is None else lane.dropped)

    def set_output(self, output: PacketOutput) -> None:
        self._output = output
        lane: Lane | None = getattr(output, "lane", None)
        self._lane = lane
        if lane is not None:
            lane.video = self._video
            lane.clock = self._clock
            lane.on_keyframe_wanted = self._request_keyframe

    def set_codec(
        self, codec: RTCRtpCodecParameters | None, force_encoder_keyframe: Callable[[], None]
    ) -> None:
        self.codec = codec
        if codec is not None:
            self._clock = codec.clockRate
            self._time_base = Fraction(1, self._clock)
        self._forwardable = None
        self._force_encoder_keyframe = force_encoder_keyframe
        lane = self._lane
        if lane is not None:
            lane.active = False
            lane.clock = self._clock

    # -- source ----------------------------------------------------------

    def attach(self, publisher: Source) -> None:
        """Forward `publisher` (a local Publisher, or a stream from another node)
        from now on, starting at its next keyframe."""
        self.detach()
        self._source = publisher
        self._need_start = True
        self._offset = None
        lane = self._lane
        if lane is not None:
            # Python looks at the new source's codec before the lane forwards it.
            lane.active = False
            lane.restart()
        publisher.add_subscriber(self)
        # Chromium sends keyframes rarely on its own: ask now, so the new
        # partner's first picture does not wait for the next natural one.
        publisher.request_keyframe()

    def restart(self) -> None:
        """Start again at the source's next keyframe (its packets stopped for a while)."""
        self._need_start = True
        self._offset = None
        if self._lane is not None:
            self._lane.restart()

    def detach(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.remove_subscriber(self)
        if self._lane is not None:
            self._lane.active = False
        self._decoding = False
        self._queue.clear()

    # -- packets in ------------------------------------------------------

    def push_packet(self, codec: RTCRtpCodecParameters, view: RtpView, keyframe: bool) -> None:
        """One packet from the source; `keyframe` if it starts a frame that decodes alone."""
        output = self._output
        if self._decoding or output is None or not output.ready or self.readyState != "live":
            return
        if codec is not self._forwardable:
            if self.codec is None:
                return
            if self._transcode or not same_codec(codec, self.codec):
                self._start_decoding(codec)
                return
            # The publisher hands over the same codec object with every
            # packet of a stream: compare once, not per packet.
            self._forwardable = codec
            self._vp8 = codec.name.upper() == "VP8"
        lane = self._lane
        if lane is not None:
            # The codecs meet and the output is ready: from the next packet on the
            # source's Fanout hands this subscriber's packets to the lane in C.
            lane.vp8 = self._vp8
            lane.active = True
            lane.push(view.sequence_number, view.timestamp, view.marker, view.payload, keyframe)
            return
        if self._need_start:
            if self._video and not keyframe:
                # Undecodable without what came before: wait for a keyframe.
                if view.marker:
                    self._dropped += 1
                    self._request_keyframe()
                return
            self._start(view, output.sequence_number)
        elif (view.sequence_number - self._first_sequence) & 0xFFFF >= 0x8000:
            return  # late, from before the point we started at
        sequence_number = (view.sequence_number + self._sequence_offset) & 0xFFFF
        timestamp = self._timestamp(view.timestamp)
        payload = view.payload
        # The output writes the new picture id as it copies the payload (-1: as it is).
        picture_id = self._renumber_picture(payload) if self._vp8 else -1
        if output.send(payload, view.marker, timestamp & _U32, sequence_number, picture_id):
            if view.marker or not self._video:
                self._forwarded += 1
        elif self._video:
            # The socket would not take it: the frame is broken, restart at a keyframe.
            self._dropped += 1
            self._need_start = True
            self._request_keyframe()

    def _start(self, view: RtpView, next_sequence_number: int) -> None:
        self._need_start = False
        self._first_sequence = view.sequence_number
        self._sequence_offset = (next_sequence_number - view.sequence_number) & 0xFFFF
        self._timestamp_in = view.timestamp
        self._timestamp_out = self._continue_timeline()
        self._picture_id_offset = None

    def _continue_timeline(self) -> int:
        """Where the output timeline goes on for a new source: after the last output plus the pause."""
        if self._last_out is None:
            return 0
        gap = max(MIN_SWITCH_GAP, self._event_loop.time() - self._last_out_at)
        return self._last_out + round(gap * self._clock)

    def _timestamp(self, timestamp: int) -> int:
        # Signed distance from the newest timestamp seen: survives the 2**32 wrap and reordering.
        delta = (timestamp - self._timestamp_in) & _U32
        if delta >= 0x80000000:
            delta -= 0x100000000
        out = self._timestamp_out + delta
        if delta > 0:
            self._timestamp_in = timestamp
            self._timestamp_out = out
            self._last_out = out
            self._last_out_at = self._event_loop.time()
        elif self._last_out is None:
            self._last_out = out
            self._last_out_at = self._event_loop.time()
        return out

    def _renumber_picture(self, payload: bytes) -> int:
        """The picture id this packet leaves with, or -1 to leave the payload as it is."""
        picture_id = read_vp8_picture_id(payload)
        if picture_id is None:
            return -1
        offset = self._picture_id_offset
        if offset is None:
            # The first source keeps its own numbering; later ones continue it.
            following = self._next_picture_id
            offset = 0 if following is None else (following - picture_id) & 0x7FFF
            self._picture_id_offset = offset
        out = (picture_id + offset) & 0x7FFF
        following = self._next_picture_id
        if following is None or (out - following) & 0x7FFF < 0x4000:
            self._next_picture_id = (out + 1) & 0x7FFF
        return -1 if offset == 0 else out

    # -- decoded frames in (codecs differ) -------------------------------

    def push_decoded(self, frame: Frame) -> None:
        if not self._decoding or self.readyState != "live" or frame.pts is None:
            return
        time_base = frame.time_base
        if time_base is None:
            return
        # Rebase in our clock: pts * time_base seconds, expressed in 1/_clock.
        clock = time_base.denominator // max(time_base.numerator, 1)
        lane = self._lane
        if lane is not None:
            # The output timeline is the lane's: forwarded packets moved it last.
            self._last_out, self._last_out_at = lane.last_out, lane.last_out_at
        frame.pts = self._rebase(frame.pts, clock)
        if lane is not None:
            lane.last_out, lane.last_out_at = self._last_out, self._last_out_at
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
        if self._lane is not None:
            self._lane.active = False
        self._source.decode_for(self)

    def _rebase(self, timestamp: int, clock: int) -> int:
        if clock != self._clock:
            timestamp = timestamp * self._clock // clock
        if self._offset is None:
            self._offset = self._continue_timeline() - timestamp
        out = timestamp + self._offset
        if self._last_out is not None and out < self._last_out:
            # The source's clock stepped back (a restarted browser encoder):
            # continue from where we are instead of jumping backwards.
            self._offset += self._last_out - out
            out = self._last_out
        self._last_out = out
        self._last_out_at = self._event_loop.time()
        return out

    def _enqueue(self, frame: Frame) -> None:
        if len(self._queue) >= self._max_queued:
            self._queue.popleft()
            self._dropped += 1
            if self._video:
                # The encoder will predict from a frame it never saw: ask it for a keyframe.
                self._request_keyframe()
        self._queue.append(frame)
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

    # -- MediaStreamTrack (decoded frames only) --------------------------

    async def recv(self) -> Frame:  # type: ignore[override]
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        self._forwarded += 1
        return self._queue.popleft()

    def stop(self) -> None:
        self.detach()
        super().stop()
        # Wake a pending recv() so the sender's loop ends.
        self._ready.set()
