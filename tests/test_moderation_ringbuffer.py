"""RingBuffer over long synthetic streams: bounded, always from a keyframe, snapshots complete."""

from __future__ import annotations

import gc
import os
import tracemalloc
from collections.abc import Iterator

import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from moderation.ringbuffer import BufferedFrame, RingBuffer
from rtc.media import EncodedFrame, is_keyframe

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
# Equal to VP8 but another object: what a renegotiation gives.
VP8_AGAIN = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
FPS = 30


def video(
    seconds: float, *, gop: int = 60, bit_rate: int = 1_000_000, start: int = 0
) -> Iterator[tuple[EncodedFrame, float]]:
    """VP8-shaped frames (the key bit in the tag) at `bit_rate`, keyframes 4x bigger, with arrival times."""
    size = bit_rate // 8 // FPS
    for index in range(start, start + int(seconds * FPS)):
        key = index % gop == 0
        # The counter in the payload lets a test check order and completeness.
        data = (b"\x00" if key else b"\x01") + index.to_bytes(4, "big")
        data += os.urandom((size * 4 if key else size) - len(data))
        frame = EncodedFrame(VP8, data, index * 90000 // FPS, key)
        assert is_keyframe(VP8, data) == key
        yield frame, 1000.0 + index / FPS


def counter(item: BufferedFrame) -> int:
    return int.from_bytes(item.frame.data[1:5], "big")


def test_stays_within_seconds_and_bytes_over_a_long_stream() -> None:
    buffer = RingBuffer(max_seconds=10.0, max_bytes=2_000_000)
    spans = []
    for index, (frame, at) in enumerate(video(600)):  # ten minutes
        buffer.push(frame, at)
        assert buffer.seconds <= 10.0
        assert buffer.bytes <= 2_000_000
        if index % 7 == 0:  # a snapshot builds every frame: not after each push
            assert buffer.snapshot()[0].frame.keyframe
        spans.append(buffer.seconds)
    assert buffer.bytes == sum(len(item.frame.data) for item in buffer.snapshot())
    # Whole 2 s GOPs leave at once: between 8 and 10 s are kept once warmed up.
    assert min(spans[FPS * 20 :]) >= 8.0
    assert buffer.skipped == 0
    assert buffer.evicted == 600 * FPS - len(buffer)


def test_byte_bound_holds_when_the_bit_rate_spikes() -> None:
    buffer = RingBuffer(max_seconds=30.0, max_bytes=1_000_000)
    for frame, at in video(60, bit_rate=4_000_000, gop=15):
        buffer.push(frame, at)
        assert buffer.bytes <= 1_000_000
    snapshot = buffer.snapshot()
    assert snapshot[0].frame.keyframe
    # 1 MB of 4 Mbit/s is 2 s: the time bound never came into play.
    assert 1.4 <= buffer.seconds <= 2.0


def test_snapshot_starts_at_a_keyframe_and_holds_every_frame_until_taken() -> None:
    buffer = RingBuffer(max_seconds=5.0)
    stream = video(20)
    for _ in range(int(12.5 * FPS)):
        buffer.push(*next(stream))
    snapshot = buffer.snapshot()
    counters = [counter(item) for item in snapshot]
    assert snapshot[0].frame.keyframe
    assert counters == list(range(counters[0], int(12.5 * FPS)))
    assert counters[0] % 60 == 0
    assert 2.5 <= snapshot[-1].received_at - snapshot[0].received_at <= 5.0

    # A snapshot is a copy: the stream going on does not change it.
    for frame, at in stream:
        buffer.push(frame, at)
    assert [counter(item) for item in snapshot] == counters
    assert counter(buffer.snapshot()[-1]) == 20 * FPS - 1


def test_frames_before_the_first_keyframe_are_skipped_and_a_keyframe_requested() -> None:
    requests: list[float] = []
    buffer = RingBuffer(max_seconds=10.0)
    now = 0.0
    buffer.on_keyframe_needed = lambda: requests.append(now)
    # Join mid-GOP: 1.5 s of delta frames before the next keyframe.
    for frame, now in video(4, start=15):
        buffer.push(frame, now)
    assert buffer.skipped == 45
    # Asked once, and again a second later while still waiting.
    assert requests == [1000.5, 1000.5 + 1.0]
    snapshot = buffer.snapshot()
    assert snapshot[0].frame.keyframe and counter(snapshot[0]) == 60
    assert counter(snapshot[-1]) == 4 * FPS + 14


def test_a_publisher_that_answers_keyframe_requests_keeps_the_history_full() -> None:
    """Chromium sends one keyframe and then only when asked: the buffer asks in time."""
    buffer = RingBuffer(max_seconds=10.0)
    asked = False

    def ask() -> None:
        nonlocal asked
        asked = True

    buffer.on_keyframe_needed = ask
    for index in range(120 * FPS):
        key = index == 0 or asked
        asked = False if key else asked
        data = (b"\x00" if key else b"\x01") + index.to_bytes(4, "big") + bytes(4000)
        buffer.push(EncodedFrame(VP8, data, index * 3000, key), 1000.0 + index / FPS)
        assert buffer.seconds <= 10.0
        if index > 20 * FPS:
            assert buffer.seconds >= 4.9
    assert buffer.skipped == 0
    # About one keyframe per 5 s, not one per frame.
    assert 20 <= buffer.keyframe_requests <= 25


def test_a_publisher_that_never_sends_keyframes_empties_the_buffer() -> None:
    buffer = RingBuffer(max_seconds=5.0)
    for frame, at in video(30, gop=100_000):  # one keyframe, then only deltas
        buffer.push(frame, at)
        assert buffer.seconds <= 5.0
    # Nothing decodable could stay: the GOP outgrew the bound, then deltas were skipped.
    assert len(buffer) == 0
    assert buffer.snapshot() == []
    # Frames 0-150 fit in 5 s; frame 151 overflowed the GOP, 152 onwards had no keyframe.
    assert buffer.skipped == 30 * FPS - 152


def test_audio_is_trimmed_frame_by_frame() -> None:
    buffer = RingBuffer(max_seconds=2.0)
    for index in range(500):
        buffer.push(EncodedFrame(OPUS, bytes(80), index * 960, True), 1000.0 + index * 0.02)
    assert len(buffer) == 101  # 2 s of 20 ms frames, both ends included
    assert buffer.seconds == pytest.approx(2.0)
    assert buffer.keyframe_requests == 0


def test_memory_cost_matches_the_documented_figures() -> None:
    """30 s of 1 Mbit/s video: 3.75 MB of payload plus about 40 bytes a frame and chunk ends."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        buffer = RingBuffer(max_seconds=30.0, max_bytes=10**9)
        for frame, at in video(60, gop=60):
            buffer.push(frame, at)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(buffer) == 30 * FPS  # GOPs 30..59 s
    # Keyframes are 4x bigger here than a flat 1 Mbit/s, hence a little above 3.75 MB.
    assert 3_750_000 <= buffer.bytes <= 4_300_000
    per_frame = (held - buffer.bytes) / len(buffer)
    assert per_frame <= 80, per_frame
    # Nothing per frame for the garbage collector to walk (issue 14: full collections
    # over the buffers' objects stalled the event loop).
    assert sum(1 for o in gc.get_referents(buffer._frames) if gc.is_tracked(o)) < 20


def test_snapshot_gives_back_every_byte_of_frames_of_any_size_and_codec() -> None:
    """Frames bigger than a chunk, frames across chunk ends, and a codec change mid-stream."""
    buffer = RingBuffer(max_seconds=1000.0, max_bytes=10**9)
    pushed = []
    for index in range(400):
        codec = VP8 if index < 250 else VP8_AGAIN
        key = index % 50 == 0
        size = 70_000 if key else 1 + (index * 7919) % 9000
        data = (b"\x00" if key else b"\x01") + os.urandom(size)
        frame = EncodedFrame(codec, data, index * 3000, key)
        buffer.push(frame, 1000.0 + index / FPS)
        pushed.append(frame)
    taken = [item.frame for item in buffer.snapshot()]
    assert taken == pushed
    assert [f.codec is VP8_AGAIN for f in taken] == [i >= 250 for i in range(400)]


def test_rejects_bounds_that_hold_nothing() -> None:
    with pytest.raises(ValueError):
        RingBuffer(max_seconds=0)
    with pytest.raises(ValueError):
        RingBuffer(max_bytes=0)
