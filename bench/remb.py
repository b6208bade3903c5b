"""The REMB estimator's cost per packet, aiortc's against the C one: `python -m bench.remb`.

Both are fed the same trace (30 fps video at about 1 Mbit/s in ~1 kB packets, as
`receive_packets` calls them: keyword arguments, the wall clock in ms) and must
return the same; aiortc's is also timed with the seam's `CompactRateCounter`,
which is what the Python path runs. Process CPU time, best of --runs.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from aiortc.rate import RemoteBitrateEstimator

from rtc import aiortc_seam
from rtc._fastpath import RembEstimator

CLOCK_MS = 1_764_000_000_000


def trace(packets: int) -> list[tuple[int, int, int, int]]:
    rng = random.Random(14)
    out: list[tuple[int, int, int, int]] = []
    frame = 0
    while len(out) < packets:
        for i in range(4):  # ~4 kB a frame: 1 Mbit/s
            send = frame * 1000 / 30 + i
            arrival = CLOCK_MS + int(send + 50 + rng.random() * 2)
            out.append(
                (arrival, int(send * (1 << 18) / 1000) & 0xFFFFFF, 1000 + rng.randint(-40, 40), 1)
            )
        frame += 1
    return out[:packets]


def timed(estimator: Any, packets: list[tuple[int, int, int, int]]) -> tuple[float, list[Any]]:
    add = estimator.add
    results = []
    cpu = time.process_time()
    for arrival, send, size, ssrc in packets:
        results.append(
            add(abs_send_time=send, arrival_time_ms=arrival, payload_size=size, ssrc=ssrc)
        )
    return (time.process_time() - cpu) / len(packets) * 1e6, results


def compact() -> RemoteBitrateEstimator:
    estimator = RemoteBitrateEstimator()
    estimator.incoming_bitrate = aiortc_seam.CompactRateCounter(1000, 8000)
    return estimator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    packets = trace(args.packets)
    best: dict[str, float] = {}
    for _ in range(args.runs):
        runs = {
            "aiortc_us": timed(RemoteBitrateEstimator(), packets),
            "aiortc_compact_us": timed(compact(), packets),
            "native_us": timed(RembEstimator(), packets),
        }
        reference = runs["aiortc_us"][1]
        assert all(results == reference for _, results in runs.values()), "estimates differ"
        for name, (us, _) in runs.items():
            best[name] = round(min(best.get(name, us), us), 3)
    best["rembs"] = sum(r is not None for r in reference)
    print(json.dumps(best, indent=1))


if __name__ == "__main__":
    main()
