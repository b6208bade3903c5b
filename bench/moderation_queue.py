"""What one GET /api/moderate/queue costs with N open reports in a SQLite store.

    .venv/bin/python -m bench.moderation_queue --reports 1000 10000

Fills a throw-away store with N open reports (random categories, reporters and
reported people, spread over two days), then times the queue's work: reading the
open reports, counting distinct reporters per person over the last day, and
ordering (moderation/queue.py). Best and median of five runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from moderation.queue import DAY, order
from moderation.store import ModerationStore, ReportStatus
from signalling.protocol import REPORT_CATEGORIES


def measure(reports: int, runs: int = 5) -> tuple[float, float]:
    """Best and median seconds for one queue with `reports` open reports."""
    rng = random.Random(1)
    now = time.time()
    with (
        tempfile.TemporaryDirectory() as folder,
        ModerationStore(Path(folder) / "queue.sqlite3") as store,
    ):
        for i in range(reports):
            store.add_report(
                f"visit-{i}",
                f"visit-r{i}",
                "reason",
                category=rng.choice(REPORT_CATEGORIES),
                reporter_person=f"p{rng.randrange(reports)}",
                reported_person=f"q{rng.randrange(max(1, reports // 3))}",
                now=now - rng.uniform(0, 2 * DAY),
            )
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            open_reports = store.reports(status=ReportStatus.OPEN, limit=10_000)
            order(open_reports, store.reporters_since(now - DAY))
            times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args(argv)
    for reports in args.reports:
        best, median = measure(reports)
        print(f"{reports} open reports: best {best * 1000:.1f} ms, median {median * 1000:.1f} ms")


if __name__ == "__main__":
    main()
