"""The benchmark: how it names frames, and a whole run at a tiny load.

Nothing here checks a timing target: those are measured by the benchmark on a
quiet machine (docs/performance.md), never asserted in tests.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from bench.analysis import Sender, analyse, identify
from bench.janus import janus_binary
from bench.media import JITTER_STEP, JITTER_VALUES
from tests.conftest import ROOT

FIELDS = (
    "pairs",
    "seconds",
    "relay",
    "server_cpu_per_pair_pct",
    "delivered_ratio",
    "latency_ms_p50",
    "latency_ms_p95",
    "direct_latency_ms_p50",
    "next_first_frame_ms_p50",
    "next_first_frame_ms_p95",
    "server_rss_mb_per_pair",
    "clients_cpu_pct",
    "machine_cpu_pct",
    "machine",
)


def _sent(seed: int, start: float, frames: int) -> list[tuple[int, float]]:
    rng = random.Random(seed)
    return [
        (slot * 3000 + JITTER_STEP * rng.randrange(JITTER_VALUES), start + slot / 30)
        for slot in range(frames)
    ]


def _received(
    sent: list[tuple[int, float]], offset: int, latency: float, error: int = 0
) -> list[tuple[float, int, int]]:
    return [
        (t + latency, pts + offset - (error if i % 2 else 0), 1000)
        for i, (pts, t) in enumerate(sent)
    ]


def test_identify_names_each_frame_and_follows_a_partner_change() -> None:
    a = _sent(1, 100.0, 60)
    c = _sent(3, 100.0, 60)
    # Our receiver gets a's first second, then c's second one, each under its own offset.
    received = _received(a[:30], 12345, 0.05) + _received(c[30:], -777, 0.07)
    senders = [Sender.from_log("a", a), Sender.from_log("c", c)]
    arrivals = identify(received, senders)
    assert [x.sender for x in arrivals] == ["a"] * 30 + ["c"] * 30
    assert [x.pts for x in arrivals] == [p for p, _ in a[:30]] + [p for p, _ in c[30:]]
    assert all(abs(x.latency - (0.05 if x.sender == "a" else 0.07)) < 1e-9 for x in arrivals)


def test_identify_rounds_away_a_re_encoders_one_tick() -> None:
    a = _sent(1, 100.0, 40)
    arrivals = identify(_received(a, 999, 0.1, error=1), [Sender.from_log("a", a)])
    assert [x.pts for x in arrivals] == [p for p, _ in a]


def test_frames_from_nobody_stay_unnamed() -> None:
    a = _sent(1, 100.0, 40)
    stranger = _sent(2, 100.0, 40)
    arrivals = identify(_received(stranger, 5, 0.05), [Sender.from_log("a", a)])
    assert all(x.sender is None for x in arrivals)


def test_analyse_counts_delivery_in_the_window_and_the_switch() -> None:
    a, b = _sent(1, 100.0, 90), _sent(2, 100.0, 90)
    # c, like the bench's spare, only starts sending after the window.
    c = _sent(3, 100.0, 90)[60:]
    lost = {40, 41}  # two of a's frames never reach b
    clients = {
        "a": {"sent": a, "received": _received(b, 10, 0.05), "events": []},
        "b": {
            "sent": b,
            "received": [r for i, r in enumerate(_received(a[:60], 20, 0.05)) if i not in lost]
            + _received(c, 30, 0.06),
            # b pressed next just after a's frame 59 and met c.
            "events": [(a[59][1] + 0.01, "next")],
        },
        "c": {"sent": c, "received": [], "events": []},
    }
    report = analyse(clients, (a[0][1], a[59][1]))
    assert report.frames_sent == 120
    assert report.frames_delivered == 118
    assert report.delivered_ratio == pytest.approx(118 / 120)
    assert report.next_to_first_frame == [pytest.approx(c[0][1] + 0.06 - (a[59][1] + 0.01))]


@pytest.mark.timeout(600)
def test_a_tiny_run_writes_every_field(tmp_path) -> None:
    out = tmp_path / "result.json"
    command = [
        sys.executable,
        "-m",
        "bench.relay",
        "--pairs",
        "1",
        "--seconds",
        "3",
        "--switches",
        "3",
        "--loop-seconds",
        "2",
        "--compare",
        # Measure at once: a test never waits for a quiet machine.
        "--max-other-cpu",
        "-1",
        "--json",
        str(out),
        "--log-dir",
        str(tmp_path / "logs"),
    ]
    if janus_binary() is not None:
        command.append("--janus")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "passthrough" in done.stdout  # the summary table
    result = json.loads(out.read_text())

    for field in FIELDS:
        assert field in result, field
    assert result["pairs"] == 1 and result["seconds"] == 3 and result["relay"] == "passthrough"
    _sane(result)
    assert result["switch_error"] is None
    assert result["next_first_frame_samples"] + result["nexts_without_new_frame"] == 3
    assert result["next_first_frame_samples"] >= 1
    assert result["next_first_frame_ms_p95"] >= result["next_first_frame_ms_p50"] > 0
    assert result["server_exit_code"] == 0
    # The server's own counters saw the same media.
    metrics = result["server_metrics"]
    assert metrics['relay_forwarded_frames_total{kind="video"}'] > 0
    assert metrics["relay_users_paired"] == 2
    # And its event loop's pauses over the window (signalling/pauses.py).
    loop = result["server_pauses"]
    assert loop["loop_lag_ms_max"] is not None and loop["loop_lag_ms_p99_bucket"] is not None
    assert all(loop[f"gc{g}_collections"] >= 0 for g in (0, 1, 2))

    transcode = result["transcode"]
    assert transcode["relay"] == "transcode"
    _sane(transcode)
    assert result["cpu_ratio"] > 0
    assert set(result["targets"]) and all("met" in t for t in result["targets"].values())
    if janus_binary() is not None:
        _sane(result["janus"])
        assert result["janus_cpu_per_pair_pct"] > 0


def _sane(run: dict) -> None:
    assert run["server_cpu_per_pair_pct"] > 0
    assert 0 < run["delivered_ratio"] <= 1
    assert run["latency_ms_p95"] >= run["latency_ms_p50"] > 0
    assert run["direct_latency_ms_p50"] > 0
    assert run["server_rss_mb_per_pair"] is not None
    assert run["clients_cpu_pct"] > 0
    assert run["machine"]["cpus"] >= 1


def test_help_describes_every_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.relay", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for option in (
        "--pairs",
        "--relay",
        "--compare",
        "--janus",
        "--sweep",
        "--profile",
        "--max-other-cpu",
        "--cluster",
        "--placement",
        "--media-port",
    ):
        assert option in done.stdout


CLUSTER_FIELDS = (
    "cross_node_pairs",
    "server_cpu_per_pair_pct",
    "server_cpu_us_per_forwarded_packet",
    "redis_cpu_pct",
    "delivered_ratio",
    "next_first_frame_ms_p50",
    "time_to_match_ms_p50",
    "time_to_match_samples",
)


@pytest.mark.timeout(300)
def test_a_tiny_cluster_run_reports_local_and_cross_node_pairs(tmp_path) -> None:
    out = tmp_path / "cluster.json"
    command = [
        sys.executable,
        "-m",
        "bench.relay",
        "--cluster",
        "2",
        "--pairs",
        "1",
        "--seconds",
        "2",
        "--direct-seconds",
        "1",
        "--switches",
        "2",
        "--loop-seconds",
        "2",
        "--max-other-cpu",
        "-1",
        "--json",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "cross / local server CPU" in done.stdout
    result = json.loads(out.read_text())
    assert result["cluster_nodes"] == 2
    for placement, crossing in (("local", 0), ("cross", 1)):
        run = result[placement]
        assert "error" not in run, run.get("error")
        for field in CLUSTER_FIELDS:
            assert field in run, (placement, field)
        assert run["placement"] == placement
        assert run["cross_node_pairs"] == crossing
        assert run["server_exit_codes"] == [0, 0]
        assert run["switch_error"] is None
        assert run["time_to_match_samples"] >= 1
    assert result["cross_over_local_cpu"] > 0
    # The pipe carried the cross-node pair's media (and nothing for the local one).
    assert result["cross"]["pipe_messages_per_datagram"] >= 1
    assert result["local"]["pipe_messages_per_datagram"] is None
    assert all("met" in t for t in result["targets"].values())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("matcher", ["redis", "memory"])
def test_a_tiny_matcher_run_reports_its_rate(tmp_path, matcher: str) -> None:
    out = tmp_path / "matcher.json"
    command = [sys.executable, "-m", "bench.matcher", "--matcher", matcher]
    command += ["--waiting", "20", "--active", "8", "--seconds", "1", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["matcher"] == matcher and result["waiting"] == 20
    assert result["matches"] > 0 and result["errors"] == 0
    assert result["time_to_match_ms_p50"] is not None
    # The backlog stays waiting: nobody in it may be matched.
    assert result["waiting_at_end"] >= 20
    assert all("met" in t for t in result["target"].values())


def test_a_tiny_resume_run_reports_each_gap() -> None:
    """`python -m bench.resume`: one round of each event, fields only (no timings asserted)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.resume", "--rounds", "1", "--fps", "30", "--settle", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rounds"] == 1 and report["partner_left"] == 0
    for event in ("baseline", "websocket", "media", "network_change"):
        assert set(report[event]) == {"frames_p50", "frames_max", "ms_p50", "ms_max"}


def test_the_pipe_bench_packs_the_packets_of_a_turn_together() -> None:
    command = [sys.executable, "-m", "bench.pipe", "--packets", "300", "--per-turn", "3"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-4000:]
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["auth"] for r in results] == ["hmac-sha256-128", "aes-128-gcm"]
    for result in results:
        assert result["loopback_delivered"] == 1.0
        # Two turns of three packets share a datagram (see rtc/pipe.py).
        assert result["datagrams"] < 300 / 3


@pytest.mark.timeout(300)
def test_the_memory_probe_reports_what_one_pair_is_made_of(tmp_path) -> None:
    """`python -m bench.memory`: one pair's RSS, its evidence buffers and where the heap grew."""
    out = tmp_path / "memory.json"
    command = [sys.executable, "-m", "bench.memory", "--pairs", "1", "--seconds", "4"]
    command += ["--loop-seconds", "2"]
    command += ["--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "per pair" in done.stdout
    result = json.loads(out.read_text())
    share = result["per_pair"]
    assert result["pairs"] == 1 and result["tracemalloc"] is True
    assert share["rss_mb"] > 0 and share["python_heap_mb"] > 0
    # Both people's last seconds are in moderation's buffers, and the probe says how much.
    assert share["evidence_payload_mb"] > 0.1
    assert share["evidence_allocated_mb"] >= share["evidence_payload_mb"]
    assert 2 <= share["evidence_seconds_mean"] <= 30
    files = [f["file"] for f in result["python_heap_by_file"]]
    assert "moderation/ringbuffer.py" in files
    assert {"heap", "thread_arenas", "anonymous", "files"} <= {
        k.removeprefix("rss_").removesuffix("_mb") for k in share
    }
