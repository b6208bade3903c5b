"""`python -m bench.relay`: the relay under the standard load, measured.

Starts the real server (`server.py`) in its own process, runs N pairs of
headless load clients against it from a few worker processes, and writes one
JSON object. A run has three parts, all with the same load clients:

1. direct: the pairs connected straight to each other (the latency baseline);
2. relay: the pairs through our server, one steady window measured (CPU,
   memory, delivery, latency), then partner switches with `next`;
3. optionally the same pairs through Janus (`--janus`), the anchor.

See docs/performance.md for what each number means and a full run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import pickle
import shlex
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from bench import phases
from bench.janus import JanusServer, janus_binary
from bench.media import encode_load_media
from bench.meter import machine
from bench.phases import Load, print_progress
from bench.pool import WorkerPool
from bench.redis_server import RedisServer
from bench.target import RelayServer, free_udp_port

# Targets of issue 4, checked on the passthrough result (never asserted in tests).
TARGET_CPU_PER_PAIR = 2.0
TARGET_CPU_RATIO = 25.0
TARGET_DELIVERED = 0.995
TARGET_ADDED_LATENCY_MS = 15.0
TARGET_NEXT_FIRST_FRAME_MS = 150.0
# Issue 10: a cross-node pair costs at most this much more server CPU than a local one.
TARGET_CROSS_EXTRA_CPU = 0.25
# Only the benchmark's own nodes, on loopback, share it.
CLUSTER_SECRET = "bench-cluster-secret-0123456789"
# Load clients per worker process before another worker is started.
PAIRS_PER_WORKER = 5
MAX_WORKERS = 4


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.relay",
        description=(
            "Measure the relay: N pairs of load clients (VP8 640x480 30 fps ~1 Mbit/s plus "
            "Opus 20 ms each way) against the real server, with direct pairs as the latency "
            "baseline. Progress goes to stderr, a summary to stdout."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--pairs", type=int, default=10, help="pairs of load clients")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the measured window")
    p.add_argument(
        "--relay",
        choices=("passthrough", "transcode", "janus"),
        default="passthrough",
        help="what relays the pairs: our server in either mode, or Janus",
    )
    p.add_argument(
        "--compare", action="store_true", help="run passthrough and transcode at the same load"
    )
    p.add_argument("--janus", action="store_true", help="also relay the same load through Janus")
    p.add_argument(
        "--media-port",
        action="store_true",
        help="also relay the same load with the server on one shared UDP media port "
        "(--media-port), after the run with a socket per connection",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="write the result here")
    p.add_argument(
        "--sweep",
        metavar="N,N,...",
        help="run at each of these numbers of pairs (instead of --pairs)",
    )
    p.add_argument("--plot", type=Path, metavar="PATH", help="with --sweep: draw a PNG chart")
    p.add_argument("--switches", type=int, default=10, help="partner switches (next) to time")
    p.add_argument(
        "--direct-seconds",
        type=float,
        help="window of the direct baseline (default: --seconds, at most 10)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help=f"load worker processes (default: one per {PAIRS_PER_WORKER} pairs)",
    )
    p.add_argument(
        "--loop-seconds", type=float, default=10.0, help="length of the pre-encoded video loop"
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="PATH",
        help="py-spy the server during the first relay window; collapsed stacks here, summary "
        "in PATH.txt (with --cluster: one per placement and node, PATH-local-node0 ...)",
    )
    p.add_argument(
        "--log-dir", type=Path, help="keep server and worker logs here (default: a temp dir)"
    )
    p.add_argument(
        "--max-other-cpu",
        type=float,
        default=30.0,
        metavar="PCT",
        help=(
            "before each window, wait until other processes on the machine use at most this "
            "much CPU (%% of a core); negative: never wait"
        ),
    )
    p.add_argument(
        "--quiet-wait", type=float, default=300.0, help="longest wait for a quiet machine, seconds"
    )
    p.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="N",
        help="run N server nodes on one redis-server of their own (started here) instead of "
        "one server; see --placement",
    )
    p.add_argument(
        "--placement",
        choices=("local", "cross", "both"),
        default="both",
        help="with --cluster: both people of a pair on one node (local), on two nodes "
        "(cross, media through the pipe), or one run of each",
    )
    args = p.parse_args(argv)
    if args.cluster == 1 or args.cluster < 0:
        p.error("--cluster needs at least 2 nodes")
    if args.cluster and (args.compare or args.janus or args.relay != "passthrough"):
        p.error("--cluster measures passthrough only (no --compare, --janus or --relay)")
    if args.cluster and args.sweep:
        p.error("--cluster takes --pairs, not --sweep")
    if args.plot and not args.sweep:
        p.error("--plot needs --sweep")
    if args.compare and args.relay == "janus":
        p.error("--compare runs our two modes; add --janus for Janus")
    return args


def _worker_count(args: argparse.Namespace, pairs: int) -> int:
    if args.workers:
        return int(args.workers)
    return max(1, min(MAX_WORKERS, math.ceil(pairs / PAIRS_PER_WORKER)))


async def measure(
    args: argparse.Namespace, pairs: int, media_path: Path, log_dir: Path
) -> dict[str, Any]:
    """Everything at one load: direct baseline, each relay asked for, the comparisons."""
    direct_seconds = args.direct_seconds or min(args.seconds, 10.0)
    quiet = {
        "max_other_cpu": None if args.max_other_cpu < 0 else args.max_other_cpu,
        "quiet_wait": args.quiet_wait,
    }
    load = Load(pairs=pairs, seconds=args.seconds, switches=args.switches, **quiet)
    pool = WorkerPool(_worker_count(args, pairs), media_path, log_dir)
    await pool.start()
    if args.cluster:
        return await _measure_cluster(args, pairs, pool, load, log_dir, quiet)
    runs: dict[str, dict[str, Any]] = {}
    modes = ["passthrough", "transcode"] if args.compare else [args.relay]
    try:
        direct = await phases.direct_phase(
            pool,
            Load(pairs=pairs, seconds=direct_seconds, switches=0, **quiet),
            dump=_dump(args, f"direct-{pairs}"),
        )
        profile = args.profile
        for mode in [m for m in modes if m != "janus"]:
            runs[mode] = await _attempt(
                mode,
                pairs,
                pool,
                _ours(pool, mode, load, log_dir, profile, _dump(args, f"{mode}-{pairs}")),
            )
            profile = None
        if args.media_port:
            port = str(free_udp_port())
            runs["media-port"] = await _attempt(
                "media-port",
                pairs,
                pool,
                _ours(
                    pool,
                    "passthrough",
                    load,
                    log_dir,
                    None,
                    _dump(args, f"media-port-{pairs}"),
                    extra_args=("--media-port", port),
                    name="media-port",
                ),
            )
        if args.janus or args.relay == "janus":
            runs["janus"] = await _attempt(
                "janus", pairs, pool, _janus(pool, load, log_dir, _dump(args, f"janus-{pairs}"))
            )
    finally:
        await pool.close()

    for run in runs.values():
        if "error" in run or "skipped" in run:
            continue
        run["direct_latency_ms_p50"] = direct["latency_ms_p50"]
        run["direct_latency_ms_p95"] = direct["latency_ms_p95"]
        run["added_latency_ms"] = _added(run, direct)
    primary_name = modes[0]
    result = dict(runs[primary_name])
    result["direct"] = direct
    for name, run in runs.items():
        if name != primary_name:
            result[name] = run
    if "passthrough" in runs and "transcode" in runs:
        p = runs["passthrough"].get("server_cpu_pct")
        t = runs["transcode"].get("server_cpu_pct")
        result["cpu_ratio"] = round(t / p, 1) if p and t else None
        # A saturated transcode cannot use more than the machine has; per delivered
        # frame the comparison still holds.
        pf = runs["passthrough"].get("server_cpu_ms_per_delivered_frame")
        tf = runs["transcode"].get("server_cpu_ms_per_delivered_frame")
        result["cpu_ratio_per_delivered_frame"] = round(tf / pf, 1) if pf and tf else None
    if "media-port" in runs and primary_name == "passthrough":
        # The shared socket against a socket per connection, same load, same run.
        for key in ("server_cpu_per_pair_pct", "server_cpu_ms_per_delivered_frame"):
            result[f"media_port_{key}"] = runs["media-port"].get(key)
    if "janus" in runs and primary_name != "janus":
        result["janus_cpu_per_pair_pct"] = runs["janus"].get("server_cpu_per_pair_pct")
    if primary_name == "passthrough" and "error" not in result:
        result["targets"] = _targets(result)
    return result


async def _measure_cluster(
    args: argparse.Namespace,
    pairs: int,
    pool: WorkerPool,
    load: Load,
    log_dir: Path,
    quiet: dict[str, Any],
) -> dict[str, Any]:
    """Direct baseline, then the pairs through N nodes on one Redis, local and/or cross-node."""
    placements = ["local", "cross"] if args.placement == "both" else [args.placement]
    runs: dict[str, dict[str, Any]] = {}
    redis = RedisServer()
    try:
        direct = await phases.direct_phase(
            pool,
            Load(
                pairs=pairs,
                seconds=args.direct_seconds or min(args.seconds, 10.0),
                switches=0,
                **quiet,
            ),
            dump=_dump(args, f"direct-{pairs}"),
        )
        for db, placement in enumerate(placements):
            url = f"{redis.url.rsplit('/', 1)[0]}/{db}"
            runs[placement] = await _attempt(
                placement,
                pairs,
                pool,
                _cluster(
                    args, pool, placement, url, redis.pid, load, log_dir, _profile(args, placement)
                ),
            )
    finally:
        await pool.close()
        redis.stop()
    for run in runs.values():
        if "error" not in run:
            run["direct_latency_ms_p50"] = direct["latency_ms_p50"]
            run["direct_latency_ms_p95"] = direct["latency_ms_p95"]
            run["added_latency_ms"] = _added(run, direct)
    result: dict[str, Any] = {
        "relay": "passthrough",
        "pairs": pairs,
        "seconds": args.seconds,
        "cluster_nodes": args.cluster,
        "direct": direct,
        **runs,
    }
    local, cross = runs.get("local", {}), runs.get("cross", {})
    lc, cc = local.get("server_cpu_pct"), cross.get("server_cpu_pct")
    result["cross_over_local_cpu"] = round(cc / lc, 3) if lc and cc else None
    result["targets"] = _cluster_targets(result)
    return result


async def _cluster(
    args: argparse.Namespace,
    pool: WorkerPool,
    placement: str,
    redis_url: str,
    redis_pid: int,
    load: Load,
    log_dir: Path,
    profile: Path | None,
) -> dict[str, Any]:
    nodes = tuple(
        RelayServer(
            "passthrough",
            log_dir / f"server-{placement}-{load.pairs}-node{i}.log",
            (
                "--redis",
                redis_url,
                "--cluster-secret",
                CLUSTER_SECRET,
                "--node-id",
                f"bench-{placement}-{i}",
                # One moderation database per node: nodes that open one file at the same
                # moment can fail with "database is locked" (see docs/performance.md).
                "--db",
                str(log_dir / f"moderation-{placement}-{load.pairs}-node{i}.sqlite3"),
                # --media-port with --cluster: every node reads its users on one port,
                # drained per wake-up, so a pipe datagram gathers more packets.
                *(("--media-port", str(free_udp_port())) if args.media_port else ()),
            ),
        )
        for i in range(args.cluster)
    )
    try:
        await asyncio.gather(*(node.start() for node in nodes))
        cluster = phases.Cluster(nodes, placement, extra_pids=(redis_pid,))
        result = await phases.relay_phase(
            pool,
            nodes[0],
            load,
            cluster=cluster,
            dump=_dump(args, f"{placement}-{load.pairs}"),
            profile=profile,
        )
    finally:
        codes = await asyncio.gather(*(node.stop() for node in nodes))
    result["relay"] = f"passthrough-{placement}"
    result["server_exit_codes"] = list(codes)
    return result


def _cluster_targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ratio = result.get("cross_over_local_cpu")
    first = result.get("cross", {}).get("next_first_frame_ms_p50")
    limit = 1 + TARGET_CROSS_EXTRA_CPU
    return {
        f"cross-node pair CPU / local pair CPU <= {limit}": {
            "value": ratio,
            "met": None if ratio is None else ratio <= limit,
        },
        f"cross-node next_first_frame_ms_p50 <= {TARGET_NEXT_FIRST_FRAME_MS}": {
            "value": first,
            "met": None if first is None else first <= TARGET_NEXT_FIRST_FRAME_MS,
        },
    }


async def _attempt(
    name: str, pairs: int, pool: WorkerPool, run: Coroutine[Any, Any, dict[str, Any]]
) -> dict[str, Any]:
    """One relay's phase; a failure (an overwhelmed relay) is reported, not fatal to the run."""
    try:
        return await run
    except Exception as exc:
        print_progress(f"{name}: failed: {exc}")
        with contextlib.suppress(Exception):
            await pool.collect()  # close whatever clients are left
        return {"relay": name, "pairs": pairs, "error": f"{type(exc).__name__}: {exc}"}


async def _ours(
    pool: WorkerPool,
    mode: str,
    load: Load,
    log_dir: Path,
    profile: Path | None,
    dump: Path | None,
    *,
    extra_args: tuple[str, ...] = (),
    name: str | None = None,
) -> dict[str, Any]:
    name = name or mode
    server = RelayServer(mode, log_dir / f"server-{name}-{load.pairs}.log", extra_args)
    await server.start()
    try:
        result = await phases.relay_phase(pool, server, load, profile=profile, dump=dump)
    finally:
        code = await server.stop()
    result["relay"] = name
    result["server_exit_code"] = code
    return result


def _profile(args: argparse.Namespace, placement: str) -> Path | None:
    """With --cluster: where each placement's profiles go (one per node, see relay_phase)."""
    profile: Path | None = args.profile
    return None if profile is None else profile.with_name(f"{profile.name}-{placement}")


def _dump(args: argparse.Namespace, name: str) -> Path | None:
    """Where to keep a phase's raw client logs: only when --log-dir was given."""
    return None if args.log_dir is None else args.log_dir / f"clients-{name}.json"


async def _janus(pool: WorkerPool, load: Load, log_dir: Path, dump: Path | None) -> dict[str, Any]:
    if janus_binary() is None:
        print_progress("janus: not installed (apt-get install janus); skipped")
        return {"relay": "janus", "skipped": "janus is not installed"}
    janus = JanusServer(log_dir / f"janus-{load.pairs}.log")
    await janus.start()
    try:
        return await phases.janus_phase(pool, janus, load, dump=dump)
    finally:
        await janus.stop()


def _added(run: dict[str, Any], direct: dict[str, Any]) -> float | None:
    relay_p95, direct_p50 = run.get("latency_ms_p95"), direct.get("latency_ms_p50")
    if relay_p95 is None or direct_p50 is None:
        return None
    return round(float(relay_p95) - float(direct_p50), 1)


def _targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    def check(value: Any, ok: bool | None) -> dict[str, Any]:
        return {"value": value, "met": ok}

    cpu = result["server_cpu_per_pair_pct"]
    ratio = result.get("cpu_ratio")
    delivered = result["delivered_ratio"]
    added = result["added_latency_ms"]
    first = result["next_first_frame_ms_p50"]
    return {
        f"server_cpu_per_pair_pct <= {TARGET_CPU_PER_PAIR}": check(cpu, cpu <= TARGET_CPU_PER_PAIR),
        f"cpu_ratio >= {TARGET_CPU_RATIO}": check(
            ratio, None if ratio is None else ratio >= TARGET_CPU_RATIO
        ),
        f"delivered_ratio >= {TARGET_DELIVERED}": check(
            delivered, None if delivered is None else delivered >= TARGET_DELIVERED
        ),
        f"added_latency_ms (p95 relay - p50 direct) <= {TARGET_ADDED_LATENCY_MS}": check(
            added, None if added is None else added <= TARGET_ADDED_LATENCY_MS
        ),
        f"next_first_frame_ms_p50 <= {TARGET_NEXT_FIRST_FRAME_MS}": check(
            first, None if first is None else first <= TARGET_NEXT_FIRST_FRAME_MS
        ),
    }


def describe(result: dict[str, Any]) -> str:
    """A few lines a person reads; the JSON has everything."""
    if result.get("cluster_nodes"):
        return _describe_cluster(result)
    runs = [result] + [
        result[n] for n in ("transcode", "media-port", "janus") if isinstance(result.get(n), dict)
    ]
    direct = result.get("direct", {})
    head = (
        f"{result['pairs']} pairs, {direct.get('seconds', '-')} s direct and "
        f"{result.get('seconds', '-')} s relay windows, "
        f"direct latency p50 {direct.get('latency_ms_p50')} ms"
    )
    rows = [
        head,
        f"{'relay':<12}{'cpu/pair':>9}{'clients':>9}{'machine':>9}{'delivered':>10}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'added':>7}{'next p50':>9}{'rss/pair':>9}",
    ]
    for run in runs:
        if "skipped" in run or "error" in run:
            rows.append(f"{run['relay']:<12}{run.get('skipped') or run.get('error')}")
            continue
        rows.append(
            f"{run['relay']:<12}{run['server_cpu_per_pair_pct']:>8}%{run['clients_cpu_pct']:>8}%"
            f"{run['machine_cpu_pct']:>8}%{_fmt(run['delivered_ratio']):>10}"
            f"{_fmt(run['latency_ms_p50']):>8}{_fmt(run['latency_ms_p95']):>8}"
            f"{_fmt(run.get('added_latency_ms')):>7}{_fmt(run.get('next_first_frame_ms_p50')):>9}"
            f"{_fmt(run['server_rss_mb_per_pair']):>9}"
        )
    for run in runs:
        evidence = run.get("server_evidence_mb_per_pair")
        if evidence is not None:
            rows.append(
                f"{run['relay']} RSS per pair {run['server_rss_mb_per_pair']} MB, of which "
                f"moderation's evidence buffers {evidence} MB"
            )
        loop = run.get("server_pauses")
        if loop:
            rows.append(
                f"{run['relay']} event loop: longest lag {_fmt(loop['loop_lag_ms_max'])} ms; "
                f"full collections {loop['gc2_collections']}, longest "
                f"{_fmt(loop['gc2_ms_max'])} ms; gen 0/1 longest {_fmt(loop['gc0_ms_max'])}/"
                f"{_fmt(loop['gc1_ms_max'])} ms"
            )
    if result.get("cpu_ratio") is not None:
        rows.append(
            f"cpu ratio transcode/passthrough: {result['cpu_ratio']} "
            f"(per delivered frame: {result.get('cpu_ratio_per_delivered_frame')})"
        )
    return "\n".join(rows + _closing_rows(result))


def _describe_cluster(result: dict[str, Any]) -> str:
    direct = result.get("direct", {})
    rows = [
        f"{result['pairs']} pairs on {result['cluster_nodes']} nodes, {result['seconds']} s "
        f"windows, direct latency p50 {direct.get('latency_ms_p50')} ms",
        f"{'placement':<10}{'cross':>6}{'cpu/pair':>9}{'us/pkt':>8}{'redis':>7}{'delivered':>10}"
        f"{'p50 ms':>8}{'p95 ms':>8}{'next p50':>9}{'next p95':>9}{'match p50':>10}",
    ]
    for placement in ("local", "cross"):
        run = result.get(placement)
        if not isinstance(run, dict):
            continue
        if "error" in run:
            rows.append(f"{placement:<10}{run['error']}")
            continue
        rows.append(
            f"{placement:<10}{run['cross_node_pairs']:>6}{run['server_cpu_per_pair_pct']:>8}%"
            f"{_fmt(run['server_cpu_us_per_forwarded_packet']):>8}{_fmt(run['redis_cpu_pct']):>6}%"
            f"{_fmt(run['delivered_ratio']):>10}{_fmt(run['latency_ms_p50']):>8}"
            f"{_fmt(run['latency_ms_p95']):>8}{_fmt(run.get('next_first_frame_ms_p50')):>9}"
            f"{_fmt(run.get('next_first_frame_ms_p95')):>9}{_fmt(run['time_to_match_ms_p50']):>10}"
        )
    cross = result.get("cross")
    if isinstance(cross, dict) and cross.get("pipe_messages_per_datagram"):
        rows.append(
            f"pipe (cross): {cross['pipe_datagrams_per_s']} datagrams/s sent, "
            f"{cross['pipe_messages_per_datagram']} messages per datagram"
        )
    rows.append(f"cross / local server CPU: {result.get('cross_over_local_cpu')}")
    return "\n".join(rows + _closing_rows(result))


def _closing_rows(result: dict[str, Any]) -> list[str]:
    """The media-port comparison (when run) and the targets, under either table."""
    rows = []
    if result.get("media_port_server_cpu_per_pair_pct") is not None:
        rows.append(
            "server CPU per delivered frame, a socket per connection vs the media port: "
            f"{result.get('server_cpu_ms_per_delivered_frame')} ms vs "
            f"{result.get('media_port_server_cpu_ms_per_delivered_frame')} ms"
        )
    for name, target in result.get("targets", {}).items():
        mark = {True: "met", False: "NOT met", None: "n/a"}[target["met"]]
        rows.append(f"target {name}: {target['value']} ({mark})")
    return rows


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    print_progress(
        f"encoding the load once ({args.loop_seconds:.0f} s loop of VP8 640x480 30 fps + Opus)"
    )
    media = encode_load_media(seconds=args.loop_seconds)
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        media_path = Path(tmp) / "media.pickle"
        media_path.write_bytes(pickle.dumps(media))
        sizes = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.pairs]
        results = []
        for pairs in sizes:
            results.append(await measure(args, pairs, media_path, log_dir))
            print(describe(results[-1]), flush=True)
    load = {
        "video": f"VP8 {media.video.width}x{media.video.height} {media.video.fps} fps",
        "video_kbps": round(media.video.bitrate / 1000),
        "audio": "Opus 48 kHz mono, 20 ms",
        "audio_kbps": round(media.audio.bitrate / 1000),
    }
    common = {
        "command": "python -m bench.relay " + shlex.join(sys.argv[1:]),
        "load": load,
        "machine_after": machine(),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    if not args.sweep:
        return {**results[0], **common}
    if args.plot:
        from bench.chart import plot_sweep

        title = (
            f"{load['video']} ~{load['video_kbps']} kbit/s + Opus per publisher; "
            f"{args.seconds:.0f} s windows; {machine()['cpus']} cores"
        )
        plot_sweep(results, args.plot, title)
        print_progress(f"chart written to {args.plot}")
    return {"sweep": results, **common}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(amain(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print_progress(f"result written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
