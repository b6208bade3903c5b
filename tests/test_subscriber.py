"""Subscriber and Publisher on real aiortc receivers: bounded queues, keyframes, continuity.

The publishers here sit on the receivers of a real RTCPeerConnection that has
applied a real offer; frames are pushed the way aiortc's jitter buffer hands
them over, and what the subscriber yields is what aiortc's sender would send.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import av
import pytest
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from rtc.media import EncodedFrame
from rtc.publisher import Publisher
from rtc.subscriber import MAX_QUEUED, Subscriber

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
H264 = RTCRtpCodecParameters(
    mimeType="video/H264", clockRate=90000, payloadType=102, parameters={"packetization-mode": "1"}
)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
KEY = b"\x00keyframe"  # VP8 frame tag bit 0 clear: a key frame
DELTA = b"\x01delta"


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


def frame(data: bytes, timestamp: int, codec: RTCRtpCodecParameters = VP8) -> EncodedFrame:
    return EncodedFrame(codec, data, timestamp, keyframe=data[0] & 1 == 0 if codec is VP8 else True)


async def drain(subscriber: Subscriber) -> list[av.Packet]:
    out = []
    while subscriber._queue:
        out.append(await subscriber.recv())
    return out


async def test_forwards_from_the_first_keyframe_with_the_same_bytes(publishers) -> None:
    publisher = publishers[0]
    subscriber = Subscriber("s", "video")
    subscriber.set_codec(VP8, lambda: None)
    subscriber.attach(publisher)
    await asyncio.sleep(0)
    requests_on_attach = publisher.keyframe_requests
    assert requests_on_attach == 1, "attaching must ask the publisher for a keyframe at once"

    subscriber.push_encoded(frame(DELTA, 0))  # cannot be decoded without what came before
    subscriber.push_encoded(frame(KEY, 3000))
    subscriber.push_encoded(frame(DELTA, 6000))
    packets = await drain(subscriber)
    assert [bytes(p) for p in packets] == [KEY, DELTA]
    assert packets[1].pts - packets[0].pts == 3000
    subscriber.stop()


async def test_a_slow_subscriber_drops_instead_of_growing(publishers) -> None:
    publisher = publishers[0]
    subscriber = Subscriber("s", "video")
    subscriber.set_codec(VP8, lambda: None)
    subscriber.attach(publisher)
    subscriber.push_encoded(frame(KEY, 0))
    requests_before = publisher.keyframe_requests
    for i in range(1, 1000):
        subscriber.push_encoded(frame(DELTA, i * 3000))
        assert len(subscriber._queue) <= MAX_QUEUED["video"]
    assert subscriber.dropped > 900
    await asyncio.sleep(0.01)
    assert publisher.keyframe_requests > requests_before, (
        "after dropping it must ask for a keyframe"
    )
    # Nothing more is queued until a keyframe restarts the picture.
    await drain(subscriber)
    subscriber.push_encoded(frame(DELTA, 10_000_000))
    assert not subscriber._queue
    subscriber.push_encoded(frame(KEY, 10_003_000))
    assert [bytes(p) for p in await drain(subscriber)] == [KEY]
    subscriber.stop()


async def test_audio_drops_the_oldest_when_full(publishers) -> None:
    subscriber = Subscriber("s", "audio")
    subscriber.set_codec(OPUS, lambda: None)
    subscriber.attach(publishers[2])
    for i in range(100):
        subscriber.push_encoded(frame(bytes([i]), i * 960, OPUS))
    packets = await drain(subscriber)
    assert len(packets) == MAX_QUEUED["audio"]
    assert bytes(packets[-1]) == bytes([99])
    subscriber.stop()


async def test_timestamps_keep_going_forward_across_partners(publishers) -> None:
    first, second = publishers[0], publishers[1]
    subscriber = Subscriber("s", "video")
    subscriber.set_codec(VP8, lambda: None)
    pts: list[int] = []

    subscriber.attach(first)
    for i, data in zip(range(10), itertools.chain([KEY], itertools.repeat(DELTA)), strict=False):
        subscriber.push_encoded(frame(data, 5_000_000 + i * 3000))
    pts += [p.pts for p in await drain(subscriber)]

    await asyncio.sleep(0.1)
    # The next partner's clock starts somewhere else entirely (lower, here).
    subscriber.attach(second)
    for i, data in zip(range(10), itertools.chain([KEY], itertools.repeat(DELTA)), strict=False):
        subscriber.push_encoded(frame(data, 1000 + i * 3000))
    pts += [p.pts for p in await drain(subscriber)]

    steps = [b - a for a, b in itertools.pairwise(pts)]
    assert len(pts) == 20
    assert all(step > 0 for step in steps), steps
    # The switch advances by about the wall-clock time that passed, not by the clocks' offset.
    assert 0.05 * 90000 < steps[9] < 5 * 90000
    assert set(steps[:9] + steps[10:]) == {3000}
    subscriber.stop()


async def test_codecs_that_do_not_meet_switch_to_decoding(publishers) -> None:
    publisher = publishers[0]
    subscriber = Subscriber("s", "video")
    subscriber.set_codec(H264, lambda: None)
    subscriber.attach(publisher)
    subscriber.push_encoded(frame(KEY, 0))
    assert not subscriber._queue, "VP8 must not be sent as-is on an H264 track"
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
