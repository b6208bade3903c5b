"""A Publisher: what one peer sends up for one kind of media, fanned out to subscribers."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import av
from aiortc import RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.frame import Frame

from rtc import aiortc_seam
from rtc.media import EncodedFrame, FrameAssembler, is_keyframe
from rtc.rtp import RtpView, starts_keyframe

if TYPE_CHECKING:
    from rtc.subscriber import Subscriber

logger = logging.getLogger(__name__)


class Publisher:
    """Receives one peer's audio or video and hands every RTP packet to its subscribers.

    Packets are forwarded as they arrive (see `rtc.aiortc_seam.receive_packets`).
    Complete frames are built only while someone needs frames (moderation's
    listeners, or decoding), and nothing is decoded unless a subscriber cannot
    take the publisher's codec (then only while such a subscriber is attached).
    """

    def __init__(
        self, name: str, kind: str, receiver: RTCRtpReceiver, *, keyframe_interval: float
    ) -> None:
        self.name = name
        self.kind = kind
        self.codec: RTCRtpCodecParameters | None = None
        self._codec_name = ""
        self.frames = 0
        self.bytes = 0
        self.keyframe_requests = 0
        self.last_frame_at: float | None = None
        self._loop = asyncio.get_running_loop()
        self._tap = aiortc_seam.tap_receiver(receiver, self._on_frame)
        self._subscribers: set[Subscriber] = set()
        # The same, as a tuple: iterated for every packet, changed only on attach/detach.
        self._fan_out: tuple[Subscriber, ...] = ()
        self._video = kind == "video"
        self._assembler = FrameAssembler(self._video)
        # Called with every EncodedFrame too (moderation: ring buffers, recordings, sampling).
        self._frame_listeners: list[Callable[[EncodedFrame], None]] = []
        self._decoded_subscribers: set[Subscriber] = set()
        self._decode_task: asyncio.Task[None] | None = None
        self._keyframe_interval = keyframe_interval
        self._last_keyframe_request = -math.inf
        self._keyframe_timer: asyncio.TimerHandle | None = None
        self._pli_tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Publisher {self.name}/{self.kind}>"

    # -- media in --------------------------------------------------------

    def start_receiving(self) -> None:
        """Take packets straight from the connection (once the local description is set)."""
        self._tap.receive_packets(self._on_packet)

    def _set_codec(self, codec: RTCRtpCodecParameters) -> None:
        if self.codec is None or self.codec.payloadType != codec.payloadType:
            logger.info("%r sends %s", self, codec.mimeType)
            self._assembler = FrameAssembler(self._video)
        self.codec = codec
        # Read once per codec, not per packet (`name` is computed from the MIME type).
        self._codec_name = codec.name.upper()

    def _on_packet(self, codec: RTCRtpCodecParameters, view: RtpView) -> None:
        """Every RTP packet from the publisher's browser, on the event loop, decrypted."""
        if codec is not self.codec:
            self._set_codec(codec)
        self.last_frame_at = self._loop.time()
        self.bytes += len(view.payload)
        video = self._video
        keyframe = video and starts_keyframe(self._codec_name, view.payload)
        if view.marker or not video:
            self.frames += 1
        for subscriber in self._fan_out:
            subscriber.push_packet(codec, view, keyframe)
        if self._frame_listeners or self._tap.decode:
            frame = self._assembler.add(codec, view)
            if frame is not None:
                self._tap.decode_frame(codec, frame.data, frame.timestamp)
                self._deliver(frame)

    def _on_frame(self, codec: RTCRtpCodecParameters, frame: aiortc_seam.EncodedFrameLike) -> None:
        """A frame aiortc reassembled itself (packets that arrived before `start_receiving`)."""
        data = frame.data
        if not data:
            return
        self._set_codec(codec)
        self.frames += 1
        self.bytes += len(data)
        self.last_frame_at = self._loop.time()
        self._deliver(EncodedFrame(codec, data, frame.timestamp, is_keyframe(codec, data)))

    def _deliver(self, encoded: EncodedFrame) -> None:
        for listener in tuple(self._frame_listeners):
            try:
                listener(encoded)
            except Exception:
                logger.exception("%r: frame listener failed; removing it", self)
                self.remove_frame_listener(listener)

    def add_frame_listener(self, listener: Callable[[EncodedFrame], None]) -> None:
        """Also hand every encoded frame to `listener` (called on the event loop; keep it short)."""
        self._frame_listeners.append(listener)

    def remove_frame_listener(self, listener: Callable[[EncodedFrame], None]) -> None:
        if listener in self._frame_listeners:
            self._frame_listeners.remove(listener)

    # -- subscribers -----------------------------------------------------

    @property
    def subscribers(self) -> frozenset[Subscriber]:
        return frozenset(self._subscribers)

    def add_subscriber(self, subscriber: Subscriber) -> None:
        self._subscribers.add(subscriber)
        self._fan_out = tuple(self._subscribers)

    def remove_subscriber(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        self._fan_out = tuple(self._subscribers)
        self.stop_decoding_for(subscriber)

    def decode_for(self, subscriber: Subscriber) -> None:
        """Also deliver decoded frames to `subscriber` (its codec differs from ours)."""
        self._decoded_subscribers.add(subscriber)
        self._tap.decode = True
        if self._decode_task is None and not self._closed:
            self._decode_task = asyncio.create_task(self._run_decoded(), name=f"decode {self!r}")

    def stop_decoding_for(self, subscriber: Subscriber) -> None:
        self._decoded_subscribers.discard(subscriber)
        if not self._decoded_subscribers:
            self._tap.decode = False

    async def _run_decoded(self) -> None:
        try:
            while True:
                frame = await self._tap.next_decoded()
                for index, subscriber in enumerate(tuple(self._decoded_subscribers)):
                    # Each subscriber rewrites its frame's pts: the second and
                    # later ones get their own copy.
                    subscriber.push_decoded(frame if index == 0 else _copy_frame(frame))
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            self._decode_task = None

    # -- keyframes -------------------------------------------------------

    def request_keyframe(self) -> None:
        """Ask the publisher's browser for a keyframe, at most once per interval.

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
        task = asyncio.create_task(self._ask_upstream())
        self._pli_tasks.add(task)
        task.add_done_callback(self._pli_tasks.discard)

    async def _ask_upstream(self) -> None:
        try:
            await self._tap.request_keyframe()
        except Exception:
            logger.exception("%r: sending PLI failed", self)

    # -- lifecycle -------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        if self._keyframe_timer is not None:
            self._keyframe_timer.cancel()
            self._keyframe_timer = None
        for subscriber in tuple(self._subscribers):
            subscriber.detach()
        self._subscribers.clear()
        self._fan_out = ()
        self._frame_listeners.clear()
        self._decoded_subscribers.clear()
        self._tap.decode = False
        tasks = list(self._pli_tasks)
        if self._decode_task is not None:
            self._decode_task.cancel()
            tasks.append(self._decode_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _copy_frame(frame: Frame) -> Frame:
    """The same picture or sound in a new frame object."""
    copy: Frame
    if isinstance(frame, av.VideoFrame):
        copy = av.VideoFrame.from_ndarray(frame.to_ndarray(format="yuv420p"), format="yuv420p")
    elif isinstance(frame, av.AudioFrame):
        copy = av.AudioFrame.from_ndarray(
            frame.to_ndarray(), format=frame.format.name, layout=frame.layout.name
        )
        copy.sample_rate = frame.sample_rate
    else:
        return frame
    copy.pts = frame.pts
    copy.time_base = frame.time_base
    return copy
