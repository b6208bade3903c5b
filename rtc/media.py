"""Encoded media frames as the relay forwards them, and what can be read from their bytes."""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import TimestampMapper

from rtc.rtp import RtpView, starts_vp8_frame, vp8_descriptor_size


@dataclass(slots=True, frozen=True)
class EncodedFrame:
    """One complete encoded frame from a publisher (see `FrameAssembler`).

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


class FrameAssembler:
    """Builds complete encoded frames out of one stream's RTP packets, for whoever needs frames.

    Forwarding works packet by packet; frames are only for moderation
    (evidence, recordings, thumbnails) and for decoding when codecs differ. A
    video frame is complete at its marker bit when no sequence number was
    missing since the previous frame ended; an incomplete one is skipped (the
    next keyframe repairs what follows). Late packets (retransmissions) are
    not fitted back in.
    """

    def __init__(self, video: bool) -> None:
        self._video = video
        self._codec: RTCRtpCodecParameters | None = None
        self._vp8 = False
        self._parts: list[bytes] = []
        self._timestamp: int | None = None
        self._next_sequence: int | None = None
        self._broken = False
        # RTP timestamps wrap at 2**32 and start anywhere: count from the first frame.
        self._timestamps = TimestampMapper()
        self.incomplete = 0

    def add(self, codec: RTCRtpCodecParameters, view: RtpView) -> EncodedFrame | None:
        if codec is not self._codec:
            self._codec = codec
            self._vp8 = codec.name.upper() == "VP8"
        if not self._video:
            return EncodedFrame(codec, view.payload, self._timestamps.map(view.timestamp), True)
        sequence = view.sequence_number
        expected = self._next_sequence
        if expected is not None and (sequence - expected) & 0xFFFF >= 0x8000:
            return None  # late: its frame has already been given up or emitted
        self._next_sequence = (sequence + 1) & 0xFFFF
        gap = expected is not None and sequence != expected
        if view.timestamp != self._timestamp:
            ended = not self._parts
            if not ended:
                self.incomplete += 1  # the previous frame never saw its marker
            self._parts = []
            self._timestamp = view.timestamp
            # After a gap the frame is whole only if the last one had ended and
            # this packet is visibly a frame's first (whole frames were lost).
            self._broken = gap and not (ended and self._vp8 and starts_vp8_frame(view.payload))
        elif gap:
            self._broken = True
        payload = view.payload
        if self._vp8:
            # The same as aiortc's depayload for VP8, without building an object per packet.
            start = vp8_descriptor_size(payload)
            if start is None:
                self._broken = True
            else:
                self._parts.append(payload[start:])
        else:
            try:
                self._parts.append(depayload(codec, payload))
            except ValueError:
                self._broken = True
        if not view.marker:
            return None
        parts, self._parts = self._parts, []
        if self._broken:
            self.incomplete += 1
            return None
        data = b"".join(parts)
        return EncodedFrame(
            codec, data, self._timestamps.map(view.timestamp), is_keyframe(codec, data)
        )
