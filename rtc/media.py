"""Encoded media frames as the relay forwards them, and what can be read from their bytes."""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.rtcrtpparameters import RTCRtpCodecParameters


@dataclass(slots=True, frozen=True)
class EncodedFrame:
    """One complete encoded frame from a publisher, as reassembled by aiortc.

    `timestamp` is in the codec's clock units (`codec.clockRate`), counted from
    the publisher's first frame.
    """

    codec: RTCRtpCodecParameters
    data: bytes
    timestamp: int
    keyframe: bool


def is_keyframe(codec: RTCRtpCodecParameters, data: bytes) -> bool:
    """Whether a decoder can start from this frame."""
    name = codec.name.lower()
    if name == "vp8":
        # RFC 6386 section 9.1: bit 0 of the frame tag is 0 for key frames.
        return len(data) > 0 and data[0] & 0x01 == 0
    if name == "h264":
        return _h264_has_idr(data)
    # Audio codecs have no inter-frame prediction.
    return codec.mimeType.lower().startswith("audio/")


def _h264_has_idr(data: bytes) -> bool:
    # aiortc hands over Annex B: NAL units behind 00 00 01 start codes.
    start = data.find(b"\x00\x00\x01")
    while start != -1 and start + 3 < len(data):
        nal_type = data[start + 3] & 0x1F
        if nal_type in (5, 7):  # IDR slice, or SPS which precedes one
            return True
        start = data.find(b"\x00\x00\x01", start + 3)
    return False


def same_codec(a: RTCRtpCodecParameters, b: RTCRtpCodecParameters) -> bool:
    """Whether frames encoded with `a` can be sent as-is on a track negotiated as `b`."""
    if a.mimeType.lower() != b.mimeType.lower() or a.clockRate != b.clockRate:
        return False
    if a.name.lower() == "h264":
        # Packetization mode decides how NAL units may be split into packets.
        mode_a = a.parameters.get("packetization-mode", 0)
        mode_b = b.parameters.get("packetization-mode", 0)
        return str(mode_a) == str(mode_b)
    return True
