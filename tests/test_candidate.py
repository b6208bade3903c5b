"""rtc.candidate: what a remote ICE candidate must be before aioice sees it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtc.candidate import CandidateError, check_candidate
from rtc.peer import Peer, PeerError, PeerSettings

DATA = Path(__file__).parent / "data"
CHROMIUM_CANDIDATES = [
    c["candidate"] for c in json.loads((DATA / "chromium_candidates.json").read_text())
]
CHROMIUM_OFFER = (DATA / "chromium_offer.sdp").read_bytes().decode()


@pytest.mark.parametrize(
    "line",
    [
        *CHROMIUM_CANDIDATES,
        "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host",
        "candidate:1 1 UDP 1 ::1 5000 typ host generation 0",
        "candidate:1 1 udp 1 0a1b2c3d-0000-1111-2222-333344445555.local 5000 typ host",
        "candidate:1 1 udp 1 203.0.113.7 5000 typ srflx raddr 0.0.0.0 rport 0",
        "candidate:1 1 tcp 1 203.0.113.7 9 typ host tcptype active",
        "a=candidate:1 2 udp 4294967295 10.0.0.1 65535 typ relay raddr 10.0.0.2 rport 3478",
    ],
)
def test_real_candidates_pass(line: str) -> None:
    assert check_candidate(line).startswith("1 ") or line in CHROMIUM_CANDIDATES


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("candidate:1 1 udp 1 127.0.0.1 65536 typ host", "port"),
        ("candidate:1 1 udp 1 127.0.0.1 0 typ host", "port"),
        ("candidate:1 1 udp 1 127.0.0.1 -1 typ host", "port"),
        ("candidate:1 1 udp 4294967296 127.0.0.1 5 typ host", "priority"),
        ("candidate:1 3 udp 1 127.0.0.1 5 typ host", "component"),
        ("candidate:1 1 sctp 1 127.0.0.1 5 typ host", "transport"),
        ("candidate:1 1 udp 1 example.org 5 typ host", "address"),
        ("candidate:1 1 udp 1 fe80::1%eth0 5 typ host", "scope"),
        ("candidate:1 1 udp 1 224.0.0.1 5 typ host", "unicast"),
        ("candidate:1 1 udp 1 127.0.0.1 5 typ peer", "type"),
        ("candidate:1 1 udp 1 127.0.0.1 5 typ host raddr nowhere", "raddr"),
        ("candidate:1 1 udp 1 127.0.0.1 5 typ host rport 70000", "rport"),
        ("candidate:1 1 udp 1 127.0.0.1 5 typ host generation", "pairs"),
        ("candidate:1 1 udp 1 127.0.0.1 5 typ host tcptype active", "tcptype"),
        ("candidate:1 1 udp 1 127.0.0.1 5 typ host ufrag a\ufffdb", "ASCII"),
        ("candidate:" + "x" * 40 + " 1 udp 1 127.0.0.1 5 typ host", "foundation"),
        ("candidate:garbage", "expected"),
        ("candidate:1 1 udp 1 127.0.0.1 5 typ host" + " a b" * 9, "at most"),
        ("candidate:1 1 udp 1 127.0.0.1 5 typ host" + " x" * 300, "at most 512"),
    ],
)
def test_bad_candidates_are_refused_with_a_reason(line: str, words: str) -> None:
    with pytest.raises(CandidateError, match=words):
        check_candidate(line)


async def test_a_peer_takes_at_most_50_remote_candidates() -> None:
    peer = Peer("p", PeerSettings(), lambda *args: None)
    await peer.answer(CHROMIUM_OFFER)
    try:
        # Port 65536 once killed the peer's UDP socket inside aioice.
        with pytest.raises(PeerError) as info:
            await peer.add_candidate("candidate:1 1 udp 1 127.0.0.1 65536 typ host", "0", 0)
        assert info.value.code == "bad_candidate"
        for i in range(50):
            await peer.add_candidate(f"candidate:{i} 1 udp 1 127.0.0.1 {9000 + i} typ host", "0", 0)
        with pytest.raises(PeerError, match="at most 50") as info:
            await peer.add_candidate("candidate:x 1 udp 1 127.0.0.1 8999 typ host", "0", 0)
        assert info.value.code == "bad_candidate"
    finally:
        await peer.close()
