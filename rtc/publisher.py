"""A Publisher: what one peer sends up for one kind of media, fanned out to subscribers."""

from __future__ import annotations

import asyncio
import logging

import av
from aiortc import RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.frame import Frame

from rtc import aiortc_seam
from rtc.media import EncodedFrame, is_keyframe
from rtc.source import DecodedSink, PacketSink, PacketSource

logger = logging.getLogger(__name__)


class Publisher(PacketSource):
    """Receives one peer's audio or video and hands every RTP packet to its subscribers.

    Packets are forwarded as they arrive (see `rtc.aiortc_seam.receive_packets`).
    Complete frames are built only while someone needs frames (moderation's
    listeners, or decoding), and nothing is decoded unless a subscriber cannot
    take the publisher's codec (then only while such a subscriber is attached).
    """

    def __init__(
        self, name: str, kind: str, receiver: RTCRtpReceiver, *, keyframe_interval: float
    ) -> None:
        super().__init__(name, kind, keyframe_interval=keyframe_interval)
        self._tap = aiortc_seam.tap_receiver(receiver, self._on_frame)
        self._decoded_subscribers: set[DecodedSink] = set()
        self._decode_task: asyncio.Task[None] | None = None
        self._pli_tasks: set[asyncio.Task[None]] = set()

    # -- media in --------------------------------------------------------

    def start_receiving(self) -> None:
        """Take packets straight from the connection (once the local description is set)."""
        # With a native fan-out (rtc/native/fanout.c) packets reach it from C, and
        # Python only sees the ones its own sinks need.
        self._tap.receive_packets(self._on_packet, self.native_fanout, self._on_python_packet)

    def _on_assembled(self, frame: EncodedFrame) -> None:
        self._tap.decode_frame(frame.codec, frame.data, frame.timestamp)
        self._deliver(frame)

    def _on_frame(self, codec: RTCRtpCodecParameters, frame: aiortc_seam.EncodedFrameLike) -> None:
        """A frame aiortc reassembled itself (packets that arrived before `start_receiving`)."""
        data = frame.data
        if not data:
            return
        self._set_codec(codec)
        self._frames += 1
        self._bytes += len(data)
        self._last_frame_at = self._loop.time()
        self._deliver(EncodedFrame(codec, data, frame.timestamp, is_keyframe(codec, data)))

    # -- subscribers -----------------------------------------------------

    def remove_subscriber(self, subscriber: PacketSink) -> None:
        super().remove_subscriber(subscriber)
        if subscriber in self._decoded_subscribers:
            self.stop_decoding_for(subscriber)

    def decode_for(self, subscriber: DecodedSink) -> None:
        """Also deliver decoded frames to `subscriber` (its codec differs from ours)."""
        self._decoded_subscribers.add(subscriber)
        self._tap.decode = self._decoding = True
        self._frames_wanted()
        if self._decode_task is None and not self._closed:
            self._decode_task = asyncio.create_task(self._run_decoded(), name=f"decode {self!r}")

    def stop_decoding_for(self, subscriber: DecodedSink) -> None:
        self._decoded_subscribers.discard(subscriber)
        if not self._decoded_subscribers:
            self._tap.decode = self._decoding = False
            self._frames_wanted()

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

    def _ask_upstream(self) -> None:
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
        self._close_sources()
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
