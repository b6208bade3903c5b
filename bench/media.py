"""Pre-encoded media for load clients: encoded once at start-up, then only packetized.

A load client must cost far less than the server it measures, so it never
encodes or decodes while the benchmark runs. At start-up one loop of stamped
VP8 video (:func:`rtc.stamp.draw_video_frame`) and one loop of Opus audio are
encoded; every load client then hands those bytes to aiortc as `av.Packet`s,
which aiortc's sender only packetizes.

Video is encoded twice:

* ``frames``: the normal stream, a keyframe at the start of the loop and
  predicted frames after it (one keyframe per loop, like a browser that sends
  keyframes only when asked);
* ``keyframes``: every frame of the loop again, each coded as a keyframe of
  about the size of the loop's first one.

When the relay asks a load client for a keyframe (PLI), its next frame comes
from ``keyframes`` and the frames after it from ``frames`` again, so the answer
takes at most one frame interval, like a browser's. A decoder would see a
little drift until the next loop start (the predicted frames were coded
against the normal stream's picture), which no load client cares about: none
decodes.

Frames are identified at the receiver by their RTP timestamps, not by their
pixels (see :mod:`bench.analysis`): each video track adds a small random
offset to every frame's timestamp (a multiple of :data:`JITTER_STEP` ticks,
at most about 3.5 ms) and logs what it sent, so the pattern of timestamp
differences names the sender and the frame.
"""

from __future__ import annotations

import asyncio
import fractions
import random
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.video.frame import PictureType

from rtc.stamp import Stamp, draw_video_frame

VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000
AUDIO_SAMPLES = 960  # 20 ms per Opus packet
# Random part of every video timestamp: one of JITTER_VALUES multiples of
# JITTER_STEP 90 kHz ticks (0 to 3.5 ms), enough to tell frames and senders
# apart and invisible to any player. The step lets a receiver round away the
# 1-tick error of a relay that re-encodes (PyAV rescales a frame's pts to
# microseconds on the way into the encoder, and aiortc truncates it back).
JITTER_STEP = 5
JITTER_VALUES = 64
# Encoding options for speed: the loop is encoded once, but on a busy 2-core
# machine a slow preset would still delay start-up by many seconds.
_VP8_OPTIONS = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
# Frames encoded and thrown away before the keyframe chain, so its rate
# control has settled when the kept frames start.
_KEYFRAME_WARMUP = 15


@dataclass(frozen=True)
class VideoLoop:
    """One loop of VP8 video: the normal stream and a keyframe for every position."""

    width: int
    height: int
    fps: int
    frames: tuple[bytes, ...]
    keyframes: tuple[bytes, ...]

    @property
    def bitrate(self) -> float:
        """Average bits per second of the normal stream."""
        return sum(map(len, self.frames)) * 8 * self.fps / len(self.frames)


@dataclass(frozen=True)
class AudioLoop:
    """One loop of Opus packets, 20 ms each."""

    packets: tuple[bytes, ...]

    @property
    def bitrate(self) -> float:
        return sum(map(len, self.packets)) * 8 * AUDIO_RATE / AUDIO_SAMPLES / len(self.packets)


@dataclass(frozen=True)
class LoadMedia:
    """What every load client sends; picklable, so worker processes share one encode."""

    video: VideoLoop
    audio: AudioLoop


def _vp8_encoder(loop: VideoLoop | tuple[int, int, int], bitrate: int, gop: int) -> Any:
    width, height, fps = loop if isinstance(loop, tuple) else (loop.width, loop.height, loop.fps)
    codec = av.CodecContext.create("libvpx", "w")
    codec.width = width
    codec.height = height
    codec.pix_fmt = "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fractions.Fraction(fps)
    codec.bit_rate = bitrate
    codec.gop_size = gop
    # One thread: predictable and polite on a machine others share.
    codec.thread_count = 1
    codec.options = dict(_VP8_OPTIONS)
    return codec


def encode_video_loop(
    *,
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    bitrate: int = 1_000_000,
    seconds: float = 10.0,
) -> VideoLoop:
    """Encode ``seconds`` of stamped video (tag 0, counters from 0) as a :class:`VideoLoop`."""
    count = max(2, round(seconds * fps))
    pictures = [draw_video_frame(Stamp(0, i, 0), width, height) for i in range(count)]

    normal = _vp8_encoder((width, height, fps), bitrate, gop=1 << 30)
    frames: list[bytes] = []
    for index, picture in enumerate(pictures):
        picture.pts = index
        picture.pict_type = PictureType.I if index == 0 else PictureType.NONE
        frames += [bytes(p) for p in normal.encode(picture)]
    frames += [bytes(p) for p in normal.encode(None)]
    if len(frames) != count:
        raise RuntimeError(f"VP8 encoder returned {len(frames)} frames for {count} pictures")

    # Keyframes about the size of the stream's first one, as a browser's would be.
    intra = _vp8_encoder((width, height, fps), len(frames[0]) * 8 * fps, gop=1)
    warmup = pictures[-_KEYFRAME_WARMUP:]
    keyframes: list[bytes] = []
    for index, picture in enumerate(warmup + pictures):
        picture.pts = index
        picture.pict_type = PictureType.I
        keyframes += [bytes(p) for p in intra.encode(picture)]
    keyframes += [bytes(p) for p in intra.encode(None)]
    keyframes = keyframes[len(warmup) :]
    if len(keyframes) != count:
        raise RuntimeError(f"VP8 encoder returned {len(keyframes)} keyframes for {count} pictures")
    return VideoLoop(width, height, fps, tuple(frames), tuple(keyframes))


def encode_audio_loop(
    *, seconds: float = 1.0, bitrate: int = 32_000, tone_hz: float = 440.0
) -> AudioLoop:
    """Encode ``seconds`` of a sine tone as 20 ms Opus packets."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = AUDIO_RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, AUDIO_RATE)
    count = max(1, round(seconds * AUDIO_RATE / AUDIO_SAMPLES))
    step = 2 * np.pi * tone_hz / AUDIO_RATE
    packets: list[bytes] = []
    for index in range(count):
        start = index * AUDIO_SAMPLES
        samples = (8000 * np.sin(step * np.arange(start, start + AUDIO_SAMPLES))).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    return AudioLoop(tuple(packets))


def encode_load_media(
    *,
    width: int = 640,
    height: int = 480,
    fps: int = 30,
    bitrate: int = 1_000_000,
    seconds: float = 10.0,
) -> LoadMedia:
    """The standard load: VP8 640x480 at 30 fps around 1 Mbit/s plus Opus in 20 ms frames."""
    return LoadMedia(
        encode_video_loop(width=width, height=height, fps=fps, bitrate=bitrate, seconds=seconds),
        encode_audio_loop(),
    )


@dataclass
class SendLog:
    """What one load client's video track sent: ``(pts, monotonic send time)`` per frame."""

    frames: list[tuple[int, float]] = field(default_factory=list)
    keyframes_on_request: int = 0
    audio_packets: int = 0


class _Pacer:
    """Real-time slots at ``rate`` per second; skips missed slots instead of bursting."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._start: float | None = None
        self.slot = 0

    async def wait(self) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = now
            return
        self.slot += 1
        delay = self._start + self.slot * self._interval - now
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -self._interval:
            # Behind (a starved machine): timestamps keep following the wall clock.
            self.slot = int((now - self._start) / self._interval)


class LoopVideoTrack(MediaStreamTrack):
    """Sends a :class:`VideoLoop` in real time as encoded packets, logging every frame."""

    kind = "video"

    def __init__(self, loop: VideoLoop, log: SendLog, rng: random.Random) -> None:
        super().__init__()
        self._source = loop
        self._log = log
        self._rng = rng
        self._pacer = _Pacer(loop.fps)
        self._ticks = VIDEO_CLOCK // loop.fps
        if self._ticks % JITTER_STEP:
            raise ValueError(
                f"{loop.fps} fps: frame interval is not a multiple of {JITTER_STEP} ticks"
            )
        self._index = 0
        self._keyframe_wanted = False
        self._time_base = fractions.Fraction(1, VIDEO_CLOCK)

    def request_keyframe(self) -> None:
        """The receiver asked for a keyframe (PLI/FIR): the next frame is one."""
        self._keyframe_wanted = True

    async def recv(self) -> av.Packet[Any]:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait()
        position = self._index % len(self._source.frames)
        self._index += 1
        if self._keyframe_wanted and position != 0:
            data = self._source.keyframes[position]
            self._log.keyframes_on_request += 1
        else:
            data = self._source.frames[position]
        self._keyframe_wanted = False
        packet = av.Packet(data)
        pts = self._pacer.slot * self._ticks + JITTER_STEP * self._rng.randrange(JITTER_VALUES)
        packet.pts = pts
        packet.time_base = self._time_base
        self._log.frames.append((pts, time.monotonic()))
        return packet


class LoopAudioTrack(MediaStreamTrack):
    """Sends an :class:`AudioLoop` in real time, 20 ms per packet."""

    kind = "audio"

    def __init__(self, loop: AudioLoop, log: SendLog) -> None:
        super().__init__()
        self._source = loop
        self._log = log
        self._pacer = _Pacer(AUDIO_RATE / AUDIO_SAMPLES)
        self._index = 0
        self._time_base = fractions.Fraction(1, AUDIO_RATE)

    async def recv(self) -> av.Packet[Any]:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        await self._pacer.wait()
        packet = av.Packet(self._source.packets[self._index % len(self._source.packets)])
        self._index += 1
        packet.pts = self._pacer.slot * AUDIO_SAMPLES
        packet.time_base = self._time_base
        self._log.audio_packets += 1
        return packet
