"""The parts of a benchmark run: direct pairs, pairs through our relay, pairs through Janus.

Each phase connects fresh load clients in the workers, lets them settle,
measures one steady window (CPU of every process, and the frames sent in it),
and hands the clients' logs to :mod:`bench.analysis`. The relay phase then
goes on to switch partners with `next`, to time the first frame of each new
partner; its CPU and delivery numbers come from the steady window only.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.analysis import MediaReport, analyse, percentile
from bench.janus import JanusServer
from bench.meter import Meter, Reading, cpu_percent, machine
from bench.pool import WorkerError, WorkerPool
from bench.profile import record, write_summary
from bench.target import RelayServer

# After every pair is matched: keyframes arrive, queues and rates settle.
WARMUP = 2.0
# After the window: frames sent at its very end still arrive.
GRACE = 1.0
# Between two partner switches: the new partner's first frame arrives in well under this.
SWITCH_SETTLE = 0.8
SIGNAL_TIMEOUT = 30.0
# How long one look at the machine's load lasts, while waiting for quiet.
QUIET_SAMPLE = 2.0
# Beyond these a result says it may not measure the relay alone.
OTHER_CPU_WARNING = 25.0
LAG_WARNING_MS = 20.0

# Server counters whose change over the window the result reports.
SERVER_COUNTERS = (
    "relay_received_frames_total",
    "relay_forwarded_frames_total",
    "relay_forwarded_packets_total",
    "relay_forwarded_bytes_total",
    "relay_dropped_frames_total",
    "relay_keyframe_requests_received_total",
    "relay_keyframe_requests_sent_total",
    "relay_event_loop_cpu_seconds_total",
    "process_cpu_seconds_total",
    "relay_pipe_datagrams_total",
    "relay_pipe_messages_total",
)

Progress = Callable[[str], None]


def print_progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Load:
    """What a phase runs: how many pairs, how long a window, how many switches."""

    pairs: int
    seconds: float
    switches: int = 10
    # Wait before a window until other processes use at most this (% of a core).
    max_other_cpu: float | None = None
    quiet_wait: float = 300.0


def _pairs(phase: str, pairs: int) -> list[tuple[str, int, str, int]]:
    base = {"direct": 10_000, "relay": 20_000, "janus": 30_000}[phase]
    return [
        (f"{phase}-{k}a", base + 2 * k, f"{phase}-{k}b", base + 2 * k + 1) for k in range(pairs)
    ]


async def _quiet(load: Load, meter: Meter, progress: Progress, label: str) -> float:
    """Wait (at most ``load.quiet_wait`` s) until other people's processes leave the CPU.

    On a shared machine someone else's test suite can take a core in the
    middle of a window; measuring then tells more about them than about us.
    Returns the seconds waited.
    """
    if load.max_other_cpu is None:
        return 0.0
    started = time.monotonic()
    while True:
        before = meter.read()
        await asyncio.sleep(QUIET_SAMPLE)
        other = cpu_percent(before, meter.read())["other"]
        waited = time.monotonic() - started
        if other <= load.max_other_cpu:
            return round(waited, 1)
        if waited >= load.quiet_wait:
            progress(f"{label}: other processes still use {other:.0f}% of a core; measuring anyway")
            return round(waited, 1)
        progress(
            f"{label}: other processes use {other:.0f}% of a core; waiting for a quieter machine"
        )


async def _measure(
    seconds: float,
    meter: Meter,
    progress: Progress,
    label: str,
) -> tuple[Reading, Reading]:
    """Sleep through the window, telling how it goes every few seconds."""
    start = meter.read()
    last = start
    end_at = start.at + seconds
    while (left := end_at - time.monotonic()) > 0:
        await asyncio.sleep(min(5.0, left))
        now = meter.read()
        cpu = cpu_percent(last, now)
        shown = ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items() if k != "bench")
        progress(f"{label}: {now.at - start.at:4.0f}/{seconds:.0f} s  cpu {shown}")
        last = now
    return start, meter.read()


def _client_numbers(
    cpu: dict[str, float],
    pairs: int,
    lags: list[tuple[float, float]],
    window: tuple[Reading, Reading],
    workers: int,
    waited: float,
) -> dict[str, Any]:
    start, end = window[0].at, window[1].at
    p95 = percentile([ms for at, ms in lags if start <= at <= end], 95)
    cores = psutil.cpu_count() or 1
    warnings = []
    if cpu["machine"] > 90 * cores:
        warnings.append(
            f"the machine was saturated ({cpu['machine']:.0f}% of {cores} cores): "
            "the relay and the load clients competed for CPU"
        )
    if cpu["other"] > OTHER_CPU_WARNING:
        warnings.append(f"other processes used {cpu['other']:.0f}% of a core during the window")
    if p95 is not None and p95 > LAG_WARNING_MS:
        warnings.append(
            f"the load clients' event loops lagged (p95 {p95:.0f} ms): "
            "latency includes their own delay"
        )
    return {
        "measurement_warnings": warnings,
        "waited_for_quiet_s": waited,
        "clients_cpu_pct": cpu["clients"],
        "clients_cpu_per_pair_pct": round(cpu["clients"] / pairs, 2),
        "client_workers": workers,
        "clients_loop_lag_ms_p95": None if p95 is None else round(p95, 1),
        "bench_cpu_pct": cpu["bench"],
        "machine_cpu_pct": cpu["machine"],
        "other_cpu_pct": cpu["other"],
        "machine": machine(),
    }


async def direct_phase(
    pool: WorkerPool,
    load: Load,
    progress: Progress = print_progress,
    *,
    dump: Path | None = None,
) -> dict[str, Any]:
    """The same load clients paired straight to each other: the latency baseline."""
    pairs = _pairs("direct", load.pairs)
    meter = Meter({"clients": pool.pids, "bench": [_own_pid()]})
    # Wait for quiet before connecting: pairs left streaming through a long
    # wait on a busy machine would not survive it.
    waited = await _quiet(load, meter, progress, "direct")
    progress(f"direct: connecting {load.pairs} pairs of load clients to each other")
    await asyncio.gather(
        *(
            pool.call(w, "direct_pairs", pairs=[list(p) for p in pairs[w :: pool.count]])
            for w in range(pool.count)
        )
    )
    await asyncio.sleep(WARMUP)
    start, end = await _measure(load.seconds, meter, progress, "direct")
    await asyncio.sleep(GRACE)
    clients, lags = await pool.collect()
    dump_logs(clients, dump)
    report = analyse(clients, (start.at, end.at))
    cpu = cpu_percent(start, end)
    return {
        "seconds": load.seconds,
        **report.summary(),
        **_client_numbers(cpu, load.pairs, lags, (start, end), pool.count, waited),
    }


@dataclass(frozen=True)
class Cluster:
    """Several server nodes sharing one lobby, and where each pair's two people sit.

    ``placement`` "local" puts both people of pair k on node k mod N; "cross"
    puts them on nodes k and k+1 mod N, so their media crosses the pipe.
    Pairs are started one at a time, so the only waiting candidate of the
    second person is the first, wherever they sit.
    """

    nodes: tuple[RelayServer, ...]
    placement: str = "local"
    # Processes besides the nodes whose CPU the result reports on its own (Redis).
    extra_pids: tuple[int, ...] = ()

    def node_of_pair(self, k: int) -> tuple[int, int]:
        n = len(self.nodes)
        return (k % n, (k + 1) % n if self.placement == "cross" else k % n)


async def relay_phase(
    pool: WorkerPool,
    server: RelayServer,
    load: Load,
    progress: Progress = print_progress,
    *,
    profile: Path | None = None,
    dump: Path | None = None,
    cluster: Cluster | None = None,
) -> dict[str, Any]:
    """Pairs through our server: a steady window, then `next` after `next`.

    With ``profile``, py-spy samples the server through the window (collapsed
    stacks there, a summary beside it with `.txt` added). With ``cluster``
    the pairs go through its nodes (``server`` is ignored) and "server" is the
    sum of every node.
    """
    nodes = cluster.nodes if cluster is not None else (server,)
    label = nodes[0].mode if cluster is None else f"{nodes[0].mode}-{cluster.placement}"
    groups = {"server": [n.pid for n in nodes], "clients": pool.pids, "bench": [_own_pid()]}
    if cluster is not None and cluster.extra_pids:
        groups["redis"] = list(cluster.extra_pids)
    meter = Meter(groups)
    rss_idle = meter.rss_mb("server")
    pairs = _pairs("relay", load.pairs)
    where: dict[str, int] = {}
    node_of: dict[str, int] = {}
    for k, (a, _, b, _) in enumerate(pairs):
        where[a] = where[b] = k % pool.count
        node_of[a], node_of[b] = cluster.node_of_pair(k) if cluster else (0, 0)

    waited = await _quiet(load, meter, progress, label)
    progress(f"{label}: connecting {2 * load.pairs} load clients to {len(nodes)} node(s)")
    await connect_pairs(pool, nodes, pairs, where, node_of)
    progress(f"{label}: {load.pairs} pairs matched; warming up")
    await asyncio.sleep(WARMUP)

    before = await _scrape(nodes)
    # One profile per node: in a cluster, node i's beside `profile` with "-node{i}" added.
    profiles: list[Path | None] = (
        [profile] * len(nodes)
        if profile is None or len(nodes) == 1
        else [profile.with_name(f"{profile.name}-node{i}") for i in range(len(nodes))]
    )
    profiling = [
        asyncio.create_task(record(node.pid, load.seconds, path))
        for node, path in zip(nodes, profiles, strict=True)
        if path is not None
    ]
    start, end = await _measure(load.seconds, meter, progress, label)
    after = await _scrape(nodes)
    for task, path in zip(profiling, profiles, strict=False):
        await task
        if path is not None:
            progress(f"{label}: profile summary in {write_summary(path)}")
    rss = meter.rss_mb("server")
    await asyncio.sleep(GRACE)

    partners = {a: b for a, _, b, _ in pairs} | {b: a for a, _, b, _ in pairs}
    partners_at_start = dict(partners)
    switch_error = None
    if load.switches:
        progress(f"{label}: {load.switches} partner switches with next")
        try:
            await _switches(pool, nodes, load.switches, partners, where, node_of, cluster)
        except (WorkerError, TimeoutError) as exc:
            # An overwhelmed relay may not pair in time; the window's numbers still stand.
            switch_error = str(exc)
            progress(f"{label}: switching stopped: {exc}")
    result = await _window_result(
        nodes[0].mode, pool, load, (start, end), (rss_idle, rss), waited, dump, keep_events=True
    )
    events = result.pop("_events")
    metrics = _deltas(before, after, end.at - start.at)
    evidence = after.get("relay_moderation_evidence_allocated_bytes")
    result |= {
        "server_metrics": metrics,
        # What moderation's evidence buffers took at the window's end: RSS per pair is
        # this and the rest (docs/performance.md, issue 14).
        "server_evidence_mb_per_pair": None
        if evidence is None
        else round(evidence / load.pairs / 2**20, 2),
        "server_pauses": pauses(before, after),
        "switch_error": switch_error,
    }
    if cluster is not None:
        seconds = {b for _, _, b, _ in pairs}
        result |= _cluster_numbers(cluster, result, metrics, node_of, partners_at_start)
        ttm = [
            after - before
            for name, log in events.items()
            for before, after in _start_to_match(log, second=name in seconds)
        ]
        result |= {
            "time_to_match_ms_p50": _ms(percentile(ttm, 50)),
            "time_to_match_ms_p95": _ms(percentile(ttm, 95)),
            "time_to_match_samples": len(ttm),
        }
    return result


def relay_pairs(pairs: int) -> list[tuple[str, int, str, int]]:
    """The load's pairs through a relay: (name, tag, name, tag) each."""
    return _pairs("relay", pairs)


async def connect_pairs(
    pool: WorkerPool,
    nodes: Sequence[RelayServer],
    pairs: Sequence[tuple[str, int, str, int]],
    where: dict[str, int],
    node_of: dict[str, int],
) -> None:
    """Connect both people of every pair (to ``nodes[node_of[name]]``) and pair them up."""
    await asyncio.gather(
        *(
            pool.call(
                w,
                "relay_users",
                urls=[
                    nodes[node_of[n]].ws_url for p in pairs[w :: pool.count] for n in (p[0], p[2])
                ],
                names=[n for p in pairs[w :: pool.count] for n in (p[0], p[2])],
                tags=[t for p in pairs[w :: pool.count] for t in (p[1], p[3])],
            )
            for w in range(pool.count)
        )
    )
    # One pair at a time, so the bench knows who is with whom.
    for a, _, b, _ in pairs:
        w = where[a]
        await pool.call(w, "start", name=a)
        await pool.call(w, "start", name=b)
        await asyncio.gather(
            pool.call(w, "wait", name=a, type="matched", timeout=SIGNAL_TIMEOUT),
            pool.call(w, "wait", name=b, type="matched", timeout=SIGNAL_TIMEOUT),
        )


async def _scrape(nodes: Sequence[RelayServer]) -> dict[str, float]:
    """Every node's /metrics, summed sample by sample."""
    total: dict[str, float] = {}
    for node in nodes:
        for key, value in (await node.scrape()).items():
            total[key] = total.get(key, 0.0) + value
    return total


def _cluster_numbers(
    cluster: Cluster,
    result: dict[str, Any],
    metrics: dict[str, Any],
    node_of: dict[str, int],
    partners: dict[str, str],
) -> dict[str, Any]:
    """What a cluster run adds: placement, CPU per forwarded packet, time to match."""
    cross = sum(1 for a, b in partners.items() if node_of[a] != node_of[b]) // 2
    packets = sum(v for k, v in metrics.items() if k.startswith("relay_forwarded_packets_total"))
    cpu_seconds = result["server_cpu_pct"] / 100 * result["seconds"]
    pipe_datagrams = metrics.get('relay_pipe_datagrams_total{direction="sent"}', 0.0)
    pipe_messages = metrics.get('relay_pipe_messages_total{direction="sent"}', 0.0)
    return {
        "cluster_nodes": len(cluster.nodes),
        "placement": cluster.placement,
        "cross_node_pairs": cross,
        "redis_cpu_pct": result.get("redis_cpu_pct"),
        "server_cpu_us_per_forwarded_packet": round(cpu_seconds / packets * 1e6, 1)
        if packets
        else None,
        "pipe_datagrams_per_s": round(pipe_datagrams / result["seconds"], 1),
        "pipe_messages_per_datagram": round(pipe_messages / pipe_datagrams, 2)
        if pipe_datagrams
        else None,
    }


def _start_to_match(events: list[list[Any]], *, second: bool) -> list[tuple[float, float]]:
    """(`next` or first `start`, the `matched` that followed) for each visit the matcher timed.

    Only visits that found someone already waiting: every `next` (the bench
    keeps a stranger waiting) and the first `start` of the second person of
    each pair. A first person's start and a left partner's restart wait for
    the bench's next step, not for the matcher.
    """
    out: list[tuple[float, float]] = []
    asked: float | None = None
    starts = 0
    for when, what in events:
        if what == "next" or (what == "start" and second and starts == 0):
            asked = float(when)
        if what == "start":
            starts += 1
        elif what == "matched" and asked is not None:
            out.append((asked, float(when)))
            asked = None
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


async def _switches(
    pool: WorkerPool,
    nodes: Sequence[RelayServer],
    rounds: int,
    partners: dict[str, str],
    where: dict[str, int],
    node_of: dict[str, int],
    cluster: Cluster | None = None,
) -> None:
    """Each round one paired user sends `next` and gets the one stranger who is waiting.

    The partner left behind starts again and becomes the stranger who waits for
    the next round, so a waiting user is always there, as on a busy server.
    In a cluster the leaver is taken from the waiting stranger's node
    ("local") or from another node ("cross"), so each new pair keeps the
    placement.
    """
    spare = "relay-spare"
    where[spare] = 0
    node_of[spare] = 0
    await pool.call(0, "relay_users", urls=[nodes[0].ws_url], names=[spare], tags=[29_999])
    await pool.call(0, "start", name=spare)
    waiting = spare
    last_partner: dict[str, str] = {}
    order = [*partners, spare]
    for turn in range(rounds):
        # The matcher will not re-pair two people who just left each other.
        candidates = [
            name for name in order if name in partners and name != last_partner.get(waiting)
        ]
        if cluster is not None:
            cross = cluster.placement == "cross"
            placed = [n for n in candidates if (node_of[n] != node_of[waiting]) == cross]
            candidates = placed or candidates
        leaver = candidates[turn % len(candidates)]
        left = partners.pop(leaver)
        await pool.call(where[leaver], "next", name=leaver)
        await asyncio.gather(
            pool.call(where[leaver], "wait", name=leaver, type="matched", timeout=SIGNAL_TIMEOUT),
            pool.call(where[waiting], "wait", name=waiting, type="matched", timeout=SIGNAL_TIMEOUT),
            pool.call(where[left], "wait", name=left, type="partner_left", timeout=SIGNAL_TIMEOUT),
        )
        del partners[left]
        partners[leaver], partners[waiting] = waiting, leaver
        last_partner[left] = leaver
        await pool.call(where[left], "start", name=left)
        waiting = left
        await asyncio.sleep(SWITCH_SETTLE)


async def janus_phase(
    pool: WorkerPool,
    janus: JanusServer,
    load: Load,
    progress: Progress = print_progress,
    *,
    dump: Path | None = None,
) -> dict[str, Any]:
    """The same load through Janus's VideoRoom: one room per pair, no partner switches."""
    meter = Meter({"server": [janus.pid], "clients": pool.pids, "bench": [_own_pid()]})
    rss_idle = meter.rss_mb("server")
    pairs = _pairs("janus", load.pairs)
    waited = await _quiet(load, meter, progress, "janus")
    progress(f"janus: connecting {load.pairs} pairs through Janus VideoRoom")
    await asyncio.gather(
        *(
            pool.call(
                w,
                "janus_pairs",
                url=janus.ws_url,
                pairs=[[1000 + pairs.index(p), *p] for p in pairs[w :: pool.count]],
            )
            for w in range(pool.count)
        )
    )
    await asyncio.sleep(WARMUP)
    start, end = await _measure(load.seconds, meter, progress, "janus")
    rss = meter.rss_mb("server")
    await asyncio.sleep(GRACE)
    return await _window_result("janus", pool, load, (start, end), (rss_idle, rss), waited, dump)


async def _window_result(
    relay: str,
    pool: WorkerPool,
    load: Load,
    window: tuple[Reading, Reading],
    rss_idle_and_end: tuple[float, float],
    waited: float,
    dump: Path | None,
    *,
    keep_events: bool = False,
) -> dict[str, Any]:
    """Collect the clients' logs and turn one measured window into the result fields.

    ``keep_events`` adds ``_events`` (each client's signalling events) for the caller.
    """
    start, end = window
    rss_idle, rss = rss_idle_and_end
    clients, lags = await pool.collect()
    dump_logs(clients, dump)
    report = analyse(clients, (start.at, end.at))
    cpu = cpu_percent(start, end)
    extra: dict[str, Any] = {"redis_cpu_pct": cpu["redis"]} if "redis" in cpu else {}
    if keep_events:
        extra["_events"] = {name: log.get("events", []) for name, log in clients.items()}
    return extra | {
        "relay": relay,
        "pairs": load.pairs,
        "seconds": load.seconds,
        "server_cpu_per_pair_pct": round(cpu["server"] / load.pairs, 2),
        "server_cpu_pct": cpu["server"],
        "server_cpu_ms_per_delivered_frame": _per_frame(cpu["server"], load.seconds, report),
        **report.summary(),
        "server_rss_mb_per_pair": round((rss - rss_idle) / load.pairs, 2),
        "server_rss_mb": round(rss, 1),
        "server_rss_idle_mb": round(rss_idle, 1),
        **_client_numbers(cpu, load.pairs, lags, (start, end), pool.count, waited),
    }


def _per_frame(cpu_pct: float, seconds: float, report: MediaReport) -> float | None:
    """Server CPU per video frame that reached a subscriber: fair even when a relay saturates."""
    if not report.frames_delivered:
        return None
    return round(cpu_pct / 100 * seconds * 1000 / report.frames_delivered, 3)


def dump_logs(clients: dict[str, Any], path: Path | None) -> None:
    """Keep the raw client logs (for bench.analysis by hand) when a log folder was given."""
    if path is not None:
        path.write_text(json.dumps(clients))


def pauses(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The server's event loop over the window, from /metrics (signalling/pauses.py).

    Garbage collections per generation (how many, their total and longest
    time), and how late its 20 ms lag probe ran (p99 as the bucket bound it
    falls in, and the longest). Longest figures cover the last 30-60 s,
    which holds a 20-30 s window. Summed over nodes in a cluster.
    """

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    out: dict[str, Any] = {}
    for generation in (0, 1, 2):
        label = f'{{generation="{generation}"}}'
        out[f"gc{generation}_collections"] = int(delta(f"relay_gc_pause_seconds_count{label}"))
        out[f"gc{generation}_ms_total"] = round(
            delta(f"relay_gc_pause_seconds_sum{label}") * 1e3, 1
        )
        out[f"gc{generation}_ms_max"] = _ms(after.get(f"relay_gc_pause_max_seconds{label}"))
    buckets = sorted(
        (float(key.split('le="')[1].rstrip('"}')), delta(key))
        for key in after
        if key.startswith("relay_event_loop_lag_seconds_bucket")
    )
    total = delta("relay_event_loop_lag_seconds_count")
    out["loop_lag_ms_p99_bucket"] = next(
        (_ms(bound) for bound, count in buckets if total and count >= 0.99 * total), None
    )
    out["loop_lag_ms_max"] = _ms(after.get("relay_event_loop_lag_max_seconds"))
    return out


def _deltas(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {"window_seconds": round(seconds, 2)}
    for key, value in after.items():
        if key.split("{")[0] in SERVER_COUNTERS:
            out[key] = round(value - before.get(key, 0.0), 3)
    out["relay_users_paired"] = after.get("relay_users_paired")
    return out


def _own_pid() -> int:
    import os

    return os.getpid()
