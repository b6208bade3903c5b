"""Soak: hundreds of visits and Next presses, then the server must be back where it started.

The server runs in this process (conftest `local_server`) so its own objects
can be counted; the visitors run in a subprocess (tests/soak_clients.py) so
theirs are not. After a warm-up the baseline is taken; after the soak, once
no session is left, every count must come back to it: objects by type,
asyncio tasks, threads, open fds and sockets. RSS is compared too, but only
as growth per visit with a loose bound, since the allocator keeps some.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aioice.ice import Connection as IceConnection
from aiortc import RTCDtlsTransport, RTCPeerConnection, RTCRtpReceiver, RTCRtpSender

from config import Settings
from moderation.ringbuffer import RingBuffer
from moderation.service import Followed, Retained
from rtc.aiortc_seam import PacketSender
from rtc.peer import Peer
from rtc.publisher import Publisher
from rtc.subscriber import Subscriber
from signalling.session import Session
from signalling.web import LOBBY

DRIVER = Path(__file__).resolve().parent / "soak_clients.py"
WARM_UP_VISITS = 8
# Visits in each half of the soak: RSS per visit is measured over the second
# half, when the allocator has reached its working size in the first.
HALF_VISITS = 70
NEXTS_PER_VISIT = 2
WORKERS = 4
# What a closed visit may leave in RSS on average (the leak this guards against was ~390 KB).
MAX_RSS_PER_VISIT = 50 * 1024
# How long aiortc, aioice and moderation may take to let go after the last visit.
SETTLE_SECONDS = 30.0
# asyncio.to_thread's pool keeps up to this many idle threads once it has
# needed them: bounded, so not compared with the baseline.
EXECUTOR_THREAD = "asyncio_"
EXECUTOR_MAX = min(32, (os.cpu_count() or 1) + 4)
COUNTED = (
    Session,
    Peer,
    Publisher,
    Subscriber,
    PacketSender,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpReceiver,
    RTCDtlsTransport,
    IceConnection,
    Followed,
    Retained,
    RingBuffer,
    web.WebSocketResponse,
)


def soak_settings(tmp_path: Path) -> Settings:
    """The one place the soak's server is configured."""
    return Settings(
        media_timeout=2.0,
        connect_timeout=10.0,
        interest_timeout=0.5,
        rematch_after=0.3,
        analyzer_interval=1.0,
        evidence_seconds=5.0,
        # Ended pairs' media is kept this long for late reports (bounded): short here, so
        # the soak also sees every Retained snapshot let go.
        report_window=2.0,
        db=str(tmp_path / "moderation.sqlite3"),
        recordings_dir=str(tmp_path / "recordings"),
        # Every visitor comes from 127.0.0.1 faster than any household would:
        # lift the rate of new sessions, but keep the concurrent per-address
        # limits on, so the soak also shows their counts return to zero.
        ip_max_new_sessions=0,
    )


@pytest.mark.timeout(400)
async def test_hundreds_of_visits_leave_nothing_behind(local_server, tmp_path: Path) -> None:
    server = await local_server(soak_settings(tmp_path))
    lobby = server.app[LOBBY]

    await _drive(server.ws_url, WARM_UP_VISITS)
    await _until_no_sessions(lobby)
    baseline = await _settled(lambda now: False)
    types_before = _all_types()

    first = await _drive(server.ws_url, HALF_VISITS)
    await _until_no_sessions(lobby)
    middle = await _settled(lambda now: _settled_to(baseline, now))
    second = await _drive(server.ws_url, HALF_VISITS)
    await _until_no_sessions(lobby)
    after = await _settled(lambda now: _settled_to(baseline, now))
    grown = (_all_types() - types_before).most_common(6)

    result = {key: first[key] + second[key] for key in first}
    rss_per_visit = (after["rss"] - middle["rss"]) / max(second["visits"] + second["failed"], 1)
    figures = (
        f"soak: {result['visits']} visits ({result['failed']} failed), "
        f"{result['partners']} partners met, {result['nexts']} Next presses; RSS "
        f"{baseline['rss'] / 2**20:.1f} -> {middle['rss'] / 2**20:.1f} -> "
        f"{after['rss'] / 2**20:.1f} MiB ({rss_per_visit / 1024:+.1f} KiB per visit "
        f"over the second half); before {_brief(baseline)}; after {_brief(after)}; "
        f"types grown most: {grown}"
    )
    print(figures)
    assert result["visits"] >= 2 * HALF_VISITS * 0.9, figures
    assert _settled_to(baseline, after), f"the server did not return to its baseline: {figures}"
    assert rss_per_visit < MAX_RSS_PER_VISIT, figures
    held = (lobby.limits.sessions("127.0.0.1"), lobby.limits.peers("127.0.0.1"))
    assert held == (0, 0), f"per-address counts not released: sessions, peers = {held}"


async def _drive(url: str, visits: int) -> dict[str, int]:
    """Run the visitors' subprocess without blocking this loop (the server runs on it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DRIVER),
        url,
        "--visits",
        str(visits),
        "--workers",
        str(WORKERS),
        "--nexts",
        str(NEXTS_PER_VISIT),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode(errors="replace")[-4000:]
    result: dict[str, int] = json.loads(stdout.decode().strip().splitlines()[-1])
    return result


async def _until_no_sessions(lobby: Any) -> None:
    async with asyncio.timeout(SETTLE_SECONDS):
        while lobby.sessions:
            await asyncio.sleep(0.1)


def _snapshot() -> dict[str, Any]:
    gc.collect()
    objects = Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, COUNTED))
    fds = os.listdir("/proc/self/fd")
    sockets = 0
    for fd in fds:
        # The fd listdir itself used is closed by now.
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    threads = Counter(
        "executor" if t.name.startswith(EXECUTOR_THREAD) else t.name for t in threading.enumerate()
    )
    return {
        "objects": {cls.__name__: objects[cls.__name__] for cls in COUNTED},
        "tasks": sorted(t.get_name() for t in asyncio.all_tasks()),
        "threads": threads,
        "fds": len(fds),
        "sockets": sockets,
        "rss": _rss(),
    }


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _settled_to(baseline: dict[str, Any], now: dict[str, Any]) -> bool:
    return (
        now["objects"] == baseline["objects"]
        and len(now["tasks"]) <= len(baseline["tasks"])
        and now["threads"] - Counter(executor=EXECUTOR_MAX) <= baseline["threads"]
        and now["fds"] <= baseline["fds"]
        and now["sockets"] <= baseline["sockets"]
    )


async def _settled(done: Any) -> dict[str, Any]:
    """A snapshot once `done(snapshot)` holds, or the last one at the deadline."""
    deadline = asyncio.get_running_loop().time() + SETTLE_SECONDS
    # Moderation's sampler and aiortc's closing tasks run a little after the last close.
    await asyncio.sleep(1.0)
    while True:
        now = _snapshot()
        if done(now) or asyncio.get_running_loop().time() > deadline:
            return now
        await asyncio.sleep(0.5)


def _all_types() -> Counter[str]:
    gc.collect()
    return Counter(type(o).__qualname__ for o in gc.get_objects())


def _brief(snapshot: dict[str, Any]) -> str:
    objects = {name: count for name, count in snapshot["objects"].items() if count}
    tasks = Counter(name.split(" ")[0] for name in snapshot["tasks"])
    return (
        f"objects {objects}, tasks {len(snapshot['tasks'])} {dict(tasks)}, "
        f"threads {dict(snapshot['threads'])}, fds {snapshot['fds']}, sockets {snapshot['sockets']}"
    )
