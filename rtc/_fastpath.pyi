"""Types of the C module rtc/_fastpath.c (see there for what it does)."""

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
