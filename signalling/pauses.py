"""Pauses of the event loop, which forwards everyone's media: garbage collections and stalls.

Every packet waits while the loop's thread is busy elsewhere, so the longest
pause is what a pair's added latency p95 is made of. Two kinds are measured:

- **Garbage collections**, timed from `gc.callbacks` (start to stop, per
  generation). A collection holds the GIL, so it stops the loop whichever
  thread triggered it.
- **Loop lag**: a timer asks to run every `PROBE_INTERVAL` seconds and notes
  how late it ran. A stall longer than the interval always delays a wake-up
  (by at least the stall minus the interval); shorter ones only when they
  straddle one.

Exported on /metrics (signalling/metrics.py) as histograms, and as the
longest of each over the last minute or so (`WINDOW` to twice that: two
buckets, so a scrape never sees an empty one).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any, Final

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

PROBE_INTERVAL: Final = 0.02
WINDOW: Final = 30.0
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
GENERATIONS: Final = (0, 1, 2)


class _Histogram:
    """Cumulative bucket counts and sum, plus the longest over a rolling window."""

    def __init__(self) -> None:
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0
        self._max = [0.0, 0.0]  # the current bucket of WINDOW seconds, and the one before
        self._max_since = time.monotonic()

    def observe(self, seconds: float) -> None:
        index = 0
        while index < len(BUCKETS) and seconds > BUCKETS[index]:
            index += 1
        self.buckets[index] += 1
        self.count += 1
        self.sum += seconds
        self._roll()
        if seconds > self._max[0]:
            self._max[0] = seconds

    def recent_max(self) -> float:
        self._roll()
        return max(self._max)

    def _roll(self) -> None:
        now = time.monotonic()
        if now - self._max_since >= WINDOW:
            # A whole empty window since the last roll leaves nothing from before.
            self._max = [0.0, self._max[0] if now - self._max_since < 2 * WINDOW else 0.0]
            self._max_since = now

    def family(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        cumulative, running = [], 0
        for bound, n in zip((*BUCKETS, float("inf")), self.buckets, strict=True):
            running += n
            cumulative.append((_le(bound), running))
        family.add_metric(labels, cumulative, self.sum)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class LoopPauses(Collector):
    """Times garbage collections and event loop lag while started; a Prometheus collector."""

    def __init__(self) -> None:
        self.gc = {generation: _Histogram() for generation in GENERATIONS}
        self.lag = _Histogram()
        self._gc_started: float | None = None
        self._probe: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin timing (on the event loop's thread)."""
        if self._probe is not None:
            return
        gc.callbacks.append(self._on_gc)
        self._probe = asyncio.get_running_loop().create_task(self._run(), name="loop lag probe")

    async def stop(self) -> None:
        if self._probe is None:
            return
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._probe
        self._probe = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.gc[info["generation"]].observe(time.perf_counter() - self._gc_started)
            self._gc_started = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(PROBE_INTERVAL)
            self.lag.observe(max(0.0, loop.time() - asked - PROBE_INTERVAL))

    # -- Prometheus --------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        pauses = HistogramMetricFamily(
            "relay_gc_pause_seconds",
            "Garbage collections, by generation: how long each stopped every thread",
            labels=["generation"],
        )
        longest = GaugeMetricFamily(
            "relay_gc_pause_max_seconds",
            "Longest garbage collection of the last 30-60 s, by generation",
            labels=["generation"],
        )
        for generation, histogram in self.gc.items():
            histogram.family(pauses, [str(generation)])
            longest.add_metric([str(generation)], histogram.recent_max())
        yield pauses
        yield longest
        lag = HistogramMetricFamily(
            "relay_event_loop_lag_seconds",
            f"How late a {PROBE_INTERVAL * 1000:.0f} ms timer on the event loop ran",
        )
        self.lag.family(lag, [])
        yield lag
        yield GaugeMetricFamily(
            "relay_event_loop_lag_max_seconds",
            "Longest event loop lag (stall) of the last 30-60 s",
            self.lag.recent_max(),
        )
