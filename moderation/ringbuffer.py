"""A RingBuffer: the last seconds of one stream's encoded frames, ready to become evidence.

Memory is bounded twice: by the time between the oldest and newest frame
(`max_seconds`, by arrival time) and by the encoded bytes held (`max_bytes`).
The buffer always starts at a keyframe, so a snapshot can be written to a
file and played from its first frame: when over a bound, whole GOPs (a
keyframe and the frames that depend on it) leave from the front.

Frames are not kept as objects. Their bytes are copied into 16 KiB chunks
and what a snapshot needs of each (where its bytes are, its timestamp,
arrival time, keyframe bit) into flat arrays, about 30 bytes a frame; the
codec is kept once per run of frames that share it. Objects per frame used
to cost 210 bytes each (an `EncodedFrame`, a `BufferedFrame`, their ints,
floats and bytes headers) and, worse, two objects the garbage collector
walked in every full collection: at 10 pairs the buffers held about 70 000
of them, and a full collection stalled the event loop 12-26 ms (issue 14).
`snapshot()` builds the objects, for a report or a pair's end only.

Cost per stream is the media bit rate times `max_seconds`, plus about 40
bytes a frame and 16-32 KiB of chunk ends (measured in
tests/test_moderation_ringbuffer.py):

=====================================  ===========  ==========  ========
stream                                 payload      frames      total
=====================================  ===========  ==========  ========
30 s of 1 Mbit/s video at 30 fps       3.75 MB      900         ~3.8 MB
30 s of 40 kbit/s Opus (20 ms frames)  0.15 MB      1500        ~0.2 MB
=====================================  ===========  ==========  ========

So buffering both directions of a pair costs about 8 MB at the standard
load; `max_bytes` caps a stream whose bit rate spikes (the default, 8 MB, is
30 s at about 2 Mbit/s).

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
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from rtc.media import EncodedFrame

__all__ = ["BufferedFrame", "RingBuffer"]

DEFAULT_SECONDS: Final = 30.0
DEFAULT_BYTES: Final = 8_000_000
# How often to repeat a keyframe request the publisher has not answered yet.
KEYFRAME_RETRY: Final = 1.0
# Frames' bytes are kept in pieces of this size (a bigger frame gets a piece of its own).
CHUNK: Final = 16 * 1024


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
        self._frames = _FrameStore()
        self._keyframes = 0
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
        return f"<RingBuffer {len(self)} frames, {self.bytes} bytes, {self.seconds:.1f} s>"

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def bytes(self) -> int:
        """Encoded payload held (the chunks' free space and the arrays come on top)."""
        return self._frames.bytes

    @property
    def seconds(self) -> float:
        """Arrival time from the oldest to the newest frame held."""
        return self._frames.seconds()

    @property
    def allocated(self) -> int:
        """Bytes the buffer takes: its chunks (held payload and their unused ends) and arrays."""
        return self._frames.allocated()

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
        self._frames.append(frame, at)
        self._gop_bytes += size
        self._trim()
        if self._frames and (
            at - self._gop_started_at > self.max_seconds / 2 or self._gop_bytes > self.max_bytes / 2
        ):
            self._want_keyframe(at)

    def snapshot(self) -> list[BufferedFrame]:
        """Everything held, oldest first; the first frame is a keyframe (or the list is empty)."""
        return self._frames.frames()

    def clear(self) -> None:
        self.evicted += len(self._frames)
        self._frames.clear()
        self._keyframes = 0

    def _trim(self) -> None:
        frames = self._frames
        while frames and (frames.bytes > self.max_bytes or frames.seconds() > self.max_seconds):
            if self._keyframes <= 1:
                # One GOP outgrew a bound: nothing decodable can stay.
                self.clear()
                return
            # The oldest GOP: its keyframe and every delta frame up to the next one.
            self.evicted += frames.drop_gop()
            self._keyframes -= 1

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


class _FrameStore:
    """A queue of frames kept as bytes in chunks and numbers in arrays, not as objects.

    The frames' bytes are one stream, cut into chunks of `CHUNK` bytes: a
    frame starts at byte ``position`` of the stream (in chunk
    ``position // CHUNK``, counted from the store's first byte ever) and may
    run on into the next chunks. Frame ``i`` sits at index ``i - self._base``
    of every array; the front is dropped by moving ``self._head`` and the
    arrays are compacted once a quarter of them is dead, so both ends cost
    O(1) amortized. What is held beyond the payload: about 30 bytes a frame,
    the newest chunk's unused end and the oldest chunk's dropped start.
    """

    def __init__(self) -> None:
        self._chunks: deque[bytearray] = deque()
        self._first_chunk = 0  # the chunk number of self._chunks[0]
        self._end = 0  # where the next frame's bytes go, in the stream
        self._position = array("q")
        self._size = array("I")
        self._timestamp = array("q")
        self._at = array("d")
        self._key = array("b")
        self._head = 0
        self._base = 0  # the frame number of index 0 of the arrays
        # (first frame, codec) for each run of frames with the same codec parameters.
        self._codecs: deque[tuple[int, RTCRtpCodecParameters]] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._size) - self._head

    def allocated(self) -> int:
        arrays = sum(c.buffer_info()[1] * c.itemsize for c in self._columns())
        return len(self._chunks) * CHUNK + arrays

    def seconds(self) -> float:
        if len(self) == 0:
            return 0.0
        return self._at[-1] - self._at[self._head]

    def append(self, frame: EncodedFrame, at: float) -> None:
        data = frame.data
        size = len(data)
        number = self._base + len(self._size)
        if not self._codecs or self._codecs[-1][1] is not frame.codec:
            self._codecs.append((number, frame.codec))
        self._position.append(self._end)
        self._size.append(size)
        self._timestamp.append(frame.timestamp)
        self._at.append(at)
        self._key.append(frame.keyframe)
        view = memoryview(data)
        written = 0
        while written < size:
            offset = self._end % CHUNK
            if offset == 0 and self._end // CHUNK >= self._first_chunk + len(self._chunks):
                self._chunks.append(bytearray(CHUNK))
            piece = min(size - written, CHUNK - offset)
            chunk = self._chunks[self._end // CHUNK - self._first_chunk]
            chunk[offset : offset + piece] = view[written : written + piece]
            written += piece
            self._end += piece
        self.bytes += size

    def drop_gop(self) -> int:
        """Drop the oldest frame and every non-keyframe after it; returns how many went."""
        head, end, key = self._head, len(self._size), self._key
        stop = head + 1
        while stop < end and not key[stop]:
            stop += 1
        self.bytes -= sum(self._size[head:stop])
        self._head = stop
        self._forget_front()
        return stop - head

    def clear(self) -> None:
        self._base += len(self._size)
        self._chunks.clear()
        # The next frame starts a fresh chunk.
        self._end = -(-self._end // CHUNK) * CHUNK
        self._first_chunk = self._end // CHUNK
        for column in self._columns():
            del column[:]
        self._head = 0
        self._codecs.clear()
        self.bytes = 0

    def frames(self) -> list[BufferedFrame]:
        out = []
        codecs = list(self._codecs)
        run = 0
        for index in range(self._head, len(self._size)):
            number = self._base + index
            while run + 1 < len(codecs) and codecs[run + 1][0] <= number:
                run += 1
            frame = EncodedFrame(
                codecs[run][1],
                self._read(self._position[index], self._size[index]),
                self._timestamp[index],
                bool(self._key[index]),
            )
            out.append(BufferedFrame(frame, self._at[index]))
        return out

    def _read(self, position: int, size: int) -> bytes:
        pieces = []
        while size > 0:
            offset = position % CHUNK
            piece = min(size, CHUNK - offset)
            chunk = self._chunks[position // CHUNK - self._first_chunk]
            pieces.append(memoryview(chunk)[offset : offset + piece])
            position += piece
            size -= piece
        return b"".join(pieces)

    def _columns(self) -> tuple[array[Any], ...]:
        return (self._position, self._size, self._timestamp, self._at, self._key)

    def _forget_front(self) -> None:
        """Free the chunks and codec runs no frame uses any more; compact the arrays."""
        if len(self) == 0:
            self.clear()
            return
        oldest = self._base + self._head
        while len(self._codecs) > 1 and self._codecs[1][0] <= oldest:
            self._codecs.popleft()
        in_use = self._position[self._head] // CHUNK
        while self._first_chunk < in_use:
            self._chunks.popleft()
            self._first_chunk += 1
        if self._head >= 64 and self._head * 4 >= len(self._size):
            for column in self._columns():
                del column[: self._head]
            self._base += self._head
            self._head = 0
