"""rtc.offer: what an offer must hold before aiortc sees it, on real Chromium and aiortc offers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from rtc.candidate import MAX_REMOTE_CANDIDATES
from rtc.offer import OfferError, check_offer
from rtc.peer import Peer, PeerError, PeerSettings

CHROMIUM = (Path(__file__).parent / "data" / "chromium_offer.sdp").read_bytes().decode()


def without(sdp: str, pattern: str) -> str:
    return re.sub(rf"^{pattern}[^\r\n]*\r\n", "", sdp, flags=re.M)


async def aiortc_offer() -> str:
    pc = RTCPeerConnection()
    pc.addTrack(AudioStreamTrack())
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_real_offers_pass_unchanged() -> None:
    for sdp in (CHROMIUM, await aiortc_offer()):
        assert check_offer(sdp).sdp == sdp.replace("\r\n", "\n").replace("\n", "\r\n")


def test_a_missing_direction_is_the_rfc_default_sendrecv() -> None:
    checked = check_offer(without(CHROMIUM, "a=sendrecv")).sdp
    assert checked.count("a=sendrecv") == 2
    # A session-level direction is what each m-line without one inherits.
    session = without(CHROMIUM, "a=sendrecv").replace("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n")
    assert check_offer(session).sdp.count("a=recvonly") == 3


@pytest.mark.parametrize(
    ("sdp", "words"),
    [
        (CHROMIUM.replace("a=mid:1\r\n", "a=mid:0\r\n"), "same a=mid"),
        (without(CHROMIUM, "a=mid:0"), "no a=mid"),
        (CHROMIUM.replace("a=mid:0", "a=mid:" + "x" * 40), "a=mid must be"),
        (CHROMIUM.replace("a=mid:0", "a=mid:a b"), "a=mid must be"),
        (CHROMIUM.replace("BUNDLE 0 1", "BUNDLE 7 1"), "names '7'"),
        (CHROMIUM.replace("BUNDLE 0 1", "BUNDLE 0 0 1"), "mid twice"),
        (without(CHROMIUM, "a=ice-ufrag"), "no a=ice-ufrag"),
        (without(CHROMIUM, "a=ice-pwd"), "no a=ice-pwd"),
        (without(CHROMIUM, "a=fingerprint"), "no a=fingerprint"),
        (CHROMIUM.replace("sha-256", "md5"), "no a=fingerprint"),
        (without(CHROMIUM, "a=setup"), "a=setup"),
        (without(CHROMIUM, "a=rtcp-mux"), "rtcp-mux"),
        (re.sub(r"VP8/|H264/", "XYZ/", CHROMIUM), "no codec"),
        (CHROMIUM.replace("a=sendrecv", "a=sendrecv\r\na=recvonly", 1), "more than one direction"),
        (CHROMIUM.replace("m=video", "m=audio"), "exactly one audio"),
        (CHROMIUM + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n", "application"),
        (CHROMIUM.replace("m=audio 9 ", "m=audio 70000 "), "over 65535"),
        (CHROMIUM.replace("a=extmap:1 ", "a=extmap:300 "), "a=extmap"),
        (CHROMIUM.replace("a=rtpmap:96 VP8", "a=rtpmap:300 VP8"), "a=rtpmap"),
        (CHROMIUM.replace("a=ice-pwd:", "a=ice-pwd:\ufffd"), "ASCII"),
        (
            CHROMIUM.replace(
                "a=mid:0", "a=mid:0\r\na=candidate:1 1 udp 1 127.0.0.1 65536 typ host"
            ),
            "port",
        ),
        (CHROMIUM.replace("a=mid:0", "a=mid:0" + "\r\na=x" * 1000), "lines"),
        ("this is not sdp", "not an SDP line"),
        ("s=-\r\nv=0\r\n", "start with v=0"),
    ],
)
def test_offers_aiortc_chokes_on_are_refused_with_a_reason(sdp: str, words: str) -> None:
    with pytest.raises(OfferError, match=re.escape(words)):
        check_offer(sdp)


def test_candidates_in_the_offer_are_counted() -> None:
    lines = "".join(
        f"\r\na=candidate:{i} 1 udp 1 127.0.0.1 {1000 + i} typ host"
        for i in range(MAX_REMOTE_CANDIDATES + 1)
    )
    with pytest.raises(OfferError, match="at most"):
        check_offer(CHROMIUM.replace("a=mid:0", "a=mid:0" + lines))
    assert check_offer(CHROMIUM.replace("a=mid:0", "a=mid:0" + lines[: lines.rindex("\r\n")]))


async def test_refused_offers_leave_the_peer_ready_for_a_corrected_one() -> None:
    peer = Peer("p", PeerSettings(), lambda *args: None)
    for bad in (CHROMIUM.replace("a=mid:1\r\n", "a=mid:0\r\n"), without(CHROMIUM, "a=mid:0")):
        with pytest.raises(PeerError) as info:
            await peer.answer(bad)
        assert info.value.code == "bad_sdp"
        assert peer.connection is None
    assert "a=mid:0" in await peer.answer(without(CHROMIUM, "a=sendrecv"))
    await peer.close()


async def test_a_close_that_raises_still_stops_the_transports(monkeypatch) -> None:
    peer = Peer("p", PeerSettings(), lambda *args: None)
    await peer.answer(CHROMIUM)
    pc = peer.connection
    assert pc is not None
    transports = {t.receiver.transport for t in pc.getTransceivers()}

    async def broken_close() -> None:
        raise AttributeError("'NoneType' object has no attribute 'stop'")

    monkeypatch.setattr(pc, "close", broken_close)
    await peer.close()
    assert peer.connection is None
    # The ICE transports hold the UDP sockets.
    assert all(t.transport.state == "closed" for t in transports)
