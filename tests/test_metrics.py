"""`GET /metrics` on the real server: the names are there and the numbers follow the media."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest
from aiortc import RTCPeerConnection
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from config import METRICS_PORT, Settings, parse_settings
from rtc.client import ChatClient
from rtc.peer import Peer
from signalling.metrics import METRICS
from signalling.pauses import LoopPauses
from signalling.web import LOBBY

TIMEOUT = 20.0
# The media counters that grow whenever a pair's media flows.
FLOWING = (
    "relay_received_frames_total",
    "relay_received_bytes_total",
    "relay_forwarded_frames_total",
    "relay_forwarded_packets_total",
    "relay_forwarded_bytes_total",
)

NAMES = (
    "relay_users_connected",
    "relay_users_waiting",
    "relay_users_paired",
    "relay_media_connections",
    "relay_matches_total",
    "relay_time_to_match_seconds_count",
    "relay_received_frames_total",
    "relay_received_bytes_total",
    "relay_forwarded_frames_total",
    "relay_forwarded_packets_total",
    "relay_forwarded_bytes_total",
    "relay_dropped_frames_total",
    "relay_keyframe_requests_received_total",
    "relay_keyframe_requests_sent_total",
    "relay_event_loop_cpu_seconds_total",
    "process_cpu_seconds_total",
    "relay_mode_info",
    "relay_gc_pause_seconds_count",
    "relay_gc_pause_max_seconds",
    "relay_event_loop_lag_seconds_count",
    "relay_event_loop_lag_max_seconds",
    "relay_moderation_evidence_bytes",
    "relay_moderation_evidence_allocated_bytes",
)


def scrape(server) -> dict[str, float]:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return _parse(response.read())


async def test_metrics_follow_a_pair_that_forwards_media(relay_server, clients) -> None:
    idle = await asyncio.to_thread(scrape, relay_server)
    names = {key.split("{")[0] for key in idle}
    assert set(NAMES) <= names, set(NAMES) - names
    assert idle["relay_users_connected"] == 0
    assert idle["relay_mode_info{mode=passthrough}"] == 1

    a = ChatClient(relay_server.ws_url, tag=1)
    b = ChatClient(relay_server.ws_url, tag=2)
    clients += [a, b]
    await a.connect()
    await b.connect()
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=10, timeout=TIMEOUT)
    await b.wait_frames(tag=1, count=10, timeout=TIMEOUT)

    first = await asyncio.to_thread(scrape, relay_server)
    assert first["relay_users_connected"] == 2
    assert first["relay_users_paired"] == 2
    assert first["relay_users_waiting"] == 0
    assert first["relay_media_connections"] == 2
    assert first["relay_matches_total"] == 1
    assert first["relay_time_to_match_seconds_count"] == 2
    # Attaching asks each publisher for a keyframe.
    assert first["relay_keyframe_requests_sent_total{kind=video}"] >= 1
    for kind in ("audio", "video"):
        for name in FLOWING:
            assert first[f"{name}{{kind={kind}}}"] > 0, (name, kind)
    # Moderation's evidence buffers hold the pair's media, and say so.
    assert first["relay_moderation_evidence_bytes{pairs=live}"] > 0
    assert (
        first["relay_moderation_evidence_allocated_bytes"]
        >= first["relay_moderation_evidence_bytes{pairs=live}"]
    )
    assert first["relay_event_loop_lag_seconds_count"] > idle["relay_event_loop_lag_seconds_count"]

    await a.wait_frames(tag=2, count=10, after=a.frames[-1].recv_time, timeout=TIMEOUT)
    second = await asyncio.to_thread(scrape, relay_server)
    for name in ("relay_forwarded_frames_total", "relay_forwarded_packets_total"):
        assert second[f"{name}{{kind=video}}"] > first[f"{name}{{kind=video}}"], name

    # A visitor who leaves takes their peer away; the totals must not go back.
    await a.close()
    await b.wait_for("partner_left", timeout=TIMEOUT)
    await _until(lambda: scrape(relay_server)["relay_users_connected"] == 1)
    after = await asyncio.to_thread(scrape, relay_server)
    assert after["relay_users_paired"] == 0
    for key, value in second.items():
        if key.startswith(("relay_forwarded", "relay_received", "relay_keyframe")):
            assert after[key] >= value, key


def test_healthz_answers(relay_server) -> None:
    with urllib.request.urlopen(relay_server.http_url + "/healthz", timeout=10) as response:
        assert response.status == 200


async def _until(predicate) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not await asyncio.to_thread(predicate):
            await asyncio.sleep(0.1)


def test_metrics_are_not_on_the_public_port(relay_server) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(relay_server.http_url + "/metrics", timeout=10)
    assert refused.value.code == 404
    assert (
        "relay_users_connected"
        in urllib.request.urlopen(relay_server.metrics_url, timeout=10).read().decode()
    )


def test_the_memory_breakdown_is_on_the_metrics_listener_only(relay_server) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(relay_server.http_url + "/debug/memory", timeout=10)
    assert refused.value.code == 404
    url = relay_server.metrics_url.replace("/metrics", "/debug/memory")
    with urllib.request.urlopen(url + "?top=5", timeout=10) as response:
        memory = json.loads(response.read())
    assert memory["rss"] > 10 * 2**20
    assert memory["threads"] >= 2 and "MainThread" in memory["python_threads"]
    # The kernel's RSS, split by kind of mapping, adds up to about the whole.
    assert sum(memory["mappings"].values()) == pytest.approx(memory["rss"], rel=0.1)
    assert memory["c_heap"]["in_use"] > 0
    # The test server runs without tracemalloc: no sites, and a baseline explains why.
    assert memory["tracemalloc"] is False and memory["python_heap"] is None
    request = urllib.request.Request(url + "/baseline", method="POST")
    with pytest.raises(urllib.error.HTTPError) as conflict:
        urllib.request.urlopen(request, timeout=10)
    assert conflict.value.code == 409
    assert "PYTHONTRACEMALLOC=1" in conflict.value.read().decode()
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(url + "?top=many", timeout=10)
    assert bad.value.code == 400


async def test_a_stalled_loop_and_a_full_collection_show_in_the_pause_metrics() -> None:
    pauses = LoopPauses()
    pauses.start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.12)  # noqa: ASYNC251 - the point: the loop's thread busy, as under a long callback
        await asyncio.sleep(0.05)
        gc.collect()
        registry = CollectorRegistry()
        registry.register(pauses)
        values = _parse(generate_latest(registry))
    finally:
        await pauses.stop()
    assert values["relay_event_loop_lag_max_seconds"] >= 0.09
    assert values["relay_event_loop_lag_seconds_bucket{le=0.25}"] >= 1
    assert values["relay_gc_pause_seconds_count{generation=2}"] >= 1
    assert values["relay_gc_pause_max_seconds{generation=2}"] > 0
    assert pauses._on_gc not in gc.callbacks  # stopped: nothing left behind


@pytest.mark.parametrize("relay_server_args", [["--metrics-token", "scrape-me-0123"]])
def test_a_token_opens_metrics_on_the_public_port(relay_server) -> None:
    url = relay_server.http_url + "/metrics"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-me-0123"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        assert refused.value.code == 401, headers
    request = urllib.request.Request(url, headers={"Authorization": "Bearer scrape-me-0123"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert "relay_users_connected" in response.read().decode()


async def test_an_app_built_in_process_binds_no_metrics_port() -> None:
    # Settings() is what tests build apps with: no fixed port may be taken.
    assert Settings().metrics_port == 0
    assert parse_settings([]).metrics_port == METRICS_PORT


async def test_closed_visits_are_freed_without_a_scrape(local_server, tmp_path) -> None:
    """A deployment that never scrapes must not keep its past peers (nor lose their traffic)."""
    server = await local_server(
        Settings(
            media_timeout=3,
            interest_timeout=1,
            rematch_after=1,
            db=str(tmp_path / "moderation.sqlite3"),
            recordings_dir=str(tmp_path / "recordings"),
        )
    )
    lobby = server.app[LOBBY]
    for visit in range(3):
        await _pair_and_leave(server.ws_url, tags=(2 * visit + 1, 2 * visit + 2))
    async with asyncio.timeout(TIMEOUT):
        while lobby.sessions:
            await asyncio.sleep(0.05)
    alive = await _until_gone((Peer, RTCPeerConnection))
    assert not alive, f"still alive after every visit closed, no scrape: {alive}"

    totals = _parse(server.app[METRICS].render())
    for kind in ("audio", "video"):
        for name in FLOWING:
            assert totals[f"{name}{{kind={kind}}}"] > 0, (name, kind)
    # One more visit: the totals carry on from the closed ones.
    await _pair_and_leave(server.ws_url, tags=(7, 8))
    later = _parse(server.app[METRICS].render())
    for key, value in totals.items():
        if key.startswith(("relay_forwarded", "relay_received", "relay_keyframe")):
            assert later[key] >= value, key
    assert (
        later["relay_forwarded_packets_total{kind=video}"]
        > totals["relay_forwarded_packets_total{kind=video}"]
    )


async def _pair_and_leave(url: str, tags: tuple[int, int]) -> None:
    a = ChatClient(url, tag=tags[0], width=160, height=120)
    b = ChatClient(url, tag=tags[1], width=160, height=120)
    try:
        await a.connect()
        await b.connect()
        await a.start()
        await b.start()
        await a.wait_for("matched", timeout=TIMEOUT)
        await a.wait_frames(tag=tags[1], count=5, timeout=TIMEOUT)
        await b.wait_frames(tag=tags[0], count=5, timeout=TIMEOUT)
    finally:
        await a.close()
        await b.close()


async def _until_gone(types: tuple[type, ...]) -> dict[str, int]:
    """Live objects of `types` by name, polled until none is left or the deadline passes
    (aiortc and aioice let go of some a moment after close)."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        gc.collect()
        alive = Counter(type(o).__name__ for o in gc.get_objects() if isinstance(o, types))
        if not alive or asyncio.get_running_loop().time() > deadline:
            return dict(alive)
        await asyncio.sleep(0.2)


def _parse(text: bytes) -> dict[str, float]:
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples
