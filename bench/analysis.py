"""What the load clients' logs say: which frame arrived where, how late, and what was lost.

Nothing here runs while a window is measured; the workers only log. Each
video sender logs ``(pts, send time)`` per frame, where ``pts`` carries a small
random part (:data:`bench.media.JITTER_TICKS`); each receiver logs
``(arrival time, RTP timestamp, bytes)`` per reassembled frame.

Relays rewrite RTP timestamps, but only by adding a constant while one
publisher feeds one subscriber (our relay rebases each attachment, Janus
rewrites per switch, aiortc adds a random origin per sender). So within one
attachment, ``received timestamp - sent pts`` is the same number ``offset``
for every frame, and a run of :data:`WINDOW` frames whose timestamps all land
on the same sender's logged pts under one offset names that sender and every
frame in the run: with random parts of 64 values, a wrong guess survives one
check with odds of 1 in 64, and a run of 5 with odds of 1 in 16 million. When
a frame stops fitting (a partner change), the next run is identified afresh.

This works without decoding anything, and equally through a relay that
re-encodes: the transcode baseline keeps each frame's timestamp to within one
tick, which rounding to :data:`bench.media.JITTER_STEP` removes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.media import JITTER_STEP

# Frames that must agree before a sender and offset are believed.
WINDOW = 5
# A frame is looked for among what its candidates sent this long before it arrived.
MAX_LATENCY = 10.0


@dataclass
class Sender:
    """One video publisher's log, indexed for lookups."""

    name: str
    pts_times: dict[int, float]
    times: list[float]
    pts: list[int]

    @classmethod
    def from_log(cls, name: str, sent: Iterable[Sequence[float]]) -> Sender:
        rows = sorted((float(t), int(p)) for p, t in sent)
        return cls(
            name,
            {p: t for t, p in rows},
            [t for t, _ in rows],
            [p for _, p in rows],
        )

    def find(self, pts: int) -> int | None:
        """The logged pts ``pts`` stands for (within two ticks), or None."""
        exact = round(pts / JITTER_STEP) * JITTER_STEP
        return exact if exact in self.pts_times else None

    def sent_between(self, start: float, end: float) -> list[int]:
        lo = bisect.bisect_left(self.times, start)
        hi = bisect.bisect_right(self.times, end)
        return self.pts[lo:hi]


@dataclass
class Arrival:
    """One received frame, identified (or not)."""

    recv_time: float
    sender: str | None = None
    pts: int | None = None
    send_time: float | None = None

    @property
    def latency(self) -> float | None:
        return None if self.send_time is None else self.recv_time - self.send_time


def identify(received: Sequence[Sequence[float]], senders: Sequence[Sender]) -> list[Arrival]:
    """Name the sender and pts of every frame in one receiver's log, where the log allows."""
    arrivals = [Arrival(float(row[0])) for row in received]
    stamps = [int(row[1]) for row in received]
    current: tuple[Sender, int] | None = None
    for index, arrival in enumerate(arrivals):
        if current is not None:
            sender, offset = current
            pts = sender.find(stamps[index] - offset)
            if pts is not None:
                arrival.sender, arrival.pts = sender.name, pts
                arrival.send_time = sender.pts_times[pts]
                continue
        current = _find(index, arrivals, stamps, senders)
        if current is not None:
            sender, offset = current
            arrival.sender, arrival.pts = sender.name, stamps[index] - offset
            arrival.send_time = sender.pts_times[arrival.pts]
    return arrivals


def _find(
    index: int, arrivals: Sequence[Arrival], stamps: Sequence[int], senders: Sequence[Sender]
) -> tuple[Sender, int] | None:
    following = stamps[index + 1 : index + WINDOW]
    if len(following) < 2:
        return None
    arrived = arrivals[index].recv_time
    found: list[tuple[Sender, int]] = []
    for sender in senders:
        for pts in sender.sent_between(arrived - MAX_LATENCY, arrived):
            offset = stamps[index] - pts
            if all(sender.find(stamp - offset) is not None for stamp in following):
                found.append((sender, offset))
    return found[0] if len(found) == 1 else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


@dataclass
class MediaReport:
    """Latency, delivery and partner switches seen by a set of load clients."""

    frames_sent: int = 0
    frames_delivered: int = 0
    frames_unidentified: int = 0
    latencies: list[float] = field(default_factory=list)
    next_to_first_frame: list[float] = field(default_factory=list)
    nexts_without_new_frame: int = 0
    audio_sent: int = 0
    audio_received: int = 0
    keyframes_on_request: int = 0

    @property
    def delivered_ratio(self) -> float | None:
        return self.frames_delivered / self.frames_sent if self.frames_sent else None

    def summary(self) -> dict[str, Any]:
        return {
            "frames_sent": self.frames_sent,
            "frames_delivered": self.frames_delivered,
            "frames_unidentified": self.frames_unidentified,
            "delivered_ratio": (
                None if self.delivered_ratio is None else round(self.delivered_ratio, 4)
            ),
            "latency_ms_p50": _ms(percentile(self.latencies, 50)),
            "latency_ms_p95": _ms(percentile(self.latencies, 95)),
            "latency_ms_max": _ms(max(self.latencies, default=None)),
            "next_first_frame_ms_p50": _ms(percentile(self.next_to_first_frame, 50)),
            "next_first_frame_ms_p95": _ms(percentile(self.next_to_first_frame, 95)),
            "next_first_frame_samples": len(self.next_to_first_frame),
            "nexts_without_new_frame": self.nexts_without_new_frame,
            "audio_packets_sent": self.audio_sent,
            "audio_frames_received": self.audio_received,
            "keyframes_on_request": self.keyframes_on_request,
        }


def analyse(
    clients: Mapping[str, Mapping[str, Any]], window: tuple[float, float] | None
) -> MediaReport:
    """Read every client's log; ``window`` limits delivery and latency to frames sent in it.

    Delivery counts, for every frame a publisher sent inside the window, whether
    any subscriber received it; so every publisher must have been paired for the
    whole window. ``next`` events anywhere in the logs give the switch times.
    """
    senders = [Sender.from_log(name, log["sent"]) for name, log in clients.items()]
    start, end = window if window is not None else (-math.inf, math.inf)
    report = MediaReport()
    delivered: set[tuple[str, int]] = set()
    for log in clients.values():
        report.audio_sent += int(log.get("audio_sent", 0))
        report.audio_received += int(log.get("audio_received", 0))
        report.keyframes_on_request += int(log.get("keyframes_on_request", 0))
        arrivals = identify(log["received"], senders)
        for arrival in arrivals:
            if arrival.sender is None or arrival.send_time is None or arrival.pts is None:
                if start <= arrival.recv_time <= end:
                    report.frames_unidentified += 1
                continue
            if start <= arrival.send_time <= end:
                delivered.add((arrival.sender, arrival.pts))
                report.latencies.append(arrival.recv_time - arrival.send_time)
        _switches(log.get("events", []), arrivals, report)
    for sender in senders:
        report.frames_sent += len(sender.sent_between(start, end))
    report.frames_delivered = len(delivered)
    return report


def _switches(
    events: Iterable[Sequence[Any]], arrivals: Sequence[Arrival], report: MediaReport
) -> None:
    """For each ``next``: time to the first frame from a publisher other than the one left."""
    times = [a.recv_time for a in arrivals]
    for when, what in events:
        if what != "next":
            continue
        position = bisect.bisect_right(times, when)
        before = [a.sender for a in arrivals[:position] if a.sender is not None]
        left = before[-1] if before else None
        first = next(
            (a for a in arrivals[position:] if a.sender is not None and a.sender != left), None
        )
        if first is None:
            report.nexts_without_new_frame += 1
        else:
            report.next_to_first_frame.append(first.recv_time - float(when))
