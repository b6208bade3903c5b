"""Subscriber and Publisher on real aiortc receivers: keyframes, continuity, bounded queues.

The publishers here sit on the receivers of a real RTCPeerConnection that has
applied a real offer; packets are pushed the way the seam hands them over, and
what the subscriber sends is recorded by an output standing where
`rtc.aiortc_seam.PacketSender` does (tests/test_server.py runs the real one).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from rtc import _fastpath, packet_path, rtp
from rtc.publisher import Publisher
from rtc.rtp import RtpView, read_vp8_picture_id, starts_keyframe
from rtc.subscriber import MAX_QUEUED, Subscriber

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
H264 = RTCRtpCodecParameters(
    mimeType="video/H264", clockRate=90000, payloadType=102, parameters={"packetization-mode": "1"}
)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)

# Every test once per packet path: what leaves the subscriber is written by either.
pytestmark = pytest.mark.usefixtures("packet_path_mode")


@pytest.fixture
async def publishers() -> AsyncIterator[list[Publisher]]:
    """Publishers on the receivers of real peer connections, as the server builds them."""
    made: list[Publisher] = []
    connections: list[RTCPeerConnection] = []

    async def make(kind: str) -> Publisher:
        browser, server = RTCPeerConnection(), RTCPeerConnection()
        connections.extend((browser, server))
        browser.addTrack(VideoStreamTrack() if kind == "video" else AudioStreamTrack())
        await browser.setLocalDescription(await browser.createOffer())
        await server.setRemoteDescription(browser.localDescription)
        receiver = server.getTransceivers()[0].receiver
        publisher = Publisher(f"p{len(made)}", kind, receiver, keyframe_interval=0.0)
        made.append(publisher)
        return publisher

    holder: list[Publisher] = []
    holder.append(await make("video"))
    holder.append(await make("video"))
    holder.append(await make("audio"))
    yield holder
    for publisher in made:
        await publisher.close()
    for pc in connections:
        await pc.close()


class Sent:
    def __init__(self, payload: bytes, marker: bool, timestamp: int, sequence_number: int) -> None:
        self.payload = payload
        self.marker = marker
        self.timestamp = timestamp
        self.sequence_number = sequence_number


class RecordingOutput:
    """Stands where PacketSender does; `accept` False plays a full socket.

    On the native packet path what it records went through rtc/_fastpath.c as
    PacketSender sends it (header, picture id, SRTP) and was decrypted back.
    """

    def __init__(self, first_sequence_number: int = 65530) -> None:
        self.ready = True
        self.sequence_number = first_sequence_number
        self.accept = True
        self.sent: list[Sent] = []
        key = os.urandom(44)
        profile = _fastpath.PROFILE_AEAD_AES_256_GCM
        self._tx = packet_path.srtp_context(profile, key, True)
        self._rx = packet_path.srtp_context(profile, key, False)
        self._writer = packet_path.header_writer(4242, "1", 4, 2)

    def send(
        self,
        payload: bytes,
        marker: bool,
        timestamp: int,
        sequence_number: int | None = None,
        picture_id: int = -1,
    ) -> bool:
        if not self.accept:
            return False
        if sequence_number is None:
            sequence_number = self.sequence_number
        self.sequence_number = (sequence_number + 1) & 0xFFFF
        if self._writer is not None and self._tx is not None and self._rx is not None:
            data = self._writer.seal(
                self._tx, 96, sequence_number, timestamp, marker, 0, payload, picture_id
            )
            assert data is not None
            plain = self._rx.unprotect(data)
            assert plain is not None
            view = rtp.parse(plain)
            assert view is not None
            assert (view.sequence_number, view.timestamp) == (sequence_number, timestamp)
            payload = view.payload
        elif picture_id >= 0:
            payload = rtp.with_vp8_picture_id(payload, picture_id)
        self.sent.append(Sent(payload, marker, timestamp, sequence_number))
        return True


def vp8_packets(
    picture_id: int, sequence_number: int, timestamp: int, *, key: bool, count: int = 3
) -> list[RtpView]:
    """One VP8 frame as `count` packets with 15-bit picture ids, the way Chromium sends it."""
    packets = []
    for index in range(count):
        descriptor = bytes(
            [0x90 if index == 0 else 0x80, 0x80, 0x80 | picture_id >> 8, picture_id & 0xFF]
        )
        body = (
            (b"\x00" if key else b"\x01") + bytes([index]) * 50
            if index == 0
            else bytes([index]) * 50
        )
        packets.append(
            RtpView(
                1111,
                96,
                (sequence_number + index) & 0xFFFF,
                timestamp & 0xFFFFFFFF,
                index == count - 1,
                descriptor + body,
            )
        )
    return packets


def push(subscriber: Subscriber, codec: RTCRtpCodecParameters, packets: list[RtpView]) -> None:
    for view in packets:
        subscriber.push_packet(codec, view, starts_keyframe(codec.name, view.payload))


def subscribed(
    publisher: Publisher, output: RecordingOutput, codec=VP8, kind="video"
) -> Subscriber:
    subscriber = Subscriber("s", kind)
    subscriber.set_codec(codec, lambda: None)
    subscriber.set_output(output)
    subscriber.attach(publisher)
    return subscriber


async def test_forwards_from_the_first_keyframe_with_the_same_payloads(publishers) -> None:
    publisher = publishers[0]
    output = RecordingOutput()
    subscriber = subscribed(publisher, output)
    await asyncio.sleep(0)
    assert publisher.keyframe_requests == 1, (
        "attaching must ask the publisher for a keyframe at once"
    )

    # A delta frame cannot be decoded without what came before: not sent, counted.
    push(subscriber, VP8, vp8_packets(7, 100, 0, key=False))
    assert output.sent == [] and subscriber.dropped == 1
    key = vp8_packets(8, 103, 3000, key=True)
    delta = vp8_packets(9, 106, 6000, key=False)
    push(subscriber, VP8, key + delta)
    assert [s.payload[4:] for s in output.sent] == [v.payload[4:] for v in key + delta]
    assert [s.marker for s in output.sent] == [False, False, True] * 2
    # Numbering carries on from the sender's own, across the 16-bit wrap.
    assert [s.sequence_number for s in output.sent] == [65530, 65531, 65532, 65533, 65534, 65535]
    assert {s.timestamp for s in output.sent[3:]} == {output.sent[0].timestamp + 3000}
    assert subscriber.forwarded == 2
    subscriber.stop()


async def test_a_full_socket_drops_and_restarts_at_a_keyframe(publishers) -> None:
    publisher = publishers[0]
    output = RecordingOutput()
    subscriber = subscribed(publisher, output)
    push(subscriber, VP8, vp8_packets(1, 0, 0, key=True))
    await asyncio.sleep(0.01)
    requests_before = publisher.keyframe_requests
    output.accept = False
    push(subscriber, VP8, vp8_packets(2, 3, 3000, key=False))
    assert subscriber.dropped >= 1
    await asyncio.sleep(0.01)
    assert publisher.keyframe_requests > requests_before, (
        "after dropping it must ask for a keyframe"
    )
    output.accept = True
    sent = len(output.sent)
    push(subscriber, VP8, vp8_packets(3, 6, 6000, key=False))
    assert len(output.sent) == sent, "nothing more until a keyframe restarts the picture"
    push(subscriber, VP8, vp8_packets(4, 9, 9000, key=True))
    assert len(output.sent) == sent + 3
    subscriber.stop()


async def test_one_continuous_stream_across_partners(publishers) -> None:
    first, second = publishers[0], publishers[1]
    output = RecordingOutput(first_sequence_number=1000)
    subscriber = subscribed(first, output)
    sequence_number, timestamp = 40_000, 5_000_000
    for index in range(10):
        push(
            subscriber, VP8, vp8_packets(32_760 + index, sequence_number, timestamp, key=index == 0)
        )
        sequence_number += 3
        timestamp += 3000
    await asyncio.sleep(0.1)
    # The next partner numbers everything somewhere else entirely (lower, here).
    subscriber.attach(second)
    for index in range(10):
        push(
            subscriber,
            VP8,
            vp8_packets(5 + index, 7 + 3 * index, 1000 + 3000 * index, key=index == 0),
        )
    # A straggler from before the new partner's keyframe: not sent.
    push(subscriber, VP8, vp8_packets(4, 4, 0, key=False))

    sent = output.sent
    assert len(sent) == 60
    assert [s.sequence_number for s in sent] == list(range(1000, 1060))
    frames = [s for s in sent if s.marker]
    steps = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(frames)]
    # The switch advances by about the wall-clock time that passed, not by the clocks' offset.
    assert 0.05 * 90000 < steps[9] < 5 * 90000
    assert set(steps[:9] + steps[10:]) == {3000}
    picture_ids = [read_vp8_picture_id(s.payload) for s in frames]
    first_id = picture_ids[0]
    assert first_id is not None
    assert picture_ids == [(first_id + i) & 0x7FFF for i in range(20)], picture_ids
    subscriber.stop()


async def test_timestamps_survive_the_32_bit_wrap(publishers) -> None:
    output = RecordingOutput()
    subscriber = subscribed(publishers[2], output, codec=OPUS, kind="audio")
    for index in range(10):
        timestamp = 0xFFFFFFFF - 4 * 960 + index * 960
        subscriber.push_packet(
            OPUS, RtpView(5, 111, index, timestamp & 0xFFFFFFFF, True, b"x"), True
        )
    steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(output.sent)}
    assert steps == {960} and subscriber.forwarded == 10
    subscriber.stop()


async def test_codecs_that_do_not_meet_switch_to_decoding(publishers) -> None:
    publisher = publishers[0]
    subscriber = Subscriber("s", "video")
    subscriber.set_codec(H264, lambda: None)
    output = RecordingOutput()
    subscriber.set_output(output)
    subscriber.attach(publisher)
    push(subscriber, VP8, vp8_packets(1, 0, 0, key=True))
    assert output.sent == [], "VP8 must not be sent as-is on an H264 track"
    assert subscriber in publisher._decoded_subscribers
    subscriber.detach()
    assert subscriber not in publisher._decoded_subscribers
    assert not publisher._tap.decode, "decoding stops when nobody needs it"
    subscriber.stop()


async def test_keyframe_requests_are_rate_limited_but_not_lost(publishers) -> None:
    publisher = publishers[0]
    publisher._keyframe_interval = 0.2
    for _ in range(50):
        publisher.request_keyframe()
    assert publisher.keyframe_requests == 1
    await asyncio.sleep(0.35)
    # The requests inside the interval became exactly one more, sent when it ended.
    assert publisher.keyframe_requests == 2


async def test_stopping_wakes_a_waiting_sender(publishers) -> None:
    subscriber = Subscriber("s", "video")
    waiting = asyncio.create_task(subscriber.recv())
    await asyncio.sleep(0.01)
    subscriber.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(waiting, 1)


async def test_decoded_frames_queue_is_bounded(publishers) -> None:
    subscriber = subscribed(publishers[2], RecordingOutput(), codec=H264)
    subscriber.kind = "audio"
    push(
        subscriber, VP8, vp8_packets(1, 0, 0, key=True)
    )  # codecs differ: decoded frames from now on
    for index in range(100):
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 960), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = index * 960
        frame.time_base = Fraction(1, 48000)
        subscriber.push_decoded(frame)
        assert len(subscriber._queue) <= MAX_QUEUED["video"]
    assert subscriber.dropped == 100 - MAX_QUEUED["video"]
    subscriber.stop()
