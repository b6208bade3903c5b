"""The nudity analyzer: NudeNet's 320n detector on sampled frames.

An optional extra (``pip install '.[nudity]'``): the ``nudenet`` wheel
carries its model file (``nudenet/320n.onnx``, about 12 MB), which runs with
onnxruntime on the CPU; nothing is downloaded at import or at first use.
NudeNet's package metadata says MIT but its LICENSE file is AGPL-3.0, so the
relay never depends on it: without the extra the server runs, and asking for
the analyzer fails at start-up with :class:`NudityUnavailable`.

We load the wheel's model ourselves rather than through
``nudenet.NudeDetector``: that class picks its own execution providers and
threads and decodes its 2,100 candidate boxes in a Python loop; here the
session is pinned to the CPU with one thread per inference (its cost stays
one core however many streams are sampled) and scoring is one numpy max.

Only the exposed classes below raise the flag: a bare chest, belly, armpit
or foot is ordinary on a webcam.
"""

from __future__ import annotations

import importlib.resources
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np

from moderation.analyzers import Flag, Image

__all__ = [
    "EXPOSED",
    "LABELS",
    "Detection",
    "NudityAnalyzer",
    "NudityModel",
    "NudityUnavailable",
    "RateLimit",
]

# The model's 18 classes, in the order of its output rows (from nudenet/nudenet.py 3.4).
LABELS: Final = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)
EXPOSED: Final = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)
_EXPOSED_ROWS: Final = np.array([LABELS.index(name) for name in EXPOSED])
MODEL_FILE: Final = "320n.onnx"
# The model's input is a square this many pixels wide (the "320" in 320n).
INPUT_SIZE: Final = 320
INSTALL_HINT: Final = (
    "the nudity analyzer needs the optional extra: pip install 'roulette-relay[nudity]' "
    "(nudenet 3.4 and onnxruntime; nudenet's LICENSE file is AGPL-3.0, see docs/moderation.md)"
)


class NudityUnavailable(RuntimeError):
    """The optional ``nudity`` extra is not installed (or its model file is missing)."""


@dataclass(frozen=True, slots=True)
class Detection:
    """One exposed region: its class, the model's score, and where (x, y, w, h in pixels)."""

    label: str
    score: float
    box: tuple[int, int, int, int]


def model_path() -> Path:
    """The 320n model inside the installed ``nudenet`` wheel."""
    try:
        path = Path(str(importlib.resources.files("nudenet") / MODEL_FILE))
    except ModuleNotFoundError as e:
        raise NudityUnavailable(INSTALL_HINT) from e
    if not path.is_file():
        raise NudityUnavailable(f"{path} is missing; {INSTALL_HINT}")
    return path


class NudityModel:
    """NudeNet's detector in one onnxruntime CPU session, shared by every stream.

    ``InferenceSession.run`` is safe to call from several threads at once.
    """

    def __init__(self, path: Path | None = None, *, threads: int = 1) -> None:
        try:
            import onnxruntime
        except ImportError as e:
            raise NudityUnavailable(INSTALL_HINT) from e
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session: Any = onnxruntime.InferenceSession(
            str(path or model_path()), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def _run(self, image: Image) -> tuple[Any, float]:
        """The raw output (22 x candidates: box centre/size, then the 18 class scores)
        and the factor from model input pixels back to image pixels."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        side = max(height, width)
        # As NudeNet does: pad to a square at the bottom and right, scale to 320.
        # The model (a YOLOv8 export) takes RGB, which is what we hold already.
        square = cv2.copyMakeBorder(
            image, 0, side - height, 0, side - width, cv2.BORDER_CONSTANT, value=(0, 0, 0)
        )
        blob = cv2.dnn.blobFromImage(
            square, 1 / 255.0, (INPUT_SIZE, INPUT_SIZE), (0, 0, 0), swapRB=False
        )
        output = self._session.run(None, {self._input: blob})[0][0]
        return output, side / INPUT_SIZE

    def score(self, image: Image) -> float:
        """The highest score any candidate gets for an exposed class, 0..1."""
        output, _ = self._run(image)
        return float(output[4 + _EXPOSED_ROWS].max())

    def detect(self, image: Image, threshold: float) -> list[Detection]:
        """Exposed regions scored at least `threshold`, best first, overlaps merged."""
        output, scale = self._run(image)
        scores = output[4 + _EXPOSED_ROWS]
        best = scores.max(axis=0)
        keep = np.flatnonzero(best >= threshold)
        if not len(keep):
            return []
        cx, cy, w, h = (output[i, keep] * scale for i in range(4))
        boxes = [
            [int(x), int(y), int(bw), int(bh)]
            for x, y, bw, bh in zip(cx - w / 2, cy - h / 2, w, h, strict=True)
        ]
        kept_scores = [float(s) for s in best[keep]]
        chosen = cv2.dnn.NMSBoxes(boxes, kept_scores, threshold, 0.45)
        found = [
            Detection(
                EXPOSED[int(scores[:, keep[i]].argmax())],
                kept_scores[i],
                (boxes[i][0], boxes[i][1], boxes[i][2], boxes[i][3]),
            )
            for i in np.asarray(chosen).reshape(-1)
        ]
        return sorted(found, key=lambda d: d.score, reverse=True)


class RateLimit:
    """At most `per_second` inferences across the server, as a token bucket.

    A sample that finds the bucket empty is skipped, not queued: the stream's
    next sample gets its chance, and the CPU the model can take stays bounded
    however many streams are live. Shared by threads, hence the lock.
    """

    def __init__(self, per_second: float, *, burst: float | None = None) -> None:
        if not per_second > 0:
            raise ValueError("per_second must be positive")
        self.per_second = per_second
        self.burst = max(1.0, per_second if burst is None else burst)
        self._tokens = self.burst
        self._at = time.monotonic()
        self._lock = threading.Lock()
        self.skipped = 0

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
            self._at = now
            if self._tokens < 1:
                self.skipped += 1
                return False
            self._tokens -= 1
            return True


class NudityAnalyzer:
    """Flags a stream whose sampled frame shows exposed nudity.

    Raised on one sample scoring at least `threshold` (the flag's score is the
    model's); kept while later samples score, and for `hold_seconds` after the
    last one, so one miss between hits does not clear it. Samples the rate
    limit skips change nothing.
    """

    name = "nudity"

    def __init__(
        self,
        model: NudityModel,
        *,
        threshold: float = 0.5,
        hold_seconds: float = 60.0,
        rate: RateLimit | None = None,
    ) -> None:
        self.model = model
        self.threshold = threshold
        self.hold_seconds = hold_seconds
        self.rate = rate
        self.inferences = 0
        self._last: Flag | None = None
        self._last_at = 0.0

    def analyze(self, image: Image, at: float) -> list[Flag]:
        if self.rate is None or self.rate.take():
            self.inferences += 1
            found = self.model.detect(_rgb(image), self.threshold)
            if found:
                best = found[0]
                self._last = Flag(
                    self.name, f"{best.label.lower()} {best.score:.2f}", score=best.score
                )
                self._last_at = at
        if self._last is not None and at - self._last_at > self.hold_seconds:
            self._last = None
        return [] if self._last is None else [self._last]


def _rgb(image: Image) -> Image:
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), dtype=np.uint8)
    return image
