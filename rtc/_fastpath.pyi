"""Types of the C module rtc/_fastpath.c (see there for what it does)."""

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
