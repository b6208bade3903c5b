"""The nudity analyzer: NudeNet's packaged model on frames the tests make themselves.

Only what the model reliably does is asserted. Negatives (black, test
patterns, stamped frames, faceless scenes, a drawn face) score far below the
threshold. The positive is tests/data/nudity-positive.png: abstract shapes
that tools/make_nudity_positive.py grew, seeded, by keeping each change the
model itself scored higher (after a VP8 round trip). No photograph is shipped.

The ``nudity`` extra is installed by ``make test``: without it these fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import av
import cv2
import numpy as np
import pytest
from moderators import moderators_file

from moderation.analyzers import StreamAnalysis
from moderation.nudity import (
    EXPOSED,
    NudityAnalyzer,
    NudityModel,
    RateLimit,
    model_path,
)
from rtc.stamp import Stamp, draw_frame
from tests.test_moderation_analyzers import face
from tests.test_moderation_server import (
    AUTH,
    SECRET,
    TIMEOUT,
    api,
    session_view,
    until,
)
from tests.visits import connected
from tests.watching import WatchingClient
from tools.make_nudity_positive import vp8_round_trip

ROOT = Path(__file__).resolve().parent.parent
POSITIVE = ROOT / "tests" / "data" / "nudity-positive.png"
WIDTH, HEIGHT = 640, 480


@pytest.fixture(scope="module")
def model() -> NudityModel:
    return NudityModel()


def positive() -> np.ndarray:
    image = cv2.imread(str(POSITIVE))
    assert image is not None, f"{POSITIVE} is missing: run python -m tools.make_nudity_positive"
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def positive_clip(path: Path) -> str:
    """The positive as a 40 s still clip at 5 fps, for a ChatClient to send (`media_file`).

    Long enough never to loop during a test (aiortc's encoder rejects timestamps
    going back); 5 fps and libvpx's realtime mode keep writing it under a second.
    """
    frame = av.VideoFrame.from_ndarray(cv2.resize(positive(), (320, 240)), format="rgb24")
    frame = frame.reformat(format="yuv420p")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libvpx", rate=5, options={"deadline": "realtime", "cpu-used": "8"}
        )
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(200):
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


def colour_bars() -> np.ndarray:
    colours = [(192, 192, 192), (192, 192, 0), (0, 192, 192), (0, 192, 0), (192, 0, 192)]
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for i, colour in enumerate(colours):
        image[:, i * WIDTH // len(colours) : (i + 1) * WIDTH // len(colours)] = colour
    return image


def street(seed: int) -> np.ndarray:
    """A faceless scene: sky, grass and random buildings."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, HEIGHT)[:, None, None]
    sky = np.array([120, 170, 235]) * (1 - y) + np.array([200, 220, 250]) * y
    image = np.asarray(sky * np.ones((HEIGHT, WIDTH, 3)), dtype=np.uint8)
    image[300:] = (70, 120, 60)
    for _ in range(12):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        x, base = int(rng.integers(0, WIDTH)), int(rng.integers(200, HEIGHT))
        top = (x + int(rng.integers(20, 120)), base - int(rng.integers(20, 200)))
        cv2.rectangle(image, (x, base), top, colour, -1)
    return image


def negatives() -> list[tuple[str, np.ndarray]]:
    return [
        ("black", np.zeros((HEIGHT, WIDTH, 3), np.uint8)),
        ("skin-toned flat", np.full((HEIGHT, WIDTH, 3), (224, 172, 140), np.uint8)),
        ("colour bars", colour_bars()),
        *((f"stamp {i}", draw_frame(Stamp(1, i * 37, i), WIDTH, HEIGHT)) for i in range(4)),
        *((f"street {i}", street(i)) for i in range(3)),
        ("drawn face", face()),
    ]


def test_the_model_ships_inside_the_wheel_and_runs_with_no_network() -> None:
    path = model_path()
    assert path.name == "320n.onnx" and path.parent.name == "nudenet"
    assert path.stat().st_size > 1_000_000
    # A process with no network at all (its own empty network namespace)
    # imports the analyzer, loads the model and scores a frame.
    script = textwrap.dedent(
        """
        import numpy as np
        from moderation.nudity import NudityModel
        print(NudityModel().score(np.zeros((240, 320, 3), np.uint8)))
        """
    )
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert 0 <= float(result.stdout) < 0.1


def test_negatives_score_far_below_the_threshold_and_never_flag(model: NudityModel) -> None:
    analyzer = NudityAnalyzer(model)
    for at, (name, image) in enumerate(negatives()):
        assert model.score(image) < analyzer.threshold / 2, name
        assert analyzer.analyze(image, float(at)) == [], name
        # Grey input, as the analyzers' protocol allows, is scored too.
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        assert analyzer.analyze(grey, float(at)) == [], name
    assert analyzer.inferences == 2 * len(negatives())


def test_the_generated_positive_is_flagged_with_the_models_score(model: NudityModel) -> None:
    image = positive()
    analysis = StreamAnalysis([NudityAnalyzer(model)])
    changes = analysis.feed(image, 0.0)
    (flag,) = changes.raised
    assert flag.name == "nudity"
    assert flag.score is not None and flag.score >= 0.5
    assert any(label.lower() in flag.detail for label in EXPOSED), flag.detail
    (best, *_) = model.detect(image, 0.5)
    assert best.label in EXPOSED and best.score == pytest.approx(flag.score)
    x, y, w, h = best.box
    assert 0 <= x < x + w <= image.shape[1] and 0 <= y < y + h <= image.shape[0]
    # Still flagged at camera size and after the codec, as the relay samples it.
    relayed = vp8_round_trip(cv2.resize(image, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR))
    assert model.score(relayed) >= 0.5


def test_the_flag_holds_through_a_miss_then_ends(model: NudityModel) -> None:
    analyzer = NudityAnalyzer(model, hold_seconds=10.0)
    black = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    assert [f.name for f in analyzer.analyze(positive(), 0.0)] == ["nudity"]
    assert [f.name for f in analyzer.analyze(black, 5.0)] == ["nudity"]
    assert analyzer.analyze(black, 10.5) == []


def test_the_rate_limit_skips_samples_over_budget_without_queueing(model: NudityModel) -> None:
    rate = RateLimit(0.001, burst=2)
    analyzers = [NudityAnalyzer(model, rate=rate) for _ in range(3)]
    image = positive()
    results = [a.analyze(image, 0.0) for a in analyzers]
    # Two inferences in the bucket: the third stream's sample is skipped, not delayed.
    assert [len(r) for r in results] == [1, 1, 0]
    assert [a.inferences for a in analyzers] == [1, 1, 0]
    assert rate.skipped == 1
    with pytest.raises(ValueError):
        RateLimit(0)


def test_bad_input_gets_a_clear_error(model: NudityModel) -> None:
    with pytest.raises(ValueError, match="uint8"):
        model.score(np.zeros((10, 10, 3), np.float32))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_without_the_extra(args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    """server.py in a process where nudenet and onnxruntime cannot be imported."""
    script = (
        "import sys; sys.modules['nudenet'] = sys.modules['onnxruntime'] = None; "
        "import server; server.main(sys.argv[1:])"
    )
    base = ["--db", str(tmp_path / "m.sqlite3"), "--recordings-dir", str(tmp_path / "rec")]
    return subprocess.Popen(
        [sys.executable, "-c", script, *base, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_without_the_extra_the_server_runs_and_asking_for_it_is_a_clear_error(
    tmp_path: Path,
) -> None:
    refused = _server_without_the_extra(["--nudity-blur", "--port", str(_free_port())], tmp_path)
    _, err = refused.communicate(timeout=60)
    assert refused.returncode != 0
    assert "--nudity" in err and "pip install 'roulette-relay[nudity]'" in err, err
    assert "Traceback" not in err, err

    port = _free_port()
    server = _server_without_the_extra(["--port", str(port)], tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "Traceback" not in err, err


# -- through the server ---------------------------------------------------------


@pytest.fixture
def relay_server_args(tmp_path: Path) -> list[str]:
    moderators = moderators_file(tmp_path, "alice", SECRET)
    return [
        "--media-timeout",
        "3",
        "--moderators-file",
        str(moderators),
        "--db",
        str(tmp_path / "moderation.sqlite3"),
        "--recordings-dir",
        str(tmp_path / "recordings"),
        "--analyzer-interval",
        "0.5",
        "--nudity-blur",
    ]


async def _post(server, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.post(server.http_url + "/api/moderate" + path) as response,
    ):
        return response.status, await response.text()


async def _watched_frames(server, session_id: str, count: int) -> int:
    """Watch one session as a moderator (rtc/watcher.py) until `count` video frames decode."""
    async with WatchingClient() as watch:
        answer = await api(
            server, "POST", "/watch", json={"sessionIds": [session_id], "sdp": await watch.offer()}
        )
        await watch.accept(answer["sdp"])

        async def enough() -> bool:
            return watch.frames >= count

        await until(enough, what=f"{count} watched frames")
        await api(server, "DELETE", f"/watch/{answer['watchId']}")
        return watch.frames


def _frames_after(client, at: float) -> int:
    """Frames the client decoded after `at` (wall-clock seconds, as ReceivedFrame keeps)."""
    return sum(1 for frame in client.frames if frame.recv_time > at)


async def _flagged_pair(server, clients, tmp_path):
    """A person sending the positive clip, paired with one sending stamped video, once the
    partner has been told the flagged person's video is hidden."""
    flagged = await connected(server, clients, 1, media_file=positive_clip(tmp_path / "p.webm"))
    partner = await connected(server, clients, 2)
    await flagged.start()
    await partner.start()
    await flagged.wait_for("matched", timeout=TIMEOUT)
    await partner.wait_for("matched", timeout=TIMEOUT)
    # (Whether a frame reaches the partner before the first sample is judged is a race.)
    hidden = await partner.wait_for("partner_hidden", timeout=TIMEOUT)
    assert hidden["reason"] == "nudity"
    return flagged, partner


async def test_a_flagged_stream_is_held_back_from_its_partner_until_a_moderator_releases_it(
    relay_server, clients, tmp_path
) -> None:
    flagged, partner = await _flagged_pair(relay_server, clients, tmp_path)
    view = await session_view(relay_server, flagged.id)
    (flag,) = [f for f in view["flags"] if f["name"] == "nudity"]
    assert flag["score"] >= 0.5
    assert view["held"]["name"] == "nudity"
    # The partner's stamped video is not a positive, and it still reaches the flagged user.
    assert "nudity" not in {
        f["name"] for f in (await session_view(relay_server, partner.id))["flags"]
    }
    await flagged.wait_frames(count=3, after=time.time(), tag=2, timeout=TIMEOUT)

    # No more video from the flagged user (a packet or two may have been in flight).
    await asyncio.sleep(0.5)
    quiet_since = time.time()
    await asyncio.sleep(1.5)
    assert _frames_after(partner, quiet_since) == 0

    # The flag files a report for the moderators' queue (sexual content, with the
    # flagged user's last seconds), marked as flagged now, so it is taken first.
    async def filed():
        found = (await api(relay_server, "GET", "/queue"))["queue"]
        return [r for r in found if r["reportedId"] == flagged.id]

    (report,) = await until(filed, what="the automatic report")
    assert report["reporterId"] == "analyzer:nudity"
    assert report["reason"].startswith("nudity (automatic: ")
    assert report["category"] == "sexual" and report["flaggedNow"] is True
    assert report["evidence"] is not None
    queue = (await api(relay_server, "GET", "/queue"))["queue"]
    assert [r["reportedId"] for r in queue] == [flagged.id]

    # A moderator watching the flagged user still sees the held video.
    assert await _watched_frames(relay_server, flagged.id, 5) >= 5

    # The hold stays on the person: their next partner is told right after `matched`.
    await partner.stop()
    await flagged.wait_for("partner_left", timeout=TIMEOUT)
    third = await connected(relay_server, clients, 3)
    await third.start()
    await flagged.start()
    await third.wait_for("matched", timeout=TIMEOUT)
    await third.wait_for("partner_hidden", timeout=TIMEOUT)
    types = [m["type"] for m in third.messages]
    assert types.index("matched") < types.index("partner_hidden"), types
    await asyncio.sleep(1.5)
    assert len(third.frames) == 0

    status, _ = await _post(relay_server, f"/sessions/{third.id}/release")
    assert status == 404  # nothing of theirs is held
    status, body = await _post(relay_server, f"/sessions/{flagged.id}/release")
    assert status == 200, body
    await third.wait_for("partner_shown", timeout=TIMEOUT)
    await third.wait_frames(count=3, timeout=TIMEOUT)
    assert (await session_view(relay_server, flagged.id))["held"] is None
    actions = [e["action"] for e in (await api(relay_server, "GET", "/audit"))["audit"]]
    assert "release" in actions


async def test_a_held_stream_is_held_from_a_partner_on_another_node_too(
    nodes, clients, tmp_path
) -> None:
    # The held publisher's fan-out skips the pipe's outgoing stream like any partner;
    # the partner's node tells its page through the cluster bus.
    moderators = moderators_file(tmp_path, "alice", SECRET)
    one = nodes(
        "--db",
        str(tmp_path / "one.sqlite3"),
        "--recordings-dir",
        str(tmp_path / "r1"),
        "--moderators-file",
        str(moderators),
        "--analyzer-interval",
        "0.5",
        "--nudity-blur",
    )
    two = nodes(
        "--db",
        str(tmp_path / "two.sqlite3"),
        "--recordings-dir",
        str(tmp_path / "r2"),
        "--moderators-file",
        str(moderators),
    )
    flagged = await connected(one, clients, 1, media_file=positive_clip(tmp_path / "p.webm"))
    partner = await connected(two, clients, 2)
    assert flagged.hello["node"] != partner.hello["node"]
    await flagged.start()
    await partner.start()
    await flagged.wait_for("matched", timeout=TIMEOUT)
    await partner.wait_for("matched", timeout=TIMEOUT)

    assert (await partner.wait_for("partner_hidden", timeout=TIMEOUT))["reason"] == "nudity"
    await asyncio.sleep(0.5)
    quiet_since = time.time()
    await asyncio.sleep(1.5)
    assert _frames_after(partner, quiet_since) == 0
    # The other way round nothing is held.
    await flagged.wait_frames(count=3, after=time.time(), tag=2, timeout=TIMEOUT)

    # Released by a moderator on node two, the node that does not hold the flagged
    # person: the request reaches node one through the moderation channel.
    status, body = await _post(two, f"/sessions/{flagged.id}/release")
    assert status == 200, body
    assert json.loads(body) == {"released": flagged.id, "node": flagged.hello["node"]}
    await partner.wait_for("partner_shown", timeout=TIMEOUT)
    await partner.wait_frames(count=3, after=time.time(), timeout=TIMEOUT)


async def test_a_held_stream_stays_held_on_the_persons_new_media_connection(
    relay_server, clients, tmp_path
) -> None:
    # A changed network, or a page that simply sends a new offer, gives the flagged
    # person a new connection: the hold is on the person, so it holds there too,
    # from the new connection's first packet (not from the next sample's flag).
    flagged, partner = await _flagged_pair(relay_server, clients, tmp_path)
    await asyncio.sleep(0.5)  # a packet or two may have been in flight

    quiet_since = time.time()
    await flagged.negotiate(keep_old=True)
    # The new connection carries the partner's video to the flagged person ...
    await flagged.wait_frames(count=10, after=time.time(), tag=2, timeout=TIMEOUT)
    await asyncio.sleep(1.5)
    # ... and nothing of the flagged person's to the partner.
    assert _frames_after(partner, quiet_since) == 0
    view = await session_view(relay_server, flagged.id)
    assert view["held"]["name"] == "nudity"
    assert [m["type"] for m in partner.messages].count("partner_shown") == 0

    status, body = await _post(relay_server, f"/sessions/{flagged.id}/release")
    assert status == 200, body
    await partner.wait_for("partner_shown", timeout=TIMEOUT)
    await partner.wait_frames(count=3, after=time.time(), timeout=TIMEOUT)
