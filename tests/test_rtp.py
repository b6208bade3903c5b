"""rtc/rtp.py against aiortc's own RTP parser and packetizer (the reference both sides use)."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from aiortc.codecs import depayload, get_encoder
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
    RTCRtpParameters,
)
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from rtc import rtp
from rtc.media import FrameAssembler, is_keyframe

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"


def extensions_map(mid_id: int, abs_id: int) -> HeaderExtensionsMap:
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=mid_id, uri=MID_URI),
                RTCRtpHeaderExtensionParameters(id=abs_id, uri=ABS_URI),
            ]
        )
    )
    return extensions


def test_written_headers_read_back_with_aiortc() -> None:
    writer = rtp.HeaderWriter(0xDEADBEEF, "video0", mid_id=4, abs_id=3)
    ntp = rtp.ntp_now()
    data = writer.header(96, 65535, 0xFFFFFFF0, True, ntp) + b"payload"
    packet = RtpPacket.parse(data, extensions_map(4, 3))
    assert (packet.ssrc, packet.payload_type, packet.sequence_number) == (0xDEADBEEF, 96, 65535)
    assert (packet.timestamp, packet.marker, packet.payload) == (0xFFFFFFF0, 1, b"payload")
    assert packet.extensions.mid == "video0"
    assert packet.extensions.abs_send_time == (ntp >> 14) & 0xFFFFFF
    view = rtp.parse(data, abs_send_time_id=3)
    assert view is not None and view.payload == b"payload"
    assert view.abs_send_time == packet.extensions.abs_send_time


def test_no_extensions_when_none_was_negotiated() -> None:
    data = rtp.HeaderWriter(1, None, None, None).header(111, 1, 2, False, 0) + b"x"
    assert len(data) == 13 and data[0] == 0x80
    assert RtpPacket.parse(data).payload == b"x"


def test_parse_reads_what_aiortc_writes_with_csrcs_and_padding() -> None:
    packet = RtpPacket(payload_type=111, sequence_number=7, timestamp=960, ssrc=42)
    packet.csrc = [1, 2]
    packet.payload = b"opus"
    packet.padding_size = 3
    view = rtp.parse(packet.serialize(HeaderExtensionsMap()))
    assert view is not None
    assert (view.ssrc, view.sequence_number, view.timestamp) == (42, 7, 960)
    assert (view.payload, view.padding_size) == (b"opus", 3)


def test_malformed_packets_are_refused() -> None:
    good = rtp.HeaderWriter(1, "0", 1, 2).header(96, 1, 2, False, 0) + b"x"
    assert rtp.parse(good[:11]) is None  # shorter than a header
    assert rtp.parse(bytes([0x40]) + good[1:]) is None  # RTP version 1
    assert rtp.parse(good[:14]) is None  # extension runs past the end
    assert rtp.parse(bytes([0xA0]) + good[1:12] + b"\xff") is None  # more padding than packet
    assert rtp.parse(bytes([0x8F]) + good[1:12] + b"x" * 8) is None  # 15 CSRCs announced, 2 there


def test_retransmissions_unwrap_to_the_original() -> None:
    original = rtp.RtpView(5, 96, 1234, 9000, True, b"frame")
    rtx_payload = rtp.rtx_payload(original.sequence_number, original.payload)
    rtx = rtp.RtpView(6, 97, 1, 9000, True, rtx_payload)
    unwrapped = rtp.unwrap_rtx(rtx, 96, 5)
    assert unwrapped is not None
    assert (unwrapped.ssrc, unwrapped.payload_type, unwrapped.sequence_number) == (5, 96, 1234)
    assert unwrapped.payload == b"frame"
    assert rtp.unwrap_rtx(rtp.RtpView(6, 97, 2, 0, False, b""), 96, 5) is None  # padding probe


def _vp8_payloads(count: int) -> list[list[bytes]]:
    """Real VP8 frames from aiortc's encoder, packetized the way it sends them.

    Noise does not compress, so every frame takes several packets.
    """
    encoder = get_encoder(VP8)
    rng = np.random.default_rng(1)
    out = []
    for index in range(count):
        picture = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts = index * 3000
        frame.time_base = Fraction(1, 90000)
        payloads, _ = encoder.encode(frame)
        out.append(payloads)
    return out


def test_keyframe_starts_and_picture_ids_on_real_vp8() -> None:
    frames = _vp8_payloads(3)
    assert rtp.starts_keyframe("VP8", frames[0][0])
    assert not any(rtp.starts_keyframe("VP8", p) for p in frames[0][1:])
    assert not rtp.starts_keyframe("VP8", frames[1][0])
    first = rtp.read_vp8_picture_id(frames[0][0])
    assert first is not None and rtp.read_vp8_picture_id(frames[1][0]) == (first + 1) & 0x7FFF
    renumbered = rtp.with_vp8_picture_id(frames[1][0], 0x7FFF)
    assert rtp.read_vp8_picture_id(renumbered) == 0x7FFF
    # Only the picture id changed: the frame data is the same.
    assert depayload(VP8, renumbered) == depayload(VP8, frames[1][0])


def test_h264_keyframe_starts() -> None:
    assert rtp.starts_keyframe("H264", bytes([0x65, 0x88]))  # IDR slice
    assert rtp.starts_keyframe("H264", bytes([0x67, 0x42]))  # SPS
    assert not rtp.starts_keyframe("H264", bytes([0x41, 0x9A]))  # non-IDR slice
    stap_a = bytes([0x18, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xCE])
    assert rtp.starts_keyframe("H264", stap_a)
    assert rtp.starts_keyframe("H264", bytes([0x7C, 0x85, 0x00]))  # FU-A start of an IDR
    assert not rtp.starts_keyframe("H264", bytes([0x7C, 0x05, 0x00]))  # FU-A middle


def test_assembler_rebuilds_frames_and_skips_broken_ones() -> None:
    frames = _vp8_payloads(4)
    views = []
    sequence = 65530  # across the 16-bit wrap
    for index, payloads in enumerate(frames):
        for position, payload in enumerate(payloads):
            views.append(
                rtp.RtpView(
                    1, 96, sequence & 0xFFFF, index * 3000, position == len(payloads) - 1, payload
                )
            )
            sequence += 1
    expected = [b"".join(depayload(VP8, p) for p in payloads) for payloads in frames]

    assembler = FrameAssembler(video=True)
    built = [f for f in (assembler.add(VP8, v) for v in views) if f is not None]
    assert [f.data for f in built] == expected
    assert [f.timestamp for f in built] == [0, 3000, 6000, 9000]
    assert [f.keyframe for f in built] == [True, False, False, False]
    assert is_keyframe(VP8, built[0].data)

    assert all(len(payloads) > 2 for payloads in frames)
    # Lose a packet in the middle of the second frame: that frame is skipped, the others come through.
    lost = len(frames[0]) + 1
    assembler = FrameAssembler(video=True)
    built = [
        f
        for f in (assembler.add(VP8, v) for i, v in enumerate(views) if i != lost)
        if f is not None
    ]
    assert [f.data for f in built] == [expected[0], expected[2], expected[3]]
    assert assembler.incomplete == 1

    # Lose the first packet of the third frame: it cannot be told apart from the
    # second's tail except by its start bit, which is gone, so the third is skipped.
    first_of_third = len(frames[0]) + len(frames[1])
    assembler = FrameAssembler(video=True)
    built = [
        f
        for f in (assembler.add(VP8, v) for i, v in enumerate(views) if i != first_of_third)
        if f is not None
    ]
    assert [f.data for f in built] == [expected[0], expected[1], expected[3]]

    # Lose the whole second frame: the third starts visibly (VP8 start bit) and is whole.
    second = range(len(frames[0]), len(frames[0]) + len(frames[1]))
    assembler = FrameAssembler(video=True)
    built = [
        f
        for f in (assembler.add(VP8, v) for i, v in enumerate(views) if i not in second)
        if f is not None
    ]
    assert [f.data for f in built] == [expected[0], expected[2], expected[3]]
