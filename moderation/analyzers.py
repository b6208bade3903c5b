"""Analyzers: flags raised from sampled, decoded frames of one stream.

An :class:`Analyzer` is given a sampled frame (``height x width x 3`` uint8,
RGB as from ``frame.to_ndarray(format="rgb24")``; plain ``height x width``
grey works too) and the time it was taken, in seconds on any monotonic clock.
It keeps whatever state it needs between samples, so each stream gets its
own instances (:func:`default_analyzers`), and returns the flags in effect
after that sample. :class:`StreamAnalysis` runs a stream's analyzers and says
which flags started and which ended, which is what a dashboard or log wants.

Built in, each on a small grey copy of the frame:

- ``black``: the picture is dark and flat, or flat at any brightness (a
  covered lens, a blank virtual camera), for `min_seconds`;
- ``frozen``: consecutive samples differ by less than `max_difference` grey
  levels on average for `min_seconds` (a hung capture, a looped still);
- ``no_face``: OpenCV's frontal-face Haar cascade found no face for
  `seconds`. A hint, not a verdict: profiles, poor light and hats defeat it.

Samples once a second are plenty. Costs per sample at 640x480: well under a
millisecond for ``black`` and ``frozen``; a few milliseconds for ``no_face``,
which only runs the cascade in the second half of its window (a face seen
recently cannot have been missing for long). Run analysis off the event loop
(``asyncio.to_thread``); analyzers of different streams may run in parallel
threads, one stream's analyzers from one thread at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import cv2
import cv2.data
import numpy as np
import numpy.typing as npt

__all__ = [
    "Analyzer",
    "BlackAnalyzer",
    "FaceAnalyzer",
    "Flag",
    "FlagChanges",
    "FrozenAnalyzer",
    "Image",
    "StreamAnalysis",
    "default_analyzers",
]

Image = npt.NDArray[np.uint8]

FACE_CASCADE: Final = "haarcascade_frontalface_default.xml"
# Width of the grey copy the cheap analyzers look at: enough to see a
# picture change, small enough that camera noise averages out.
_SMALL_WIDTH: Final = 160


@dataclass(frozen=True, slots=True)
class Flag:
    """Something a moderator may want to look at, e.g. ``Flag("black", "mean 3, spread 1.2 for 5 s")``."""

    name: str
    detail: str
    # How sure the analyzer is, 0..1, where it has a measure (the nudity model's score).
    score: float | None = None


class Analyzer(Protocol):
    """Looks at one stream's sampled frames; returns the flags in effect after each."""

    name: str

    def analyze(self, image: Image, at: float) -> list[Flag]: ...


def _grey(image: Image, width: int) -> Image:
    """`image` as grey, scaled down to at most `width` pixels wide."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an HxWx3 or HxW uint8 image, got {image.dtype} {image.shape}")
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    height, current = grey.shape
    if current > width:
        size = (width, max(1, round(height * width / current)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return np.asarray(grey, dtype=np.uint8)


class _Held:
    """How long a condition has held, across samples."""

    def __init__(self) -> None:
        self.since: float | None = None

    def update(self, holds: bool, at: float, since: float | None = None) -> float:
        """Seconds the condition has held as of `at` (0 when it does not)."""
        if not holds:
            self.since = None
            return 0.0
        if self.since is None:
            self.since = at if since is None else since
        return at - self.since


class BlackAnalyzer:
    """Flags a camera that shows nothing: black, or one flat colour."""

    name = "black"

    def __init__(
        self,
        *,
        max_mean: float = 32.0,
        max_dark_spread: float = 10.0,
        max_flat_spread: float = 3.0,
        min_seconds: float = 3.0,
    ) -> None:
        self.max_mean = max_mean
        self.max_dark_spread = max_dark_spread
        self.max_flat_spread = max_flat_spread
        self.min_seconds = min_seconds
        self._held = _Held()

    def analyze(self, image: Image, at: float) -> list[Flag]:
        mean, spread = cv2.meanStdDev(_grey(image, _SMALL_WIDTH))
        mean_value, spread_value = float(mean[0, 0]), float(spread[0, 0])
        dark = mean_value <= self.max_mean and spread_value <= self.max_dark_spread
        flat = spread_value <= self.max_flat_spread
        held = self._held.update(dark or flat, at)
        if self._held.since is None or held < self.min_seconds:
            return []
        return [
            Flag(self.name, f"mean {mean_value:.0f}, spread {spread_value:.1f} for {held:.0f} s")
        ]


class FrozenAnalyzer:
    """Flags a picture that has not changed between samples for `min_seconds`."""

    name = "frozen"

    def __init__(self, *, max_difference: float = 0.5, min_seconds: float = 10.0) -> None:
        self.max_difference = max_difference
        self.min_seconds = min_seconds
        self._held = _Held()
        self._previous: Image | None = None
        self._previous_at = 0.0

    def analyze(self, image: Image, at: float) -> list[Flag]:
        grey = _grey(image, _SMALL_WIDTH)
        previous, previous_at = self._previous, self._previous_at
        self._previous, self._previous_at = grey, at
        if previous is None or previous.shape != grey.shape:
            self._held.update(False, at)
            return []
        difference = float(cv2.absdiff(grey, previous).mean())
        # The picture has been still since the previous sample, not just since this one.
        held = self._held.update(difference < self.max_difference, at, since=previous_at)
        if self._held.since is None or held < self.min_seconds:
            return []
        return [Flag(self.name, f"unchanged for {held:.0f} s (difference {difference:.2f})")]


_cascades = threading.local()


def _face_cascade() -> cv2.CascadeClassifier:
    # One per thread: detectMultiScale is not documented as safe to share.
    cascade: cv2.CascadeClassifier | None = getattr(_cascades, "face", None)
    if cascade is None:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + FACE_CASCADE)
        if cascade.empty():
            raise RuntimeError(
                f"OpenCV has no {FACE_CASCADE} (opencv 5.x wheels dropped the Haar cascades)"
            )
        _cascades.face = cascade
    return cascade


class FaceAnalyzer:
    """Flags a stream in which no face has been seen for `seconds`."""

    name = "no_face"

    def __init__(self, *, seconds: float = 30.0, width: int = 160, min_face: float = 0.15) -> None:
        self.seconds = seconds
        # Detection runs on a grey copy this wide; faces smaller than
        # `min_face` of its width are not looked for (they would be far away).
        self.width = width
        self.min_face = min_face
        self._last_seen: float | None = None
        self.detections = 0

    def analyze(self, image: Image, at: float) -> list[Flag]:
        if self._last_seen is None:
            self._last_seen = at  # the window starts with the first sample
        missing = at - self._last_seen
        # A face seen in the first half of the window cannot be missing for the
        # whole of it yet: skip the cascade.
        if missing >= self.seconds / 2 and self.faces(image):
            self._last_seen = at
            return []
        if missing < self.seconds:
            return []
        return [Flag(self.name, f"no face seen for {missing:.0f} s")]

    def faces(self, image: Image) -> list[tuple[int, int, int, int]]:
        """Face rectangles (x, y, w, h) in the scaled-down grey copy."""
        grey = cv2.equalizeHist(_grey(image, self.width))
        smallest = max(20, round(grey.shape[1] * self.min_face))
        self.detections += 1
        found = _face_cascade().detectMultiScale(
            grey, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest)
        )
        return [(int(x), int(y), int(w), int(h)) for x, y, w, h in found]


def default_analyzers(*, no_face_seconds: float = 30.0) -> list[Analyzer]:
    """A fresh set of the built-in analyzers for one stream."""
    return [BlackAnalyzer(), FrozenAnalyzer(), FaceAnalyzer(seconds=no_face_seconds)]


@dataclass(frozen=True, slots=True)
class FlagChanges:
    """What one sample changed: flags that started, and flags that ended."""

    raised: tuple[Flag, ...]
    cleared: tuple[Flag, ...]


class StreamAnalysis:
    """One stream's analyzers, and which of their flags are in effect."""

    def __init__(self, analyzers: Sequence[Analyzer]) -> None:
        self.analyzers = list(analyzers)
        self.active: dict[str, Flag] = {}

    def feed(self, image: Image, at: float) -> FlagChanges:
        """Run every analyzer on this sample; report flags that started or ended."""
        now: dict[str, Flag] = {}
        for analyzer in self.analyzers:
            for flag in analyzer.analyze(image, at):
                now[flag.name] = flag
        raised = tuple(flag for name, flag in now.items() if name not in self.active)
        cleared = tuple(flag for name, flag in self.active.items() if name not in now)
        self.active = now
        return FlagChanges(raised, cleared)
