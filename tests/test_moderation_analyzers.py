"""Analyzers on synthetic frames, real OpenCV, and frames through a real VP8 encoder and decoder."""

from __future__ import annotations

import fractions

import av
import cv2
import numpy as np
import pytest

from moderation.analyzers import (
    BlackAnalyzer,
    FaceAnalyzer,
    Flag,
    FrozenAnalyzer,
    StreamAnalysis,
    default_analyzers,
)
from rtc.stamp import Stamp, draw_frame

WIDTH, HEIGHT = 640, 480


def moving(index: int) -> np.ndarray:
    """A scrolling colour pattern: a live, faceless picture."""
    return draw_frame(Stamp(1, index, 0), WIDTH, HEIGHT)


def face(shift: int = 0) -> np.ndarray:
    """A drawn face that OpenCV's cascade detects.

    The cascade keys on light and shade (eye band darker than cheeks, bright
    nose bridge), so the eyes sit in darker sockets under dark brows.
    """
    image = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    cx, cy, s = WIDTH // 2 + shift, HEIGHT // 2, 150
    cv2.ellipse(image, (cx, cy), (int(s * 0.8), s), 0, 0, 360, (220, 180, 150), -1)
    for side in (-1, 1):
        ex, ey = cx + side * int(s * 0.35), cy - int(s * 0.25)
        cv2.ellipse(image, (ex, ey), (int(s * 0.24), int(s * 0.14)), 0, 0, 360, (150, 115, 95), -1)
        brow = (ex, ey - int(s * 0.18))
        cv2.ellipse(image, brow, (int(s * 0.2), int(s * 0.05)), 0, 180, 360, (60, 40, 40), -1)
        cv2.ellipse(image, (ex, ey), (int(s * 0.16), int(s * 0.08)), 0, 0, 360, (255,) * 3, -1)
        cv2.circle(image, (ex, ey), int(s * 0.07), (30, 30, 30), -1)
    nose = [(cx, cy - int(s * 0.1)), (cx - int(s * 0.05), cy + int(s * 0.2))]
    cv2.line(image, nose[0], nose[1], (170, 130, 110), 4)
    mouth = (cx, cy + int(s * 0.5))
    cv2.ellipse(image, mouth, (int(s * 0.3), int(s * 0.1)), 0, 0, 180, (150, 60, 60), -1)
    return image


def flags(
    analyzer: BlackAnalyzer | FrozenAnalyzer | FaceAnalyzer, image: np.ndarray, at: float
) -> list[str]:
    return [flag.name for flag in analyzer.analyze(image, at)]


def test_black_camera_is_flagged_after_min_seconds() -> None:
    analyzer = BlackAnalyzer(min_seconds=3.0)
    rng = np.random.default_rng(0)
    for second in range(10):
        # Sensor noise in the dark: not exactly zero.
        black = rng.integers(0, 12, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        expected = ["black"] if second >= 3 else []
        assert flags(analyzer, black, 100.0 + second) == expected, second
    (flag,) = analyzer.analyze(np.zeros((HEIGHT, WIDTH, 3), np.uint8), 110.0)
    assert flag.name == "black" and "for 10 s" in flag.detail
    # The camera uncovered: the flag ends at once.
    assert flags(analyzer, moving(0), 111.0) == []


def test_covered_lens_of_any_brightness_is_flagged() -> None:
    analyzer = BlackAnalyzer(min_seconds=2.0)
    beige = np.full((HEIGHT, WIDTH, 3), (200, 180, 150), np.uint8)
    assert [flags(analyzer, beige, t) for t in (0.0, 1.0, 2.0)] == [[], [], ["black"]]


def test_frozen_picture_is_flagged_after_min_seconds() -> None:
    analyzer = FrozenAnalyzer(min_seconds=10.0)
    still = moving(7)
    results = [flags(analyzer, still, float(second)) for second in range(15)]
    # Still since the first sample: flagged from the sample 10 s after it.
    assert results == [[]] * 10 + [["frozen"]] * 5
    assert flags(analyzer, moving(8), 15.0) == []
    # A different resolution is a new picture, not a frozen one.
    assert flags(analyzer, still[::2, ::2].copy(), 16.0) == []


def test_live_picture_raises_no_black_or_frozen_flag() -> None:
    analysis = StreamAnalysis([BlackAnalyzer(min_seconds=1.0), FrozenAnalyzer(min_seconds=2.0)])
    for second in range(60):
        changes = analysis.feed(moving(second * 3), float(second))
        assert changes.raised == () and changes.cleared == ()
    assert analysis.active == {}


def test_vp8_decoded_stream_frozen_then_live_again() -> None:
    """Through a real encoder and decoder: a still picture still reads as frozen, motion does not."""
    fps, width, height = 10, 320, 240
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.bit_rate = 300_000
    encoder.time_base = fractions.Fraction(1, fps)
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    decoder = av.CodecContext.create("vp8", "r")
    # 5 s moving, 12 s still, 3 s moving; one sample a second, as the server would take.
    counters = [*range(0, 50), *[50] * 120, *range(60, 90)]
    analysis = StreamAnalysis([FrozenAnalyzer(min_seconds=8.0), BlackAnalyzer()])
    events: list[tuple[float, str, str]] = []
    decoded_count = 0
    for index, counter in enumerate(counters):
        frame = av.VideoFrame.from_ndarray(
            draw_frame(Stamp(1, counter, 0), width, height), format="rgb24"
        ).reformat(format="yuv420p")
        frame.pts = index
        for packet in encoder.encode(frame):
            for decoded in decoder.decode(packet):
                if decoded_count % fps == 0:
                    at = decoded_count / fps
                    image = np.asarray(decoded.to_ndarray(format="rgb24"), dtype=np.uint8)
                    changes = analysis.feed(image, at)
                    events += [(at, "raised", f.name) for f in changes.raised]
                    events += [(at, "cleared", f.name) for f in changes.cleared]
                decoded_count += 1
    assert decoded_count == len(counters)
    # Still from 5 s (the encoder may refine the picture for a moment): flagged
    # about 8 s later, cleared at the first moving sample.
    assert [(kind, name) for _, kind, name in events] == [
        ("raised", "frozen"),
        ("cleared", "frozen"),
    ]
    assert 13.0 <= events[0][0] <= 15.0
    assert events[1][0] == 17.0


def test_drawn_face_is_detected() -> None:
    analyzer = FaceAnalyzer()
    for shift in (-100, 0, 100):
        assert len(analyzer.faces(face(shift))) == 1
    assert analyzer.faces(moving(0)) == []
    assert analyzer.faces(np.zeros((HEIGHT, WIDTH, 3), np.uint8)) == []


def test_no_face_is_flagged_after_the_configured_time() -> None:
    analyzer = FaceAnalyzer(seconds=20.0)
    results = [flags(analyzer, moving(second), float(second)) for second in range(25)]
    assert results == [[]] * 20 + [["no_face"]] * 5
    (flag,) = analyzer.analyze(moving(99), 30.0)
    assert flag == Flag("no_face", "no face seen for 30 s")
    # Someone sits down in front of the camera: the flag ends with that sample.
    assert flags(analyzer, face(), 31.0) == []
    # The cascade only ran in the second half of the window.
    assert analyzer.detections == (20 - 10) + 5 + 1 + 1


def test_a_face_in_view_keeps_the_flag_away() -> None:
    analysis = StreamAnalysis([FaceAnalyzer(seconds=10.0)])
    for second in range(120):
        changes = analysis.feed(face(second % 50 - 25), float(second))
        assert changes.raised == ()
    analyzer = analysis.analyzers[0]
    assert isinstance(analyzer, FaceAnalyzer)
    # One detection every half window or so, not one per sample.
    assert analyzer.detections <= 120 // 5 + 1


def test_stream_analysis_reports_starts_and_ends() -> None:
    analysis = StreamAnalysis([BlackAnalyzer(min_seconds=0.0), FaceAnalyzer(seconds=2.0)])
    black = np.zeros((HEIGHT, WIDTH), np.uint8)  # grey frames work too
    first = analysis.feed(black, 0.0)
    assert [f.name for f in first.raised] == ["black"]
    second = analysis.feed(black, 2.0)
    assert [f.name for f in second.raised] == ["no_face"] and second.cleared == ()
    assert set(analysis.active) == {"black", "no_face"}
    third = analysis.feed(face(), 3.0)
    assert third.raised == ()
    assert sorted(f.name for f in third.cleared) == ["black", "no_face"]


def test_each_stream_gets_its_own_analyzers() -> None:
    one, two = default_analyzers(), default_analyzers(no_face_seconds=5.0)
    assert [a.name for a in one] == ["black", "frozen", "no_face"]
    assert all(a is not b for a, b in zip(one, two, strict=True))
    face_analyzer = two[2]
    assert isinstance(face_analyzer, FaceAnalyzer) and face_analyzer.seconds == 5.0


def test_rejects_images_it_cannot_read() -> None:
    with pytest.raises(ValueError):
        BlackAnalyzer().analyze(np.zeros((4, 4, 3), np.float32), 0.0)
