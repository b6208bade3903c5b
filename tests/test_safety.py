"""Trust and safety against the real server: blocks, late reports by pairId, bans from reports.

Users are real aiortc clients (rtc.client.ChatClient) sending stamped video, so the
evidence a late report saves can be checked frame by frame; the moderator is the
HTTP API, as the dashboard uses it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import av
import pytest
from moderators import moderators_file

from rtc.client import ChatClient
from rtc.stamp import read_stamp

TIMEOUT = 20.0
SECRET = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": aiohttp.encode_basic_auth("alice", SECRET)}
APPEAL = "write to appeals@example.org"
# Longer than --rematch-after and --interest-timeout (1 s): two waiting users who may
# meet are matched well within this.
APART = 3.0


@pytest.fixture
def relay_server_args(tmp_path: Path) -> list[str]:
    moderators = moderators_file(tmp_path, "alice", SECRET)
    return [
        "--media-timeout",
        "3",
        "--interest-timeout",
        "1",
        "--rematch-after",
        "1",
        "--moderators-file",
        str(moderators),
        "--login-throttle-after",
        "0",
        "--db",
        str(tmp_path / "moderation.sqlite3"),
        "--recordings-dir",
        str(tmp_path / "recordings"),
        "--evidence-seconds",
        "10",
        "--report-window",
        "60",
        "--appeal-url",
        APPEAL,
    ]


async def visitor(server, clients: list, tag: int, client_id: str | None) -> ChatClient:
    url = server.ws_url + (f"?clientId={client_id}" if client_id else "")
    client = ChatClient(url, tag=tag)
    clients.append(client)
    await client.connect()
    return client


async def paired(
    server, clients: list, ids: tuple[str, str] = ("browser-A-0123", "browser-B-0123")
):
    a = await visitor(server, clients, 1, ids[0])
    b = await visitor(server, clients, 2, ids[1])
    await a.start()
    await b.start()
    matched = await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    return a, b, matched


async def api(server, method: str, path: str, *, status: int = 200, **kwargs):
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.request(method, server.http_url + "/api/moderate" + path, **kwargs) as response,
    ):
        assert response.status == status, await response.text()
        if response.content_type == "application/json":
            return await response.json()
        return await response.read()


def matches(client: ChatClient) -> int:
    return sum(1 for m in client.messages if m.get("type") == "matched")


# -- never paired again ----------------------------------------------------------


@pytest.mark.parametrize("how", ["block", "report"])
async def test_a_blocked_pair_never_meets_again_even_when_they_are_the_only_two(
    relay_server, clients, how: str
) -> None:
    a, b, matched = await paired(relay_server, clients)
    pair_id = matched["pairId"]
    assert isinstance(pair_id, str) and len(pair_id) >= 16
    # Opaque: neither session id is in it.
    assert a.id not in pair_id and b.id not in pair_id
    if how == "block":
        await a.send({"type": "block"})
        assert (await a.wait_for("blocked", timeout=TIMEOUT))["pairId"] == pair_id
    else:
        await a.send({"type": "report", "reason": "spam or scam", "category": "spam"})
        assert (await a.wait_for("reported", timeout=TIMEOUT))["pairId"] == pair_id
    # The blocked one sees an ordinary `next`, nothing that says block or report.
    assert (await b.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "next"
    await a.wait_for("waiting", timeout=TIMEOUT)
    await b.start()
    await asyncio.sleep(APART)
    assert (matches(a), matches(b)) == (1, 1), "the blocked pair met again"
    assert not any(m.get("type") in ("blocked", "reported") for m in b.messages)

    # A new visit of the blocked browser (same client id): still apart.
    await b.close()
    b2 = await visitor(relay_server, clients, 3, "browser-B-0123")
    await b2.start()
    await asyncio.sleep(APART)
    assert (matches(a), matches(b2)) == (1, 0)

    # A new visit of the blocker too: the block is kept by identity (--block-days).
    await a.close()
    a2 = await visitor(relay_server, clients, 4, "browser-A-0123")
    await a2.start()
    await asyncio.sleep(APART)
    assert (matches(a2), matches(b2)) == (0, 0)

    # Both are waiting and matchable: a newcomer meets one of them at once.
    c = await visitor(relay_server, clients, 5, "browser-C-0123")
    await c.start()
    await c.wait_for("matched", timeout=TIMEOUT)
    # c's `matched` can arrive before its partner's: wait for the partner's, then
    # check that it was exactly one of the two.
    async with asyncio.timeout(TIMEOUT):
        while matches(a2) + matches(b2) == 0:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert matches(a2) + matches(b2) == 1


# -- reports after the partner left --------------------------------------------------


def stamps_of(path: Path, track: str):
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.metadata.get("title") == track)
        return [read_stamp(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]


async def test_a_partner_who_left_is_reported_by_pair_id_with_their_media_from_before(
    relay_server, clients, tmp_path: Path
) -> None:
    a, b, matched = await paired(relay_server, clients)
    await a.chat("hi")
    await b.wait_for("chat", timeout=TIMEOUT)
    await b.chat("look at this")
    await a.wait_for("chat", timeout=TIMEOUT)
    # A moderator watching the pair reads their chat live.
    live = await api(relay_server, "GET", f"/sessions/{a.id}/chat")
    assert live["partner"] == b.id
    assert [(line["sender"], line["text"]) for line in live["chat"]] == [
        (a.id, "hi"),
        (b.id, "look at this"),
    ]
    await a.wait_frames(tag=2, count=60, timeout=TIMEOUT)
    assert b._stamped_video is not None
    left_at = b._stamped_video.counter
    await b.next()  # b flashes and skips
    await a.wait_for("partner_left", timeout=TIMEOUT)
    await asyncio.sleep(1.5)  # b's camera keeps sending: none of that is evidence
    assert b._stamped_video.counter > left_at + 10

    await a.send({"type": "report", "reason": "nudity", "pairId": "not-a-pair-of-mine"})
    error = await a.wait_for("error", timeout=TIMEOUT)
    assert error["code"] == "unknown_pair" and error["field"] == "pairId"

    await a.send(
        {
            "type": "report",
            "reason": "nudity or sexual content",
            "category": "sexual",
            "pairId": matched["pairId"],
        }
    )
    reported = await a.wait_for("reported", timeout=TIMEOUT)
    assert reported["pairId"] == matched["pairId"]
    report = next(
        r
        for r in (await api(relay_server, "GET", "/queue"))["queue"]
        if r["id"] == reported["reportId"]
    )
    assert report["reportedId"] == b.id and report["category"] == "sexual"
    assert [line["text"] for line in report["transcript"]] == ["hi", "look at this"]
    assert report["hasIdentity"] and report["hasAddress"]
    path = tmp_path / "evidence.webm"
    path.write_bytes(await api(relay_server, "GET", f"/recordings/{report['evidence']}?download=1"))
    counters = [s.counter for s in stamps_of(path, "video") if s is not None and s.tag == 2]
    assert len(counters) > 30
    # All from before b left (a frame or two may have been in flight), reaching back seconds.
    assert max(counters) <= left_at + 3, (max(counters), left_at)
    assert min(counters) < left_at - 30, (min(counters), left_at)
    assert counters == sorted(counters)
    assert {s.tag for s in stamps_of(path, "reporter_video") if s is not None} == {1}
    # Each person on their own, as the dashboard plays them side by side.
    for part, tag in (("reported", 2), ("reporter", 1)):
        alone = tmp_path / f"{part}.webm"
        alone.write_bytes(
            await api(relay_server, "GET", f"/recordings/{report['evidence']}?part={part}")
        )
        assert {s.tag for s in stamps_of(alone, "video") if s is not None} == {tag}
    await api(relay_server, "GET", f"/recordings/{report['evidence']}?part=x", status=400)
    # The reported person never hears of it, nor who it was.
    assert not any(m.get("type") in ("reported", "blocked") for m in b.messages)
    assert not any(a.id in str(m) or "reportId" in str(m) for m in b.messages)


# -- bans from reports -------------------------------------------------------------


async def next_events(stream: aiohttp.ClientResponse, wanted: set[str]) -> set[str]:
    """Read the dashboard's event stream until every name in `wanted` has come."""
    seen: set[str] = set()
    async with asyncio.timeout(TIMEOUT):
        while not wanted <= seen:
            line = (await stream.content.readline()).decode().strip()
            if line.startswith("event: "):
                seen.add(line.removeprefix("event: "))
    return seen


async def test_a_ban_made_from_a_report_refuses_the_reported_who_already_left(
    relay_server, clients
) -> None:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.get(relay_server.http_url + "/api/moderate/events") as stream,
    ):
        assert stream.headers["Content-Type"] == "text/event-stream"
        a, b, _ = await paired(relay_server, clients)
        # The dashboard is told when people arrive and pair, and when a report comes.
        await next_events(stream, {"sessions"})
        await a.send({"type": "report", "reason": "looks under 18"})
        report_id = (await a.wait_for("reported", timeout=TIMEOUT))["reportId"]
        await next_events(stream, {"queue"})
    await b.close()

    queue = (await api(relay_server, "GET", "/queue"))["queue"]
    (row,) = [r for r in queue if r["id"] == report_id]
    assert row["category"] == "minor" and row["online"] is False
    assert row["sharingAddress"] == 1  # a, still here, has the same address
    # Lengths and scopes are validated; nothing unclear becomes a permanent ban.
    for bad in ("24 hours", "forever", "1y", "0h", "-1h", "9999999d", "", "1e3", True, None):
        body = {"duration": bad, "scope": "identity", "reason": "x"}
        error = await api(relay_server, "POST", f"/reports/{report_id}/ban", status=400, json=body)
        assert b"24h" in error and b"permanent" in error, (bad, error)
    await api(
        relay_server,
        "POST",
        f"/reports/{report_id}/ban",
        status=400,
        json={"duration": "24h", "scope": "everyone", "reason": "x"},
    )
    made = await api(
        relay_server,
        "POST",
        f"/reports/{report_id}/ban",
        json={"duration": "24h", "scope": "identity", "reason": "under 18"},
    )
    assert made["expiresAt"] == pytest.approx(time.time() + 86400, abs=30)
    assert made["identity"] is None and made["ip"] is None  # kept as keyed hashes only

    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(relay_server.ws_url + "?clientId=browser-B-0123") as ws,
    ):
        refusal = await ws.receive_json(timeout=TIMEOUT)
        assert refusal["code"] == "banned" and refusal["reason"] == "under 18"
        assert refusal["appeal"] == APPEAL and APPEAL in refusal["message"]
        await ws.receive(timeout=TIMEOUT)
        assert ws.close_code == 4003
    # Identity scope: another browser at the same address is welcome.
    other = await visitor(relay_server, clients, 3, "browser-C-0123")
    assert other.id

    reports = (await api(relay_server, "GET", "/reports"))["reports"]
    (done,) = [r for r in reports if r["id"] == report_id]
    assert (done["status"], done["decision"], done["reviewedBy"]) == ("reviewed", "banned", "alice")
    history = await api(relay_server, "GET", f"/history/{done['subject']}")
    assert [r["id"] for r in history["reports"]] == [report_id]
    assert [ban["id"] for ban in history["bans"]] == [made["id"]]
    assert report_id not in [r["id"] for r in (await api(relay_server, "GET", "/queue"))["queue"]]


async def test_the_dashboards_event_stream_ends_when_the_server_stops(relay_server) -> None:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.get(relay_server.http_url + "/api/moderate/events") as stream,
    ):
        assert (await stream.content.readline()).startswith(b"retry:")
        stopping = asyncio.get_running_loop().run_in_executor(None, relay_server.stop)
        async with asyncio.timeout(TIMEOUT):
            while await stream.content.readline():
                pass
        assert await stopping == 0


# -- across nodes ------------------------------------------------------------------


async def test_a_block_across_two_nodes_holds_and_both_sides_share_the_pair_id(
    nodes, clients, tmp_path: Path
) -> None:
    # Each node its own store here (the shared store is the cluster work): the block
    # holds through the matcher, by the visit's tag, which is the same everywhere.
    one = nodes("--db", str(tmp_path / "one.sqlite3"), "--recordings-dir", str(tmp_path / "r1"))
    two = nodes("--db", str(tmp_path / "two.sqlite3"), "--recordings-dir", str(tmp_path / "r2"))
    a = await visitor(one, clients, 1, "browser-A-0123")
    b = await visitor(two, clients, 2, "browser-B-0123")
    assert a.hello["node"] != b.hello["node"]
    await a.start()
    await b.start()
    matched_a = await a.wait_for("matched", timeout=TIMEOUT)
    matched_b = await b.wait_for("matched", timeout=TIMEOUT)
    assert matched_a["pairId"] == matched_b["pairId"]
    await b.send({"type": "block"})
    assert (await b.wait_for("blocked", timeout=TIMEOUT))["pairId"] == matched_b["pairId"]
    assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "next"
    await a.start()
    await asyncio.sleep(APART)
    assert (matches(a), matches(b)) == (1, 1), "the blocked pair met again across nodes"
    c = await visitor(one, clients, 3, "browser-C-0123")
    await c.start()
    await c.wait_for("matched", timeout=TIMEOUT)
