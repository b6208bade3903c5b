"""What one nudity sample costs: wall and CPU milliseconds per inference.

    .venv/bin/python -m bench.nudity [--samples 200] [--threads 1]

Runs the analyzer the server runs (moderation/nudity.py: NudeNet's 320n model
in one onnxruntime CPU session) on 640x480 frames, the size a webcam sends,
and for reference NudeNet's own ``NudeDetector.detect`` on the same frames.
CPU time is the process's (every onnxruntime thread counted), so CPU ms
divided by wall ms is the cores one inference keeps busy. Needs the
``nudity`` extra.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from moderation.nudity import NudityAnalyzer, NudityModel
from rtc.stamp import Stamp, draw_frame

WIDTH, HEIGHT = 640, 480


def measure(run: Callable[[int], object], samples: int) -> tuple[float, float, float]:
    """Median and 95th percentile wall ms, and mean CPU ms, of `samples` calls."""
    run(0)  # the first call allocates onnxruntime's buffers
    walls = []
    cpu_start = time.process_time()
    for i in range(samples):
        start = time.perf_counter()
        run(i)
        walls.append((time.perf_counter() - start) * 1000)
    cpu = (time.process_time() - cpu_start) * 1000 / samples
    walls.sort()
    return statistics.median(walls), walls[int(0.95 * (len(walls) - 1))], cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    frames = [draw_frame(Stamp(1, i, 0), WIDTH, HEIGHT) for i in range(16)]

    start = time.perf_counter()
    model = NudityModel(threads=args.threads)
    load_ms = (time.perf_counter() - start) * 1000
    analyzer = NudityAnalyzer(model)

    rows = [
        (
            f"relay analyzer ({args.threads} thread)",
            measure(lambda i: analyzer.analyze(frames[i % 16], float(i)), args.samples),
        )
    ]
    try:
        from nudenet import NudeDetector
    except ImportError:
        pass
    else:
        detector = NudeDetector()
        # NudeDetector takes BGR; which channel order does not change the cost.
        rows.append(
            (
                "nudenet NudeDetector.detect (default threads)",
                measure(lambda i: detector.detect(np.ascontiguousarray(frames[i % 16])), 50),
            )
        )
    print(f"model load: {load_ms:.0f} ms; {WIDTH}x{HEIGHT} frames, {args.samples} samples")
    print("| what | wall ms p50 | wall ms p95 | CPU ms per sample |")
    print("|---|---|---|---|")
    for name, (p50, p95, cpu) in rows:
        print(f"| {name} | {p50:.1f} | {p95:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
