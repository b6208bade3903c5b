"""A Source: one incoming stream of RTP packets, whatever carries it, fanned out to sinks.

A browser's stream (`rtc.publisher.Publisher`) and a stream from another node
(`rtc.pipe.PipePublisher`) are both a `PacketSource`: the same fan-out,
keyframe detection, frame counters, frame listeners for moderation and
rate-limited keyframe requests. A Subscriber types against the `Source`
protocol, so it forwards either one the same way.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import TimestampMapper
from av.frame import Frame

from rtc import packet_path
from rtc.media import EncodedFrame, FrameAssembler
from rtc.rtp import RtpView, starts_keyframe

if TYPE_CHECKING:
    from rtc._fastpath import Lane

logger = logging.getLogger(__name__)

FrameListener = Callable[[EncodedFrame], None]


class PacketSink(Protocol):
    """Takes a source's packets as they arrive (a Subscriber, or a pipe sending them on)."""

    def push_packet(self, codec: RTCRtpCodecParameters, view: RtpView, keyframe: bool) -> None: ...

    def detach(self) -> None: ...


class DecodedSink(PacketSink, Protocol):
    """A sink that can also take decoded frames (when the codecs of both ends differ)."""

    def push_decoded(self, frame: Frame) -> None: ...


class Source(Protocol):
    """What a Subscriber needs from whatever it forwards."""

    name: str
    kind: str
    codec: RTCRtpCodecParameters | None

    def add_subscriber(self, subscriber: PacketSink) -> None: ...

    def remove_subscriber(self, subscriber: PacketSink) -> None: ...

    def request_keyframe(self) -> None: ...

    def decode_for(self, subscriber: DecodedSink) -> None: ...

    def stop_decoding_for(self, subscriber: DecodedSink) -> None: ...


class PacketSource:
    """The shared part of every source: hand each packet to every sink, count, build frames.

    Subclasses feed `_on_packet` and say how a keyframe is asked for upstream
    (`_ask_upstream`, called at most once per `keyframe_interval`).
    """

    def __init__(self, name: str, kind: str, *, keyframe_interval: float) -> None:
        self.name = name
        self.kind = kind
        self.codec: RTCRtpCodecParameters | None = None
        self._codec_name = ""
        self._frames = 0
        self._bytes = 0
        self.keyframe_requests = 0
        self._last_frame_at: float | None = None
        self._loop = asyncio.get_running_loop()
        self._subscribers: set[PacketSink] = set()
        # The same, as a tuple: iterated for every packet, changed only on attach/detach.
        self._fan_out: tuple[PacketSink, ...] = ()
        self._video = kind == "video"
        self._assembler = FrameAssembler(self._video)
        # Called with every EncodedFrame too (moderation: ring buffers, recordings, sampling).
        self._frame_listeners: list[FrameListener] = []
        # Whether complete frames are also wanted for decoding (see `_on_assembled`).
        self._decoding = False
        self._keyframe_interval = keyframe_interval
        self._last_keyframe_request = -math.inf
        self._keyframe_timer: asyncio.TimerHandle | None = None
        self._closed = False
        # Held for review (moderation's nudity blur): only sinks that say
        # `sees_held` (moderators' watchers) get packets; see `hold`.
        self.held = False
        # The native path (rtc/native/fanout.c): counting, keyframe detection and the
        # subscribers' lanes in C; Python sees a packet only when `push` says so.
        self.native_fanout = packet_path.fanout()
        if self.native_fanout is not None:
            self.native_fanout.on_frames = self._on_native_frames
        # The fan-out split for it: sinks with a lane, and sinks Python feeds.
        self._lane_sinks: tuple[tuple[PacketSink, Lane], ...] = ()
        self._python_sinks: tuple[PacketSink, ...] = ()
        # Frames the C assembles carry RTP timestamps: counted from the first, as
        # FrameAssembler counts them.
        self._native_timestamps = TimestampMapper()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}/{self.kind}>"

    # -- counters (the native fan-out's plus Python's) --------------------

    @property
    def frames(self) -> int:
        fanout = self.native_fanout
        return self._frames + (0 if fanout is None else fanout.frames)

    @property
    def bytes(self) -> int:
        fanout = self.native_fanout
        return self._bytes + (0 if fanout is None else fanout.bytes)

    @property
    def last_frame_at(self) -> float | None:
        fanout = self.native_fanout
        native = None if fanout is None else fanout.last_packet_at
        if native is None or self._last_frame_at is None:
            return native if native is not None else self._last_frame_at
        return max(native, self._last_frame_at)

    # -- media in --------------------------------------------------------

    def _set_codec(self, codec: RTCRtpCodecParameters) -> None:
        fanout = self.native_fanout
        if fanout is not None:
            fanout.flush()  # frames of the codec before, with its timestamps
        if self.codec is None or self.codec.payloadType != codec.payloadType:
            logger.info("%r sends %s", self, codec.mimeType)
            self._assembler = FrameAssembler(self._video)
            self._native_timestamps = TimestampMapper()
        self.codec = codec
        # Read once per codec, not per packet (`name` is computed from the MIME type).
        self._codec_name = codec.name.upper()
        if fanout is not None and codec.payloadType is not None:
            fanout.set_codec(codec.payloadType, self._codec_name, self._video)

    def _on_native_frames(self, frames: list[tuple[builtins.bytes, int, bool]]) -> None:
        """Frames the native fan-out built (rtc/native/frames.c), in order."""
        codec = self.codec
        if codec is None:
            return
        mapper = self._native_timestamps
        for data, timestamp, keyframe in frames:
            self._on_assembled(EncodedFrame(codec, data, mapper.map(timestamp), keyframe))

    def _on_packet(self, codec: RTCRtpCodecParameters, view: RtpView) -> None:
        """Every RTP packet of the stream, on the event loop, decrypted: the hot path."""
        if codec is not self.codec:
            self._set_codec(codec)
        fanout = self.native_fanout
        if fanout is not None:
            if fanout.push(view.sequence_number, view.timestamp, view.marker, view.payload):
                self._on_python_packet(codec, view)
            return
        self._last_frame_at = self._loop.time()
        self._bytes += len(view.payload)
        video = self._video
        keyframe = video and starts_keyframe(self._codec_name, view.payload)
        if view.marker or not video:
            self._frames += 1
        for subscriber in self._fan_out:
            subscriber.push_packet(codec, view, keyframe)
        if self._frame_listeners or self._decoding:
            frame = self._assembler.add(codec, view)
            if frame is not None:
                self._on_assembled(frame)

    def _on_python_packet(self, codec: RTCRtpCodecParameters, view: RtpView) -> None:
        """The Python part of a packet the native fan-out has counted and forwarded:
        Python sinks, lanes Python has not activated yet, frames C does not build.

        The native inbound path calls this when rr_fanout_push returns 1.
        """
        if codec is not self.codec:
            # A codec the fan-out has not been told about refused the packet: all of it here.
            self._on_packet(codec, view)
            return
        keyframe = self._video and starts_keyframe(self._codec_name, view.payload)
        for sink in self._python_sinks:
            sink.push_packet(codec, view, keyframe)
        for sink, lane in self._lane_sinks:
            if not lane.active:
                sink.push_packet(codec, view, keyframe)
        fanout = self.native_fanout
        if (self._frame_listeners or self._decoding) and (fanout is None or not fanout.assembles):
            frame = self._assembler.add(codec, view)
            if frame is not None:
                self._on_assembled(frame)

    def _on_assembled(self, frame: EncodedFrame) -> None:
        """A complete frame, built because someone wants frames."""
        self._deliver(frame)

    def _deliver(self, encoded: EncodedFrame) -> None:
        for listener in tuple(self._frame_listeners):
            try:
                listener(encoded)
            except Exception:
                logger.exception("%r: frame listener failed; removing it", self)
                self.remove_frame_listener(listener)

    def add_frame_listener(self, listener: FrameListener) -> None:
        """Also hand every encoded frame to `listener` (called on the event loop; keep it short)."""
        self._frame_listeners.append(listener)
        self._frames_wanted()

    def remove_frame_listener(self, listener: FrameListener) -> None:
        if listener in self._frame_listeners:
            self._frame_listeners.remove(listener)
        self._frames_wanted()

    def _frames_wanted(self) -> None:
        """Tell the native fan-out whether frames are wanted (listeners, or decoding)."""
        fanout = self.native_fanout
        if fanout is not None:
            fanout.frames_wanted = bool(self._frame_listeners) or self._decoding

    # -- subscribers -----------------------------------------------------

    @property
    def subscribers(self) -> frozenset[PacketSink]:
        return frozenset(self._subscribers)

    def add_subscriber(self, subscriber: PacketSink) -> None:
        self._subscribers.add(subscriber)
        self._refan()

    def remove_subscriber(self, subscriber: PacketSink) -> None:
        self._subscribers.discard(subscriber)
        self._refan()

    def _refan(self) -> None:
        self._fan_out = tuple(
            s for s in self._subscribers if not self.held or getattr(s, "sees_held", False)
        )
        fanout = self.native_fanout
        if fanout is None:
            return
        lane_sinks = []
        python_sinks = []
        for sink in self._fan_out:
            lane: Lane | None = getattr(sink, "lane", None)
            if lane is None:
                python_sinks.append(sink)
            else:
                lane_sinks.append((sink, lane))
        self._lane_sinks = tuple(lane_sinks)
        self._python_sinks = tuple(python_sinks)
        fanout.set_lanes(tuple(lane for _, lane in lane_sinks))
        fanout.python_sinks = bool(python_sinks)

    def hold(self, held: bool) -> None:
        """Stop (or resume) forwarding to every sink but moderators' watchers.

        Decided here, in the fan-out, so a held stream costs nothing per packet
        and a partner attached later (a new pair, another node's pipe) is held
        too. On release each sink starts again at a fresh keyframe, as on a
        partner change, so its receiver never sees the gap as loss.
        """
        if held == self.held:
            return
        self.held = held
        self._refan()
        if not held:
            for sink in self._fan_out:
                restart = getattr(sink, "restart", None)
                if restart is not None:
                    restart()
            self.request_keyframe()

    # -- keyframes -------------------------------------------------------

    def request_keyframe(self) -> None:
        """Ask upstream for a keyframe, at most once per interval.

        A request inside the interval is not lost: it is sent when the
        interval ends, so a subscriber that attaches right after another
        still gets its picture promptly.
        """
        if self.kind != "video" or self._closed:
            return
        now = self._loop.time()
        wait = self._last_keyframe_request + self._keyframe_interval - now
        if wait <= 0:
            self._ask_for_keyframe()
        elif self._keyframe_timer is None:
            self._keyframe_timer = self._loop.call_later(wait, self._ask_for_keyframe)

    def _ask_for_keyframe(self) -> None:
        self._keyframe_timer = None
        if self._closed:
            return
        self._last_keyframe_request = self._loop.time()
        self.keyframe_requests += 1
        self._ask_upstream()

    def _ask_upstream(self) -> None:
        """Send one keyframe request towards the encoder (PLI, or over a pipe)."""
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------

    def _close_sources(self) -> None:
        """Stop everything the base holds: the timer, the sinks, the listeners."""
        self._closed = True
        if self._keyframe_timer is not None:
            self._keyframe_timer.cancel()
            self._keyframe_timer = None
        if self.native_fanout is not None:
            self.native_fanout.flush()  # the last audio frames, to the listeners still here
        for subscriber in tuple(self._subscribers):
            subscriber.detach()
        self._subscribers.clear()
        self._fan_out = ()
        self._frame_listeners.clear()
        self._decoding = False
        self._refan()
        self._frames_wanted()
        if self.native_fanout is not None:
            self.native_fanout.on_frames = None
