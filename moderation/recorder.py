"""A Recorder: encoded frames into a WebM file as they are, without decoding.

File layout: one file per user, holding that user's own tracks (normally one
VP8 video and one Opus audio track, named ``video`` and ``audio`` in the
stream titles). Evidence is about the reported user; keeping the reporter's
camera out of the file spares the person who asked for help, and lets each
user's recordings be reviewed, kept or deleted on their own. It also keeps
one clock per file: the tracks of two publishers share no timeline at all.
:class:`Recorder` itself takes any number of tracks, so a pair file remains
possible.

Timing: inside a track, presentation times come from the frames' own
timestamps (exact, codec clock). Tracks are placed against each other by
arrival time: a track starts at the time its first frame arrived, counted
from the first frame the file received (which is at 0). Where a track's
timestamps go backwards or leap (an encoder restart), arrival time bridges
the gap.

Each video track starts at its first keyframe; the frames before it cannot be
decoded and are skipped. The file header needs each video track's picture
size, which is read from its first VP8 keyframe, so frames are held back
until every video track has one (or until :data:`MAX_PENDING` frames wait;
then a placeholder size is written, which players ignore in favour of the
bitstream's own).

Opus needs an ``OpusHead`` in the header; it is made by opening (never
feeding) a libopus encoder context, whose 312-sample pre-skip trims the first
6.5 ms of audio on playback.

Recorders do blocking file I/O: from the event loop, run a whole snapshot
write in ``asyncio.to_thread``. One recorder is used by one thread at a time.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Final

import av
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.container import OutputContainer
from av.stream import Stream

from moderation.ringbuffer import BufferedFrame
from rtc.media import EncodedFrame

__all__ = [
    "MAX_PENDING",
    "PLACEHOLDER_SIZE",
    "RECORDING_NAME",
    "RECORDING_SUFFIX",
    "Recorder",
    "Track",
    "UnsupportedCodec",
    "delete_expired",
    "new_recording_path",
    "vp8_size",
]

RECORDING_SUFFIX: Final = ".webm"
# Frames held back while waiting for every video track's first keyframe.
MAX_PENDING: Final = 500
# Size written for a video track that never showed a keyframe before the header.
PLACEHOLDER_SIZE: Final = (640, 480)
# Timestamp steps beyond this (or backwards) are bridged by arrival time instead.
MAX_TIMESTAMP_STEP: Final = 10.0

# What each supported RTP codec is called in the container.
_CONTAINER_CODECS: Final = {"video/vp8": "vp8", "audio/opus": "opus"}
# Last-frame duration when a track has only one frame to go by.
_DEFAULT_FRAME_SECONDS: Final = {"video": 1 / 30, "audio": 0.02}


class UnsupportedCodec(ValueError):
    """WebM holds VP8 and Opus here; anything else cannot be recorded without transcoding."""


@dataclass(frozen=True, slots=True)
class Track:
    """One track of a recording: its name and the codec its frames arrive in."""

    name: str
    codec: RTCRtpCodecParameters

    @property
    def kind(self) -> str:
        return "video" if self.codec.mimeType.lower().startswith("video/") else "audio"


@dataclass(slots=True)
class _TrackState:
    track: Track
    clock: int
    started: bool = False
    # The next frame comes from a new stream (Recorder.new_source).
    resuming: bool = False
    size: tuple[int, int] | None = None
    stream: Stream | None = None
    last_timestamp: int = 0
    last_pts: int = 0
    last_at: float = 0.0
    # Held back one frame, to learn its duration from the next one.
    held: av.Packet[Stream] | None = None
    last_duration: int = 0
    written: int = 0
    skipped: int = 0
    mismatched: int = 0
    pending: list[av.Packet[Stream]] = field(default_factory=list)


def vp8_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe's header (RFC 6386 section 9.1), or None."""
    if len(data) < 10 or data[0] & 0x01 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(data[6:8], "little") & 0x3FFF
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    return (width, height) if width and height else None


def new_recording_path(folder: str | Path) -> Path:
    """An unguessable file name in `folder` (created private to this user if missing)."""
    folder = Path(folder)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder / f"{secrets.token_urlsafe(18)}{RECORDING_SUFFIX}"


# Exactly the names new_recording_path makes: 18 random bytes are 24 base64url characters.
RECORDING_NAME: Final = re.compile(r"[A-Za-z0-9_-]{24}" + re.escape(RECORDING_SUFFIX))


class Recorder:
    """Writes the encoded frames of `tracks` to a new WebM file at `path`.

    The file must not exist yet; it is created readable by this user only.
    """

    def __init__(self, path: str | Path, tracks: Sequence[Track]) -> None:
        if not tracks:
            raise ValueError("a recording needs at least one track")
        names = [track.name for track in tracks]
        if len(set(names)) != len(names):
            raise ValueError(f"track names repeat: {names}")
        for track in tracks:
            if track.codec.mimeType.lower() not in _CONTAINER_CODECS:
                raise UnsupportedCodec(f"cannot record {track.codec.mimeType} into WebM")
        self.path = Path(path)
        self._tracks = {
            track.name: _TrackState(track, clock=track.codec.clockRate) for track in tracks
        }
        # Exclusive creation: never overwrite evidence, never follow a planted symlink.
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._container: OutputContainer = av.open(str(self.path), "w", format="webm")
        except BaseException:
            self.path.unlink(missing_ok=True)
            raise
        self._origin: float | None = None
        self._header_written = False
        self._pending = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"<Recorder {self.path.name}>"

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per track: frames written, skipped (before the first keyframe), mismatched (codec)."""
        return {
            name: {"written": t.written, "skipped": t.skipped, "mismatched": t.mismatched}
            for name, t in self._tracks.items()
        }

    # -- frames in ---------------------------------------------------------

    def new_source(self) -> None:
        """What follows comes from a new stream of the same person (a new media connection).

        Its first frames may depend on pictures this file never had, so video goes on
        at the new stream's first keyframe; the time between is kept, by arrival.
        """
        for state in self._tracks.values():
            state.resuming = state.started

    def write(self, track_name: str, frame: EncodedFrame, received_at: float | None = None) -> bool:
        """Add `frame` to `track_name`; False if it was skipped.

        `received_at` is when the frame arrived (``time.monotonic()`` by
        default, i.e. now: right for live recording). Give the arrival
        times a RingBuffer kept when writing a snapshot.
        """
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        state = self._tracks[track_name]
        at = time.monotonic() if received_at is None else received_at
        if frame.codec.mimeType.lower() != state.track.codec.mimeType.lower():
            # The publisher switched codec; this file cannot hold the new one.
            state.mismatched += 1
            return False
        if not state.started:
            if state.track.kind == "video":
                size = vp8_size(frame.data)
                if not frame.keyframe or size is None:
                    state.skipped += 1
                    return False
                state.size = size
            state.started = True
            # The file's first accepted frame is at 0; skipped ones do not count.
            if self._origin is None:
                self._origin = at
            pts = max(0, round((at - self._origin) * state.clock))
        elif state.resuming:
            if state.track.kind == "video" and not frame.keyframe:
                state.skipped += 1
                return False
            state.resuming = False
            # The new stream's timestamps have nothing to do with the old one's.
            pts = state.last_pts + max(1, round((at - state.last_at) * state.clock))
        else:
            step = frame.timestamp - state.last_timestamp
            if 0 < step <= MAX_TIMESTAMP_STEP * state.clock:
                pts = state.last_pts + step
            else:
                pts = state.last_pts + max(1, round((at - state.last_at) * state.clock))
        state.last_timestamp, state.last_pts, state.last_at = frame.timestamp, pts, at

        packet = av.Packet(frame.data)
        packet.pts = packet.dts = pts
        packet.time_base = Fraction(1, state.clock)
        packet.is_keyframe = frame.keyframe
        held, state.held = state.held, packet
        if held is not None:
            state.last_duration = pts - _pts(held)
            held.duration = state.last_duration
            self._emit(state, held)
        state.written += 1
        return True

    def write_buffered(self, snapshots: Mapping[str, Sequence[BufferedFrame]]) -> None:
        """Write ring-buffer snapshots (track name to frames), interleaved by arrival time."""
        merged = sorted(
            (
                (item.received_at, order, name, item.frame)
                for name, frames in snapshots.items()
                for order, item in enumerate(frames)
            ),
            key=lambda entry: (entry[0], entry[1]),
        )
        for received_at, _, name, frame in merged:
            self.write(name, frame, received_at)

    # -- container ---------------------------------------------------------

    def _emit(self, state: _TrackState, packet: av.Packet[Stream]) -> None:
        if self._header_written:
            assert state.stream is not None
            packet.stream = state.stream
            self._container.mux(packet)
            return
        state.pending.append(packet)
        self._pending += 1
        ready = all(t.size is not None for t in self._tracks.values() if t.track.kind == "video")
        if ready or self._pending >= MAX_PENDING:
            self._write_header()

    def _write_header(self) -> None:
        for state in self._tracks.values():
            state.stream = self._add_stream(state)
        self._container.start_encoding()
        self._header_written = True
        # Pending packets go out in arrival order across tracks, as they came.
        pending = sorted(
            (packet for state in self._tracks.values() for packet in state.pending),
            key=lambda packet: float(_pts(packet) * _time_base(packet)),
        )
        for state in self._tracks.values():
            state.pending.clear()
        self._pending = 0
        for packet in pending:
            self._container.mux(packet)

    def _add_stream(self, state: _TrackState) -> Stream:
        track = state.track
        name = _CONTAINER_CODECS[track.codec.mimeType.lower()]
        stream: Stream
        if track.kind == "video":
            width, height = state.size or PLACEHOLDER_SIZE
            stream = self._container.add_mux_stream(name, width=width, height=height)
        else:
            # A codec context (opened, never fed) is what gives the header its OpusHead.
            audio = self._container.add_stream("libopus", rate=track.codec.clockRate)
            audio.codec_context.layout = "stereo" if (track.codec.channels or 2) > 1 else "mono"
            stream = audio
        stream.metadata["title"] = track.name
        for packet in state.pending:
            packet.stream = stream
        return stream

    @property
    def written(self) -> int:
        """Frames accepted into the file, all tracks together."""
        return sum(state.written for state in self._tracks.values())

    def close(self) -> None:
        """Write what is held back and finish the file; safe to call twice.

        A recorder that accepted no frame at all deletes its file: a WebM
        without a single frame is not playable, and there is nothing to keep.
        """
        if self._closed:
            return
        self._closed = True
        empty = self.written == 0
        try:
            for state in self._tracks.values():
                held, state.held = state.held, None
                if held is not None:
                    held.duration = state.last_duration or round(
                        _DEFAULT_FRAME_SECONDS[state.track.kind] * state.clock
                    )
                    self._emit(state, held)
            if not self._header_written and not empty:
                self._write_header()
        finally:
            self._container.close()
            if empty:
                self.path.unlink(missing_ok=True)


def _pts(packet: av.Packet[Stream]) -> int:
    assert packet.pts is not None
    return packet.pts


def _time_base(packet: av.Packet[Stream]) -> Fraction:
    assert packet.time_base is not None
    return packet.time_base


def delete_expired(folder: str | Path, max_age: float, *, now: float | None = None) -> list[Path]:
    """Delete recordings in `folder` last modified more than `max_age` seconds ago.

    Only regular ``*.webm`` files directly in `folder` are considered; returns
    what was deleted, so reports pointing at them can be updated.
    """
    cutoff = (time.time() if now is None else now) - max_age
    deleted: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return deleted
    for entry in entries:
        if not entry.name.endswith(RECORDING_SUFFIX) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                deleted.append(Path(entry.path))
        except FileNotFoundError:
            continue  # deleted meanwhile
    return deleted


# The two people of a report's evidence file: the reported one's tracks are named
# `video`/`audio`, the reporter's `reporter_video`/`reporter_audio` (service.py).
PARTS: Final = {"reported": "", "reporter": "reporter_"}


def extract_part(path: str | Path, part: str) -> bytes | None:
    """One person's tracks of an evidence file as a WebM of their own, remuxed (no decoding).

    Browsers play only the first video track of a file; the dashboard shows both people
    side by side by playing the two parts. Timestamps are kept, so the parts stay on
    the file's one clock. None when the file has no track of that person.
    """
    prefix = PARTS[part]
    wanted = {prefix + "video", prefix + "audio"}
    out = io.BytesIO()
    with av.open(str(path)) as source:
        chosen = [s for s in source.streams if s.metadata.get("title") in wanted]
        if not chosen:
            return None
        with av.open(out, "w", format="webm") as target:
            streams = {}
            for stream in chosen:
                copy = target.add_stream_from_template(stream)
                copy.metadata["title"] = str(stream.metadata["title"]).removeprefix(prefix)
                streams[stream.index] = copy
            for packet in source.demux(chosen):
                if packet.dts is None:
                    continue  # the demuxer's end-of-stream marker
                packet.stream = streams[packet.stream.index]
                target.mux(packet)
    return out.getvalue()
