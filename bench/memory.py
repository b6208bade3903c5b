"""`python -m bench.memory`: what one relayed pair's memory is made of.

Starts the real server (with tracemalloc tracing unless ``--no-tracemalloc``),
reads `/debug/memory` on its metrics listener with nobody connected, connects
N pairs of the standard load (the clients of `bench.relay`), lets them stream,
and reads it again. The difference, divided by N, is one pair: RSS, the C
heap (in use, and free but kept by glibc), the Python heap (tracemalloc's
total and the allocation sites that grew most, grouped by file), threads and
objects the garbage collector tracks.

tracemalloc keeps a record per live allocation, which the process's RSS
includes; its own size is subtracted from the RSS figures here, but a run
with ``--no-tracemalloc`` gives the RSS an operator sees (then without sites).
See docs/performance.md, "Issue 14: memory and latency".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import phases
from bench.media import encode_load_media
from bench.phases import print_progress
from bench.pool import WorkerPool
from bench.relay import MAX_WORKERS, PAIRS_PER_WORKER
from bench.target import RelayServer

MB = 2**20
# After the pairs are matched: the evidence buffers fill at the media's rate.
SETTLE = 2.0
SITES = 60


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.memory",
        description="Where one relayed pair's memory goes: /debug/memory at 0 and N pairs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--pairs", type=int, default=10, help="pairs of load clients")
    p.add_argument(
        "--seconds", type=float, default=20.0, help="how long the pairs stream before reading"
    )
    p.add_argument(
        "--no-tracemalloc",
        dest="tracemalloc",
        action="store_false",
        help="run the server without tracemalloc (the RSS an operator sees; no sites)",
    )
    p.add_argument(
        "--loop-seconds", type=float, default=10.0, help="length of the pre-encoded video loop"
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write the result here")
    p.add_argument("--log-dir", type=Path, help="keep server and worker logs here")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for server.py (repeat it), e.g. --server-arg=--evidence-seconds=0",
    )
    args = p.parse_args(argv)
    if args.pairs < 1:
        p.error("--pairs must be at least 1")
    return args


def per_pair(idle: dict[str, Any], loaded: dict[str, Any], pairs: int) -> dict[str, Any]:
    """One pair's share of each figure: (loaded - idle) / pairs, in MB unless a count."""

    def mb(before: int | None, after: int | None) -> float | None:
        if before is None or after is None:
            return None
        return round((after - before) / pairs / MB, 2)

    def count(before: int, after: int) -> float:
        return round((after - before) / pairs, 1)

    out: dict[str, Any] = {
        "rss_mb": mb(idle["rss"], loaded["rss"]),
        "rss_anon_mb": mb(idle["rss_anon"], loaded["rss_anon"]),
        "rss_file_mb": mb(idle["rss_file"], loaded["rss_file"]),
        "threads": count(idle["threads"], loaded["threads"]),
        "gc_tracked_objects": count(idle["gc_tracked_objects"], loaded["gc_tracked_objects"]),
    }
    heap_idle, heap = idle.get("c_heap"), loaded.get("c_heap")
    if heap_idle and heap:
        out["c_heap_in_use_mb"] = mb(heap_idle["in_use"], heap["in_use"])
        out["c_heap_free_kept_mb"] = mb(heap_idle["free"], heap["free"])
        out["c_heap_mmapped_mb"] = mb(heap_idle["mmapped"], heap["mmapped"])
    for kind, size in loaded.get("mappings", {}).items():
        out[f"rss_{kind}_mb"] = mb(idle["mappings"].get(kind, 0), size)
    py_idle, py = idle.get("python_heap"), loaded.get("python_heap")
    if py_idle and py:
        out["python_heap_mb"] = mb(py_idle["traced"], py["traced"])
        out["tracemalloc_own_mb"] = mb(idle["tracemalloc_own"], loaded["tracemalloc_own"])
        if out["rss_mb"] is not None and out["tracemalloc_own_mb"] is not None:
            # What the process would hold without tracemalloc's records.
            out["rss_without_tracemalloc_mb"] = round(out["rss_mb"] - out["tracemalloc_own_mb"], 2)
    return out


_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def by_file(sites: list[dict[str, Any]], pairs: int) -> list[dict[str, Any]]:
    """Growth of the Python heap per pair, summed by source file, largest first."""
    totals: dict[str, int] = defaultdict(int)
    for site in sites:
        path = site["site"].rsplit(":", 1)[0]
        for marker in ("site-packages/", "/python3.11/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        else:
            # Our own files, named from the checkout's root wherever it is cloned.
            if path.startswith(_REPO_ROOT):
                path = path[len(_REPO_ROOT) :]
        totals[path] += site["size_diff"]
    return [
        {"file": path, "mb_per_pair": round(size / pairs / MB, 3)}
        for path, size in sorted(totals.items(), key=lambda kv: -kv[1])
        if abs(size) / pairs >= 1024
    ]


async def measure(args: argparse.Namespace, log_dir: Path, media_path: Path) -> dict[str, Any]:
    workers = max(1, min(MAX_WORKERS, -(-args.pairs // PAIRS_PER_WORKER)))
    pool = WorkerPool(workers, media_path, log_dir)
    await pool.start()
    env = {"PYTHONTRACEMALLOC": "1"} if args.tracemalloc else None
    server = RelayServer(
        "passthrough", log_dir / "server-memory.log", tuple(args.server_arg), env=env
    )
    await server.start()
    try:
        if args.tracemalloc:
            await server.memory_baseline()
        idle = await server.memory(top=1)
        pairs = phases.relay_pairs(args.pairs)
        where = {n: k % pool.count for k, p in enumerate(pairs) for n in (p[0], p[2])}
        node_of = dict.fromkeys(where, 0)
        print_progress(f"connecting {args.pairs} pairs")
        await phases.connect_pairs(pool, (server,), pairs, where, node_of)
        print_progress(f"{args.pairs} pairs matched; streaming {args.seconds:.0f} s")
        await asyncio.sleep(SETTLE + args.seconds)
        loaded = await server.memory(top=SITES * 10)
        scraped = await server.scrape()
        # Garbage waiting for a full collection (reference cycles), for comparison.
        collected = await server.memory(top=SITES * 10, collect=True)
        # That full collection's pause, as the server's own metric timed it.
        after_collect = await server.scrape()
        await pool.collect()
    finally:
        await pool.close()
        await server.stop()
    share = per_pair(idle, loaded, args.pairs)
    share["gc_collected_objects"] = round(collected["collected"] / args.pairs, 1)
    share["gc_collected_types"] = collected["collected_types"]
    pause = after_collect.get('relay_gc_pause_max_seconds{generation="2"}')
    # Not per pair: how long one full collection stops the event loop at N pairs.
    share["full_collection_ms_at_n_pairs"] = None if pause is None else round(pause * 1000, 1)
    if collected.get("python_heap") and loaded.get("python_heap"):
        freed = loaded["python_heap"]["traced"] - collected["python_heap"]["traced"]
        share["python_heap_in_garbage_mb"] = round(freed / args.pairs / MB, 2)
    # What moderation's evidence buffers hold (payload only), for "the buffers and the rest".
    evidence = scraped.get('relay_moderation_evidence_bytes{pairs="live"}')
    share["evidence_payload_mb"] = (
        None if evidence is None else round(evidence / args.pairs / MB, 2)
    )
    ended = scraped.get('relay_moderation_evidence_bytes{pairs="ended"}')
    share["evidence_of_ended_pairs_mb"] = (
        None if ended is None else round(ended / args.pairs / MB, 2)
    )
    allocated = scraped.get("relay_moderation_evidence_allocated_bytes")
    share["evidence_allocated_mb"] = (
        None if allocated is None else round(allocated / args.pairs / MB, 2)
    )
    share["evidence_seconds_mean"] = scraped.get("relay_moderation_evidence_seconds_mean")
    sites = (loaded.get("python_heap") or {}).get("sites", [])
    grown = {
        path: round((size - idle["files"].get(path, 0)) / args.pairs / MB, 3)
        for path, size in loaded["files"].items()
    }
    return {
        "command": "python -m bench.memory " + " ".join(sys.argv[1:]),
        "pairs": args.pairs,
        "seconds": args.seconds,
        "tracemalloc": args.tracemalloc,
        "per_pair": share,
        "python_heap_by_file": by_file(sites, args.pairs),
        "mapped_files_growth_mb_per_pair": dict(
            sorted(((p, g) for p, g in grown.items() if g >= 0.01), key=lambda kv: -kv[1])
        ),
        "python_heap_by_file_after_collect": by_file(
            (collected.get("python_heap") or {}).get("sites", []), args.pairs
        ),
        "python_heap_sites": [
            {**s, "mb_per_pair": round(s["size_diff"] / args.pairs / MB, 3)} for s in sites[:SITES]
        ],
        "scraped": {k: v for k, v in scraped.items() if k.startswith("relay_moderation")},
        "idle": idle,
        "loaded": loaded,
    }


def describe(result: dict[str, Any]) -> str:
    share = result["per_pair"]
    rows = [f"{result['pairs']} pairs, {result['seconds']:.0f} s streaming; per pair:"]
    rows += [f"  {key:<32}{value}" for key, value in share.items()]
    if result["python_heap_by_file"]:
        rows.append("Python heap growth per pair by file (MB):")
        rows += [
            f"  {f['mb_per_pair']:>8}  {f['file']}" for f in result["python_heap_by_file"][:20]
        ]
    return "\n".join(rows)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    media = encode_load_media(seconds=args.loop_seconds)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        media_path = Path(tmp) / "media.pickle"
        media_path.write_bytes(pickle.dumps(media))
        return await measure(args, log_dir, media_path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(amain(args))
    print(describe(result), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print_progress(f"result written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
