"""RTP packets as bytes: the few fields the relay reads and rewrites.

The forwarding path handles every packet in Python, so it never builds a full
packet object: it reads the fixed header with one `struct` call, keeps the
payload as it came, and writes a fresh header for each subscriber (RFC 3550
section 5.1, one-byte header extensions from RFC 8285).
"""

from __future__ import annotations

import struct
import time

_FIXED = struct.Struct("!BBHII")
_EXTENSION_HEADER = struct.Struct("!HH")
_RTX_OSN = struct.Struct("!H")

ONE_BYTE_PROFILE = 0xBEDE
# NTP counts from 1900, Unix time from 1970.
NTP_UNIX_OFFSET = 2_208_988_800


class RtpView:
    """The parts of one plaintext RTP packet the relay uses.

    `payload` is the codec payload only: CSRCs, header extensions and padding
    are gone. `abs_send_time` is filled in only when the parser was told the
    extension's id.
    """

    __slots__ = (
        "abs_send_time",
        "marker",
        "padding_size",
        "payload",
        "payload_type",
        "sequence_number",
        "ssrc",
        "timestamp",
    )

    def __init__(
        self,
        ssrc: int,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        marker: bool,
        payload: bytes,
        padding_size: int = 0,
        abs_send_time: int | None = None,
    ) -> None:
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.marker = marker
        self.payload = payload
        self.padding_size = padding_size
        self.abs_send_time = abs_send_time

    def __repr__(self) -> str:
        return (
            f"RtpView(ssrc={self.ssrc}, pt={self.payload_type}, seq={self.sequence_number}, "
            f"ts={self.timestamp}, marker={self.marker}, {len(self.payload)} bytes)"
        )


def parse(data: bytes, abs_send_time_id: int | None = None) -> RtpView | None:
    """Read a plaintext RTP packet; None if it is malformed."""
    size = len(data)
    if size < 12:
        return None
    first, second, seq, timestamp, ssrc = _FIXED.unpack_from(data)
    if first >> 6 != 2:
        return None
    offset = 12 + 4 * (first & 0x0F)
    if offset > size:
        return None
    abs_send_time = None
    if first & 0x10:
        if offset + 4 > size:
            return None
        profile, words = _EXTENSION_HEADER.unpack_from(data, offset)
        start = offset + 4
        offset = start + 4 * words
        if offset > size:
            return None
        if abs_send_time_id is not None and profile == ONE_BYTE_PROFILE:
            abs_send_time = _find_abs_send_time(data, start, offset, abs_send_time_id)
    end = size
    padding = 0
    if first & 0x20:
        padding = data[-1]
        end -= padding
        if end < offset:
            return None
    return RtpView(
        ssrc,
        second & 0x7F,
        seq,
        timestamp,
        bool(second & 0x80),
        data[offset:end],
        padding,
        abs_send_time,
    )


def _find_abs_send_time(data: bytes, start: int, end: int, wanted: int) -> int | None:
    position = start
    while position < end:
        byte = data[position]
        if byte == 0:  # padding between elements
            position += 1
            continue
        ident = byte >> 4
        length = (byte & 0x0F) + 1
        if ident == 15:  # reserved: stop (RFC 8285 section 4.2)
            return None
        if ident == wanted and length == 3 and position + 4 <= end:
            return int.from_bytes(data[position + 1 : position + 4], "big")
        position += 1 + length
    return None


def unwrap_rtx(view: RtpView, payload_type: int, ssrc: int) -> RtpView | None:
    """The original packet inside a retransmission (RFC 4588); None for padding-only probes."""
    if len(view.payload) < 2:
        return None
    (original_seq,) = _RTX_OSN.unpack_from(view.payload)
    return RtpView(
        ssrc,
        payload_type,
        original_seq,
        view.timestamp,
        view.marker,
        view.payload[2:],
        0,
        view.abs_send_time,
    )


def ntp_now() -> int:
    """Wall-clock time as a 64-bit NTP timestamp (32.32 fixed point)."""
    return int((time.time() + NTP_UNIX_OFFSET) * 4294967296.0)


class HeaderWriter:
    """Writes RTP headers for one outgoing stream, with its MID and abs-send-time extensions.

    Extension ids are the ones negotiated for that stream's connection; an id
    the one-byte form cannot carry (above 14) is left out.
    """

    def __init__(self, ssrc: int, mid: str | None, mid_id: int | None, abs_id: int | None) -> None:
        self.ssrc = ssrc
        elements = b""
        if mid and mid_id is not None and 1 <= mid_id <= 14 and 1 <= len(mid.encode()) <= 16:
            value = mid.encode()
            elements += bytes([(mid_id << 4) | (len(value) - 1)]) + value
        self._with_abs = abs_id is not None and 1 <= abs_id <= 14
        if self._with_abs:
            assert abs_id is not None
            elements += bytes([(abs_id << 4) | 2])
        size = len(elements) + (3 if self._with_abs else 0)
        words = (size + 3) // 4
        if words:
            self._first = 0x90
            self._prefix = _EXTENSION_HEADER.pack(ONE_BYTE_PROFILE, words) + elements
            self._suffix = bytes(words * 4 - size)
        else:
            self._first = 0x80
            self._prefix = b""
            self._suffix = b""

    def header(
        self, payload_type: int, sequence_number: int, timestamp: int, marker: bool, ntp: int
    ) -> bytes:
        fixed = _FIXED.pack(
            self._first,
            (0x80 if marker else 0) | payload_type,
            sequence_number,
            timestamp,
            self.ssrc,
        )
        if self._with_abs:
            return b"".join(
                (fixed, self._prefix, ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big"), self._suffix)
            )
        return fixed + self._prefix + self._suffix


def rtx_payload(sequence_number: int, payload: bytes) -> bytes:
    """A retransmission's payload: the original sequence number, then the original payload."""
    return _RTX_OSN.pack(sequence_number) + payload


# -- codec payloads ----------------------------------------------------------


def vp8_picture_id(payload: bytes) -> tuple[int, int] | None:
    """(offset, bits) of the picture id in a VP8 payload descriptor (RFC 7741), if it has one."""
    if len(payload) < 3 or not payload[0] & 0x80:  # X: extensions present
        return None
    if not payload[1] & 0x80:  # I: picture id present
        return None
    if payload[2] & 0x80:  # M: 15-bit picture id
        return (2, 15) if len(payload) >= 4 else None
    return (2, 7)


def with_vp8_picture_id(payload: bytes, picture_id: int) -> bytes:
    """`payload` with its picture id replaced (it must have one, see `vp8_picture_id`)."""
    place = vp8_picture_id(payload)
    if place is None:
        return payload
    offset, bits = place
    if bits == 15:
        return (
            payload[:offset]
            + bytes([0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF])
            + payload[offset + 2 :]
        )
    return payload[:offset] + bytes([picture_id & 0x7F]) + payload[offset + 1 :]


def read_vp8_picture_id(payload: bytes) -> int | None:
    place = vp8_picture_id(payload)
    if place is None:
        return None
    offset, bits = place
    if bits == 15:
        return ((payload[offset] & 0x7F) << 8) | payload[offset + 1]
    return payload[offset] & 0x7F


def vp8_descriptor_size(payload: bytes) -> int | None:
    """Length of the VP8 payload descriptor in front of the VP8 data (RFC 7741 section 4.2)."""
    if not payload:
        return None
    size = 1
    if payload[0] & 0x80:
        if len(payload) < 2:
            return None
        extensions = payload[1]
        size = 2
        if extensions & 0x80:  # I
            if len(payload) <= size:
                return None
            size += 2 if payload[size] & 0x80 else 1
        if extensions & 0x40:  # L
            size += 1
        if extensions & 0x30:  # T or K
            size += 1
    return size if size < len(payload) else None


def starts_vp8_frame(payload: bytes) -> bool:
    """Whether a VP8 packet is the first of its frame (S bit set, partition 0)."""
    return len(payload) > 0 and payload[0] & 0x10 != 0 and payload[0] & 0x07 == 0


def starts_keyframe(codec_name: str, payload: bytes) -> bool:
    """True for the first packet of a frame that decodes on its own (VP8 key frame, H264 IDR).

    `codec_name` is upper case ("VP8", "H264"): callers hold it per codec, not per packet.
    """
    if codec_name == "VP8":
        if len(payload) < 2 or not payload[0] & 0x10 or payload[0] & 0x07:  # S=1, partition 0
            return False
        size = vp8_descriptor_size(payload)
        # VP8 payload header: P (inverse key frame flag) is bit 0 of its first byte.
        return size is not None and not payload[size] & 0x01
    if codec_name == "H264":
        return _h264_starts_keyframe(payload)
    return True


def _h264_starts_keyframe(payload: bytes) -> bool:
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (5, 7):  # IDR slice, SPS
        return True
    if nal_type == 24:  # STAP-A: look at each aggregated NAL unit
        position = 1
        while position + 2 < len(payload):
            size = int.from_bytes(payload[position : position + 2], "big")
            if payload[position + 2] & 0x1F in (5, 7):
                return True
            position += 2 + size
        return False
    if nal_type == 28 and len(payload) >= 2:  # FU-A: the start fragment of an IDR slice
        return bool(payload[1] & 0x80) and payload[1] & 0x1F == 5
    return False
