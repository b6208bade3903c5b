"""Property-based fuzzing of the WebSocket protocol against the real server process.

Every client message type and field, wrong JSON types, binary frames, deep
and large JSON, lone surrogates, and offers and candidates mutated from a real
Chromium offer (tests/data) and a real aiortc one. Meanwhile a pair of real
aiortc clients, paired before the fuzzing starts, must keep receiving frames.

Each example opens a fresh WebSocket, sends its frames, then a sentinel whose
reply proves every earlier frame was handled. Hypothesis runs sync tests only,
so the examples run as coroutines on an event loop in a background thread.

`make test` runs a short deterministic pass; `make fuzz` a long random one
(FUZZ_EXAMPLES examples; 300 when unset).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtc.client import ChatClient
from tests.conftest import ARTIFACTS, RelayServer

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data"
CHROMIUM_OFFER = (DATA / "chromium_offer.sdp").read_bytes().decode()
CHROMIUM_CANDIDATES = [
    c["candidate"] for c in json.loads((DATA / "chromium_candidates.json").read_text())
]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
# `make fuzz` sets FUZZ_RANDOM=1: new random examples each run instead of the same ones.
DERANDOMIZE = os.environ.get("FUZZ_RANDOM", "") != "1"
TIMEOUT = 20.0
# Every flag of the fuzzed server in one list (the integrator adds per-IP limits here).
FUZZ_SERVER_ARGS = [
    *("--media-timeout", "3", "--interest-timeout", "2", "--rematch-after", "2"),
    # Every example opens its own WebSocket from 127.0.0.1: lift the per-address
    # limits, which tests/test_server_limits.py covers.
    *("--ip-max-sessions", "0", "--ip-max-new-sessions", "0", "--ip-max-peers", "0"),
]
# What rtc/peer.py logs when an offer passed rtc/offer.py yet aiortc could not answer it.
VALIDATION_GAP = "aiortc could not answer a checked offer"


def documented_error_codes() -> set[str]:
    """The codes in docs/protocol.md's error-code table, so docs and server stay in sync."""
    text = (ROOT.parent / "docs" / "protocol.md").read_text()
    table = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", table, re.M))


DOCUMENTED = documented_error_codes()


class LoopThread:
    """An event loop in a thread, for running coroutines from sync hypothesis tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class Fuzzing:
    def __init__(self, server: RelayServer, loop: LoopThread) -> None:
        self.server = server
        self.loop = loop
        self.sent = 0
        self.codes: dict[str, int] = {}
        self.pair: tuple[ChatClient, ChatClient] | None = None
        self.aiortc_offer = ""


@pytest.fixture(scope="module")
def fuzzing() -> Iterator[Fuzzing]:
    server = RelayServer(ARTIFACTS / "server-logs" / "test_fuzz.log", FUZZ_SERVER_ARGS)
    server.start()
    loop = LoopThread()
    fuzz = Fuzzing(server, loop)
    try:
        fuzz.aiortc_offer = loop.run(_aiortc_offer())
        fuzz.pair = loop.run(_pair(server))
        yield fuzz
    finally:
        if fuzz.pair is not None:
            loop.run(_close(fuzz.pair))
        loop.close()
        running = server.running
        server.stop()
        log = server.all_logs()
        print(f"\nfuzzed {fuzz.sent} messages; error codes: {fuzz.codes}")
        assert running, f"the server died:\n{log[-5000:]}"
        assert "Traceback" not in log, f"server logged a traceback:\n{log}"
        assert VALIDATION_GAP not in log, "an offer passed rtc/offer.py that aiortc refused"


async def _close(clients: tuple[ChatClient, ...]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def _aiortc_offer() -> str:
    pc = RTCPeerConnection()
    pc.addTrack(AudioStreamTrack())
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


async def _pair(server: RelayServer) -> tuple[ChatClient, ChatClient]:
    a, b = ChatClient(server.ws_url, tag=1), ChatClient(server.ws_url, tag=2)
    for client in (a, b):
        await client.connect()
        await client.start()
    for client in (a, b):
        await client.wait_for("matched", timeout=TIMEOUT)
    await a.wait_frames(tag=2, count=5, timeout=TIMEOUT)
    await b.wait_frames(tag=1, count=5, timeout=TIMEOUT)
    return a, b


# -- strategies -----------------------------------------------------------------

# Text with everything JSON can escape, lone surrogates included.
TEXT = st.text(st.characters(codec=None, categories=None), max_size=40) | st.sampled_from(
    ["", " ", "a\ud800b", "\udfff", "\x00", "\u2028", "😀", "x" * 2001, "x" * 501]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
TYPES = [
    "offer",
    "candidate",
    "start",
    "next",
    "stop",
    "chat",
    "typing",
    "media_state",
    "report",
    "interests",
]
FIELDS = {
    "offer": {"sdp": st.just(CHROMIUM_OFFER) | TEXT},
    "candidate": {
        "candidate": st.sampled_from(CHROMIUM_CANDIDATES) | TEXT | st.none(),
        "sdpMid": st.sampled_from(["0", "1", "7"]) | JSON,
        "sdpMLineIndex": st.integers(-2, 3) | JSON,
    },
    "start": {"interests": st.lists(TEXT, max_size=12) | JSON},
    "next": {},
    "stop": {},
    "chat": {"text": TEXT | JSON},
    "typing": {"active": st.booleans() | JSON},
    "media_state": {"camera": st.booleans() | JSON, "mic": st.booleans() | JSON},
    "report": {"reason": TEXT | JSON, "moveOn": st.booleans() | JSON},
    "interests": {"interests": st.lists(TEXT, max_size=12) | JSON},
}


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(TYPES) | TEXT)
    message: dict[str, Any] = {"type": kind}
    for name, values in FIELDS.get(kind, {}).items():
        if draw(st.integers(0, 9)):  # now and then a field is missing
            message[name] = draw(values)
    return message


NUMBER = re.compile(r"\b\d+\b")
HOSTILE_NUMBERS = ["0", "-1", "65536", "4294967296", "99999999999999999999", "x", "1e3", ""]


@st.composite
def mutated_lines(draw: st.DrawFn, lines: list[str], separator: str) -> str:
    """`lines` with a few lines dropped, duplicated, swapped, truncated or renumbered."""
    lines = list(lines)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "swap", "number", "truncate", "attr", "junk"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "number":
            numbers = list(NUMBER.finditer(lines[i]))
            if numbers:
                m = numbers[draw(st.integers(0, len(numbers) - 1))]
                new = draw(st.sampled_from(HOSTILE_NUMBERS))
                lines[i] = lines[i][: m.start()] + new + lines[i][m.end() :]
        elif op == "truncate":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "attr":
            lines[i] = lines[i].split(":", 1)[0]
        else:
            lines.insert(i, draw(TEXT))
    return separator.join(lines)


def mutated_offer(sdp: str) -> st.SearchStrategy[str]:
    lines = sdp.replace("\r\n", "\n").split("\n")
    return mutated_lines(lines, "\r\n")


def mutated_candidate(line: str) -> st.SearchStrategy[str]:
    return mutated_lines(line.split(" "), " ")


def frames(aiortc_offer: str) -> st.SearchStrategy[str | bytes]:
    offers = st.sampled_from([CHROMIUM_OFFER, aiortc_offer]).flatmap(mutated_offer)
    candidates = st.sampled_from(CHROMIUM_CANDIDATES).flatmap(mutated_candidate)
    return st.one_of(
        messages().map(json.dumps),
        offers.map(lambda sdp: json.dumps({"type": "offer", "sdp": sdp})),
        st.tuples(candidates, st.sampled_from(["0", "1"])).map(
            lambda c: json.dumps({"type": "candidate", "candidate": c[0], "sdpMid": c[1]})
        ),
        JSON.map(json.dumps),
        st.binary(max_size=64),
        st.integers(1, 5000).map(lambda n: "[" * n + "]" * n),
        st.integers(60000, 70000).map(lambda n: json.dumps({"type": "chat", "text": "x" * n})),
        # A raw text frame is UTF-8 on the wire, which cannot carry a lone surrogate.
        TEXT.map(lambda t: t.encode("utf-8", "replace").decode()),
    )


# -- the test -------------------------------------------------------------------

SENTINEL = json.dumps({"type": "media_state", "camera": True, "mic": "sentinel"})


async def _exchange(fuzz: Fuzzing, sent: list[str | bytes]) -> list[dict[str, Any]]:
    replies: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(fuzz.server.ws_url) as ws:
        assert json.loads((await ws.receive(timeout=TIMEOUT)).data)["type"] == "hello"
        for frame in sent:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
        await ws.send_str(SENTINEL)
        # Frames are handled in order: the sentinel's reply comes after all the others.
        while True:
            msg = await ws.receive(timeout=TIMEOUT)
            assert msg.type == aiohttp.WSMsgType.TEXT, (msg, sent)
            reply = json.loads(msg.data)
            replies.append(reply)
            if reply.get("field") == "mic" and reply.get("inReplyTo") == "media_state":
                return replies


@pytest.mark.timeout(1800)
# aiortc and aioice, on the loop thread, use `random` while hypothesis draws examples.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_hostile_frames_never_reach_a_traceback(fuzzing: Fuzzing) -> None:
    assert {"bad_sdp", "bad_candidate", "bad_json"} <= DOCUMENTED
    assert fuzzing.pair is not None
    a, b = fuzzing.pair
    before = (a.summary()["frames_received"], b.summary()["frames_received"])

    @settings(
        max_examples=EXAMPLES,
        derandomize=DERANDOMIZE,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.booleans(), st.lists(frames(fuzzing.aiortc_offer), min_size=1, max_size=8))
    def check(offer_first: bool, sent: list[str | bytes]) -> None:
        # After a browser's offer (no end-of-candidates) candidates reach ICE while it checks.
        if offer_first:
            sent = [json.dumps({"type": "offer", "sdp": CHROMIUM_OFFER}), *sent]
        replies = fuzzing.loop.run(_exchange(fuzzing, sent))
        fuzzing.sent += len(sent)
        assert fuzzing.server.running
        for reply in replies:
            if reply["type"] != "error":
                continue
            code = reply["code"]
            fuzzing.codes[code] = fuzzing.codes.get(code, 0) + 1
            assert code in DOCUMENTED and code != "internal", (reply, sent)

    check()
    started = time.time()
    fuzzing.loop.run(a.wait_frames(tag=2, count=10, after=started, timeout=TIMEOUT))
    fuzzing.loop.run(b.wait_frames(tag=1, count=10, after=started, timeout=TIMEOUT))
    after = (a.summary()["frames_received"], b.summary()["frames_received"])
    assert after[0] > before[0] and after[1] > before[1]
