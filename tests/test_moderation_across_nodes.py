"""Moderating a person held by another node: evidence, watching and recording through the pipe.

Two real server processes on one real redis-server (tests/conftest.py `nodes`), real
aiortc clients sending stamped video (rtc/stamp.py), so what a moderator's node
received or wrote is checked by whose stamps it holds. Each node keeps its own
SQLite store here: what is tested is the media, which never goes through the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from moderators import moderators_file

from rtc.client import ChatClient
from rtc.stamp import read_stamp

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


async def visitor(server, clients: list, tag: int) -> ChatClient:
    client = ChatClient(server.ws_url, tag=tag)
    clients.append(client)
    await client.connect()
    return client


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
    a = await visitor(one, clients, 1)
    b = await visitor(two, clients, 2)
    await a.start()
    await b.start()
    matched = await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    await a.chat("hi from node one")
    await b.wait_for("chat", timeout=TIMEOUT)
    await b.chat("hi from node two")
    await a.wait_for("chat", timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=60, timeout=TIMEOUT)

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
