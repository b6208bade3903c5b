"""The private aiortc names the relay relies on, checked against the installed aiortc.

If an aiortc upgrade breaks any of these, this file fails first and says which.
Two real RTCPeerConnections talk over loopback; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import socket

import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.rate import RateCounter
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

from rtc import _fastpath, aiortc_seam, rtp
from rtc.media import is_keyframe
from rtc.mux import MediaMux, UdpMux


async def _connect(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)


async def _until(predicate, limit: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), limit)


@pytest.fixture
async def pair():
    sender_pc, receiver_pc = RTCPeerConnection(), RTCPeerConnection()
    yield sender_pc, receiver_pc
    await sender_pc.close()
    await receiver_pc.close()


async def test_tap_sees_encoded_frames_and_nothing_is_decoded(pair) -> None:
    sender_pc, receiver_pc = pair
    sender_pc.addTrack(VideoStreamTrack())
    sender_pc.addTrack(AudioStreamTrack())
    await sender_pc.setLocalDescription(await sender_pc.createOffer())
    await receiver_pc.setRemoteDescription(sender_pc.localDescription)

    seen: dict[str, list[tuple[RTCRtpCodecParameters, bytes, int]]] = {"audio": [], "video": []}
    taps = {}
    for transceiver in receiver_pc.getTransceivers():
        kind = transceiver.kind
        taps[kind] = aiortc_seam.tap_receiver(
            transceiver.receiver,
            lambda codec, frame, kind=kind: seen[kind].append((codec, frame.data, frame.timestamp)),
        )
    await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
    await sender_pc.setRemoteDescription(receiver_pc.localDescription)

    await _until(lambda: len(seen["video"]) >= 20 and len(seen["audio"]) >= 20)
    codec, data, _ = seen["video"][0]
    assert codec.mimeType == "video/VP8"
    assert is_keyframe(codec, data), "the first complete VP8 frame should be the stream's keyframe"
    assert not any(is_keyframe(codec, d) for _, d, _ in seen["video"][1:5])
    timestamps = [ts for _, _, ts in seen["video"]]
    assert timestamps == sorted(timestamps) and len(set(timestamps)) == len(timestamps)
    assert seen["audio"][0][0].mimeType == "audio/opus"

    # With decoding off, aiortc's decoder thread got nothing to turn into frames.
    for transceiver in receiver_pc.getTransceivers():
        assert transceiver.receiver.track._queue.qsize() == 0
        assert taps[transceiver.kind].qsize() == 0

    # Turning decoding on feeds the decoder thread, which yields real frames.
    video_receiver = next(t.receiver for t in receiver_pc.getTransceivers() if t.kind == "video")
    taps["video"].decode = True
    frame = await asyncio.wait_for(video_receiver.track.recv(), 10)
    assert (frame.width, frame.height) == (640, 480)


async def test_pli_reaches_the_sender_and_keyframe_requests_can_be_caught(pair) -> None:
    sender_pc, receiver_pc = pair
    sender = sender_pc.addTrack(VideoStreamTrack())
    requests: list[int] = []
    original = aiortc_seam.on_keyframe_request(sender, lambda: requests.append(1))
    assert callable(original)

    await sender_pc.setLocalDescription(await sender_pc.createOffer())
    await receiver_pc.setRemoteDescription(sender_pc.localDescription)
    receiver = receiver_pc.getTransceivers()[0].receiver
    frames: list[int] = []
    aiortc_seam.tap_receiver(receiver, lambda codec, frame: frames.append(frame.timestamp))
    await receiver_pc.setLocalDescription(await receiver_pc.createAnswer())
    await sender_pc.setRemoteDescription(receiver_pc.localDescription)
    await _until(lambda: len(frames) >= 5)

    assert aiortc_seam.media_ssrcs(receiver) == [sender._ssrc]
    assert await aiortc_seam.send_pli(receiver) == 1
    await _until(lambda: len(requests) >= 1)


async def test_negotiated_codec_follows_the_offer(pair) -> None:
    sender_pc, receiver_pc = pair
    sender_pc.addTrack(VideoStreamTrack())
    await _connect(sender_pc, receiver_pc)
    codec = aiortc_seam.negotiated_codec(receiver_pc.getTransceivers()[0])
    assert codec is not None and codec.mimeType == "video/VP8" and codec.clockRate == 90000


async def test_tapping_a_started_receiver_is_refused(pair) -> None:
    sender_pc, receiver_pc = pair
    sender_pc.addTrack(VideoStreamTrack())
    await _connect(sender_pc, receiver_pc)
    receiver = receiver_pc.getTransceivers()[0].receiver
    await _until(lambda: receiver_pc.connectionState == "connected")
    await _until(lambda: getattr(receiver, aiortc_seam._DECODER_THREAD) is not None)
    with pytest.raises(aiortc_seam.SeamError):
        aiortc_seam.tap_receiver(receiver, lambda codec, frame: None)


def test_missing_private_name_is_reported_clearly() -> None:
    class NotAReceiver:
        pass

    with pytest.raises(aiortc_seam.SeamError, match="aiortc changed"):
        aiortc_seam.media_ssrcs(NotAReceiver())  # type: ignore[arg-type]


def _packet(seq: int, timestamp: int, data: bytes, marker: bool = False):
    from aiortc.rtp import RtpPacket

    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=timestamp)
    packet.marker = int(marker)
    packet._data = data  # what aiortc's depayloader leaves on each packet
    return packet


def test_video_frames_leave_on_their_marker_bit() -> None:
    buffer = aiortc_seam.PromptJitterBuffer(capacity=128, is_video=True)
    assert buffer.add(_packet(100, 3000, b"a")) == (False, None)
    _, frame = buffer.add(_packet(101, 3000, b"b", marker=True))
    # Released now, not when the next frame's first packet arrives.
    assert frame is not None and (frame.data, frame.timestamp) == (b"ab", 3000)
    # A hole holds the frame back until the missing packet arrives.
    assert buffer.add(_packet(103, 6000, b"d", marker=True))[1] is None
    _, frame = buffer.add(_packet(102, 6000, b"c"))
    assert frame is not None and frame.data == b"cd"


def test_a_frame_without_marker_still_leaves_when_the_next_begins() -> None:
    buffer = aiortc_seam.PromptJitterBuffer(capacity=128, is_video=True)
    buffer.add(_packet(1, 100, b"x"))
    _, frame = buffer.add(_packet(2, 200, b"y"))
    assert frame is not None and (frame.data, frame.timestamp) == (b"x", 100)


def test_audio_packets_are_frames_by_themselves() -> None:
    buffer = aiortc_seam.PromptJitterBuffer(capacity=16, is_video=False)
    for seq in range(5):
        _, frame = buffer.add(_packet(seq, seq * 960, bytes([seq])))
        assert frame is not None and frame.data == bytes([seq])


async def test_tap_installs_the_prompt_jitter_buffer(pair) -> None:
    sender_pc, receiver_pc = pair
    sender_pc.addTrack(VideoStreamTrack())
    await sender_pc.setLocalDescription(await sender_pc.createOffer())
    await receiver_pc.setRemoteDescription(sender_pc.localDescription)
    receiver = receiver_pc.getTransceivers()[0].receiver
    aiortc_seam.tap_receiver(receiver, lambda codec, frame: None)
    assert isinstance(getattr(receiver, aiortc_seam._JITTER_BUFFER), aiortc_seam.PromptJitterBuffer)

    # And a bitrate estimator that leaves no object per millisecond to the collector.
    estimator = getattr(receiver, aiortc_seam._BITRATE_ESTIMATOR)
    assert isinstance(estimator.incoming_bitrate, aiortc_seam.CompactRateCounter)


def test_the_compact_rate_counter_measures_what_aiortcs_does() -> None:
    """Same packets at the same times, bursts, gaps and a reset: the same rates."""
    ours, theirs = aiortc_seam.CompactRateCounter(1000, 8000), RateCounter(1000, 8000)
    rng = random.Random(14)
    now = 1_000
    measured = 0
    for step in range(20_000):
        now += rng.choice((0, 0, 1, 3, 7)) + (2_500 if step % 5_000 == 4_999 else 0)
        size = rng.randint(50, 1_200)
        assert ours.rate(now) == theirs.rate(now), step
        measured += ours.rate(now) is not None
        if ours.rate(now) is None and step % 7 == 0:
            ours.reset()
            theirs.reset()
        ours.add(size, now)
        theirs.add(size, now)
    assert measured > 15_000  # the comparison was mostly between real rates
    # Three objects for the collector (two arrays and the total), where aiortc's has 1002.
    assert sum(1 for v in vars(ours).values() if gc.is_tracked(v)) == 3
    assert sum(1 for v in theirs._buckets if gc.is_tracked(v)) == 1000


# -- packet-level forwarding -------------------------------------------------


class _Silent(MediaStreamTrack):
    """A send track with nothing to say: PacketSender sends what it is given instead."""

    kind = "video"

    async def recv(self):  # type: ignore[no-untyped-def]
        await asyncio.Event().wait()


async def _answer_and_take_packets(
    publisher: RTCPeerConnection, server_in: RTCPeerConnection
) -> tuple[RTCRtpReceiver, list[rtp.RtpView]]:
    """The server answers the publisher's offer and takes its packets (receive_packets):
    the receiver, and the views handed over, as they arrive."""
    await publisher.setLocalDescription(await publisher.createOffer())
    await server_in.setRemoteDescription(publisher.localDescription)
    receiver = server_in.getTransceivers()[0].receiver
    await server_in.setLocalDescription(await server_in.createAnswer())
    views: list[rtp.RtpView] = []
    aiortc_seam.receive_packets(receiver, lambda codec, view: views.append(view))
    return receiver, views


async def test_packets_forwarded_through_the_seam_decode_at_the_far_end(packet_path_mode) -> None:
    """Browser A -> server (receive_packets) -> server (PacketSender) -> browser B, all real,
    through each packet path."""
    a, server_in = RTCPeerConnection(), RTCPeerConnection()
    server_out, b = RTCPeerConnection(), RTCPeerConnection()
    try:
        a.addTrack(VideoStreamTrack())
        receiver, views = await _answer_and_take_packets(a, server_in)

        sender = server_out.addTrack(_Silent())
        packets = aiortc_seam.PacketSender(sender)
        await _connect(server_out, b)
        await a.setRemoteDescription(server_in.localDescription)

        await _until(lambda: packets.ready and len(views) >= 30)
        # The path asked for is the one that runs, both ways.
        native = packet_path_mode == "native"
        inbound = receiver.transport.__dict__["relay_inbound"]
        # (natively: rtc/native/inbound.c decrypts, with the connection's keys)
        assert (inbound._inbound is not None and inbound._inbound.srtp is not None) == native
        # (natively, reading aioice's socket itself: every datagram waiting per wake-up)
        assert (inbound._inbound is not None and inbound._inbound.drained >= 30) == native
        assert (packets._native_tx is not None) == native
        # Decrypted, parsed, in order, VP8 from the start.
        first = views[0]
        codecs = receiver._RTCRtpReceiver__codecs  # type: ignore[attr-defined]
        assert codecs[first.payload_type].mimeType == "video/VP8"
        assert [v.sequence_number for v in views[:30]] == [
            (first.sequence_number + i) & 0xFFFF for i in range(30)
        ]
        # aiortc's receiver still counts what arrives (its receiver reports come from this).
        stats = await receiver.getStats()
        inbound = [s for s in stats.values() if s.type == "inbound-rtp"]
        assert inbound and inbound[0].packetsReceived >= 30
        # (natively, from the C stream that stands in for aiortc's StreamStatistics)
        remote = getattr(receiver, aiortc_seam._REMOTE_STREAMS)
        assert {type(s).__name__ for s in remote.values()} == (
            {"Stream"} if native else {"StreamStatistics"}
        )
        # ...and decodes nothing.
        assert receiver.track._queue.qsize() == 0  # type: ignore[attr-defined]

        # Forward from the first keyframe on, renumbered for the other connection.
        start = next(i for i, v in enumerate(views) if rtp.starts_keyframe("VP8", v.payload))
        offset = packets.sequence_number - views[start].sequence_number
        forwarded = 0

        def forward(view: rtp.RtpView) -> None:
            nonlocal forwarded
            packets.send(
                view.payload, view.marker, view.timestamp, (view.sequence_number + offset) & 0xFFFF
            )
            forwarded += 1

        for view in views[start:]:
            forward(view)
        # B is a plain aiortc peer: it decodes what arrives.
        receiver_b = b.getTransceivers()[0].receiver
        # Keep forwarding live packets until B shows a picture.
        done = len(views)

        async def pump() -> None:
            nonlocal done
            while True:
                for view in views[done:]:
                    forward(view)
                done = len(views)
                await asyncio.sleep(0.01)

        pumping = asyncio.create_task(pump())
        try:
            frame = await asyncio.wait_for(receiver_b.track.recv(), 10)
        finally:
            pumping.cancel()
        assert (frame.width, frame.height) == (640, 480)
        # The native path sent them itself (one sendto(2) per packet from C).
        assert (packets._destination is not None) == native
        # aiortc's sender reports count the forwarded packets, and so does
        # PacketSender itself (what /metrics reads, without awaiting getStats()).
        out_stats = [s for s in (await sender.getStats()).values() if s.type == "outbound-rtp"]
        assert out_stats[0].packetsSent == packets.packets == forwarded
        assert out_stats[0].bytesSent == packets.bytes > 0
        # Anyone on the network may spray the media port: what does not
        # decrypt is counted and dropped, and the stream goes on.
        inbound = receiver.transport.__dict__["relay_inbound"]
        pair = receiver.transport.transport._connection._nominated[1]  # type: ignore[attr-defined]
        address = pair.protocol.transport.get_extra_info("sockname")[:2]
        spray = socket.socket(
            socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_DGRAM
        )
        try:
            for size in range(12, 212):
                spray.sendto(bytes([0x80, 96]) + os.urandom(size), address)
        finally:
            spray.close()
        before = len(views)
        await _until(lambda: inbound.unreadable >= 150 and len(views) > before + 30)
        # A NACK for a recent packet is answered from the history.
        await sender._retransmit((packets.sequence_number - 1) & 0xFFFF)
        assert packets.retransmitted == 1
        await sender._retransmit((packets.sequence_number + 1000) & 0xFFFF)  # never sent
        assert packets.retransmitted == 1
    finally:
        for pc in (a, server_in, server_out, b):
            await pc.close()


async def test_a_lost_packet_is_nacked_and_resent_and_reports_count_the_loss(
    packet_path_mode,
) -> None:
    """The network loses one of the publisher's packets on its way to the server: the
    server NACKs it, the publisher's aiortc resends it over RTX and the server's handler
    gets the original back; the receiver reports that reach the publisher say how far the
    stream got and that one packet is lost from it (the resend counts on the RTX SSRC)."""
    a, server_in = RTCPeerConnection(), RTCPeerConnection()
    try:
        sender = a.addTrack(VideoStreamTrack())
        receiver, views = await _answer_and_take_packets(a, server_in)
        transceiver = server_in.getTransceivers()[0]
        media = aiortc_seam.negotiated_codec(transceiver)
        assert media is not None and media.mimeType == "video/VP8"
        media_pt = media.payloadType
        assert any(c.mimeType == "video/rtx" for c in transceiver._codecs)  # type: ignore[attr-defined]

        # The lossy network: one media packet A sends never arrives (A keeps it in its
        # history as sent, as when a router drops it).
        lost: list[int] = []
        send_rtp = sender.transport._send_rtp

        async def lossy(data: bytes) -> None:
            if data[1] & 0x7F == media_pt and len(views) >= 40 and not lost:
                lost.append(int.from_bytes(data[2:4], "big"))
                return
            await send_rtp(data)

        sender.transport._send_rtp = lossy  # type: ignore[method-assign]
        reports: list[object] = []
        handle_rtcp = sender._handle_rtcp_packet

        async def record_rtcp(packet):  # type: ignore[no-untyped-def]
            reports.extend(getattr(packet, "reports", ()))
            await handle_rtcp(packet)

        sender._handle_rtcp_packet = record_rtcp  # type: ignore[method-assign]
        await a.setRemoteDescription(server_in.localDescription)

        def resent() -> bool:
            return bool(lost) and any(v.sequence_number == lost[0] for v in views)

        await _until(resent)
        index = next(i for i, v in enumerate(views) if v.sequence_number == lost[0])
        resend = views[index]
        # It came back late (after later packets), whole, as the original stream's packet.
        assert any(v.sequence_number == (lost[0] + 1) & 0xFFFF for v in views[:index])
        assert resend.payload_type == media_pt and len(resend.payload) > 0
        assert [v.ssrc for v in views] == [sender._ssrc] * len(views)

        def reported() -> bool:
            return any(
                r.ssrc == sender._ssrc and r.packets_lost == 1 and r.highest_sequence > lost[0]
                for r in reports  # type: ignore[attr-defined]
            )

        await _until(reported)
        report = next(r for r in reversed(reports) if r.ssrc == sender._ssrc)  # type: ignore[attr-defined]
        seen = {v.sequence_number for v in views}
        assert report.highest_sequence in seen  # type: ignore[attr-defined]
        assert report.packets_lost == 1  # type: ignore[attr-defined]
        # (natively, the report is read from the C stream that stands in for aiortc's)
        remote = getattr(receiver, aiortc_seam._REMOTE_STREAMS)[sender._ssrc]
        assert (type(remote).__name__ == "Stream") == (packet_path_mode == "native")
    finally:
        for pc in (a, server_in):
            await pc.close()


async def test_the_server_still_sends_remb_to_the_browser(packet_path_mode) -> None:
    """aiortc's receive-side bandwidth estimate (in C on the native path) reaches the
    sending browser as RTCP REMB, for its video; audio has no estimator, as in aiortc."""
    a, server = RTCPeerConnection(), RTCPeerConnection()
    try:
        video_sender = a.addTrack(VideoStreamTrack())
        a.addTrack(AudioStreamTrack())
        rembs: list[tuple[int, list[int]]] = []
        handle = video_sender._handle_rtcp_packet

        async def observe(packet) -> None:  # type: ignore[no-untyped-def]
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                rembs.append(unpack_remb_fci(packet.fci))
            await handle(packet)

        video_sender._handle_rtcp_packet = observe  # type: ignore[method-assign]
        await a.setLocalDescription(await a.createOffer())
        await server.setRemoteDescription(a.localDescription)
        await server.setLocalDescription(await server.createAnswer())
        receivers = {t.kind: t.receiver for t in server.getTransceivers()}
        views: list[rtp.RtpView] = []
        for receiver in receivers.values():
            aiortc_seam.receive_packets(receiver, lambda codec, view: views.append(view))
        await a.setRemoteDescription(server.localDescription)

        # aiortc's estimator measures for 3 s before its first estimate.
        started = asyncio.get_running_loop().time()
        await _until(lambda: len(rembs) >= 2, limit=15)
        bitrate, ssrcs = rembs[-1]
        assert video_sender._ssrc in ssrcs  # type: ignore[attr-defined]
        # Near what A sends (aiortc's VP8 of a green picture: a few tens of kbit/s).
        stats = await video_sender.getStats()
        sent = next(s for s in stats.values() if s.type == "outbound-rtp").bytesSent
        sending = sent * 8 / (asyncio.get_running_loop().time() - started)
        assert sending / 3 < bitrate < 3 * sending + 20_000, (bitrate, sending)

        # Natively the estimate is made in C (rtc/native/inbound.c through remb.c), one
        # estimator per video receiver as aiortc has, shared by its media and RTX streams.
        inbound = receivers["video"].transport.__dict__["relay_inbound"]
        assert (inbound._inbound is not None) == (packet_path_mode == "native")
    finally:
        await a.close()
        await server.close()


def test_packet_path_names_are_checked() -> None:
    class NotASender:
        pass

    with pytest.raises(aiortc_seam.SeamError, match="_run_rtp"):
        aiortc_seam.PacketSender(NotASender())  # type: ignore[arg-type]


async def test_a_connection_on_the_media_mux_gathers_receives_and_lets_go() -> None:
    """use_media_mux: the ICE connection's only candidate is the shared socket's, packets
    reach receive_packets through it, and closing leaves the socket as it was."""
    host = aiortc_seam.interface_addresses()[0]
    media = MediaMux([UdpMux.open(host, 0)])
    socket_port = media.udp[0].port
    a, server = RTCPeerConnection(), RTCPeerConnection()
    try:
        a.addTrack(VideoStreamTrack())
        await a.setLocalDescription(await a.createOffer())
        await server.setRemoteDescription(a.localDescription)
        aiortc_seam.use_media_mux(server, media)
        await server.setLocalDescription(await server.createAnswer())
        views: list[rtp.RtpView] = []
        receiver = server.getTransceivers()[0].receiver
        aiortc_seam.receive_packets(receiver, lambda codec, view: views.append(view))
        candidates = [
            line for line in server.localDescription.sdp.splitlines() if "a=candidate" in line
        ]
        assert len(candidates) == 1 and f" {host} {socket_port} typ host" in candidates[0]
        await a.setRemoteDescription(server.localDescription)
        await _until(lambda: len(views) >= 30)
        assert media.stats()["connections"] == 1
        assert 1 <= media.stats()["remembered"] <= 4
        pair = receiver.transport.transport._connection._nominated[1]  # type: ignore[attr-defined]
        assert pair.protocol.transport is media.udp[0]
    finally:
        await server.close()
        await a.close()
    assert media.stats()["connections"] == 0 and media.stats()["remembered"] == 0
    assert not media.udp[0].is_closing()
    media.close()


def test_media_mux_names_are_checked() -> None:
    class NotAConnection:
        pass

    class Transport:
        _connection = NotAConnection()

    class Dtls:
        transport = Transport()

    class Receiver:
        transport = Dtls()

    class Transceiver:
        receiver = Receiver()

    class Pc:
        def getTransceivers(self) -> list[Transceiver]:
            return [Transceiver()]

    media = MediaMux([])
    with pytest.raises(aiortc_seam.SeamError, match="get_component_candidates"):
        aiortc_seam.use_media_mux(Pc(), media)  # type: ignore[arg-type]


async def test_a_mux_socket_announced_at_other_addresses_offers_each() -> None:
    """Behind a 1:1 NAT the socket is offered at the public address (and the local one)."""
    host = aiortc_seam.interface_addresses()[0]
    announced = "203.0.113.7" if ":" not in host else "2001:db8::7"
    media = MediaMux([UdpMux.open(host, 0, (announced, host))])
    a, server = RTCPeerConnection(), RTCPeerConnection()
    try:
        a.addTrack(VideoStreamTrack())
        await a.setLocalDescription(await a.createOffer())
        await server.setRemoteDescription(a.localDescription)
        aiortc_seam.use_media_mux(server, media)
        await server.setLocalDescription(await server.createAnswer())
        candidates = [
            line.split()[4:6]
            for line in server.localDescription.sdp.splitlines()
            if line.startswith("a=candidate")
        ]
        port = str(media.udp[0].port)
        assert candidates == [[announced, port], [host, port]]
    finally:
        await server.close()
        await a.close()
        media.close()


# -- ICE: which addresses the server offers, and which pair media took -----------


async def test_offer_addresses_gathers_on_the_chosen_address_and_announces_another() -> None:
    from aiortc import RTCConfiguration

    from rtc.host_addresses import default_route_address

    local = default_route_address(4) or aiortc_seam.interface_addresses()[0]
    announced = "203.0.113.9"
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        offerer.addTrack(AudioStreamTrack())
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        aiortc_seam.offer_addresses(answerer, [local], lambda address: [announced, address])
        await answerer.setLocalDescription(await answerer.createAnswer())
        candidates = [
            line.split()
            for line in answerer.localDescription.sdp.splitlines()
            if line.startswith("a=candidate:")
        ]
        # One socket on the chosen address, offered as itself and as the announced one.
        assert {(c[4], c[7]) for c in candidates} == {(announced, "host"), (local, "host")}
        assert len({c[5] for c in candidates}) == 1
        with pytest.raises(aiortc_seam.SeamError):
            aiortc_seam.offer_addresses(answerer, [local], lambda address: [address])
        await offerer.setRemoteDescription(answerer.localDescription)
        await _until(lambda: answerer.connectionState == "connected")
        # The announced address does not exist here: the local one carried the checks.
        pair = aiortc_seam.selected_pair(answerer)
        assert pair is not None
        assert (pair[0].type, pair[0].host) == ("host", local)
    finally:
        await offerer.close()
        await answerer.close()


async def test_srtp_key_material_matches_the_sessions_aiortc_built(pair) -> None:
    """srtp_key_material re-derives aiortc's SRTP keys (its `_setup_srtp` keeps them private):
    native contexts made from them read what aiortc's sessions wrote, both ways, on the
    profile aiortc negotiated (AES-256-GCM between two aiortc peers, as with Chromium)."""
    sender_pc, receiver_pc = pair
    sender_pc.addTrack(VideoStreamTrack())
    await _connect(sender_pc, receiver_pc)
    ours = sender_pc.getTransceivers()[0].sender.transport
    theirs = receiver_pc.getTransceivers()[0].receiver.transport
    await _until(lambda: ours._tx_srtp is not None and theirs._rx_srtp is not None)
    mine = aiortc_seam.srtp_key_material(ours)
    remote = aiortc_seam.srtp_key_material(theirs)
    assert mine is not None and remote is not None
    profile, tx, rx = mine
    assert profile == _fastpath.PROFILE_AEAD_AES_256_GCM
    assert (tx, rx) == (remote[2], remote[1]), "one side's sending key is the other's receiving key"
    plain = bytes([0x80, 96, 0, 7]) + bytes(4) + (4321).to_bytes(4, "big") + b"payload" * 20
    native_rx = _fastpath.SrtpContext(profile, rx, False)
    native_tx = _fastpath.SrtpContext(profile, tx, True)
    # aiortc's receiving session on the other side is the check, not a copy of ours.
    assert theirs._rx_srtp.unprotect(native_tx.protect(plain)) == plain
    assert native_rx.unprotect(theirs._tx_srtp.protect(plain)) == plain


def test_srtp_key_material_names_are_checked() -> None:
    class NotATransport:
        _rx_srtp = object()

    with pytest.raises(aiortc_seam.SeamError, match="_ssl"):
        aiortc_seam.srtp_key_material(NotATransport())  # type: ignore[arg-type]


def test_a_native_stream_carries_on_the_counts_of_the_statistics_it_replaces() -> None:
    """Packets aiortc counted before the native path took over are not forgotten: the
    C Stream that replaces a StreamStatistics starts from its state (the same names)."""
    from aiortc.rtcrtpreceiver import StreamStatistics

    theirs = StreamStatistics(90000)
    for seq in (65530, 65531, 65533, 2, 1, 5):
        theirs.add(rtp.RtpView(1, 96, seq, seq * 3000, False, b"x"))  # type: ignore[arg-type]
    theirs.fraction_lost  # noqa: B018 (a report was sent: the interval restarts)
    ours = _fastpath.Stream(_fastpath.Receiver(lambda codec, view: None), 1, 90000, None)
    for name in aiortc_seam._STREAM_STATISTICS_FIELDS:
        setattr(ours, name, getattr(theirs, name))
    for seq in (6, 9, 8):
        view = rtp.RtpView(1, 96, seq, seq * 3000, False, b"x")
        theirs.add(view)  # type: ignore[arg-type]
        ours.add(view)
    for name in ("packets_received", "packets_expected", "packets_lost", "fraction_lost"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert (ours.max_seq, ours.cycles, ours.base_seq) == (9, 1 << 16, 65530)


async def _close_ice_while_connecting() -> None:
    """aiortc's connect task finds its ICE transport closed: what a refused visitor causes."""
    offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
    try:
        offerer.addTransceiver("video")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        # This schedules aiortc's connect task; it has not run yet when the ICE
        # transport closes under it.
        await answerer.setLocalDescription(await answerer.createAnswer())
        await answerer.getTransceivers()[0].receiver.transport.transport.stop()
        await asyncio.sleep(0.1)
    finally:
        await offerer.close()
        await answerer.close()
    gc.collect()  # the unretrieved task's exception is reported when it is collected
    await asyncio.sleep(0)


async def test_a_connection_closed_while_connecting_logs_no_traceback() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict] = []
    loop.set_exception_handler(lambda loop, context: reported.append(context))
    try:
        # Without the seam's handler, aiortc's task reports an unretrieved exception ...
        await _close_ice_while_connecting()
        assert [type(c.get("exception")).__name__ for c in reported] == ["InvalidStateError"]
        assert "__connect" in repr(reported[0]["future"])
        reported.clear()
        restore = aiortc_seam.quiet_connect_after_close(loop)
        # ... with it, nothing reaches the handler that logs tracebacks,
        await _close_ice_while_connecting()
        assert reported == []

        # ... while any other task's unretrieved exception still does.
        async def fails() -> None:
            raise ValueError("not aiortc's")

        task = asyncio.ensure_future(fails())
        await asyncio.sleep(0)
        del task
        gc.collect()
        assert [type(c.get("exception")) for c in reported] == [ValueError]
        restore()
        assert loop.get_exception_handler() is not None  # the test's own, put back
    finally:
        loop.set_exception_handler(None)
