"""Which packet path forwards RTP: the C module (rtc/_fastpath.c) or pure Python.

Both do the same thing with the same bytes on the wire (tests/test_fastpath.py
compares them); the native one does SRTP and header writing in C. It is
optional: where it was not built the relay runs the Python path.

RR_PACKET_PATH chooses: `native` (fail at start if the module is missing),
`python`, or `auto` (the default: native when built). Connections read the
choice when they start; `select` changes it for the ones after (tests run
every packet-path test both ways).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rtc._fastpath import (
        Destination,
        Fanout,
        HeaderWriter,
        Inbound,
        Lane,
        PipeDestination,
        PipeOut,
        PipeReader,
        PipeWriter,
        Receiver,
        SrtpContext,
        Stream,
    )

Mode = Literal["auto", "native", "python"]
MODES: tuple[Mode, ...] = ("auto", "native", "python")


class PacketPathError(RuntimeError):
    """RR_PACKET_PATH asks for something this install cannot do."""


def _load() -> ModuleType | None:
    try:
        from rtc import _fastpath
    except ImportError:
        return None
    return _fastpath


_MODULE = _load()
_native: ModuleType | None = None


def select(mode: str) -> None:
    """Use `mode` for connections that start from now on."""
    global _native
    if mode not in MODES:
        raise PacketPathError(f"RR_PACKET_PATH={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "native" and _MODULE is None:
        raise PacketPathError(
            "RR_PACKET_PATH=native but rtc/_fastpath.c is not built "
            "(make builds it; it needs a C compiler and libssl-dev)"
        )
    _native = _MODULE if mode != "python" else None


def srtp_context(profile: int, key_and_salt: bytes, outbound: bool) -> SrtpContext | None:
    """A native SRTP context for one direction, or None on the Python path."""
    if _native is None:
        return None
    context: SrtpContext = _native.SrtpContext(profile, key_and_salt, outbound)
    return context


def header_writer(
    ssrc: int, mid: str | None, mid_id: int | None, abs_id: int | None
) -> HeaderWriter | None:
    """A native header writer for one outgoing stream, or None on the Python path."""
    if _native is None:
        return None
    writer: HeaderWriter = _native.HeaderWriter(ssrc, mid, mid_id, abs_id)
    return writer


def enabled() -> bool:
    """Whether connections starting now use the native path."""
    return _native is not None


def destination(fd: int, host: str, port: int) -> Destination | None:
    """Where the native path sends itself (a UDP socket and a numeric address), or None
    on the Python path. ValueError for an address it cannot parse."""
    if _native is None:
        return None
    made: Destination = _native.Destination(fd, host, port)
    return made


# What Inbound.datagram returns for a datagram that is not its to take (not RTP,
# or before the keys): the caller passes it on (rtc/native/inbound.c).
INBOUND_PASS = 1


def inbound(
    max_streams: int, learn: Callable[[bytes], Stream | None], ready: Callable[[], bool]
) -> Inbound | None:
    """A native inbound path for one DTLS transport, or None on the Python path."""
    if _native is None:
        return None
    made: Inbound = _native.Inbound(max_streams, learn, ready)
    return made


def inbound_receiver(
    handler: Callable[[Any, Any], None],
    fanout: object,
    on_nack: Callable[[int, list[int]], None] | None,
    on_remb: Callable[[int, list[int]], None] | None,
) -> Receiver:
    """Where one receiver's packets go on the native path, with its NACK and REMB state."""
    assert _native is not None
    made: Receiver = _native.Receiver(handler, fanout, on_nack, on_remb)
    return made


def inbound_stream(
    receiver: Receiver, ssrc: int, clockrate: int, codec: object, rtx: tuple[int, int] | None
) -> Stream:
    """One inbound SSRC on the native path (its statistics stand in for aiortc's)."""
    assert _native is not None
    made: Stream = _native.Stream(receiver, ssrc, clockrate, codec, rtx)
    return made


def is_fanout(o: object) -> bool:
    """Whether `o` is a native fan-out (rtc/native/fanout.c) this path can push to."""
    fanout = getattr(_native, "Fanout", None)
    return fanout is not None and isinstance(o, fanout)


def lane() -> Lane | None:
    """A native lane (one subscriber's rewriting and sending), or None on the Python path."""
    if _native is None:
        return None
    made: Lane = _native.Lane()
    return made


def fanout() -> Fanout | None:
    """A native fan-out for one source, or None on the Python path."""
    if _native is None:
        return None
    made: Fanout = _native.Fanout()
    return made


def pipe_reader(
    mac_key: bytes | None,
    derive: Callable[[bytes], bytes] | None,
    on_message: Callable[[str, int, int, int, bytes], object],
) -> PipeReader | None:
    """The native receiving side of a pipe endpoint (rtc/native/pipe_in.c), or None on the
    Python path. `mac_key` for HMAC tags, or `derive(epoch) -> key` for AES-GCM."""
    if _native is None:
        return None
    made: PipeReader = _native.PipeReader(mac_key, derive, on_message)
    return made


def pipe_writer(
    fd: int, epoch: bytes, key: bytes, encrypt: bool, on_pending: Callable[[], object]
) -> PipeWriter | None:
    """A native sender for a pipe endpoint's socket (rtc/native/pipe_out.c), or None on
    the Python path. `key`: the HMAC key, or with `encrypt` the epoch's AES-128-GCM key."""
    if _native is None:
        return None
    made: PipeWriter = _native.PipeWriter(fd, epoch, key, encrypt, on_pending)
    return made


def pipe_out(writer: PipeWriter, destination: PipeDestination, stream_id: int) -> PipeOut:
    """One stream `writer` sends to `destination`: a member of its source's fan-out."""
    assert _MODULE is not None  # a writer exists, so the module does
    made: PipeOut = _MODULE.PipeOut(writer, destination, stream_id)
    return made


def name() -> str:
    """What forwards now, for logs and the benchmark: "native" or "python"."""
    return "native" if _native is not None else "python"


select(os.environ.get("RR_PACKET_PATH", "auto"))
