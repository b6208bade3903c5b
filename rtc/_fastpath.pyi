"""Types of the C module rtc/_fastpath.c (see there for what it does)."""

import builtins
from collections.abc import Callable
from typing import Any

from rtc.rtp import RtpView

PROFILE_AES128_CM_SHA1_80: int
PROFILE_AEAD_AES_128_GCM: int
PROFILE_AEAD_AES_256_GCM: int

class SrtpContext:
    def __init__(self, profile: int, key_and_salt: bytes, outbound: bool) -> None: ...
    def protect(self, packet: bytes) -> bytes | None: ...
    def unprotect(self, packet: bytes) -> bytes | None: ...

EAGAIN: int

class Destination:
    def __init__(self, fd: int, host: str, port: int) -> None: ...

class HeaderWriter:
    def __init__(
        self, ssrc: int, mid: str | bytes | None, mid_id: int | None, abs_id: int | None
    ) -> None: ...
    def seal(
        self,
        srtp: SrtpContext,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        marker: bool,
        ntp: int,
        payload: bytes,
        picture_id: int = -1,
        original_sequence_number: int = -1,
        /,
    ) -> bytes | None: ...
    def send(
        self,
        destination: Destination,
        srtp: SrtpContext,
        payload_type: int,
        sequence_number: int,
        timestamp: int,
        marker: bool,
        ntp: int,
        payload: bytes,
        picture_id: int = -1,
        original_sequence_number: int = -1,
        /,
    ) -> int: ...

# rtc/native/inbound.c

INBOUND_HANDLED: int
INBOUND_PASS: int
INBOUND_UNREADABLE: int
INBOUND_IGNORED: int

def parse_rtp(data: bytes, abs_send_time_id: int | None = None, /) -> RtpView | None: ...

class NackGenerator:
    max_seq: int | None
    missing: set[int]
    def add(self, sequence_number: int, /) -> bool: ...

class Receiver:
    def __init__(
        self,
        handler: Callable[[Any, RtpView], object],
        fanout: object = None,
        on_nack: Callable[[int, list[int]], object] | None = None,
        on_remb: Callable[[int, list[int]], object] | None = None,
    ) -> None: ...

class Stream:
    base_seq: int | None
    max_seq: int | None
    cycles: int
    packets_received: int
    _clockrate: int
    _jitter_q4: int
    _last_arrival: int | None
    _last_timestamp: int | None
    _expected_prior: int
    _received_prior: int
    @property
    def ssrc(self) -> int: ...
    @property
    def packets_expected(self) -> int: ...
    @property
    def packets_lost(self) -> int: ...
    @property
    def fraction_lost(self) -> int: ...
    @property
    def jitter(self) -> int: ...
    def __init__(
        self,
        receiver: Receiver,
        ssrc: int,
        clockrate: int,
        codec: object,
        rtx: tuple[int, int] | None = None,
    ) -> None: ...
    def add(self, packet: Any, /) -> None: ...
    def add_at(self, sequence_number: int, timestamp: int, arrival: int, /) -> None: ...

class Inbound:
    srtp: SrtpContext | None
    abs_send_time_id: int | None
    unreadable: int
    ignored: int
    truncated: int
    drained: int
    @property
    def streams(self) -> dict[int, Stream]: ...
    def __init__(
        self, max_streams: int, learn: Callable[[bytes], Stream | None], ready: Callable[[], bool]
    ) -> None: ...
    def datagram(self, data: bytes, /) -> int: ...
    def datagram_received(
        self, original: Callable[[bytes, Any], object], data: bytes, addr: Any, /
    ) -> None: ...
    def drain(
        self,
        fd: int,
        original: Callable[[bytes, Any], object],
        error_received: Callable[[OSError], object],
        /,
    ) -> None: ...

# rtc/native/frames.c
FRAME_MAX_SIZE: int

class FrameAssembler:
    @property
    def incomplete(self) -> int: ...
    def __init__(self, video: bool, vp8: bool) -> None: ...
    def add(
        self, payload: bytes, sequence_number: int, timestamp: int, marker: bool, /
    ) -> tuple[bytes, int, bool] | None: ...

def freeze_clock(monotonic: float | None, wall: float | None, /) -> None: ...

class Lane:
    """One Subscriber with its PacketSender, rewriting, sealing and sending in C."""

    active: bool
    ready: bool
    video: bool
    vp8: bool
    need_start: bool
    clock: int
    last_out: int | None
    last_out_at: float
    sequence_number: int
    rtx_sequence_number: int
    destination: Destination | None
    on_keyframe_wanted: Callable[[], object] | None
    @property
    def payload_type(self) -> int: ...
    @property
    def forwarded(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def packets(self) -> int: ...
    @property
    def octets(self) -> int: ...
    @property
    def ntp(self) -> int: ...
    @property
    def rtp_timestamp(self) -> int: ...
    @property
    def send_dropped(self) -> int: ...
    @property
    def send_errors(self) -> int: ...
    @property
    def retransmitted(self) -> int: ...
    def configure(
        self,
        writer: HeaderWriter,
        rtx_writer: HeaderWriter | None,
        srtp: SrtpContext,
        payload_type: int,
        rtx_payload_type: int | None,
        transmit: Callable[[bytes], bool] | None,
    ) -> None: ...
    def push(
        self, sequence_number: int, timestamp: int, marker: bool, payload: bytes, keyframe: bool, /
    ) -> None: ...
    def send(
        self,
        payload: bytes,
        marker: bool,
        timestamp: int,
        sequence_number: int | None = None,
        picture_id: int = -1,
    ) -> bool: ...
    def retransmit(self, sequence_number: int, /) -> bool: ...
    def restart(self) -> None: ...

class Fanout:
    """One source's fan-out to its lanes, with its counters and frames built in C."""

    python_sinks: bool
    frames_wanted: bool
    on_frames: Callable[[list[tuple[builtins.bytes, int, bool]]], object] | None
    @property
    def lanes(self) -> tuple[Lane | PipeOut, ...]: ...
    @property
    def frames(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def last_packet_at(self) -> float | None: ...
    @property
    def assembles(self) -> bool: ...
    @property
    def incomplete(self) -> int: ...
    def push(
        self, sequence_number: int, timestamp: int, marker: bool, payload: builtins.bytes, /
    ) -> bool: ...
    def set_codec(self, payload_type: int, name: str, video: bool, /) -> None: ...
    def set_lanes(self, lanes: tuple[Lane | PipeOut, ...], /) -> None: ...
    def flush(self) -> None: ...

PIPE_MAX_STREAMS: int

class PipeReader:
    """The receiving side of the pipe between nodes (rtc/native/pipe_in.c)."""

    def __init__(
        self,
        mac_key: builtins.bytes | None,
        derive: Callable[[builtins.bytes], builtins.bytes] | None,
        on_message: Callable[[str, int, int, int, builtins.bytes], object],
    ) -> None: ...
    @property
    def received(self) -> int: ...
    @property
    def messages_received(self) -> int: ...
    @property
    def dropped(self) -> dict[str, int]: ...
    @property
    def streams(self) -> int: ...
    @property
    def epochs(self) -> int: ...
    @property
    def windows(self) -> int: ...
    def add_stream(
        self, host: str, port: int, stream_id: int, fanout: Fanout | None, publisher: object, /
    ) -> None: ...
    def remove_stream(self, host: str, port: int, stream_id: int, /) -> bool: ...
    def receive(self, data: builtins.bytes, host: str, port: int, /) -> None: ...
    def drain(self, fd: int, limit: int, /) -> int: ...
    def close(self) -> None: ...

class PipeDestination:
    """One destination node of a PipeWriter: its address and its batch."""

    @property
    def to(self) -> tuple[str, int]: ...
    @property
    def room(self) -> int: ...
    @property
    def queued(self) -> int: ...

class PipeWriter:
    """A PipeEndpoint's batching, sealing and sending (rtc/native/pipe_out.c)."""

    transmit: Callable[[builtins.bytes, tuple[str, int]], object] | None
    def __init__(
        self,
        fd: int,
        epoch: builtins.bytes,
        key: builtins.bytes,
        encrypt: bool,
        on_pending: Callable[[], object],
    ) -> None: ...
    @property
    def epoch(self) -> builtins.bytes: ...
    @property
    def closed(self) -> bool: ...
    @property
    def counter(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def messages_sent(self) -> int: ...
    @property
    def errors(self) -> int: ...
    def destination(self, host: str, port: int, room: int, /) -> PipeDestination: ...
    def queue(
        self, destination: PipeDestination, head: builtins.bytes, body: builtins.bytes, /
    ) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...

class PipeOut:
    """One stream sent over the pipe: _OutgoingStream.push_packet in C, a Fanout member."""

    active: bool
    def __init__(
        self, writer: PipeWriter, destination: PipeDestination, stream_id: int
    ) -> None: ...
    @property
    def stream_id(self) -> int: ...
    @property
    def restarting(self) -> bool: ...
    def push(
        self,
        sequence_number: int,
        timestamp: int,
        marker: bool,
        payload_type: int,
        payload: builtins.bytes,
        keyframe: bool,
        /,
    ) -> None: ...
    def set_codec(self, body: builtins.bytes, announce: bool, /) -> None: ...
    def send_codec(self) -> None: ...
    def restart(self) -> None: ...

class RembEstimator:
    """aiortc.rate.RemoteBitrateEstimator in C (rtc/native/remb.c): the same results."""

    def __init__(self) -> None: ...
    def add(
        self, arrival_time_ms: int, abs_send_time: int, payload_size: int, ssrc: int
    ) -> tuple[int, list[int]] | None: ...
    def _c_add(
        self,
        abs_send_time: int,
        arrival_time_ms: int,
        payload_size: int,
        ssrc: int,
        capacity: int,
        /,
    ) -> tuple[int, list[int]] | None: ...
