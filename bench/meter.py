"""CPU and memory of the processes in a run, and of the whole machine, over a window."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import psutil


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _machine_busy_seconds() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(sum(times) - idle)


@dataclass(frozen=True)
class Reading:
    """CPU seconds so far of each named group of processes, and of the machine."""

    at: float
    groups: dict[str, float]
    machine_busy: float


class Meter:
    """Samples named groups of processes (``{"server": [pid], "clients": [pid, pid]}``)."""

    def __init__(self, groups: Mapping[str, Sequence[int]]) -> None:
        self._groups = {
            name: [psutil.Process(pid) for pid in pids] for name, pids in groups.items()
        }

    def read(self) -> Reading:
        groups = {}
        for name, processes in self._groups.items():
            total = 0.0
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += _cpu_seconds(process)
            groups[name] = total
        return Reading(time.monotonic(), groups, _machine_busy_seconds())

    def rss_mb(self, name: str) -> float:
        total = 0
        for process in self._groups[name]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total / 2**20


def cpu_percent(start: Reading, end: Reading) -> dict[str, float]:
    """Percent of one core used by each group between two readings (100 = one core).

    ``machine`` is every process on the machine, ``other`` what none of the
    groups used (other people's work on a shared machine).
    """
    wall = max(end.at - start.at, 1e-9)
    out = {name: 100 * (end.groups[name] - start.groups[name]) / wall for name in start.groups}
    out["machine"] = 100 * (end.machine_busy - start.machine_busy) / wall
    out["other"] = max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine"))
    return {name: round(value, 1) for name, value in out.items()}


def machine() -> dict[str, object]:
    """What a reader needs to judge the numbers: cores, load and memory."""
    load1, load5, load15 = os.getloadavg()
    return {
        "cpus": psutil.cpu_count(),
        "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }
