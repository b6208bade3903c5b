"""`/debug/memory` on the metrics listener: where this process's memory is, for operators.

Served only on the metrics listener (loopback by default, never on the public
port), because allocation sites name the code and a snapshot costs CPU.

- `GET /debug/memory` answers JSON: RSS split the kernel's way
  (/proc/self/status, /proc/self/smaps_rollup), the C heap as glibc sees it
  (`mallinfo2`: bytes in use and bytes free but kept), threads, the garbage
  collector's generations, and, when tracemalloc is tracing, the Python
  heap's total and its biggest allocation sites.
  With `?collect=1` a full garbage collection runs first (it stops the
  event loop for tens of milliseconds on a busy server).
- `POST /debug/memory/baseline` keeps a tracemalloc snapshot; later `GET`s
  then list the sites by what they *grew* since (`bench/memory.py` takes one
  at 0 pairs and reads the diff at N pairs).

tracemalloc is off unless the server was started with `PYTHONTRACEMALLOC=1`
(or `-X tracemalloc`): tracing every allocation costs memory and CPU, so it is
for a measuring run, not production. Without it the answer still has
everything but the Python heap's sites.
"""

from __future__ import annotations

import gc
import os
import threading
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from signalling.malloc import c_heap

# Sites listed by default, largest first.
DEFAULT_TOP: Final = 25
MAX_TOP: Final = 500

_BASELINE = web.AppKey("memory_baseline", list)


def _kilobytes(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """Lines like ``VmRSS:   1234 kB`` of a /proc file, as bytes."""
    out: dict[str, int] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in keys:
            out[name] = int(rest.split()[0]) * 1024
    return out


# glibc reserves 64 MiB per malloc arena of a thread (HEAP_MAX_SIZE on 64-bit), in pieces.
_ARENA_RESERVE: Final = 64 * 2**20
# Thread stacks (8 MiB by default: `ulimit -s`) are anonymous mappings of about that size.
_STACK_SIZES: Final = range(7 * 2**20, 9 * 2**20)


def mappings(files: dict[str, int] | None = None) -> dict[str, int]:
    """Resident bytes by kind of mapping (/proc/self/smaps), to tell heaps from stacks.

    `heap` is glibc's main arena (brk), `thread_arenas` the 64 MiB-aligned
    pieces other threads' malloc arenas live in, `thread_stacks` mappings of
    a thread stack's size, `anonymous` the rest of the anonymous memory
    (pymalloc's arenas, malloc's mmapped blocks, numpy, codec buffers), and
    `files` shared libraries and other mapped files (by path into ``files``
    when given).
    """
    out = dict.fromkeys(("heap", "thread_arenas", "thread_stacks", "anonymous", "files"), 0)
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return out
    kind = "anonymous"
    path = ""
    for line in text.splitlines():
        first = line.split(maxsplit=6)
        if "-" in first[0] and len(first) >= 5 and ":" not in first[0]:
            start, end = (int(x, 16) for x in first[0].split("-"))
            name = first[5] if len(first) > 5 else ""
            size = end - start
            if name == "[heap]":
                kind = "heap"
            elif name.startswith("["):
                kind = "anonymous"  # [stack] of the main thread, [vdso]...
            elif name:
                kind = "files"
                path = name
            elif start % _ARENA_RESERVE == 0 or size in _STACK_SIZES:
                kind = "thread_stacks" if size in _STACK_SIZES else "thread_arenas"
            else:
                kind = "anonymous"
        elif first[0] == "Rss:":
            out[kind] += int(first[1]) * 1024
            if kind == "files" and files is not None:
                files[path] = files.get(path, 0) + int(first[1]) * 1024
    return out


def process_memory() -> dict[str, Any]:
    """What the kernel counts for this process, and the C heap, threads and GC beside it."""
    files: dict[str, int] = {}
    status = _kilobytes("/proc/self/status", ("VmRSS", "RssAnon", "RssFile", "VmSize"))
    rollup = _kilobytes("/proc/self/smaps_rollup", ("Rss", "Anonymous", "Private_Dirty"))
    try:
        tasks = len(os.listdir("/proc/self/task"))
    except OSError:
        tasks = threading.active_count()
    return {
        "rss": status.get("VmRSS"),
        "rss_anon": status.get("RssAnon"),
        "rss_file": status.get("RssFile"),
        "virtual": status.get("VmSize"),
        "private_dirty": rollup.get("Private_Dirty"),
        "c_heap": c_heap(),
        "mappings": mappings(files),
        "files": dict(sorted(files.items(), key=lambda kv: -kv[1])[:40]),
        "threads": tasks,
        "python_threads": sorted(t.name for t in threading.enumerate()),
        "gc_tracked_objects": len(gc.get_objects()),
        # tracemalloc's own records (0 when off): RSS an untraced server would not have.
        "tracemalloc_own": tracemalloc.get_tracemalloc_memory(),
        "gc_frozen_objects": gc.get_freeze_count(),
        "gc_counts": list(gc.get_count()),
        "gc_thresholds": list(gc.get_threshold()),
    }


def python_heap(
    top: int = DEFAULT_TOP, baseline: tracemalloc.Snapshot | None = None
) -> dict[str, Any] | None:
    """tracemalloc's view (None when it is not tracing): total, and the top sites by line."""
    if not tracemalloc.is_tracing():
        return None
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),)
    )
    traced, peak = tracemalloc.get_traced_memory()
    sites: list[dict[str, Any]]
    if baseline is None:
        stats = snapshot.statistics("lineno")
        sites = [
            {"site": str(s.traceback[0]), "size": s.size, "count": s.count} for s in stats[:top]
        ]
        total = sum(s.size for s in stats)
    else:
        diff = snapshot.compare_to(baseline, "lineno")
        sites = [
            {
                "site": str(s.traceback[0]),
                "size": s.size,
                "size_diff": s.size_diff,
                "count_diff": s.count_diff,
            }
            for s in sorted(diff, key=lambda s: -s.size_diff)[:top]
        ]
        total = sum(s.size for s in diff)
    return {
        "traced": traced,
        "peak": peak,
        "total_in_snapshot": total,
        "since_baseline": baseline is not None,
        "baseline_total": None if baseline is None else sum(t.size for t in baseline.traces),
        "sites": sites,
    }


def _collect() -> tuple[int, dict[str, int]]:
    """A full collection; how many objects it freed, and of which types (the 20 commonest).

    Garbage in reference cycles holds memory until a full collection, and
    every object the collector walks lengthens the pause: its types say which
    code made the cycles.
    """
    flags = gc.get_debug()
    gc.set_debug(flags | gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        types = Counter(type(o).__qualname__ for o in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(flags)
    return found, dict(types.most_common(20))


def add_memory_routes(listener: web.Application) -> None:
    """`GET /debug/memory` and `POST /debug/memory/baseline` on the metrics listener."""
    listener[_BASELINE] = []

    async def report(request: web.Request) -> web.Response:
        try:
            top = min(MAX_TOP, max(1, int(request.query.get("top", DEFAULT_TOP))))
        except ValueError:
            raise web.HTTPBadRequest(text="top must be a whole number\n") from None
        # ?collect=1: a full collection first, so garbage in reference cycles is not counted.
        collected = _collect() if request.query.get("collect") == "1" else None
        kept = listener[_BASELINE]
        body = process_memory() | {
            "collected": None if collected is None else collected[0],
            "collected_types": None if collected is None else collected[1],
            "python_heap": python_heap(top, kept[0] if kept else None),
            "tracemalloc": tracemalloc.is_tracing(),
        }
        return web.json_response(body)

    async def baseline(request: web.Request) -> web.Response:
        if not tracemalloc.is_tracing():
            raise web.HTTPConflict(
                text="tracemalloc is off: start the server with PYTHONTRACEMALLOC=1 to diff "
                "the Python heap\n"
            )
        gc.collect()
        listener[_BASELINE][:] = [tracemalloc.take_snapshot()]
        return web.json_response({"baseline": True, **process_memory()})

    listener.router.add_get("/debug/memory", report)
    listener.router.add_post("/debug/memory/baseline", baseline)
