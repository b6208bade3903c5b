"""A RingBuffer: the last seconds of one stream's encoded frames, ready to become evidence.

Memory is bounded twice: by the time between the oldest and newest frame
(`max_seconds`, by arrival time) and by the encoded bytes held (`max_bytes`).
The buffer always starts at a keyframe, so a snapshot can be written to a
file and played from its first frame: when over a bound, whole GOPs (a
keyframe and the frames that depend on it) leave from the front.

Cost per stream is the media bit rate times `max_seconds`, plus about 210
bytes of Python objects per frame (measured in tests/test_moderation_ringbuffer.py):

=====================================  ===========  ==========  ========
stream                                 payload      frames      total
=====================================  ===========  ==========  ========
30 s of 1 Mbit/s video at 30 fps       3.75 MB      900         ~3.9 MB
30 s of 32 kbit/s Opus (20 ms frames)  0.12 MB      1500        ~0.4 MB
=====================================  ===========  ==========  ========

So buffering both directions of a pair costs about 9 MB; `max_bytes` caps a
stream whose bit rate spikes (the default, 8 MB, is 30 s at about 2 Mbit/s).

Chromium sends keyframes rarely on its own. A GOP longer than the buffer
could never be trimmed without losing its keyframe, so once the newest GOP
spans half of either bound the buffer calls `on_keyframe_needed` (at most
once a second until one arrives); wire it to ``Publisher.request_keyframe``.
With keyframes at least every ``max_seconds / 2`` the buffer then always
holds between half and all of `max_seconds`. If one GOP alone outgrows a
bound anyway, the buffer empties and waits for the next keyframe.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from rtc.media import EncodedFrame

__all__ = ["BufferedFrame", "RingBuffer"]

DEFAULT_SECONDS: Final = 30.0
DEFAULT_BYTES: Final = 8_000_000
# How often to repeat a keyframe request the publisher has not answered yet.
KEYFRAME_RETRY: Final = 1.0


@dataclass(frozen=True, slots=True)
class BufferedFrame:
    """An encoded frame and when it arrived (`time.monotonic()` seconds, or the caller's clock).

    Arrival times put the tracks of one publisher on one timeline: each track's
    own timestamps start at zero at its own first frame.
    """

    frame: EncodedFrame
    received_at: float


class RingBuffer:
    """The most recent frames of one stream, from a keyframe on, within time and byte bounds."""

    def __init__(
        self,
        *,
        max_seconds: float = DEFAULT_SECONDS,
        max_bytes: int = DEFAULT_BYTES,
        on_keyframe_needed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_seconds <= 0 or max_bytes <= 0:
            raise ValueError("max_seconds and max_bytes must be positive")
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.on_keyframe_needed = on_keyframe_needed
        self._clock = clock
        self._frames: deque[BufferedFrame] = deque()
        self._keyframes = 0
        self._bytes = 0
        # The newest GOP: when it started and how many bytes it holds so far.
        self._gop_started_at = 0.0
        self._gop_bytes = 0
        self._keyframe_requested_at: float | None = None
        # Frames that arrived with no keyframe before them to decode from.
        self.skipped = 0
        # Frames that left through the front to stay within the bounds.
        self.evicted = 0
        self.keyframe_requests = 0

    def __repr__(self) -> str:
        return f"<RingBuffer {len(self)} frames, {self._bytes} bytes, {self.seconds:.1f} s>"

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def bytes(self) -> int:
        """Encoded payload held (Python's per-frame overhead comes on top)."""
        return self._bytes

    @property
    def seconds(self) -> float:
        """Arrival time from the oldest to the newest frame held."""
        if not self._frames:
            return 0.0
        return self._frames[-1].received_at - self._frames[0].received_at

    def push(self, frame: EncodedFrame, received_at: float | None = None) -> None:
        """Add the stream's next frame (arrived at `received_at`, default now)."""
        at = self._clock() if received_at is None else received_at
        size = len(frame.data)
        if frame.keyframe:
            self._keyframes += 1
            self._gop_started_at = at
            self._gop_bytes = 0
            self._keyframe_requested_at = None
        elif not self._frames:
            self.skipped += 1
            self._want_keyframe(at)
            return
        self._frames.append(BufferedFrame(frame, at))
        self._bytes += size
        self._gop_bytes += size
        self._trim()
        if self._frames and (
            at - self._gop_started_at > self.max_seconds / 2 or self._gop_bytes > self.max_bytes / 2
        ):
            self._want_keyframe(at)

    def snapshot(self) -> list[BufferedFrame]:
        """Everything held, oldest first; the first frame is a keyframe (or the list is empty)."""
        return list(self._frames)

    def clear(self) -> None:
        self.evicted += len(self._frames)
        self._frames.clear()
        self._keyframes = 0
        self._bytes = 0

    def _trim(self) -> None:
        while self._frames and (self._bytes > self.max_bytes or self.seconds > self.max_seconds):
            if self._keyframes <= 1:
                # One GOP outgrew a bound: nothing decodable can stay.
                self.clear()
                return
            self._drop_oldest_gop()

    def _drop_oldest_gop(self) -> None:
        frames = self._frames
        oldest = frames.popleft()
        self._bytes -= len(oldest.frame.data)
        self._keyframes -= 1
        self.evicted += 1
        while frames and not frames[0].frame.keyframe:
            self._bytes -= len(frames.popleft().frame.data)
            self.evicted += 1

    def _want_keyframe(self, at: float) -> None:
        if self.on_keyframe_needed is None:
            return
        if (
            self._keyframe_requested_at is not None
            and at - self._keyframe_requested_at < KEYFRAME_RETRY
        ):
            return
        self._keyframe_requested_at = at
        self.keyframe_requests += 1
        self.on_keyframe_needed()
