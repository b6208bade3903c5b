"""The pipe between nodes: two PipeEndpoints on loopback in one process.

The end-to-end tests run the whole chain with real parts: a headless aiortc
client sends stamped video to a server-side Peer on "node X", whose
publishers are piped to "node Y", where the PipePublishers feed another Peer's
subscribers, and a second aiortc client decodes what arrives and reads the
stamps. The other tests push packets into a Publisher on a real aiortc
receiver the way the seam hands them over.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack

from rtc.client import StampedVideoTrack, ToneAudioTrack
from rtc.media import EncodedFrame
from rtc.peer import KINDS, Peer, PeerSettings
from rtc.pipe import (
    HEADER_SIZE,
    MESSAGE_HEADER_SIZE,
    TAG_SIZE,
    MessageType,
    PipeEndpoint,
    ReplayWindow,
)
from rtc.publisher import Publisher
from rtc.rtp import RtpView
from rtc.stamp import Stamp, luma, read_stamp
from tests.test_subscriber import VP8, vp8_packets

SECRET = b"a cluster secret of some length"


async def until(predicate: Callable[[], object], limit: float = 20.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), limit)


@pytest.fixture
async def endpoints(
    request: pytest.FixtureRequest, packet_path_mode: str
) -> AsyncIterator[tuple[PipeEndpoint, ...]]:
    """Node X's and node Y's endpoints (and a third, another node with the same secret),
    on each packet path (the native one reads with rtc/native/pipe_in.c and sends with
    rtc/native/pipe_out.c)."""
    encrypt = getattr(request, "param", False)
    made = [PipeEndpoint(SECRET, encrypt=encrypt) for _ in range(3)]
    for endpoint in made:
        await endpoint.start()
    yield tuple(made)
    for endpoint in made:
        await endpoint.close()


@pytest.fixture
async def publisher(packet_path_mode: str) -> AsyncIterator[Publisher]:
    """A video Publisher on the receiver of a real peer connection, as the server builds it."""
    browser, server = RTCPeerConnection(), RTCPeerConnection()
    browser.addTrack(VideoStreamTrack())
    await browser.setLocalDescription(await browser.createOffer())
    await server.setRemoteDescription(browser.localDescription)
    made = Publisher("x", "video", server.getTransceivers()[0].receiver, keyframe_interval=0.0)
    yield made
    await made.close()
    await browser.close()
    await server.close()


def capture_datagrams(endpoint: PipeEndpoint) -> tuple[list[bytes], Callable[..., None]]:
    """Every datagram `endpoint` sends, as it leaves (still sent); and the original send."""
    captured: list[bytes] = []
    original = endpoint._sendto

    def capture(data: bytes, to: Any) -> None:
        captured.append(data)
        original(data, to)

    endpoint._sendto = capture  # type: ignore[method-assign]
    return captured, original


class Arrivals:
    """A sink that keeps every packet a source hands on."""

    def __init__(self) -> None:
        self.views: list[RtpView] = []

    def push_packet(self, codec: Any, view: RtpView, keyframe: bool) -> None:
        self.views.append(view)

    def detach(self) -> None:
        pass


def push_frames(publisher: Publisher, count: int, start: int = 0) -> None:
    """`count` VP8 frames of three packets each, the first a keyframe, as the seam delivers them."""
    for index in range(start, start + count):
        for view in vp8_packets(index, 3 * index, 3000 * index, key=index == start):
            publisher._on_packet(VP8, view)


class Client:
    """A headless browser: stamped video and a tone up, decoded stamps down."""

    def __init__(self, tag: int) -> None:
        self.pc = RTCPeerConnection()
        self.pc.addTrack(ToneAudioTrack(440.0))
        self.pc.addTrack(StampedVideoTrack(tag, 320, 240, 15))
        self.stamps: list[Stamp] = []
        self.audio_frames = 0
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "audio":
                self.audio_frames += 1
                continue
            stamp = read_stamp(luma(frame))
            if stamp is not None:
                self.stamps.append(stamp)

    def tags_seen(self) -> list[int]:
        """The sender tags in the order they were seen, repeats collapsed."""
        tags: list[int] = []
        for stamp in self.stamps:
            if not tags or tags[-1] != stamp.tag:
                tags.append(stamp.tag)
        return tags

    async def connect(self, peer: Peer) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer = await peer.answer(self.pc.localDescription.sdp)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.mark.parametrize("endpoints", [False, True], ids=["hmac", "aead"], indirect=True)
async def test_a_partner_on_another_node_is_seen_and_the_stream_stays_continuous(
    packet_path_mode: str, endpoints: tuple[PipeEndpoint, ...]
) -> None:
    node_x, node_y, _ = endpoints
    settings = PeerSettings(keyframe_interval=0.2)
    peer_a = Peer("a", settings, lambda *_: None)
    peer_b = Peer("b", settings, lambda *_: None)
    client_a, client_b = Client(tag=1), Client(tag=2)
    try:
        await client_a.connect(peer_a)
        await client_b.connect(peer_b)
        # What b's browser receives: (payload type, sequence number, timestamp).
        received: list[tuple[int, int, int]] = []
        receiver = next(t.receiver for t in client_b.pc.getTransceivers() if t.kind == "video")
        original_handle = receiver._handle_rtp_packet  # type: ignore[attr-defined]

        async def recording_handle(packet: Any, arrival_time_ms: int) -> None:
            received.append((packet.payload_type, packet.sequence_number, packet.timestamp))
            await original_handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = recording_handle  # type: ignore[attr-defined]

        # Node X sends a's streams to node Y; Y gives them to b's subscribers.
        piped = {}
        for number, kind in enumerate(KINDS):
            node_x.send_stream(peer_a.publishers[kind], node_y.address, 100 + number)
            piped[kind] = node_y.receive_stream(100 + number, kind, node_x.address)
            peer_b.subscribers[kind].attach(piped[kind])
        frames: list[EncodedFrame] = []
        piped["video"].add_frame_listener(frames.append)

        await until(lambda: sum(s.tag == 1 for s in client_b.stamps) >= 10)
        await until(lambda: client_b.audio_frames >= 20)
        counters = [s.counter for s in client_b.stamps if s.tag == 1]
        assert counters == sorted(counters), "a's frames arrive in order"
        # Attaching asked a's browser for a keyframe across the pipe, at once.
        assert piped["video"].keyframe_requests >= 1
        assert peer_a.publishers["video"].keyframe_requests >= 1
        assert piped["video"].codec is not None and piped["video"].codec.mimeType == "video/VP8"
        assert piped["audio"].frames > 0 and piped["video"].frames > 0
        # Moderation's taps see whole frames from a remote partner, the keyframe that
        # attaching asked for among them (the ring buffer starts there; frames
        # already on their way may come first).
        await until(lambda: len(frames) >= 3 and any(f.keyframe for f in frames))
        assert all(f.codec.mimeType == "video/VP8" for f in frames)

        # A keyframe request from b's side reaches a's publisher.
        before = peer_a.publishers["video"].keyframe_requests
        await asyncio.sleep(0.25)  # past both rate limits
        peer_b.subscribers["video"].on_keyframe_request()
        await until(lambda: peer_a.publishers["video"].keyframe_requests > before)

        # Next: a local source (b's own camera), then the remote one again.
        peer_b.subscribers["video"].attach(peer_b.publishers["video"])
        await until(lambda: client_b.tags_seen()[-1:] == [2] and client_b.stamps[-1].tag == 2)
        await until(lambda: sum(s.tag == 2 for s in client_b.stamps) >= 5)
        peer_b.subscribers["video"].attach(piped["video"])
        await until(lambda: client_b.tags_seen()[-1] == 1)
        seen = len(client_b.stamps)
        await until(lambda: len(client_b.stamps) >= seen + 5)
        assert client_b.tags_seen() == [1, 2, 1]

        # One continuous stream out to b's browser across all three sources
        # (retransmissions, on their own payload type, left out).
        media_type = collections.Counter(pt for pt, _, _ in received).most_common(1)[0][0]
        sent = [(seq, ts) for pt, seq, ts in received if pt == media_type]
        assert len(sent) > 30
        for (seq_a, ts_a), (seq_b, ts_b) in itertools.pairwise(sent):
            assert seq_b == (seq_a + 1) & 0xFFFF, "sequence numbers never skip or step back"
            assert (ts_b - ts_a) & 0xFFFFFFFF < 0x80000000, "timestamps never step back"
        assert not node_y.dropped and not node_x.dropped
    finally:
        await client_a.close()
        await client_b.close()
        await peer_a.close()
        await peer_b.close()


@pytest.mark.parametrize("endpoints", [False, True], ids=["hmac", "aead"], indirect=True)
async def test_forged_replayed_unknown_and_misaddressed_datagrams_are_dropped(
    endpoints: tuple[PipeEndpoint, ...], publisher: Publisher
) -> None:
    node_x, node_y, node_z = endpoints
    captured, original_sendto = capture_datagrams(node_x)
    node_x.send_stream(publisher, node_y.address, 7)
    piped = node_y.receive_stream(7, "video", node_x.address)
    push_frames(publisher, 3)
    await until(lambda: piped.frames == 3)
    push_frames(publisher, 2, start=3)
    await until(lambda: piped.frames == 5)
    rtp = captured[-1]

    # Tampered with, on the way (any byte: header, messages or tag).
    for index in (1, HEADER_SIZE + 3, len(rtp) - 1):
        forged = bytearray(rtp)
        forged[index] ^= 0x01
        node_z._sendto(bytes(forged), node_y.address)
    # Too short, or from another version (version 1 sent one message per datagram).
    node_z._sendto(b"\x02\x01", node_y.address)
    node_z._sendto(b"\x01" + rtp[1:], node_y.address)
    # Replayed from the real sender's own address.
    original_sendto(rtp, node_y.address)
    original_sendto(captured[-2], node_y.address)
    # Authentic, but for a stream Y does not expect, or from a node that does not send it.
    body = struct.pack("!BHI", 0x80 | VP8.payloadType, 1, 1) + b"\x10\x80\x00\x00\x00"
    node_z._send(MessageType.RTP, 8, body, node_y.address)
    node_z._send(MessageType.RTP, 7, body, node_y.address)
    node_z._send(MessageType.KEYFRAME_REQUEST, 7, b"", node_x.address)
    # Another cluster's secret.
    stranger = PipeEndpoint(b"another cluster's secret", encrypt=node_x.encrypt)
    await stranger.start()
    stranger._send(MessageType.RTP, 7, body, node_y.address)

    expected = {
        "unauthenticated": 4,
        "malformed": 2,
        "replayed": 2,
        "unknown_stream": 1,
        "wrong_address": 1,
    }
    await until(lambda: sum(node_y.dropped.values()) >= 10 and node_x.dropped)
    await stranger.close()
    assert dict(node_y.dropped) == expected
    assert dict(node_x.dropped) == {"wrong_address": 1}
    assert piped.frames == 5
    # The one request is send_stream's own: a misaddressed one asks nothing of the browser.
    assert publisher.keyframe_requests == 1

    # The stream goes on.
    push_frames(publisher, 5, start=5)
    await until(lambda: piped.frames == 10)


async def test_the_packets_of_one_turn_travel_in_one_datagram_in_order(
    endpoints: tuple[PipeEndpoint, ...], publisher: Publisher
) -> None:
    node_x, node_y, _ = endpoints
    captured, _ = capture_datagrams(node_x)
    node_x.send_stream(publisher, node_y.address, 11)
    piped = node_y.receive_stream(11, "video", node_x.address)
    arrivals = Arrivals()
    piped.add_subscriber(arrivals)
    # Five frames of three packets in one turn of the event loop, and the CODEC
    # message ahead of the keyframe: one datagram.
    push_frames(publisher, 5)
    assert captured == []
    await until(lambda: piped.frames == 5)
    assert len(captured) == 1
    # The CODEC message ahead of the keyframe, and 15 RTP packets.
    assert node_x.messages_sent == node_y.messages_received == 1 + 15
    assert [v.sequence_number for v in arrivals.views] == list(range(15))
    assert [v.timestamp for v in arrivals.views] == [3000 * (i // 3) for i in range(15)]
    sent = [v for i in range(5) for v in vp8_packets(i, 3 * i, 3000 * i, key=i == 0)]
    assert [v.payload for v in arrivals.views] == [v.payload for v in sent]
    assert [v.marker for v in arrivals.views] == [v.marker for v in sent]


async def test_a_datagram_is_never_larger_than_the_limit_for_its_destination(
    publisher: Publisher,
) -> None:
    node_x = PipeEndpoint(SECRET, max_datagram=1_400)
    node_y = PipeEndpoint(SECRET)
    await node_x.start()
    await node_y.start()
    try:
        captured, _ = capture_datagrams(node_x)
        node_x.send_stream(publisher, node_y.address, 12)
        piped = node_y.receive_stream(12, "video", node_x.address)
        arrivals = Arrivals()
        piped.add_subscriber(arrivals)
        # 20 packets of 600 bytes (not keyframes) in one turn: two to a datagram.
        views = [
            RtpView(1, VP8.payloadType, n, 3000, n == 19, b"\x90\x80\x80\x01\x01" + bytes(595))
            for n in range(20)
        ]
        for view in views:
            publisher._on_packet(VP8, view)
        await until(lambda: len(arrivals.views) == 20)
        assert max(len(d) for d in captured) <= 1_400
        assert len(captured) == 10
        assert [v.sequence_number for v in arrivals.views] == list(range(20))
        with pytest.raises(ValueError, match="cannot be sent"):
            PipeEndpoint(SECRET, max_datagram=70_000)
    finally:
        await node_x.close()
        await node_y.close()


@pytest.mark.parametrize("endpoints", [False, True], ids=["hmac", "aead"], indirect=True)
async def test_an_authentic_datagram_whose_messages_do_not_add_up_is_dropped_whole(
    endpoints: tuple[PipeEndpoint, ...], publisher: Publisher
) -> None:
    node_x, node_y, _ = endpoints
    node_x.send_stream(publisher, node_y.address, 13)
    piped = node_y.receive_stream(13, "video", node_x.address)
    push_frames(publisher, 1)
    await until(lambda: piped.frames == 1)

    def message(sequence_number: int) -> bytes:
        body = struct.pack("!BHI", 0x80 | VP8.payloadType, sequence_number, 3000) + bytes(20)
        return struct.pack("!BIH", MessageType.RTP, 13, len(body)) + body

    good = message(100)
    # Authentic (sealed with the cluster's key) but badly built: the last message
    # cut short, a length field past the end, a message header cut in two, nothing.
    for parts in (
        [good, message(101)[:-3]],
        [good, struct.pack("!BIH", MessageType.RTP, 13, 500) + bytes(40)],
        [good, good[: MESSAGE_HEADER_SIZE - 2]],
        [b""],
    ):
        node_x._send_datagram(node_y.address, parts)
    await until(lambda: node_y.dropped["malformed"] == 4)
    # None of their good messages went through: only the keyframe's CODEC and packets.
    assert node_y.messages_received == 4 and piped.frames == 1
    # A real datagram cut short on the way: its tag no longer matches.
    captured, original_sendto = capture_datagrams(node_x)
    node_x._send_datagram(node_y.address, [good, message(101)])
    original_sendto(captured[-1][: -TAG_SIZE // 2], node_y.address)
    await until(lambda: piped.frames == 3)
    await until(lambda: node_y.dropped["unauthenticated"] == 1)
    assert dict(node_y.dropped) == {"malformed": 4, "unauthenticated": 1}
    # The stream goes on.
    push_frames(publisher, 1, start=1)
    await until(lambda: piped.frames == 4)


async def test_a_lost_codec_message_is_asked_for_again(
    endpoints: tuple[PipeEndpoint, ...], publisher: Publisher
) -> None:
    node_x, node_y, _ = endpoints
    push_frames(publisher, 1)  # the publisher knows its codec already
    # The CODEC message sent at the start reaches Y before Y expects the stream: lost.
    node_x.send_stream(publisher, node_y.address, 3)
    await until(lambda: node_y.dropped["unknown_stream"] == 1)
    piped = node_y.receive_stream(3, "video", node_x.address)
    push_frames(publisher, 3, start=1)
    await until(lambda: piped.codec is not None)
    assert piped.codec is not None and piped.codec.mimeType == VP8.mimeType
    push_frames(publisher, 3, start=4)
    await until(lambda: piped.frames >= 3)


async def test_a_keyframe_arrives_with_its_codec_after_the_first_codec_message_was_lost(
    endpoints: tuple[PipeEndpoint, ...], publisher: Publisher
) -> None:
    node_x, node_y, _ = endpoints
    push_frames(publisher, 1)  # the publisher knows its codec already
    node_x.send_stream(publisher, node_y.address, 4)
    await until(lambda: node_y.dropped["unknown_stream"] == 1)  # that CODEC message
    piped = node_y.receive_stream(4, "video", node_x.address)
    # The keyframe the receiver asked for is its first packets: none may be lost to
    # a codec it does not know yet (it would wait a keyframe interval for the next).
    push_frames(publisher, 1, start=1)
    await until(lambda: piped.frames == 1)
    assert piped.codec is not None and piped.codec.mimeType == VP8.mimeType


async def test_keyframe_requests_codec_and_bye(
    endpoints: tuple[PipeEndpoint, ...], publisher: Publisher
) -> None:
    node_x, node_y, _ = endpoints
    node_x.send_stream(publisher, node_y.address, 5)
    piped = node_y.receive_stream(5, "video", node_x.address)
    assert piped.kind == "video" and piped.name.endswith("/5")
    piped.request_keyframe()
    await until(lambda: publisher.keyframe_requests == 1)
    assert piped.keyframe_requests == 1
    # Frames are built only while someone listens.
    push_frames(publisher, 2)
    await until(lambda: piped.frames == 2)
    assert piped._assembler._parts == [] and piped._assembler._timestamp is None
    node_x.stop_sending(5)
    assert publisher.subscribers == frozenset()
    await until(lambda: piped.ended)
    with pytest.raises(ValueError):
        node_y.receive_stream(5, "video", node_x.address)
    with pytest.raises(ValueError):
        node_y.receive_stream(6, "video", ("localhost", 1))
    await node_y.stop_receiving(5, node_x.address)
    assert node_y.streams_in == ()


async def test_a_keyframe_request_sent_before_the_stream_starts_is_made_up_for(
    endpoints: tuple[PipeEndpoint, ...], publisher: Publisher
) -> None:
    node_x, node_y, _ = endpoints
    # Y attaches first and asks for a keyframe; X does not know the stream yet.
    piped = node_y.receive_stream(7, "video", node_x.address)
    piped.request_keyframe()
    await until(lambda: node_x.dropped["unknown_stream"] == 1)
    assert publisher.keyframe_requests == 0
    # X starts sending: the publisher is asked at once, not a keyframe interval later.
    node_x.send_stream(publisher, node_y.address, 7)
    assert publisher.keyframe_requests == 1
    push_frames(publisher, 2)
    await until(lambda: piped.frames == 2)


async def test_a_closed_publisher_ends_its_stream(
    endpoints: tuple[PipeEndpoint, ...], publisher: Publisher
) -> None:
    node_x, node_y, _ = endpoints
    node_x.send_stream(publisher, node_y.address, 9)
    piped = node_y.receive_stream(9, "video", node_x.address)
    await publisher.close()
    assert node_x.streams_out == frozenset()
    await until(lambda: piped.ended)


def test_the_replay_window_accepts_each_counter_once_and_late_ones_within_reach() -> None:
    window = ReplayWindow()
    assert [window.accept(n) for n in (0, 2, 1, 2, 0)] == [True, True, True, False, False]
    assert window.accept(1000)
    assert not window.accept(1000 - 128)
    assert window.accept(1000 - 127)
    assert not window.accept(1000 - 127)


async def test_close_leaves_no_socket_and_no_task(publisher: Publisher) -> None:
    tasks_before = asyncio.all_tasks()
    node_x, node_y = PipeEndpoint(SECRET), PipeEndpoint(SECRET, encrypt=True)
    await node_x.start()
    await node_y.start()
    node_x.send_stream(publisher, node_y.address, 1)
    piped = node_y.receive_stream(1, "video", node_x.address)
    sink = publisher.subscribers
    push_frames(publisher, 1)
    # send_stream asked the publisher for a keyframe: its PLI task is the publisher's.
    tasks_before |= publisher._pli_tasks
    sockets = [e._socket for e in (node_x, node_y)]
    await node_x.close()
    await node_y.close()
    assert all(sock is not None and sock.fileno() == -1 for sock in sockets)
    assert publisher.subscribers == frozenset() and len(sink) == 1
    assert piped.subscribers == frozenset() and node_y.streams_in == ()
    assert asyncio.all_tasks() == tasks_before


async def test_a_stream_for_a_moderator_flows_while_the_publisher_is_held(
    endpoints: tuple[PipeEndpoint, ...], publisher: Publisher
) -> None:
    # A partner's stream stops while a stream is held for review (--nudity-blur); a
    # moderator watching from another node must still see it, as a local watcher does.
    node_x, node_y, node_z = endpoints
    node_x.send_stream(publisher, node_y.address, 11)
    node_x.send_stream(publisher, node_z.address, 12, sees_held=True)
    partner = node_y.receive_stream(11, "video", node_x.address)
    moderator = node_z.receive_stream(12, "video", node_x.address)
    partner.add_frame_listener(lambda frame: None)
    moderator.add_frame_listener(lambda frame: None)
    publisher.hold(True)
    push_frames(publisher, 3)
    await until(lambda: moderator.frames == 3)
    await asyncio.sleep(0.05)
    assert partner.frames == 0
