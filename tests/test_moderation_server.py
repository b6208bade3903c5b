"""Moderation wired into the real server: access, bans, reports with evidence, recordings, flags.

The server runs in its own process (tests/conftest.py); users are real aiortc
clients (rtc.client.ChatClient) sending stamped video, so what ends up in a
file can be checked frame by frame with rtc.stamp.read_stamp.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest

from app import create_app
from config import Settings
from moderation.service import ban_message, ban_until
from moderation.store import Ban
from rtc.stamp import read_stamp
from tests.visits import connected, matched
from tests.watching import WatchingClient

TIMEOUT = 20.0
SECRET = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": aiohttp.encode_basic_auth("alice", SECRET)}
WRONG = {"Authorization": aiohttp.encode_basic_auth("alice", "wrong-secret-0123456789abcdef")}


@pytest.fixture
def relay_server_args(tmp_path: Path) -> list[str]:
    moderators = tmp_path / "moderators"
    moderators.write_text(f"# test moderators\nalice:{SECRET}\n")
    moderators.chmod(0o600)
    return [
        "--media-timeout",
        "3",
        "--moderators-file",
        str(moderators),
        # Wrong credentials are tried route by route here; the login throttle
        # has tests of its own (test_server_limits.py).
        "--login-throttle-after",
        "0",
        "--db",
        str(tmp_path / "moderation.sqlite3"),
        "--recordings-dir",
        str(tmp_path / "recordings"),
        "--analyzer-interval",
        "0.5",
        "--evidence-seconds",
        "10",
    ]


async def paired(server, clients: list):
    a = await connected(server, clients, 1)
    b = await connected(server, clients, 2)
    await matched(a, b)
    return a, b


async def api(server, method: str, path: str, **kwargs):
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.request(method, server.http_url + "/api/moderate" + path, **kwargs) as response,
    ):
        assert response.status == 200, await response.text()
        if response.content_type == "application/json":
            return await response.json()
        return await response.read()


async def until(predicate, within: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + within
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {within} s")
        await asyncio.sleep(0.2)


async def session_view(server, session_id: str) -> dict:
    sessions = (await api(server, "GET", "/sessions"))["sessions"]
    return next((s for s in sessions if s["id"] == session_id), {})


def moderator_routes() -> list[tuple[str, str]]:
    """Every (method, path) the app serves under the moderator prefixes, with ids filled in."""
    app = create_app(Settings())
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if path and path.startswith(("/moderate", "/api/moderate")) and route.method != "HEAD":
            out.append((route.method, re.sub(r"\{[^}]+\}", "x", path)))
    return out


def read_video(path: Path, track: str = "video"):
    """Decode every frame of one track; answers (codec name, seconds, stamps, times).

    ``seconds`` is the last frame's time in the file; ``times`` holds every
    frame's time, beside ``stamps``.
    """
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.metadata.get("title") == track)
        codec = stream.codec_context.name
        stamps = []
        times = []
        for frame in container.decode(stream):
            stamps.append(read_stamp(frame.to_ndarray(format="rgb24")))
            times.append(float(frame.pts * stream.time_base))
    return codec, (times[-1] if times else 0.0), stamps, times


# -- access ------------------------------------------------------------------


async def test_every_moderator_route_refuses_without_the_right_secret(relay_server) -> None:
    routes = moderator_routes()
    assert len(routes) >= 15, routes
    origin = {"Origin": relay_server.http_url}
    async with aiohttp.ClientSession() as http:
        for method, path in routes:
            url = relay_server.http_url + path
            async with http.request(method, url, headers=origin) as response:
                assert response.status == 401, (method, path)
                assert response.headers["WWW-Authenticate"].startswith("Basic")
            async with http.request(method, url, headers={**origin, **WRONG}) as response:
                assert response.status == 403, (method, path)
            # A user's WebSocket session id is no credential either.
            async with http.request(
                method, url, headers={**origin, "Authorization": "Bearer not-a-token"}
            ) as response:
                assert response.status == 403, (method, path)
        async with http.get(relay_server.http_url + "/moderate", headers=AUTH) as response:
            assert response.status == 200
            assert "moderator_token" in response.cookies
        # Recordings are only served through the guarded handler, by exact name.
        for guess in ("/static/../data/recordings/x.webm", "/recordings/x.webm"):
            async with http.get(relay_server.http_url + guess) as response:
                assert response.status == 404
    assert "Traceback" not in relay_server.log()


# -- bans ----------------------------------------------------------------------


async def test_a_ban_is_enforced_at_connect_and_survives_a_restart(relay_server, clients) -> None:
    user = await connected(relay_server, clients, 1, client_id="client-one-abcdef")
    ban = await api(
        relay_server,
        "POST",
        "/bans",
        # The default scope is the browser only; this ban asks for the address too.
        json={"sessionId": user.id, "reason": "spam", "seconds": 3600, "scope": "identity+address"},
    )
    assert ban["identity"] == "client-one-abcdef"
    assert ban["ip"] == "127.0.0.1"
    # The live session ends with the reason.
    error = await user.wait_for("error", timeout=TIMEOUT, predicate=lambda m: m["code"] == "banned")
    assert "spam" in error["message"]
    assert error["reason"] == "spam" and error["until"] == pytest.approx(ban["expiresAt"])

    for run in range(2):
        # Another client id from the same address: the ban covers the IP too.
        url = relay_server.ws_url + ("?clientId=client-one-abcdef" if run else "")
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            message = await ws.receive_json(timeout=TIMEOUT)
            assert message["type"] == "error" and message["code"] == "banned", message
            assert message["reason"] == "spam"
            assert message["until"] == pytest.approx(ban["expiresAt"])
            await ws.receive(timeout=TIMEOUT)
            assert ws.close_code == 4003
        if run == 0:
            relay_server.stop()
            relay_server.start()
    audit = (await api(relay_server, "GET", "/audit"))["audit"]
    assert any(e["action"] == "ban" and e["who"] == "alice" for e in audit)


async def raw_api(server, method: str, path: str, **kwargs) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.request(method, server.http_url + "/api/moderate" + path, **kwargs) as response,
    ):
        return response.status, await response.text()


async def test_ban_seconds_are_a_bounded_positive_number_or_permanent(relay_server) -> None:
    # NaN was stored as a permanent ban, Infinity and 1e308 killed the banned client's
    # connect with an OverflowError, true was 1 s, and the list became invalid JSON.
    body = '{"identity": "client-two-abcdef", "reason": "spam", "seconds": %s}'
    for bad in (
        "NaN",
        "Infinity",
        "-Infinity",
        "1e308",
        "true",
        "false",
        "null",
        '"3600"',
        "0",
        "-5",
        "315360001",
        "1" + "0" * 400,
        "[1]",
    ):
        status, text = await raw_api(
            relay_server,
            "POST",
            "/bans",
            data=body % bad,
            headers={"Content-Type": "application/json"},
        )
        assert status == 400 and '"permanent"' in text, (bad, status, text)
    status, text = await raw_api(
        relay_server, "POST", "/bans", json={"identity": "client-two-abcdef", "reason": "x"}
    )
    assert status == 400, text
    made = await api(
        relay_server,
        "POST",
        "/bans",
        json={"identity": "client-two-abcdef", "reason": "spam", "seconds": "permanent"},
    )
    assert made["expiresAt"] is None
    ten_years = await api(
        relay_server,
        "POST",
        "/bans",
        json={"ip": "192.0.2.9", "reason": "spam", "seconds": 315360000},
    )
    assert ten_years["expiresAt"] > time.time() + 315000000
    status, text = await raw_api(relay_server, "GET", "/bans")
    assert status == 200 and "NaN" not in text and "Infinity" not in text
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(relay_server.ws_url + "?clientId=client-two-abcdef") as ws,
    ):
        message = await ws.receive_json(timeout=TIMEOUT)
        assert message["code"] == "banned" and message["until"] is None
        assert "for good" in message["message"]


async def test_a_ban_scope_the_session_cannot_fill_is_refused_with_the_reason(
    relay_server, clients
) -> None:
    # No clientId: an identity ban would hold nothing, so it is refused, not stored empty.
    user = await connected(relay_server, clients, 1)
    for scope in ("identity", "identity+address"):
        status, text = await raw_api(
            relay_server,
            "POST",
            "/bans",
            json={"sessionId": user.id, "reason": "spam", "seconds": 3600, "scope": scope},
        )
        assert status == 400 and "sent no clientId" in text, (scope, status, text)
    assert (await api(relay_server, "GET", "/bans"))["bans"] == []
    assert user.close_code is None
    # The address scope is what such a visitor can be banned by.
    ban = await api(
        relay_server,
        "POST",
        "/bans",
        json={"sessionId": user.id, "reason": "spam", "seconds": 3600, "scope": "address"},
    )
    assert ban["ip"] == "127.0.0.1" and ban["identity"] is None


def test_bans_stored_by_older_versions_never_break_messages_or_json() -> None:
    for stored in (float("inf"), float("-inf"), float("nan"), 1e308, 1e20):
        ban = Ban(1, "someone-abcdef", None, "spam", 0.0, stored, "alice")
        message = ban_message(ban)
        assert "banned" in message
        until = ban_until(ban)
        assert until is None or math.isfinite(until)
    assert ban_until(Ban(1, None, "192.0.2.1", "r", 0.0, 1e9, "a")) == 1e9


async def test_recording_names_of_any_other_shape_are_404(relay_server) -> None:
    # %00 once reached os.lstat: a ValueError, a 500 and a traceback.
    for name in (
        "a%00.webm",
        "%00",
        "..%2F..%2Fetc%2Fpasswd",
        ".webm",
        "x" * 24 + ".webm.webm",
        "x" * 23 + ".webm",
        "x" * 24 + ".WEBM",
        "%C3%A9" * 12 + ".webm",
    ):
        status, _ = await raw_api(relay_server, "GET", f"/recordings/{name}")
        assert status == 404, name


async def test_a_kick_ends_the_session_with_the_moderators_message(relay_server, clients) -> None:
    a, b = await paired(relay_server, clients)
    await api(relay_server, "POST", f"/sessions/{b.id}/kick", json={"message": "be nice"})
    error = await b.wait_for("error", timeout=TIMEOUT, predicate=lambda m: m["code"] == "kicked")
    assert error["message"] == "be nice"
    await a.wait_for("partner_left", timeout=TIMEOUT)

    async def closed() -> bool:
        return b.close_code == 4003

    await until(closed, what="the kicked WebSocket closing")
    audit = (await api(relay_server, "GET", "/audit"))["audit"]
    assert any(e["action"] == "kick" and e["target"] == f"session:{b.id}" for e in audit)


# -- reports ---------------------------------------------------------------------


async def test_a_report_saves_evidence_from_before_it_was_made(relay_server, clients) -> None:
    a, b = await paired(relay_server, clients)
    await a.chat("hello there")
    await b.wait_for("chat", timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=60, timeout=TIMEOUT)  # b has sent 4+ s by now
    assert b._stamped_video is not None
    counter_at_report = b._stamped_video.counter
    await a.send({"type": "report", "reason": "rude"})
    reported = await a.wait_for("reported", timeout=TIMEOUT)
    assert isinstance(reported["reportId"], int)
    # By default the reporter is moved on; the reported user is told the partner left.
    await a.wait_for("waiting", timeout=TIMEOUT)
    await b.wait_for("partner_left", timeout=TIMEOUT)

    reports = (await api(relay_server, "GET", "/reports"))["reports"]
    report = next(r for r in reports if r["id"] == reported["reportId"])
    assert report["reportedId"] == b.id and report["reporterId"] == a.id
    assert [line["text"] for line in report["transcript"]] == ["hello there"]
    assert report["evidence"]
    data = await api(relay_server, "GET", f"/recordings/{report['evidence']}?download=1")
    path = Path(relay_server.log_path).parent / f"evidence-{report['id']}.webm"
    path.write_bytes(data)

    codec, seconds, stamps, _ = read_video(path, "video")
    assert codec == "vp8"
    counters = [s.counter for s in stamps if s is not None]
    assert {s.tag for s in stamps if s is not None} == {2}
    assert len(counters) >= 0.9 * len(stamps)
    assert counters == sorted(counters)
    # Frames from well before the report (b sends 15 fps).
    assert counters[0] < counter_at_report - 30, (counters[0], counter_at_report)
    assert seconds > 2
    # The reporter's side is there too, as separate tracks.
    _, _, reporter, _ = read_video(path, "reporter_video")
    assert {s.tag for s in reporter if s is not None} == {1}
    await api(relay_server, "POST", f"/reports/{report['id']}/review", json={"note": "warned"})
    audit = (await api(relay_server, "GET", "/audit"))["audit"]
    assert any(e["action"] == "download" for e in audit)
    assert any(e["action"] == "review_report" and e["who"] == "alice" for e in audit)


# -- recordings ------------------------------------------------------------------


async def test_a_recording_of_a_known_stream_reads_back_frame_by_frame(
    relay_server, clients, tmp_path
) -> None:
    a, b = await paired(relay_server, clients)
    await a.wait_frames(tag=2, count=10, timeout=TIMEOUT)
    started = await api(relay_server, "POST", "/recordings", json={"sessionIds": [b.id]})
    name = started["recording"][0]["name"]
    await a.wait_frames(tag=2, count=45, timeout=TIMEOUT)
    stopped = await api(relay_server, "POST", "/recordings/stop", json={"sessionIds": [b.id]})
    assert stopped["stopped"][0]["name"] == name
    listed = (await api(relay_server, "GET", "/recordings"))["recordings"]
    assert name in [r["name"] for r in listed]
    path = tmp_path / name
    path.write_bytes(await api(relay_server, "GET", f"/recordings/{name}"))

    codec, _, stamps, times = read_video(path)
    assert codec == "vp8"
    assert len(stamps) >= 30
    # The file plays at the sender's pace: the time between its first and last
    # stamped frames is the time between their sending. (Not the frame count
    # over 15 fps: on a busy machine the sender skips frames it is late for.)
    sent = [(t, s.send_time_ms / 1000) for t, s in zip(times, stamps, strict=True) if s is not None]
    played, elapsed = sent[-1][0] - sent[0][0], sent[-1][1] - sent[0][1]
    assert elapsed > 1.5
    assert played == pytest.approx(elapsed, abs=0.25), (played, elapsed)
    counters = [s.counter for s in stamps if s is not None]
    assert len(counters) >= 0.9 * len(stamps)
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    with av.open(str(path)) as container:
        audio = next(s for s in container.streams if s.type == "audio")
        assert audio.codec_context.name == "opus"
        assert sum(1 for _ in container.decode(audio)) > 50
    actions = [e["action"] for e in (await api(relay_server, "GET", "/audit"))["audit"]]
    assert {"record", "stop_recording", "play"} <= set(actions)


async def test_watching_and_recording_go_on_when_the_person_gets_a_new_media_connection(
    relay_server, clients, tmp_path
) -> None:
    """A changed network gives b a new media connection (the page's make-before-break);
    to moderation b is the same person: the watch feed and the recording go on."""
    a, b = await paired(relay_server, clients)
    await a.wait_frames(tag=2, count=10, timeout=TIMEOUT)
    name = (await api(relay_server, "POST", "/recordings", json={"sessionIds": [b.id]}))[
        "recording"
    ][0]["name"]
    async with WatchingClient() as watch:
        answer = await api(
            relay_server, "POST", "/watch", json={"sessionIds": [b.id], "sdp": await watch.offer()}
        )
        await watch.accept(answer["sdp"])

        async def frames_sent_after(moment: float, count: int) -> bool:
            return watch.count(tag=2, sent_after=moment) >= count

        await until(lambda: frames_sent_after(0, 10), what="b's video in the watch feed")

        await b.negotiate(keep_old=True)
        # From here on b's video leaves on the new connection only.
        replaced = time.time() + 0.1
        await a.wait_frames(tag=2, count=10, after=replaced, timeout=TIMEOUT)
        await until(
            lambda: frames_sent_after(replaced, 15), what="the new connection's video watched"
        )
        assert (await session_view(relay_server, b.id))["recording"] is True
        stopped = await api(relay_server, "POST", "/recordings/stop", json={"sessionIds": [b.id]})
        assert stopped["stopped"][0]["name"] == name
        await api(relay_server, "DELETE", f"/watch/{answer['watchId']}")

    path = tmp_path / name
    path.write_bytes(await api(relay_server, "GET", f"/recordings/{name}"))
    _, _, stamps, times = read_video(path)
    recorded = [(t, s) for t, s in zip(times, stamps, strict=True) if s is not None]
    counters = [s.counter for _, s in recorded]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    # One file across both connections, at the sender's pace throughout.
    assert sum(s.send_time_ms / 1000 > replaced for _, s in recorded) >= 10
    (t0, first), (t1, last) = recorded[0], recorded[-1]
    assert t1 - t0 == pytest.approx((last.send_time_ms - first.send_time_ms) / 1000, abs=0.5)


# -- watching --------------------------------------------------------------------


async def test_watching_a_pair_receives_both_streams_without_disturbing_them(
    relay_server, clients
) -> None:
    a, b = await paired(relay_server, clients)
    async with WatchingClient(people=2) as watch:
        answer = await api(
            relay_server,
            "POST",
            "/watch",
            json={"sessionIds": [a.id, b.id], "sdp": await watch.offer()},
        )
        await watch.accept(answer["sdp"])
        # `node` names the node holding a session; this server is in no cluster.
        for node, status, says in (
            ("elsewhere", 404, "not part of a cluster"),
            (7, 400, "node:"),
            ([None, None], 400, "node:"),
        ):
            code, text = await raw_api(
                relay_server,
                "POST",
                "/watch",
                json={"sessionIds": [a.id], "node": node, "sdp": answer["sdp"]},
            )
            assert code == status and says in text, (node, code, text)

        async def both() -> bool:
            return watch.count(tag=1) >= 10 and watch.count(tag=2) >= 10

        await until(both, what="frames of both users")
        # The pair's own streams kept flowing in order.
        before = a.summary()["frames_per_tag"].get("2", 0)

        async def pair_flows() -> bool:
            return a.summary()["frames_per_tag"].get("2", 0) >= before + 15

        await until(pair_flows, what="the pair's own frames")
        assert a.summary()["counter_regressions"] == 0
        await api(relay_server, "DELETE", f"/watch/{answer['watchId']}")
    actions = [e["action"] for e in (await api(relay_server, "GET", "/audit"))["audit"]]
    assert "watch" in actions and "stop_watching" in actions


# -- analyzers -------------------------------------------------------------------


def write_clip(path: Path, picture) -> str:
    """40 s of 320x240 video at 15 fps: `picture(i)` gives frame i (RGB).

    Long enough never to loop during a test: aiortc's encoder rejects the
    timestamps going back when MediaPlayer starts the file over.
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=15)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(600):
            frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24").reformat(
                format="yuv420p"
            )
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


def still_picture() -> np.ndarray:
    """Black and white squares on the codec's block grid.

    Flat blocks at the ends of the range decode alike at any quality the
    encoder picks, so keyframes of this still picture really are unchanged.
    """
    y, x = np.mgrid[0:240, 0:320]
    image = np.where(((x // 32) + (y // 32)) % 2 == 0, 255, 0)
    return np.repeat(image[:, :, None], 3, axis=2).astype(np.uint8)


async def test_analyzers_flag_black_and_frozen_streams_but_not_a_moving_one(
    relay_server, clients, tmp_path
) -> None:
    black_clip = write_clip(tmp_path / "black.webm", lambda i: np.zeros((240, 320, 3), np.uint8))
    still = still_picture()
    frozen_clip = write_clip(tmp_path / "frozen.webm", lambda i: still)
    black = await connected(relay_server, clients, 1, media_file=black_clip)
    frozen = await connected(relay_server, clients, 2, media_file=frozen_clip)
    moving = await connected(relay_server, clients, 3)

    async def flags(client) -> set[str]:
        return {f["name"] for f in (await session_view(relay_server, client.id)).get("flags", [])}

    async def flagged(client, name):
        return name in await flags(client)

    await until(lambda: flagged(black, "black"), what="black flag")
    # The analyzer needs 10 s of an unchanged picture.
    await until(lambda: flagged(frozen, "frozen"), within=40, what="frozen flag")
    assert "black" not in await flags(frozen)
    assert not {"black", "frozen"} & await flags(moving)
    view = await session_view(relay_server, moving.id)
    assert view["thumbnailAt"] is not None
    jpeg = await api(relay_server, "GET", f"/sessions/{moving.id}/thumbnail")
    assert jpeg[:2] == b"\xff\xd8"
    async with (
        aiohttp.ClientSession() as http,
        http.get(relay_server.metrics_url) as response,
    ):
        text = await response.text()
    assert re.search(r'relay_moderation_flags\{flag="frozen"\} [1-9]', text), text[-2000:]
