"""A Publisher: what one peer sends up for one kind of media, fanned out to subscribers."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiortc import RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from rtc import aiortc_seam
from rtc.media import EncodedFrame, is_keyframe

if TYPE_CHECKING:
    from rtc.subscriber import Subscriber

logger = logging.getLogger(__name__)


class Publisher:
    """Receives one peer's audio or video and hands every encoded frame to its subscribers.

    Nothing is decoded unless a subscriber cannot take the publisher's codec
    (then decoding runs only while such a subscriber is attached).
    """

    def __init__(
        self, name: str, kind: str, receiver: RTCRtpReceiver, *, keyframe_interval: float
    ) -> None:
        self.name = name
        self.kind = kind
        self.codec: RTCRtpCodecParameters | None = None
        self.frames = 0
        self.bytes = 0
        self.keyframe_requests = 0
        self.last_frame_at: float | None = None
        self._loop = asyncio.get_running_loop()
        self._tap = aiortc_seam.tap_receiver(receiver, self._on_frame)
        self._subscribers: set[Subscriber] = set()
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

    # -- frames in -------------------------------------------------------

    def _on_frame(self, codec: RTCRtpCodecParameters, frame: aiortc_seam.EncodedFrameLike) -> None:
        data = frame.data
        if not data:
            return
        if self.codec is None or self.codec.payloadType != codec.payloadType:
            logger.info("%r sends %s", self, codec.mimeType)
        self.codec = codec
        self.frames += 1
        self.bytes += len(data)
        self.last_frame_at = self._loop.time()
        encoded = EncodedFrame(codec, data, frame.timestamp, is_keyframe(codec, data))
        for subscriber in tuple(self._subscribers):
            subscriber.push_encoded(encoded)
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

    def remove_subscriber(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
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
                for subscriber in tuple(self._decoded_subscribers):
                    subscriber.push_decoded(frame)
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
            self._send_keyframe_request()
        elif self._keyframe_timer is None:
            self._keyframe_timer = self._loop.call_later(wait, self._send_keyframe_request)

    def _send_keyframe_request(self) -> None:
        self._keyframe_timer = None
        if self._closed:
            return
        self._last_keyframe_request = self._loop.time()
        self.keyframe_requests += 1
        task = asyncio.create_task(self._send_pli())
        self._pli_tasks.add(task)
        task.add_done_callback(self._pli_tasks.discard)

    async def _send_pli(self) -> None:
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
