"""Recorder: real VP8 and Opus packets from PyAV's encoders, muxed to WebM, read back with PyAV."""

from __future__ import annotations

import fractions
import os
import stat
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from moderation.recorder import (
    MAX_PENDING,
    PLACEHOLDER_SIZE,
    RECORDING_SUFFIX,
    Recorder,
    Track,
    UnsupportedCodec,
    delete_expired,
    new_recording_path,
    vp8_size,
)
from moderation.ringbuffer import RingBuffer
from rtc.media import EncodedFrame, is_keyframe
from rtc.stamp import Stamp, draw_video_frame, luma, read_stamp

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
TRACKS = [Track("video", VP8), Track("audio", OPUS)]
FPS = 30
WIDTH, HEIGHT = 320, 240
GOP = 30
TAG = 0x5EED


def encode_video(count: int, *, first_counter: int = 0) -> list[EncodedFrame]:
    """`count` stamped frames through libvpx, as a browser's RTP stream delivers them."""
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.bit_rate = 400_000
    encoder.time_base = fractions.Fraction(1, FPS)
    encoder.gop_size = GOP
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    packets = []
    for index in range(count):
        frame = draw_video_frame(Stamp(TAG, first_counter + index, 0), WIDTH, HEIGHT)
        frame.pts = index
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    assert len(packets) == count
    frames = []
    for index, packet in enumerate(packets):
        data = bytes(packet)
        # The relay decides keyframes from the bytes; it must agree with the encoder.
        assert is_keyframe(VP8, data) == packet.is_keyframe
        frames.append(EncodedFrame(VP8, data, index * 90000 // FPS, packet.is_keyframe))
    return frames


def encode_audio(count: int) -> list[EncodedFrame]:
    """`count` 20 ms Opus frames of a 440 Hz tone."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "stereo", "s16"
    encoder.bit_rate = 32000
    encoder.time_base = fractions.Fraction(1, 48000)
    packets = []
    for index in range(count):
        t = np.arange(index * 960, (index + 1) * 960)
        tone = (np.sin(2 * np.pi * 440 * t / 48000) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.stack([tone, tone]).T.reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate, frame.pts = 48000, index * 960
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    return [
        EncodedFrame(OPUS, bytes(packet), index * 960, True)
        for index, packet in enumerate(packets[:count])
    ]


def read_back(path: Path) -> dict[str, object]:
    """What a player finds in the file: streams, timing, decoded stamps and audio."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        info: dict[str, object] = {
            "format": container.format.name,
            "duration": container.duration / 1_000_000 if container.duration else 0.0,
            "video_codec": video.codec_context.name,
            "size": (video.codec_context.width, video.codec_context.height),
            "titles": [stream.metadata.get("title") for stream in container.streams],
        }
        first_pts: dict[str, float] = {}
        counters = []
        samples = 0
        for packet in container.demux():
            if packet.pts is None:
                continue  # the flush packet at the end of each stream
            kind = packet.stream.type
            first_pts.setdefault(kind, float(packet.pts * packet.time_base))
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    stamp = read_stamp(luma(frame))
                    assert stamp is not None, "a recorded frame did not decode cleanly"
                    counters.append(stamp.counter)
                elif isinstance(frame, av.AudioFrame):
                    samples += frame.samples
        info.update(
            counters=counters,
            samples=samples,
            first_pts=first_pts,
            audio_codec=audio.codec_context.name if audio else None,
            audio_extradata=bytes(audio.codec_context.extradata or b"") if audio else b"",
        )
    return info


def write_live(recorder: Recorder, video: list[EncodedFrame], audio: list[EncodedFrame]) -> None:
    """Interleave as they would arrive: video every 1/30 s, audio every 20 ms, from t=100."""
    arrivals = [(100 + i / FPS, "video", f) for i, f in enumerate(video)]
    arrivals += [(100 + i * 0.02, "audio", f) for i, f in enumerate(audio)]
    for at, name, frame in sorted(arrivals, key=lambda a: a[0]):
        recorder.write(name, frame, at)


def test_vp8_and_opus_are_recorded_without_decoding(tmp_path: Path) -> None:
    video, audio = encode_video(90), encode_audio(150)
    path = new_recording_path(tmp_path)
    with Recorder(path, TRACKS) as recorder:
        write_live(recorder, video, audio)
    assert recorder.stats() == {
        "video": {"written": 90, "skipped": 0, "mismatched": 0},
        "audio": {"written": 150, "skipped": 0, "mismatched": 0},
    }

    info = read_back(path)
    assert info["format"] == "matroska,webm"
    assert (info["video_codec"], info["audio_codec"]) == ("vp8", "opus")
    assert info["size"] == (WIDTH, HEIGHT)
    assert info["titles"] == ["video", "audio"]
    assert info["audio_extradata"][:8] == b"OpusHead"  # type: ignore[index]
    # Every frame decodes and shows its stamp, in order.
    assert info["counters"] == list(range(90))
    assert info["first_pts"] == {"video": 0.0, "audio": 0.0}
    assert info["duration"] == pytest.approx(3.0, abs=0.05)
    # 150 frames of 960 samples, less libopus' 312-sample pre-skip.
    assert info["samples"] == 150 * 960 - 312


def test_video_starts_at_its_first_keyframe_and_tracks_align_by_arrival(tmp_path: Path) -> None:
    video = encode_video(90)[10:]  # joins mid-GOP: frames 10..29 cannot be decoded
    audio = encode_audio(150)
    path = new_recording_path(tmp_path)
    with Recorder(path, TRACKS) as recorder:
        arrivals = [(100 + (10 + i) / FPS, "video", f) for i, f in enumerate(video)]
        arrivals += [(100 + i * 0.02, "audio", f) for i, f in enumerate(audio)]
        for at, name, frame in sorted(arrivals, key=lambda a: a[0]):
            recorder.write(name, frame, at)
    assert recorder.stats()["video"] == {"written": 60, "skipped": 20, "mismatched": 0}

    info = read_back(path)
    assert info["counters"] == list(range(30, 90))
    # Audio began at 100.0, the keyframe arrived at 101.0: the video starts 1 s in.
    first = info["first_pts"]
    assert isinstance(first, dict)
    assert first["audio"] == 0.0
    assert first["video"] == pytest.approx(1.0, abs=0.002)


def test_the_first_frame_written_is_at_zero_even_after_skipped_ones(tmp_path: Path) -> None:
    path = new_recording_path(tmp_path)
    with Recorder(path, [Track("video", VP8)]) as recorder:
        for i, frame in enumerate(encode_video(60)[5:]):
            recorder.write("video", frame, 100 + (5 + i) / FPS)
    info = read_back(path)
    assert info["counters"] == list(range(30, 60))
    assert info["first_pts"] == {"video": 0.0}
    assert info["duration"] == pytest.approx(1.0, abs=0.05)


def test_snapshot_of_ring_buffers_becomes_a_playable_file(tmp_path: Path) -> None:
    video_buffer = RingBuffer(max_seconds=1.5)
    audio_buffer = RingBuffer(max_seconds=1.5)
    video, audio = encode_video(150), encode_audio(250)
    for i, frame in enumerate(video):
        video_buffer.push(frame, 100 + i / FPS)
    for i, frame in enumerate(audio):
        audio_buffer.push(frame, 100 + i * 0.02)

    snapshots = {"video": video_buffer.snapshot(), "audio": audio_buffer.snapshot()}
    path = new_recording_path(tmp_path)
    with Recorder(path, TRACKS) as recorder:
        recorder.write_buffered(snapshots)

    info = read_back(path)
    counters = info["counters"]
    assert isinstance(counters, list)
    # The buffer kept whole GOPs: it starts on a keyframe and runs to the last frame.
    assert counters[0] % GOP == 0
    assert counters == list(range(counters[0], 150))
    assert 0.75 <= len(counters) / FPS <= 1.5
    # Audio covers the last 1.5 s; video starts at its keyframe, later in the file.
    first = info["first_pts"]
    assert isinstance(first, dict)
    assert first["audio"] == 0.0
    audio_start = snapshots["audio"][0].received_at
    assert first["video"] == pytest.approx(100 + counters[0] / FPS - audio_start, abs=0.002)


def test_a_late_video_track_does_not_hold_the_file_back_forever(tmp_path: Path) -> None:
    # Audio flows for 11 s before the camera's first keyframe: after MAX_PENDING
    # frames the header goes out with a placeholder picture size.
    audio, video = encode_audio(600), encode_video(60)
    assert MAX_PENDING < 11 / 0.02
    path = new_recording_path(tmp_path)
    with Recorder(path, TRACKS) as recorder:
        arrivals = [(111 + i / FPS, "video", f) for i, f in enumerate(video)]
        arrivals += [(100 + i * 0.02, "audio", f) for i, f in enumerate(audio)]
        for at, name, frame in sorted(arrivals, key=lambda a: a[0]):
            recorder.write(name, frame, at)
    info = read_back(path)
    assert info["size"] == PLACEHOLDER_SIZE
    assert info["counters"] == list(range(60))  # decoders go by the bitstream's own size
    first = info["first_pts"]
    assert isinstance(first, dict)
    assert first["video"] == pytest.approx(11.0, abs=0.002)
    assert info["samples"] == 600 * 960 - 312


def test_timestamps_that_jump_back_are_bridged_by_arrival_time(tmp_path: Path) -> None:
    # A browser encoder restart: the second half's timestamps start at 0 again.
    first, second = encode_video(30), encode_video(30, first_counter=30)
    path = new_recording_path(tmp_path)
    with Recorder(path, [Track("video", VP8)]) as recorder:
        for i, frame in enumerate(first + second):
            recorder.write("video", frame, 100 + i / FPS)
    info = read_back(path)
    assert info["counters"] == list(range(60))
    assert info["duration"] == pytest.approx(2.0, abs=0.05)


def test_a_new_source_goes_on_at_its_first_keyframe_after_the_time_between(
    tmp_path: Path,
) -> None:
    # The person's new media connection: another encoder, joined mid-GOP half a second
    # after the old one's last frame. Its first frames refer to pictures this file
    # never had; they are skipped until its keyframe, and every frame decodes cleanly.
    first, second = encode_video(30), encode_video(60, first_counter=100)
    assert second[30].keyframe and not any(f.keyframe for f in second[5:30])
    path = new_recording_path(tmp_path)
    with Recorder(path, [Track("video", VP8)]) as recorder:
        for i, frame in enumerate(first):
            recorder.write("video", frame, 100 + i / FPS)
        recorder.new_source()
        for k, frame in enumerate(second[5:]):
            recorder.write("video", frame, 101.5 + k / FPS)
        assert recorder.stats()["video"] == {"written": 60, "skipped": 25, "mismatched": 0}
    info = read_back(path)
    assert info["counters"] == list(range(30)) + list(range(130, 160))
    assert info["duration"] == pytest.approx(1.5 + 55 / FPS, abs=0.1)


def test_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedCodec):
        Recorder(tmp_path / "h264.webm", [Track("video", H264)])
    with pytest.raises(ValueError, match="repeat"):
        Recorder(tmp_path / "twice.webm", [Track("video", VP8), Track("video", VP8)])
    existing = tmp_path / "existing.webm"
    existing.write_bytes(b"evidence")
    with pytest.raises(FileExistsError):
        Recorder(existing, TRACKS)
    assert existing.read_bytes() == b"evidence"

    path = new_recording_path(tmp_path / "private")
    with Recorder(path, TRACKS) as recorder:
        # A frame in another codec than the track's is counted, not written.
        assert not recorder.write("video", EncodedFrame(H264, b"\x00\x00\x01\x65", 0, True), 1.0)
        assert not recorder.write("video", encode_video(2)[1], 1.0)  # no keyframe yet
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert recorder.stats()["video"] == {"written": 0, "skipped": 1, "mismatched": 1}
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # Nothing playable was written, so nothing is kept.
    assert not path.exists()
    with pytest.raises(ValueError, match="closed"):
        recorder.write("video", encode_video(1)[0], 2.0)


def test_vp8_size_reads_keyframe_headers() -> None:
    key, delta = encode_video(2)
    assert vp8_size(key.data) == (WIDTH, HEIGHT)
    assert vp8_size(delta.data) is None
    assert vp8_size(b"") is None


def test_recording_names_are_unguessable(tmp_path: Path) -> None:
    paths = {new_recording_path(tmp_path) for _ in range(100)}
    assert len(paths) == 100
    for path in paths:
        assert path.parent == tmp_path and path.suffix == RECORDING_SUFFIX
        assert len(path.stem) == 24  # 18 random bytes


def test_delete_expired_removes_old_recordings_only(tmp_path: Path) -> None:
    now = 1_700_000_000.0
    old, fresh = new_recording_path(tmp_path), new_recording_path(tmp_path)
    old_other = tmp_path / "notes.txt"
    old_dir = tmp_path / "old.webm"
    outside = tmp_path.parent / f"{tmp_path.name}-outside.webm"
    link = tmp_path / "link.webm"
    for path in (old, fresh, old_other, outside):
        path.write_bytes(b"x")
    old_dir.mkdir()
    link.symlink_to(outside)
    for path in (old, old_other, old_dir, outside):
        os.utime(path, (now - 7200, now - 7200))
    os.utime(fresh, (now - 60, now - 60))
    os.utime(link, (now - 7200, now - 7200), follow_symlinks=False)

    assert delete_expired(tmp_path, 3600, now=now) == [old]
    assert not old.exists()
    for kept in (fresh, old_other, old_dir, outside, link):
        assert kept.exists() or kept.is_symlink()
    assert delete_expired(tmp_path / "missing", 3600, now=now) == []
    outside.unlink()
