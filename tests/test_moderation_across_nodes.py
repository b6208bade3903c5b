"""Moderating a person held by another node: evidence, watching and recording through the pipe.

Two real server processes on one real redis-server (tests/conftest.py `nodes`), real
aiortc clients sending stamped video (rtc/stamp.py), so what a moderator's node
received or wrote is checked by whose stamps it holds. Each node keeps its own
SQLite store here: what is tested is the media, which never goes through the store.
"""

from __future__ import annotations

import asyncio
import signal
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from moderators import moderators_file

from rtc.stamp import read_stamp
from tests.visits import connected

TIMEOUT = 20.0
SECRET = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": aiohttp.encode_basic_auth("alice", SECRET)}


@pytest.fixture
def node(nodes, tmp_path: Path) -> Callable[[], Any]:
    """A cluster node with moderators, its own store and its own recordings folder."""
    moderators = moderators_file(tmp_path, "alice", SECRET)
    made = 0

    def start() -> Any:
        nonlocal made
        made += 1
        return nodes(
            "--moderators-file",
            str(moderators),
            "--db",
            str(tmp_path / f"node{made}.sqlite3"),
            "--recordings-dir",
            str(tmp_path / f"recordings{made}"),
            "--evidence-seconds",
            "10",
            "--report-window",
            "60",
        )

    return start


async def api(server, method: str, path: str, *, status: int = 200, **kwargs: Any) -> Any:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.request(method, server.http_url + "/api/moderate" + path, **kwargs) as response,
    ):
        assert response.status == status, await response.text()
        if response.content_type == "application/json":
            return await response.json()
        if response.content_type == "text/plain":
            return await response.text()
        return await response.read()


def stamps_of(path: Path, track: str) -> list[Any]:
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.metadata.get("title") == track)
        return [read_stamp(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]


def tags_in(path: Path, track: str) -> set[int]:
    return {s.tag for s in stamps_of(path, track) if s is not None}


async def until(check: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


# -- evidence of a pair across nodes ------------------------------------------------


async def test_evidence_of_a_pair_across_nodes_holds_both_people_live_and_late(
    node, clients, tmp_path: Path
) -> None:
    one, two = node(), node()
    a = await connected(one, clients, 1)
    b = await connected(two, clients, 2)
    await a.start()
    await b.start()
    matched = await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    await a.chat("hi from node one")
    await b.wait_for("chat", timeout=TIMEOUT)
    await b.chat("hi from node two")
    await a.wait_for("chat", timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=60, timeout=TIMEOUT)
    # A moderator on node one watches the pair: a from here, b through the pipe.
    watching = Watching()
    try:
        await watching.start(one, [a.id, b.id], [None, b.hello["node"]])
        await until(
            lambda: min(watching.video_tags.get(1, 0), watching.video_tags.get(2, 0)) >= 5,
            "both people of the pair at the watcher",
        )
    finally:
        await watching.close()

    # Live: a reports b (staying in the pair), on a's node.
    await a.send({"type": "report", "reason": "rude", "moveOn": False})
    live = await a.wait_for("reported", timeout=TIMEOUT)

    # Late: b leaves, then a reports the pair by its id.
    assert b._stamped_video is not None
    left_at = b._stamped_video.counter
    await b.next()
    await a.wait_for("partner_left", timeout=TIMEOUT)
    await a.send({"type": "report", "reason": "nudity", "pairId": matched["pairId"]})
    late = await a.wait_for("reported", timeout=TIMEOUT)

    reports = {r["id"]: r for r in (await api(one, "GET", "/reports"))["reports"]}
    for reported in (live, late):
        report = reports[reported["reportId"]]
        assert report["reportedId"] == b.id
        assert [line["text"] for line in report["transcript"]] == [
            "hi from node one",
            "hi from node two",
        ]
        path = tmp_path / f"evidence-{report['id']}.webm"
        path.write_bytes(await api(one, "GET", f"/recordings/{report['evidence']}?download=1"))
        # b's frames came to node one through the pipe; a's are a's own.
        counters = [s.counter for s in stamps_of(path, "video") if s is not None and s.tag == 2]
        assert len(counters) > 30 and counters == sorted(counters)
        assert tags_in(path, "reporter_video") == {1}
        with av.open(str(path)) as container:
            titles = {s.metadata.get("title") for s in container.streams}
        assert {"video", "audio", "reporter_video", "reporter_audio"} <= titles
        if reported is late:
            # Nothing of b from after the pair ended (a frame or two may have been in flight).
            assert max(counters) <= left_at + 3, (max(counters), left_at)


# -- watching and recording a person on another node ---------------------------------


def gauge(server, name: str, label: str) -> float:
    """One labelled sample of a gauge on `server`'s /metrics."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name}{{{label}}} "):
                return float(line.split()[1])
    raise AssertionError(f"{name}{{{label}}} not in /metrics")


def feeds(viewer, holder) -> tuple[float, ...]:
    """Streams and feeds of a watch, on both nodes: (in at the viewer, out at the holder, ...)."""
    return (
        gauge(viewer, "relay_pipe_streams", 'direction="in"'),
        gauge(holder, "relay_pipe_streams", 'direction="out"'),
        gauge(viewer, "relay_moderation_remote_feeds", 'side="receiving"'),
        gauge(holder, "relay_moderation_remote_feeds", 'side="sending"'),
    )


class Watching:
    """A moderator's aiortc connection watching one person or a pair (as the dashboard does)."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.video_tags: dict[int, int] = {}
        self.audio_frames = 0
        self.watch_id = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on(
            "track", lambda track: self._tasks.append(asyncio.ensure_future(self._read(track)))
        )

    async def _read(self, track: Any) -> None:
        while True:
            frame = await track.recv()
            if track.kind == "audio":
                self.audio_frames += 1
                continue
            stamp = read_stamp(frame.to_ndarray(format="rgb24"))
            if stamp is not None:
                self.video_tags[stamp.tag] = self.video_tags.get(stamp.tag, 0) + 1

    async def offer(self, people: int = 1) -> str:
        for _ in range(people):
            self.pc.addTransceiver("audio", direction="recvonly")
            self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def start(self, server, ids: list[str], node: str | list[str | None]) -> None:
        body = {"sessionIds": ids, "node": node, "sdp": await self.offer(len(ids))}
        answer = await api(server, "POST", "/watch", json=body)
        self.watch_id = answer["watchId"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()


async def test_a_moderator_watches_and_records_a_person_on_another_node_through_the_pipe(
    node, clients, tmp_path: Path
) -> None:
    one, two = node(), node()
    # A pair on node two; the moderator's dashboard is served by node one.
    b = await connected(two, clients, 3)
    c = await connected(two, clients, 4)
    await b.start()
    await c.start()
    await b.wait_for("matched", timeout=TIMEOUT)
    await c.wait_for("matched", timeout=TIMEOUT)
    there = b.hello["node"]
    assert feeds(one, two) == (0, 0, 0, 0)

    # Clear refusals: a node that is not in the cluster, a person who is not there.
    gone = await api(
        one,
        "POST",
        "/watch",
        status=404,
        json={"sessionIds": [b.id], "node": "no-such-node", "sdp": await Watching().offer()},
    )
    assert "not in the cluster" in gone
    left = await api(
        one,
        "POST",
        "/watch",
        status=404,
        json={"sessionIds": ["nobody-here"], "node": there, "sdp": await Watching().offer()},
    )
    assert "no session nobody-here" in left and "they left" in left

    # 1. Watch the pair, then stop from the dashboard (DELETE).
    watching = Watching()
    try:
        await watching.start(one, [b.id, c.id], there)
        await until(lambda: watching.video_tags.get(3, 0) >= 10, "b's frames at the watcher")
        await until(lambda: watching.video_tags.get(4, 0) >= 10, "c's frames at the watcher")
        await until(lambda: watching.audio_frames >= 20, "their audio at the watcher")
        assert set(watching.video_tags) == {3, 4}
        assert feeds(one, two) == (4, 4, 2, 2)
        await api(one, "DELETE", f"/watch/{watching.watch_id}")
        await until(lambda: feeds(one, two) == (0, 0, 0, 0), "the streams to end on both nodes")
    finally:
        await watching.close()

    # 2. Watch, then the moderator closes the page (the connection closes).
    watching = Watching()
    try:
        await watching.start(one, [b.id], there)
        await until(lambda: watching.video_tags.get(3, 0) >= 5, "b's frames again")
    finally:
        await watching.close()
    await until(lambda: feeds(one, two) == (0, 0, 0, 0), "the streams to end with the page")

    # 3. Record c into a file on node one, then stop.
    started = await api(one, "POST", "/recordings", json={"sessionIds": [c.id], "node": there})
    name = started["recording"][0]["name"]
    assert (tmp_path / "recordings1" / name).exists()
    assert feeds(one, two) == (2, 2, 1, 1)
    listed = {r["name"]: r for r in (await api(one, "GET", "/recordings"))["recordings"]}
    assert listed[name]["live"] and listed[name]["sessionId"] == c.id
    await asyncio.sleep(2.5)
    await api(one, "POST", "/recordings/stop", json={"sessionIds": [c.id], "node": there})
    await until(lambda: feeds(one, two) == (0, 0, 0, 0), "the recording's streams to end")
    path = tmp_path / "recorded.webm"
    path.write_bytes(await api(one, "GET", f"/recordings/{name}?download=1"))
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        stamps = [read_stamp(f.to_ndarray(format="rgb24")) for f in container.decode(video)]
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        assert audio.codec_context.name == "opus"
        assert sum(1 for _ in container.decode(audio)) > 20
    counters = [s.counter for s in stamps if s is not None and s.tag == 4]
    assert len(counters) > 20 and counters == sorted(counters)
    assert {s.tag for s in stamps if s is not None} == {4}

    # 4. Watch, then the person leaves: their node stops sending, this node lets go.
    watching = Watching()
    try:
        await watching.start(one, [b.id], there)
        await until(lambda: watching.video_tags.get(3, 0) >= 5, "b's frames once more")
        await b.close()
        await until(lambda: feeds(one, two) == (0, 0, 0, 0), "the streams to end as b left")
    finally:
        await watching.close()
    actions = [e["action"] for e in (await api(one, "GET", "/audit"))["audit"]]
    assert {"watch", "stop_watching", "record", "stop_recording"} <= set(actions)


async def test_a_moderators_node_that_dies_stops_the_stream_it_was_watching(node, clients) -> None:
    one, two = node(), node()
    b = await connected(two, clients, 3)
    await b.start()  # waiting alone: watched all the same
    watching = Watching()
    try:
        await watching.start(one, [b.id], b.hello["node"])
        await until(lambda: watching.video_tags.get(3, 0) >= 5, "b's frames at the watcher")
        assert gauge(two, "relay_pipe_streams", 'direction="out"') == 2
        one.send_signal(signal.SIGKILL)

        def stopped() -> bool:
            return (
                gauge(two, "relay_pipe_streams", 'direction="out"'),
                gauge(two, "relay_moderation_remote_feeds", 'side="sending"'),
            ) == (0, 0)

        # Within the registry's TTL (3 s) and a check, not the 10 s lease.
        await until(stopped, "node two to stop sending to the dead node")
    finally:
        await watching.close()
    lines = two.log().splitlines()
    assert any("stopped sending" in line and "is gone" in line for line in lines), two.log()
