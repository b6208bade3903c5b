"""Every use of aiortc's private names, in one place.

aiortc always decodes what it receives and has no public API for encoded
frames (aiortc issues #449, #544). The relay needs these things aiortc keeps
private:

1. the complete encoded frames its receiver reassembles (we replace the
   receiver's decoder queue with a `ReceiverTap`, which sees each frame on the
   event loop before deciding whether the decoder thread gets it at all);
2. sending a PLI upstream to the publisher's browser;
3. catching the PLI/FIR a subscriber's browser sends to our sender, which
   aiortc would otherwise turn into a "force keyframe" flag that packets ignore;
4. the codec negotiated for a transceiver;
5. packet-level forwarding (`receive_packets`, `PacketSender`): RTP packets
   are taken at the ICE connection, decrypted with the DTLS transport's SRTP
   session and handed over as they are, while aiortc's receiver still gets
   what its RTCP needs (statistics, NACK, REMB); on the way out, the sender's
   RTP loop and retransmission are replaced by ours, which write the header,
   encrypt and send on the nominated ICE pair, and keep the counters aiortc's
   sender reports are built from.

tests/test_aiortc_seam.py exercises each of these against the installed aiortc,
so an upgrade that renames or reshapes them fails loudly there. setup.cfg pins
aiortc to the minor version those tests pass on.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
import queue
import random
import time
from array import array
from asyncio.selector_events import _SelectorDatagramTransport  # type: ignore[attr-defined]
from collections.abc import Callable, Sequence
from socket import SOCK_DGRAM
from typing import TYPE_CHECKING, Any, Protocol

import pylibsrtp
from aioice import Candidate, Connection, stun
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, get_host_addresses
from aiortc import (
    RTCDtlsTransport,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
)
from aiortc.codecs import is_rtx
from aiortc.exceptions import InvalidStateError
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError
from aiortc.rate import RateBucket, RateCounter
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtpPacket,
    pack_remb_fci,
)
from av.frame import Frame

from rtc import mux, packet_path, rtp

if TYPE_CHECKING:
    from rtc._fastpath import Destination, HeaderWriter, Lane, Receiver, SrtpContext, Stream

logger = logging.getLogger(__name__)

# Private attribute names, spelled out so a reader can grep aiortc for them.
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"
_DECODER_THREAD = "_RTCRtpReceiver__decoder_thread"
_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"
_REMOTE_STREAMS = "_RTCRtpReceiver__remote_streams"
_RTX_SSRC = "_RTCRtpReceiver__rtx_ssrc"
_SEND_PLI = "_send_rtcp_pli"
_SEND_KEYFRAME = "_send_keyframe"
_CODECS = "_codecs"
# Packet-level forwarding.
_ICE_CONNECTION = "_connection"  # RTCIceTransport -> aioice.Connection
_NOMINATED = "_nominated"  # aioice.Connection: component -> CandidatePair
_PROTOCOLS = "_protocols"  # aioice.Connection: one StunProtocol per local socket
_GATHERING_STARTED = "_local_candidates_start"  # aioice.Connection
_DTLS_STATE = "_state"
# What aiortc's `_setup_srtp` derives the SRTP keys from (see `srtp_key_material`).
_DTLS_SSL = "_ssl"
_DTLS_ROLE = "_role"
_DTLS_SRTP_PROFILES = "_srtp_profiles"
_RX_SRTP = "_rx_srtp"
_TX_SRTP = "_tx_srtp"
_ROUTER = "_rtp_router"
_EXTENSIONS_MAP = "_rtp_header_extensions_map"
_EXTENSION_IDS = "_HeaderExtensionsMap__ids"
_RECEIVER_CODECS = "_RTCRtpReceiver__codecs"
_NACK_GENERATOR = "_RTCRtpReceiver__nack_generator"
_BITRATE_ESTIMATOR = "_RTCRtpReceiver__remote_bitrate_estimator"
_RTCP_SSRC = "_RTCRtpReceiver__rtcp_ssrc"
_RUN_RTP = "_run_rtp"
_RETRANSMIT = "_retransmit"
_NEXT_ENCODED_FRAME = "_next_encoded_frame"
_RTX_SSRC_OUT = "_rtx_ssrc"
_SENDER_MID = "_RTCRtpSender__mid"
_SENDER_EXTENSIONS_MAP = "_RTCRtpSender__rtp_header_extensions_map"
_SENDER_RTX_PT = "_RTCRtpSender__rtx_payload_type"
_SENDER_RTP_STARTED = "_RTCRtpSender__rtp_started"
_SENDER_RTP_EXITED = "_RTCRtpSender__rtp_exited"
_SENDER_ENCODER = "_RTCRtpSender__encoder"
# What aiortc's RTCP sender reports are built from.
_SENDER_NTP = "_RTCRtpSender__ntp_timestamp"
_SENDER_RTP_TIMESTAMP = "_RTCRtpSender__rtp_timestamp"
_SENDER_OCTETS = "_RTCRtpSender__octet_count"
_SENDER_PACKETS = "_RTCRtpSender__packet_count"
# asyncio's UDP transport, whose reader the native path replaces (see `_Inbound._take_reader`).
_TRANSPORT_LOOP = "_loop"
_TRANSPORT_FD = "_sock_fd"
_TRANSPORT_CLOSED = "_conn_lost"
_LOOP_ADD_READER = "_add_reader"  # without add_reader's check that no transport owns the fd
_LOOP_REMOVE_READER = "_remove_reader"
# The task setRemoteDescription starts and nobody awaits (name-mangled, so its qualname).
_CONNECT_TASK = "RTCPeerConnection.__connect"
# StreamStatistics' state, carried onto the native Stream that replaces one.
_STREAM_STATISTICS_FIELDS = (
    "base_seq",
    "max_seq",
    "cycles",
    "packets_received",
    "_jitter_q4",
    "_last_arrival",
    "_last_timestamp",
    "_expected_prior",
    "_received_prior",
)

# Decoded-on-demand frames waiting for aiortc's decoder thread. Beyond this the
# decoder is behind; dropping is better than growing.
DECODER_BACKLOG = 8


class SeamError(RuntimeError):
    """The installed aiortc no longer has the private names this module relies on."""


class EncodedFrameLike(Protocol):
    """What aiortc's jitter buffer produces: one complete encoded frame."""

    data: bytes
    timestamp: int


FrameHandler = Callable[[RTCRtpCodecParameters, EncodedFrameLike], None]


class ReceiverTap:
    """Stands in for an `RTCRtpReceiver`'s decoder queue.

    aiortc calls `put((codec, frame))` on the event loop for every reassembled
    frame, and its decoder thread calls `get()`. Frames go to `on_frame`
    first; the decoder thread only sees them while `decode` is on, so
    passthrough costs no decoding at all.
    """

    def __init__(self, receiver: RTCRtpReceiver, on_frame: FrameHandler) -> None:
        self._receiver = receiver
        self._on_frame = on_frame
        self._decoder_input: queue.Queue[Any] = queue.Queue()
        self.decode = False
        self.decoder_drops = 0

    def put(self, item: Any) -> None:
        if item is None:
            # aiortc's way of ending the decoder thread: always pass it on.
            self._decoder_input.put(None)
            return
        codec, frame = item
        try:
            self._on_frame(codec, frame)
        except Exception:
            # A bug in forwarding must not kill aiortc's receive path.
            logger.exception("frame handler failed")
        if self.decode:
            if self._decoder_input.qsize() < DECODER_BACKLOG:
                self._decoder_input.put(item)
            else:
                self.decoder_drops += 1

    def decode_frame(self, codec: RTCRtpCodecParameters, data: bytes, timestamp: int) -> None:
        """Give aiortc's decoder thread a frame reassembled outside aiortc (see `receive_packets`)."""
        if not self.decode:
            return
        if self._decoder_input.qsize() < DECODER_BACKLOG:
            self._decoder_input.put((codec, JitterFrame(data=data, timestamp=timestamp)))
        else:
            self.decoder_drops += 1

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self._decoder_input.get(block, timeout)

    def qsize(self) -> int:
        return self._decoder_input.qsize()

    async def next_decoded(self) -> Frame:
        """The next frame aiortc's decoder thread produced (only while `decode` is on).

        Raises MediaStreamError when the receiver has ended.
        """
        frame = await self._receiver.track.recv()
        assert isinstance(frame, Frame)
        return frame

    async def request_keyframe(self) -> int:
        """Send a PLI upstream for every media stream; returns how many were asked."""
        return await send_pli(self._receiver)

    def receive_packets(
        self,
        handler: PacketHandler,
        fanout: object = None,
        on_python_packet: PacketHandler | None = None,
    ) -> None:
        """See the module function `receive_packets`."""
        receive_packets(self._receiver, handler, fanout, on_python_packet)


class PromptJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, but a frame leaves as soon as it is complete.

    aiortc's own buffer only knows a frame is complete when the first packet
    of the *next* frame arrives, which holds every frame back one frame
    interval (33 ms at 30 fps) before the relay can forward it. A video frame
    is complete when the contiguous packets from its first one reach the
    packet carrying the RTP marker bit (RFC 7741 / RFC 6184: last packet of
    the frame); an audio packet is a whole frame by itself.
    """

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        packets: list[RtpPacket] = []
        timestamp: int | None = None
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]  # type: ignore[operator]
            if packet is None:
                return None
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:
                # The previous frame ended without a marker (lost or a sender
                # that does not set it): it is complete all the same.
                return self._release(packets, timestamp, count)
            packets.append(packet)
            if packet.marker or not self._is_video:
                return self._release(packets, timestamp, count + 1)
        return None

    def _release(self, packets: list[RtpPacket], timestamp: int, count: int) -> JitterFrame:
        self.remove(count)
        return JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)  # type: ignore[attr-defined]


class CompactRateCounter(RateCounter):
    """aiortc's `RateCounter` (1 ms buckets over a window) with its buckets in two arrays.

    aiortc keeps one `RateBucket` object per millisecond: 1000 per video
    receiver, 2000 per pair, about half the objects a pair leaves for the
    garbage collector to walk in every full collection (issue 14), and a new
    1000 on every `reset()` (after a second without packets). The same
    arithmetic on two arrays of integers leaves it none.
    """

    def reset(self) -> None:
        size = self._window_size
        self._counts = array("q", bytes(8 * size))
        self._values = array("q", bytes(8 * size))
        self._origin_index = 0
        self._origin_ms = None
        self._total = RateBucket()

    def add(self, value: int, now_ms: int) -> None:
        if self._origin_ms is None:
            self._origin_ms = now_ms
        else:
            self._erase_old(now_ms)
        index = (self._origin_index + now_ms - self._origin_ms) % self._window_size
        self._counts[index] += 1
        self._values[index] += value
        self._total.count += 1
        self._total.value += value

    def _erase_old(self, now_ms: int) -> None:
        assert self._origin_ms is not None
        new_origin_ms = now_ms - self._window_size + 1
        counts, values, total = self._counts, self._values, self._total
        while self._origin_ms < new_origin_ms:
            index = self._origin_index
            total.count -= counts[index]
            total.value -= values[index]
            counts[index] = 0
            values[index] = 0
            self._origin_index = (index + 1) % self._window_size
            self._origin_ms += 1


def _compact_rate_counter(receiver: RTCRtpReceiver) -> None:
    """Give a video receiver's bitrate estimator a `CompactRateCounter` (audio has none)."""
    estimator = getattr(receiver, _BITRATE_ESTIMATOR)
    if estimator is None:
        return
    _require(estimator, "incoming_bitrate")
    old = estimator.incoming_bitrate
    for name in ("_window_size", "_scale", "_origin_ms", "_total"):
        _require(old, name)
    estimator.incoming_bitrate = CompactRateCounter(old._window_size, old._scale)


def _require(obj: object, name: str) -> None:
    if not hasattr(obj, name):
        raise SeamError(
            f"aiortc changed: {type(obj).__name__} has no '{name}'; rtc/aiortc_seam.py needs updating"
        )


def tap_receiver(receiver: RTCRtpReceiver, on_frame: FrameHandler) -> ReceiverTap:
    """Route `receiver`'s encoded frames to `on_frame`.

    Must run before the receiver starts (aiortc starts it once DTLS is up,
    after the answer is created), because the decoder thread captures the
    queue when it starts.
    """
    _require(receiver, _DECODER_QUEUE)
    _require(receiver, _DECODER_THREAD)
    if getattr(receiver, _DECODER_THREAD) is not None:
        raise SeamError("tap_receiver() called after the receiver started")
    tap = ReceiverTap(receiver, on_frame)
    setattr(receiver, _DECODER_QUEUE, tap)
    # Forward each frame as soon as it is complete (see PromptJitterBuffer);
    # the browser that finally plays it has its own jitter buffer.
    _require(receiver, _JITTER_BUFFER)
    old = getattr(receiver, _JITTER_BUFFER)
    for name in ("_capacity", "_is_video", "_packets", "_origin"):
        _require(old, name)
    setattr(
        receiver,
        _JITTER_BUFFER,
        PromptJitterBuffer(capacity=old._capacity, prefetch=0, is_video=old._is_video),
    )
    _require(receiver, _BITRATE_ESTIMATOR)
    _compact_rate_counter(receiver)
    return tap


def media_ssrcs(receiver: RTCRtpReceiver) -> list[int]:
    """SSRCs of the media (not retransmission) streams this receiver has seen."""
    _require(receiver, _REMOTE_STREAMS)
    _require(receiver, _RTX_SSRC)
    rtx: dict[int, int] = getattr(receiver, _RTX_SSRC)
    streams: dict[int, object] = getattr(receiver, _REMOTE_STREAMS)
    return [ssrc for ssrc in streams if ssrc not in rtx]


async def send_pli(receiver: RTCRtpReceiver) -> int:
    """Ask the publisher's browser for a keyframe; returns how many streams were asked."""
    _require(receiver, _SEND_PLI)
    ssrcs = media_ssrcs(receiver)
    for ssrc in ssrcs:
        await getattr(receiver, _SEND_PLI)(ssrc)
    return len(ssrcs)


def on_keyframe_request(sender: RTCRtpSender, handler: Callable[[], None]) -> Callable[[], None]:
    """Call `handler` when the remote browser sends PLI or FIR to `sender`.

    Returns aiortc's own behaviour (force the encoder's next frame to be a
    keyframe), which only matters when the relay re-encodes.
    """
    _require(sender, _SEND_KEYFRAME)
    original: Callable[[], None] = getattr(sender, _SEND_KEYFRAME)
    setattr(sender, _SEND_KEYFRAME, handler)
    return original


def negotiated_codec(transceiver: RTCRtpTransceiver) -> RTCRtpCodecParameters | None:
    """The codec both sides agreed to send with (first of the common codecs)."""
    _require(transceiver, _CODECS)
    codecs: list[RTCRtpCodecParameters] = getattr(transceiver, _CODECS)
    return codecs[0] if codecs else None


# -- packet-level forwarding -------------------------------------------------

# More RTP streams than this on one connection is not a browser: new SSRCs
# beyond it are ignored rather than remembered.
MAX_STREAMS_PER_TRANSPORT = 16
# Bytes waiting in a UDP socket's user-space buffer (asyncio keeps what the
# kernel would not take). Past this a packet is dropped, not queued.
MAX_SEND_BUFFER = 256 * 1024
# Outgoing packets kept for retransmission on NACK (about 2 s of video at 1 Mbit/s).
SEND_HISTORY = 512
# How often the native path looks at where to send and copies its counters to aiortc
# (PacketSender._check_lane).
LANE_CHECK_INTERVAL = 0.25

PacketHandler = Callable[[RTCRtpCodecParameters, rtp.RtpView], None]


def _send_datagram(connection: Any, data: bytes) -> bool:
    """Send on the ICE connection's nominated pair without aioice's coroutine per packet."""
    pair = getattr(connection, _NOMINATED).get(1)
    if pair is None:
        return False
    transport = pair.protocol.transport
    buffered = getattr(transport, "get_write_buffer_size", None)
    if buffered is not None and buffered() > MAX_SEND_BUFFER:
        return False
    transport.sendto(data, pair.remote_addr)
    return True


def srtp_key_material(dtls: RTCDtlsTransport) -> tuple[int, bytes, bytes] | None:
    """(libsrtp profile number, our key+salt, the remote's key+salt) of a connected transport.

    The same derivation as aiortc's private `RTCDtlsTransport._setup_srtp`
    (RFC 5764 section 4.2: the DTLS exporter, client's key first), which builds
    its pylibsrtp sessions from it and keeps the keys to itself. The native
    packet path (rtc/_fastpath.c) needs them for its own SRTP contexts. None
    before the handshake has finished.
    """
    for name in (_DTLS_SSL, _DTLS_ROLE, _DTLS_SRTP_PROFILES):
        _require(dtls, name)
    if getattr(dtls, _RX_SRTP) is None:
        return None
    ssl = getattr(dtls, _DTLS_SSL)
    selected = ssl.get_selected_srtp_profile()
    for profile in getattr(dtls, _DTLS_SRTP_PROFILES):
        for name in ("openssl_profile", "libsrtp_profile", "key_length", "salt_length"):
            _require(profile, name)
        if profile.openssl_profile == selected:
            break
    else:
        return None
    material = ssl.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length)
    )
    client = profile.get_key_and_salt(material, 0)
    server = profile.get_key_and_salt(material, 1)
    ours, theirs = (server, client) if getattr(dtls, _DTLS_ROLE) == "server" else (client, server)
    return int(profile.libsrtp_profile), ours, theirs


def _native_srtp(dtls: RTCDtlsTransport, outbound: bool) -> SrtpContext | None:
    """A native SRTP context for one direction of `dtls`, if the native path is on."""
    if not packet_path.enabled():
        return None
    keys = srtp_key_material(dtls)
    if keys is None:
        return None
    profile, ours, theirs = keys
    return packet_path.srtp_context(profile, ours if outbound else theirs, outbound)


def _is_rtp(data: bytes) -> bool:
    """RTP rather than RTCP, DTLS or STUN (RFC 7983; RTCP has payload types 192-208)."""
    return len(data) >= 12 and 127 < data[0] < 192 and not 192 <= data[1] <= 208


class _InboundStream:
    """One SSRC arriving on a connection, and the receiver it belongs to."""

    __slots__ = (
        "_codec",
        "_estimator",
        "_handler",
        "_inbound",
        "_nack",
        "_receiver",
        "_rtx",
        "_stats",
    )

    def __init__(
        self,
        inbound: _Inbound,
        receiver: RTCRtpReceiver,
        handler: PacketHandler,
        codec: RTCRtpCodecParameters,
        ssrc: int,
        rtx: tuple[int, int] | None,
    ) -> None:
        self._inbound = inbound
        self._receiver = receiver
        self._handler = handler
        self._codec = codec
        # The same statistics object aiortc's receiver builds its receiver reports from.
        streams: dict[int, StreamStatistics] = getattr(receiver, _REMOTE_STREAMS)
        stats = streams.get(ssrc)
        if stats is None:
            stats = streams[ssrc] = StreamStatistics(codec.clockRate)
        self._stats = stats
        self._nack = getattr(receiver, _NACK_GENERATOR)
        self._estimator = getattr(receiver, _BITRATE_ESTIMATOR)
        self._rtx = rtx  # (original payload type, original SSRC) for a retransmission stream

    def receive(self, view: rtp.RtpView) -> None:
        self._stats.add(view)  # type: ignore[arg-type]
        estimator = self._estimator
        if estimator is not None and view.abs_send_time is not None:
            remb = estimator.add(
                abs_send_time=view.abs_send_time,
                arrival_time_ms=int(time.time() * 1000),
                payload_size=len(view.payload) + view.padding_size,
                ssrc=view.ssrc,
            )
            if remb is not None:
                self._inbound.send_feedback(self._receiver, RTCP_PSFB_APP, 0, pack_remb_fci(*remb))
        if self._rtx is not None:
            original = rtp.unwrap_rtx(view, *self._rtx)
            if original is None:  # padding only: a bandwidth probe
                return
            view = original
        nack = self._nack
        if nack is not None:
            last = nack.max_seq
            if (
                last is not None
                and view.sequence_number == (last + 1) & 0xFFFF
                and not nack.missing
            ):
                # The common case, with the same effect as nack.add(): in order, nothing missing.
                nack.max_seq = view.sequence_number
            elif nack.add(view):
                self._inbound.send_nack(self._receiver, view.ssrc, sorted(nack.missing))
        if view.payload:
            self._handler(self._codec, view)


class _Inbound:
    """Takes SRTP packets off one ICE connection before aioice queues them for aiortc.

    aiortc would hand each packet through a queue, a task switch, a full parse,
    a jitter buffer and a depacketizer before anyone saw it. Here a packet is
    decrypted and handed to its receiver's handler in the same call that read
    it from the socket. DTLS, STUN and RTCP still go aiortc's way.

    Two implementations of the same steps: the Python path (`_InboundStream`,
    one Python call chain per packet) and the native one (rtc/native/inbound.c:
    the socket is read, packets decrypted, parsed, counted and handed on in C,
    with aiortc's receiver reading its statistics from the C `Stream`s).
    """

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self._dtls = dtls
        self._connection = getattr(dtls.transport, _ICE_CONNECTION)
        _require(self._connection, "data_received")
        _require(self._connection, _NOMINATED)
        self._pass_on: Callable[[bytes, int], None] = self._connection.data_received
        # Packets from sockets not hooked below still arrive here.
        self._connection.data_received = self._data_received
        # On the native path (rtc/native/inbound.c) a datagram goes from the socket
        # to its source's fan-out in one C call; Python hears only of new SSRCs,
        # NACKs and REMBs to send, and packets a Python sink must see.
        self._inbound = packet_path.inbound(
            MAX_STREAMS_PER_TRANSPORT, self._learn_native, self._native_ready
        )
        # aioice tries to parse every datagram as STUN before handing it on;
        # RTP cannot be STUN (RFC 7983 section 7), so skip that on each socket.
        for protocol in getattr(self._connection, _PROTOCOLS):
            if self._inbound is not None:
                self._take_reader(protocol, protocol.datagram_received)
                protocol.datagram_received = functools.partial(
                    self._inbound.datagram_received, protocol.datagram_received
                )
            else:
                protocol.datagram_received = self._skip_stun(protocol.datagram_received)
        self._handlers: dict[RTCRtpReceiver, PacketHandler] = {}
        self._receivers: dict[RTCRtpReceiver, Receiver] = {}
        self._streams: dict[int, _InboundStream] = {}
        # aiortc's header extension ids for this transport: filled in when its receivers
        # and senders start (after receive_packets is called), so read on each packet
        # (natively: each time a new SSRC is routed, which its receiver's start allows).
        self._extension_ids = getattr(getattr(dtls, _EXTENSIONS_MAP), _EXTENSION_IDS)
        self._unreadable = 0
        self._ignored = 0

    @property
    def unreadable(self) -> int:
        """RTP datagrams SRTP or the parser refused."""
        return self._unreadable + (self._inbound.unreadable if self._inbound is not None else 0)

    @property
    def ignored(self) -> int:
        """RTP packets of SSRCs no receiver takes (or beyond MAX_STREAMS_PER_TRANSPORT)."""
        return self._ignored + (self._inbound.ignored if self._inbound is not None else 0)

    def add(
        self,
        receiver: RTCRtpReceiver,
        handler: PacketHandler,
        fanout: object = None,
        on_python_packet: PacketHandler | None = None,
    ) -> None:
        self._handlers[receiver] = handler
        if self._inbound is None:
            return
        native_fanout = fanout if packet_path.is_fanout(fanout) else None
        self._receivers[receiver] = packet_path.inbound_receiver(
            handler if native_fanout is None or on_python_packet is None else on_python_packet,
            native_fanout,
            functools.partial(self.send_nack, receiver)
            if getattr(receiver, _NACK_GENERATOR) is not None
            else None,
            functools.partial(self._send_remb, receiver)
            if getattr(receiver, _BITRATE_ESTIMATOR) is not None
            else None,
        )

    def _take_reader(self, protocol: Any, original: Callable[[bytes, Any], None]) -> None:
        """Read an aioice socket of this connection from C, every datagram waiting per
        wake-up (recvmmsg(2)), where asyncio reads one per event-loop turn.

        Only a plain UDP socket asyncio reads with its selector: the media port's
        shared socket, TURN and ICE-TCP keep their readers. The transport still owns
        the socket: closing it (or pausing reading) removes this reader by its fd.
        """
        assert self._inbound is not None
        transport = protocol.transport
        if type(protocol) is not StunProtocol or type(transport) is not _SelectorDatagramTransport:
            return
        sock = transport.get_extra_info("socket")
        if sock is None or sock.type != SOCK_DGRAM or getattr(transport, _TRANSPORT_CLOSED):
            return
        loop = getattr(transport, _TRANSPORT_LOOP)
        fd = getattr(transport, _TRANSPORT_FD)
        getattr(loop, _LOOP_REMOVE_READER)(fd)
        getattr(loop, _LOOP_ADD_READER)(
            fd, self._inbound.drain, fd, original, protocol.error_received
        )

    def _native_ready(self) -> bool:
        """RTP before the native context exists: make it if the DTLS keys are there."""
        assert self._inbound is not None
        if self._dtls._rx_srtp is None:
            return False
        context = _native_srtp(self._dtls, outbound=False)
        if context is None:
            return False
        self._inbound.srtp = context
        return True

    def _learn_native(self, plain: bytes) -> Stream | None:
        """A native Stream for a new SSRC (rtc/native/inbound.c registers it)."""
        view = rtp.parse(plain)
        route = self._route(plain, view) if view is not None else None
        if view is None or route is None:
            return None
        receiver, codec, rtx = route
        native = self._receivers.get(receiver)
        if native is None:
            return None
        # Routed: aiortc has configured this transport's extension ids by now.
        assert self._inbound is not None
        self._inbound.abs_send_time_id = self._extension_ids.abs_send_time
        stream = packet_path.inbound_stream(native, view.ssrc, codec.clockRate, codec, rtx)
        # aiortc's receiver reports and getStats read this in place of a StreamStatistics.
        streams: dict[int, Any] = getattr(receiver, _REMOTE_STREAMS)
        previous = streams.get(view.ssrc)
        if previous is not None:  # aiortc counted packets before us: carry its counts on
            for name in _STREAM_STATISTICS_FIELDS:
                setattr(stream, name, getattr(previous, name))
        streams[view.ssrc] = stream
        return stream

    def _send_remb(self, receiver: RTCRtpReceiver, bitrate: int, ssrcs: list[int]) -> None:
        self.send_feedback(receiver, RTCP_PSFB_APP, 0, pack_remb_fci(bitrate, ssrcs))

    def _skip_stun(self, original: Callable[[bytes, Any], None]) -> Callable[[bytes, Any], None]:
        def datagram_received(data: bytes, addr: Any) -> None:
            srtp = self._dtls._rx_srtp
            if srtp is not None and _is_rtp(data):
                self._receive(srtp, data)
            else:
                original(data, addr)

        return datagram_received

    def _data_received(self, data: bytes, component: int) -> None:
        if self._inbound is not None:
            if self._inbound.datagram(data) == packet_path.INBOUND_PASS:
                self._pass_on(data, component)
            return
        srtp = self._dtls._rx_srtp
        if srtp is not None and _is_rtp(data):
            self._receive(srtp, data)
        else:
            self._pass_on(data, component)

    def _receive(self, srtp: pylibsrtp.Session, data: bytes) -> None:
        try:
            plain = srtp.unprotect(data)
        except pylibsrtp.Error:
            self._unreadable += 1
            return
        self._forward(plain)

    def _forward(self, plain: bytes) -> None:
        view = rtp.parse(plain, self._extension_ids.abs_send_time)
        if view is None:
            self._unreadable += 1
            return
        stream = self._streams.get(view.ssrc)
        if stream is None:
            stream = self._learn(plain, view)
            if stream is None:
                return
        stream.receive(view)

    def _learn(self, plain: bytes, view: rtp.RtpView) -> _InboundStream | None:
        if len(self._streams) >= MAX_STREAMS_PER_TRANSPORT:
            self._ignored += 1
            return None
        route = self._route(plain, view)
        if route is None:
            return None
        receiver, codec, rtx = route
        stream = _InboundStream(self, receiver, self._handlers[receiver], codec, view.ssrc, rtx)
        self._streams[view.ssrc] = stream
        return stream

    def _route(
        self, plain: bytes, view: rtp.RtpView
    ) -> tuple[RTCRtpReceiver, RTCRtpCodecParameters, tuple[int, int] | None] | None:
        """Find the receiver of a new SSRC the way aiortc's router does (MID, SSRC, payload type):
        (receiver, codec, (original payload type, original SSRC) for RTX), or None (counted)."""
        try:
            packet = RtpPacket.parse(plain, getattr(self._dtls, _EXTENSIONS_MAP))
        except ValueError:
            self._unreadable += 1
            return None
        receiver = getattr(self._dtls, _ROUTER).route_rtp(packet)
        if receiver is None or receiver not in self._handlers:
            self._ignored += 1
            return None
        codecs: dict[int, RTCRtpCodecParameters] = getattr(receiver, _RECEIVER_CODECS)
        codec = codecs.get(view.payload_type)
        if codec is None:
            self._ignored += 1
            return None
        rtx = None
        if is_rtx(codec):
            original_ssrc = getattr(receiver, _RTX_SSRC).get(view.ssrc)
            apt = codec.parameters.get("apt")
            if original_ssrc is None or not isinstance(apt, int) or apt not in codecs:
                self._ignored += 1
                return None
            rtx = (apt, original_ssrc)
            codec = codecs[apt]
        return receiver, codec, rtx

    # RTCP feedback the receiver would have sent (aiortc sends its own receiver reports).

    def send_nack(self, receiver: RTCRtpReceiver, media_ssrc: int, lost: list[int]) -> None:
        ssrc = getattr(receiver, _RTCP_SSRC)
        if ssrc is None:
            return
        packet = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=ssrc, media_ssrc=media_ssrc)
        packet.lost = lost
        self._send_rtcp(bytes(packet))

    def send_feedback(
        self, receiver: RTCRtpReceiver, fmt: int, media_ssrc: int, fci: bytes
    ) -> None:
        ssrc = getattr(receiver, _RTCP_SSRC)
        if ssrc is not None:
            self._send_rtcp(
                bytes(RtcpPsfbPacket(fmt=fmt, ssrc=ssrc, media_ssrc=media_ssrc, fci=fci))
            )

    def _send_rtcp(self, data: bytes) -> None:
        srtp = self._dtls._tx_srtp
        if srtp is None or self._dtls._state is not DtlsState.CONNECTED:
            return
        try:
            _send_datagram(self._connection, srtp.protect_rtcp(data))
        except pylibsrtp.Error:
            logger.debug("RTCP feedback could not be protected", exc_info=True)


def receive_packets(
    receiver: RTCRtpReceiver,
    handler: PacketHandler,
    fanout: object = None,
    on_python_packet: PacketHandler | None = None,
) -> None:
    """Hand every RTP packet for `receiver` to `handler`, decrypted, instead of to aiortc.

    Call after the local description is set (when the receiver's transport is
    final) and before media flows. aiortc's receiver keeps its statistics,
    NACKs and REMB, but reassembles and decodes nothing.

    On the native packet path, when `fanout` is a rtc._fastpath.Fanout, packets go
    to it from C, and to `on_python_packet` only when the fan-out says Python must
    see them; otherwise `handler` gets every packet.
    """
    dtls = receiver.transport
    for name in (_DTLS_STATE, _RX_SRTP, _TX_SRTP, _ROUTER, _EXTENSIONS_MAP):
        _require(dtls, name)
    for name in (
        _RECEIVER_CODECS,
        _NACK_GENERATOR,
        _BITRATE_ESTIMATOR,
        _RTCP_SSRC,
        _REMOTE_STREAMS,
        _RTX_SSRC,
    ):
        _require(receiver, name)
    _require(dtls.transport, _ICE_CONNECTION)
    _require(getattr(dtls.transport, _ICE_CONNECTION), _PROTOCOLS)
    inbound = dtls.__dict__.get("relay_inbound")
    if inbound is None:
        inbound = dtls.__dict__["relay_inbound"] = _Inbound(dtls)
    inbound.add(receiver, handler, fanout, on_python_packet)


def _destination(pair: Any) -> Destination | None:
    """A native send destination for an ICE pair on a UDP socket (aioice's or the media port's)."""
    transport = pair.protocol.transport
    # A datagram transport with a UDP socket of its own: never TURN's (which must
    # wrap each packet; it has no "socket" anyway) nor ICE-TCP's framing.
    # (asyncio's own UDP transport is a BaseTransport, not a DatagramTransport.)
    if not isinstance(transport, asyncio.BaseTransport):
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != SOCK_DGRAM:
        return None
    host, port = pair.remote_addr[:2]
    try:
        return packet_path.destination(sock.fileno(), host, port)
    except ValueError:
        return None


class PacketSender:
    """Sends the RTP of one RTCRtpSender: forwarded packets, or frames aiortc encoded.

    Replaces aiortc's sending loop, whose packet numbering is private to it,
    so that forwarded packets and (when codecs differ) re-encoded frames share
    one sequence. Must be created before the sender starts (before the local
    description is set).

    On the native path its numbering, sending, counters and NACK history live in
    `lane` (rtc/native/fanout.c), which a Subscriber's source also forwards through
    without Python; `send` and `_retransmit` call into it.
    """

    def __init__(self, sender: RTCRtpSender) -> None:
        for name in (
            _RUN_RTP,
            _RETRANSMIT,
            _NEXT_ENCODED_FRAME,
            _RTX_SSRC_OUT,
            _SENDER_MID,
            _SENDER_EXTENSIONS_MAP,
            _SENDER_RTX_PT,
            _SENDER_RTP_STARTED,
            _SENDER_RTP_EXITED,
            _SENDER_ENCODER,
            _SENDER_NTP,
            _SENDER_RTP_TIMESTAMP,
            _SENDER_OCTETS,
            _SENDER_PACKETS,
        ):
            _require(sender, name)
        self._sender = sender
        self._state = sender.__dict__
        self.codec: RTCRtpCodecParameters | None = None
        self.payload_type = 0
        self.ready = False
        # The next sequence number to use when nobody asks for a particular one.
        self._sequence_number = random.getrandbits(16)
        self._packets = 0
        self._dropped = 0
        self._retransmitted = 0
        self._rtx_sequence_number = random.getrandbits(16)
        # The native path: numbering, sealing, sending, counters and the NACK history
        # in C (rtc/native/fanout.c), shared with the Subscriber that forwards through it.
        self.lane: Lane | None = packet_path.lane()
        if self.lane is not None:
            self.lane.sequence_number = self._sequence_number
            self.lane.rtx_sequence_number = self._rtx_sequence_number
        self._lane_timer: asyncio.TimerHandle | None = None
        self._lane_errors = 0
        if self.lane is not None:
            # getStats() reads the counters the lane keeps: copy them first.
            get_stats = sender.getStats

            async def synced_stats() -> Any:
                self._sync_lane()
                return await get_stats()

            setattr(sender, "getStats", synced_stats)  # noqa: B010 (a method, on one instance)
        self._rtx_payload_type: int | None = None
        # (sequence number, timestamp, marker, payload, VP8 picture id or -1)
        self._history: list[tuple[int, int, bool, bytes, int] | None] = [None] * SEND_HISTORY
        self._writer: rtp.HeaderWriter | None = None
        self._rtx_writer: rtp.HeaderWriter | None = None
        # The native path: header writing and SRTP in one C call per packet.
        self._native_tx: SrtpContext | None = None
        self._native_writer: HeaderWriter | None = None
        self._native_rtx_writer: HeaderWriter | None = None
        # Where the native path sends with its own sendto(2): the nominated pair it was
        # made for, and None where it cannot (ICE-TCP, an address it cannot parse).
        self._destination_pair: Any = None
        self._destination: Destination | None = None
        self._dtls: RTCDtlsTransport | None = None
        self._connection: Any = None
        setattr(sender, _RUN_RTP, self._run)
        setattr(sender, _RETRANSMIT, self._retransmit)

    @property
    def bytes(self) -> int:
        """Payload bytes sent: the octet count `send` keeps for aiortc's sender reports
        (and its outbound-rtp stats), readable without awaiting getStats().

        Named like `Publisher.bytes`; below it, this class spells the type `builtins.bytes`.
        """
        if self.lane is not None:
            return self.lane.octets
        octets: int = self._state[_SENDER_OCTETS]
        return octets

    @property
    def sequence_number(self) -> int:
        """The next sequence number, used when `send` is not given one."""
        return self._sequence_number if self.lane is None else self.lane.sequence_number

    @property
    def packets(self) -> int:
        return self._packets if self.lane is None else self.lane.packets

    @property
    def dropped(self) -> int:
        return self._dropped if self.lane is None else self.lane.send_dropped

    @property
    def retransmitted(self) -> int:
        return self._retransmitted if self.lane is None else self.lane.retransmitted

    def _start(self, codec: RTCRtpCodecParameters) -> None:
        state = self._state
        ids = getattr(state[_SENDER_EXTENSIONS_MAP], _EXTENSION_IDS)
        mid = state[_SENDER_MID]
        self._writer = rtp.HeaderWriter(self._sender._ssrc, mid, ids.mid, ids.abs_send_time)
        self._rtx_writer = rtp.HeaderWriter(
            getattr(self._sender, _RTX_SSRC_OUT), mid, ids.mid, ids.abs_send_time
        )
        self._rtx_payload_type = state[_SENDER_RTX_PT]
        self._dtls = self._sender.transport
        # The native path's sealing, for the lane only (it does all native sending).
        self._native_tx = _native_srtp(self._dtls, outbound=True) if self.lane else None
        if self._native_tx is not None:
            self._native_writer = packet_path.header_writer(
                self._sender._ssrc, mid, ids.mid, ids.abs_send_time
            )
            self._native_rtx_writer = packet_path.header_writer(
                getattr(self._sender, _RTX_SSRC_OUT), mid, ids.mid, ids.abs_send_time
            )
        self._connection = getattr(self._dtls.transport, _ICE_CONNECTION)
        self.codec = codec
        assert codec.payloadType is not None
        self.payload_type = codec.payloadType
        lane = self.lane
        if lane is not None:
            if self._native_tx is None or self._native_writer is None:
                # Not expected: the sender starts once DTLS is up. Nothing is sent then.
                logger.error("%r: no SRTP keys for the native path", self)
            else:
                lane.configure(
                    self._native_writer,
                    self._native_rtx_writer,
                    self._native_tx,
                    self.payload_type,
                    self._rtx_payload_type,
                    self._transmit_native,
                )
                lane.ready = True
                self._check_lane()
        self.ready = True

    async def _run(self, codec: RTCRtpCodecParameters) -> None:
        """aiortc's `_run_rtp`: started by `RTCRtpSender.send()`, cancelled by `stop()`."""
        self._start(codec)
        self._state[_SENDER_RTP_STARTED].set()
        next_frame = getattr(self._sender, _NEXT_ENCODED_FRAME)
        try:
            while True:
                # Only frames that had to be (re-)encoded come this way;
                # forwarded packets go straight to `send`.
                frame = await next_frame(codec)
                if frame is None:
                    continue
                timestamp = frame.timestamp & 0xFFFFFFFF
                last = len(frame.payloads) - 1
                for index, payload in enumerate(frame.payloads):
                    self.send(payload, index == last, timestamp)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            logger.exception("RTP sending failed")
        finally:
            self.ready = False
            if self.lane is not None:
                self.lane.ready = False
                self.lane.destination = None
            if self._lane_timer is not None:
                self._lane_timer.cancel()
                self._lane_timer = None
            track = self._sender.track
            if track is not None:
                track.stop()
            self._state[_SENDER_ENCODER] = None
            self._state[_SENDER_RTP_EXITED].set()

    def send(
        self,
        payload: builtins.bytes,
        marker: bool,
        timestamp: int,
        sequence_number: int | None = None,
        picture_id: int = -1,
    ) -> bool:
        """Send one packet now; False if it could not go (not connected, or the socket is full).

        `picture_id` (0 or more) replaces the VP8 picture id in `payload`'s descriptor.
        """
        lane = self.lane
        if lane is not None:
            # The same numbering as the packets the lane forwards by itself.
            return lane.send(payload, marker, timestamp, sequence_number, picture_id)
        if not self.ready:
            return False
        if sequence_number is None:
            sequence_number = self._sequence_number
        if (sequence_number - self._sequence_number) & 0xFFFF < 0x8000:
            self._sequence_number = (sequence_number + 1) & 0xFFFF
        ntp = rtp.ntp_now()
        assert self._writer is not None
        header = self._writer.header(self.payload_type, sequence_number, timestamp, marker, ntp)
        body = payload if picture_id < 0 else rtp.with_vp8_picture_id(payload, picture_id)
        sent = self._transmit(header + body)
        if not sent:
            self._dropped += 1
            return False
        self._history[sequence_number % SEND_HISTORY] = (
            sequence_number,
            timestamp,
            marker,
            payload,
            picture_id,
        )
        self._packets += 1
        state = self._state
        state[_SENDER_NTP] = ntp
        state[_SENDER_RTP_TIMESTAMP] = timestamp
        state[_SENDER_OCTETS] += len(payload)
        state[_SENDER_PACKETS] += 1
        return True

    def _check_lane(self) -> None:
        """The native path's periodic look, instead of one per packet: where to send, and
        the lane's counters copied where aiortc's sender reports read them.

        The nominated pair, DTLS's state and asyncio's send buffer change seldom; a
        quarter second late is a few packets sent through `transmit` (the transport)
        instead of our own sendto(2), or the other way round. Sender reports go every
        0.5 to 1.5 s with the last packet's NTP and RTP time as one pair, so counters a
        quarter second old cost them nothing.
        """
        lane = self.lane
        self._lane_timer = None
        if lane is None or not lane.ready:
            return
        lane.destination = self._direct_destination()
        self._sync_lane()
        errors = lane.send_errors - self._lane_errors
        if errors and self._destination_pair is not None:
            self._lane_errors = lane.send_errors
            transport = self._destination_pair.protocol.transport
            if isinstance(transport, mux.UdpMux):
                transport.send_failures += errors
        self._lane_timer = asyncio.get_running_loop().call_later(
            LANE_CHECK_INTERVAL, self._check_lane
        )

    def _sync_lane(self) -> None:
        """Copy the lane's counters where aiortc's sender reports and getStats() read them."""
        lane = self.lane
        if lane is None:
            return
        state = self._state
        if lane.packets:
            state[_SENDER_NTP] = lane.ntp
            state[_SENDER_RTP_TIMESTAMP] = lane.rtp_timestamp
        state[_SENDER_OCTETS] = lane.octets
        state[_SENDER_PACKETS] = lane.packets

    def _transmit(self, plain: builtins.bytes) -> bool:
        dtls = self._dtls
        # The enum itself: the public `state` property formats a string per call.
        if dtls is None or dtls._state is not DtlsState.CONNECTED:
            return False
        try:
            data = dtls._tx_srtp.protect(plain)
        except pylibsrtp.Error:
            return False
        return _send_datagram(self._connection, data)

    def _direct_destination(self) -> Destination | None:
        """The nominated pair's UDP socket and address, for the native path's own sendto(2).

        None (send through the transport instead) before DTLS is up, on ICE-TCP,
        and while asyncio holds unsent data for the socket (order is kept).
        """
        dtls = self._dtls
        if dtls is None or dtls._state is not DtlsState.CONNECTED:
            return None
        pair = getattr(self._connection, _NOMINATED).get(1)
        if pair is not self._destination_pair:
            self._destination_pair = pair
            self._destination = None if pair is None else _destination(pair)
        if self._destination is None:
            return None
        buffered = getattr(pair.protocol.transport, "get_write_buffer_size", None)
        if buffered is not None and buffered():
            return None
        return self._destination

    def _transmit_native(self, data: builtins.bytes | None) -> bool:
        dtls = self._dtls
        if data is None or dtls is None or dtls._state is not DtlsState.CONNECTED:
            return False
        return _send_datagram(self._connection, data)

    async def _retransmit(self, sequence_number: int) -> None:
        """aiortc's NACK handling calls this for each lost packet the browser reports."""
        if self.lane is not None:
            self.lane.retransmit(sequence_number)
            return
        entry = self._history[sequence_number % SEND_HISTORY]
        if entry is None or entry[0] != sequence_number:
            return
        _, timestamp, marker, payload, picture_id = entry
        ntp = rtp.ntp_now()
        if picture_id >= 0:
            payload = rtp.with_vp8_picture_id(payload, picture_id)
        if self._rtx_payload_type is not None and self._rtx_writer is not None:
            # RFC 4588: its own SSRC and numbering, the original number up front.
            rtx_sequence_number = self._rtx_sequence_number
            self._rtx_sequence_number = (rtx_sequence_number + 1) & 0xFFFF
            plain = self._rtx_writer.header(
                self._rtx_payload_type, rtx_sequence_number, timestamp, marker, ntp
            ) + rtp.rtx_payload(sequence_number, payload)
        else:
            assert self._writer is not None
            plain = (
                self._writer.header(self.payload_type, sequence_number, timestamp, marker, ntp)
                + payload
            )
        if self._transmit(plain):
            self._retransmitted += 1


# -- the media port (rtc/mux.py) ---------------------------------------------

_GET_COMPONENT_CANDIDATES = "get_component_candidates"  # aioice.Connection: binds sockets


# ICE-TCP host candidates rank under UDP's host (126), peer-reflexive (110) and
# server-reflexive (100) ones, and over relayed (0), as Chromium ranks its own:
# TCP is the way in only when UDP does not get through (RFC 6544 section 4.2).
TCP_TYPE_PREFERENCE = 90


def _tcp_priority(component: int) -> int:
    return (TCP_TYPE_PREFERENCE << 24) + (65535 << 8) + (256 - component)


class _PassiveTcpCandidate(Candidate):
    """The server's ICE-TCP candidate (tcptype passive).

    It pairs with a client's active TCP candidates (RFC 6544 section 6.2), but
    the server's own checks on such a pair go nowhere (the mux has no stream
    to port 9): the client connects and sends its check, and aioice learns the
    working pair from that check (peer-reflexive). The pair keeps aioice from
    failing at once when TCP is all a client offers.
    """

    def can_pair_with(self, other: Candidate) -> bool:
        return (
            other.transport.lower() == "tcp"
            and other.tcptype == "active"
            and super().can_pair_with(other)
        )


def _mux_candidate(socket: mux.UdpMux | mux.TcpMux, host: str, component: int) -> Candidate:
    if isinstance(socket, mux.TcpMux):
        return _PassiveTcpCandidate(
            foundation=candidate_foundation("host", "tcp", host),
            component=component,
            transport="tcp",
            priority=_tcp_priority(component),
            host=host,
            port=socket.port,
            type="host",
            tcptype="passive",
        )
    return Candidate(
        foundation=candidate_foundation("host", "udp", host),
        component=component,
        transport="udp",
        priority=candidate_priority(component, "host"),
        host=host,
        port=socket.port,
        type="host",
    )


class _MuxProtocol(StunProtocol):
    """One aioice connection's share of a shared media socket (UDP) or listener (TCP).

    aioice sees a protocol with a host candidate like any other; its transport
    is the shared `UdpMux`/`TcpMux`, which hands it the datagrams of its own
    addresses and sends its own to them.
    """

    def __init__(
        self, connection: Connection, socket: mux.UdpMux | mux.TcpMux, component: int
    ) -> None:
        super().__init__(connection)
        self._socket = socket
        # One candidate per address the socket is announced at; aioice pairs with the first.
        self.candidates = [
            _mux_candidate(socket, host, component) for host in socket.candidate_hosts
        ]
        self.local_candidate = self.candidates[0]
        self.transport = socket
        socket.register(self)

    @property
    def ufrag(self) -> str:
        username: str = self.receiver.local_username
        return username

    @property
    def password(self) -> bytes:
        password: str = self.receiver.local_password
        return password.encode("utf8")

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        if message.message_class == stun.Class.REQUEST:
            self._socket.sending_check(self, addr)
        self._socket.sendto(bytes(message), addr)

    async def close(self) -> None:
        # The socket is shared: leave it, and tell aioice this share is gone.
        self._socket.unregister(self)
        self.connection_lost(None)


def _ice_connections(pc: RTCPeerConnection) -> list[Connection]:
    connections: list[Connection] = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls is None:
            continue
        _require(dtls.transport, _ICE_CONNECTION)
        connection = getattr(dtls.transport, _ICE_CONNECTION)
        if connection not in connections:
            connections.append(connection)
    return connections


def use_media_mux(pc: RTCPeerConnection, media: mux.MediaMux) -> None:
    """Make `pc` gather its candidates on the shared media sockets instead of binding its own.

    Call after the remote description is set (the ICE transports exist) and
    before the local one (which gathers). No STUN or TURN gathering happens:
    the server is reached at its own (or announced) address.
    """
    for connection in _ice_connections(pc):
        _require(connection, _GET_COMPONENT_CANDIDATES)
        _require(connection, _PROTOCOLS)
        _require(StunProtocol, "connection_lost")
        protocols: list[StunProtocol] = getattr(connection, _PROTOCOLS)

        async def gather(
            component: int,
            addresses: list[str],
            timeout: int = 5,  # noqa: ASYNC109 - aioice's signature; nothing here waits
            connection: Connection = connection,
            protocols: list[StunProtocol] = protocols,
        ) -> list[Candidate]:
            candidates = []
            sockets: list[mux.UdpMux | mux.TcpMux] = [*media.udp, *media.tcp]
            for socket in sockets:
                if socket.is_closing():
                    continue
                protocol = _MuxProtocol(connection, socket, component)
                protocols.append(protocol)
                candidates += protocol.candidates
            return candidates

        setattr(connection, _GET_COMPONENT_CANDIDATES, gather)


# -- ICE-TCP from the client's side (tests and the load client) ----------------

# Servers a client opens ICE-TCP streams to at once, and datagrams held per
# stream while it connects.
MAX_ACTIVE_STREAMS = 8
MAX_HELD_WHILE_CONNECTING = 16


class _ActiveTcpCandidate(Candidate):
    """A client's ICE-TCP candidate (tcptype active, port 9): it pairs only with passive ones."""

    def can_pair_with(self, other: Candidate) -> bool:
        return (
            other.transport.lower() == "tcp"
            and other.tcptype == "passive"
            and super().can_pair_with(other)
        )


class _ClientStream(asyncio.Protocol):
    def __init__(self, owner: _ActiveTcp, addr: tuple[str, int]) -> None:
        self._owner = owner
        self._addr = addr
        self._reader = mux.FrameReader()

    def data_received(self, data: bytes) -> None:
        for datagram in self._reader.feed(data):
            self._owner.protocol.datagram_received(datagram, self._addr)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.lost(self._addr)


class _ActiveTcp(asyncio.DatagramTransport):
    """Sends a connection's datagrams over TCP streams it opens on first use (RFC 6544 active)."""

    def __init__(self, protocol: StunProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        self._streams: dict[tuple[str, int], asyncio.Transport] = {}
        self._held: dict[tuple[str, int], list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        stream = self._streams.get(addr)
        if stream is not None:
            if not stream.is_closing():
                stream.write(mux.frame(data))
            return
        held = self._held.get(addr)
        if held is None:
            if self._closed or len(self._held) + len(self._streams) >= MAX_ACTIVE_STREAMS:
                return
            held = self._held[addr] = []
            task = asyncio.get_running_loop().create_task(self._connect(addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if len(held) < MAX_HELD_WHILE_CONNECTING:
            held.append(data)

    async def _connect(self, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            stream, _ = await loop.create_connection(
                lambda: _ClientStream(self, addr), addr[0], addr[1]
            )
        except OSError:
            self._held.pop(addr, None)
            return
        if self._closed:
            stream.abort()
            return
        self._streams[addr] = stream
        for data in self._held.pop(addr, []):
            stream.write(mux.frame(data))

    def lost(self, addr: tuple[str, int]) -> None:
        self._streams.pop(addr, None)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for stream in list(self._streams.values()):
            stream.abort()
        self._streams.clear()
        self._held.clear()

    def abort(self) -> None:
        self.close()


class _ActiveTcpProtocol(StunProtocol):
    def __init__(self, connection: Connection, host: str, component: int) -> None:
        super().__init__(connection)
        self.local_candidate = _ActiveTcpCandidate(
            foundation=candidate_foundation("host", "tcp", host),
            component=component,
            transport="tcp",
            priority=_tcp_priority(component),
            host=host,
            port=9,  # RFC 6544: an active candidate has no port of its own to give
            type="host",
            tcptype="active",
        )
        self.transport = _ActiveTcp(self)

    async def close(self) -> None:
        self.transport.close()
        self.connection_lost(None)


def use_active_tcp(pc: RTCPeerConnection, *, only: bool = False) -> None:
    """Give `pc` an active ICE-TCP candidate, as browsers have (with `only`, nothing else).

    `only` is how a test plays a client whose UDP is blocked. Call after the
    tracks are added and before the local description is set.
    """
    for connection in _ice_connections(pc):
        _require(connection, _GET_COMPONENT_CANDIDATES)
        _require(connection, _PROTOCOLS)
        protocols: list[StunProtocol] = getattr(connection, _PROTOCOLS)
        original = getattr(connection, _GET_COMPONENT_CANDIDATES)

        async def gather(
            component: int,
            addresses: list[str],
            timeout: int = 5,  # noqa: ASYNC109 - aioice's signature
            connection: Connection = connection,
            protocols: list[StunProtocol] = protocols,
            original: Any = original,
        ) -> list[Candidate]:
            candidates: list[Candidate] = []
            if not only:
                candidates += await original(component, addresses, timeout)
            # One active candidate per address family: it pairs with the server's of that family.
            firsts = {":" in host: host for host in reversed(addresses or interface_addresses())}
            for host in firsts.values():
                protocol = _ActiveTcpProtocol(connection, host, component)
                protocols.append(protocol)
                candidates.append(protocol.local_candidate)
            return candidates

        setattr(connection, _GET_COMPONENT_CANDIDATES, gather)


# -- ICE ---------------------------------------------------------------------


def selected_pair(pc: RTCPeerConnection) -> tuple[Candidate, Candidate] | None:
    """The (local, remote) candidates ICE nominated on `pc`'s first transport, or None.

    aiortc reports no candidate-pair statistics; tests use this to show which
    path media took (host, relay through TURN, an announced address).
    """
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        if dtls is None:
            continue
        _require(dtls.transport, _ICE_CONNECTION)
        connection = getattr(dtls.transport, _ICE_CONNECTION)
        _require(connection, _NOMINATED)
        pair = getattr(connection, _NOMINATED).get(1)
        if pair is None:
            return None
        return pair.local_candidate, pair.remote_candidate
    return None


def interface_addresses() -> list[str]:
    """Every address aioice would gather on by itself (all interfaces, no loopback)."""
    return list(get_host_addresses(use_ipv4=True, use_ipv6=True))


def offer_addresses(
    pc: RTCPeerConnection, local: Sequence[str], advertised: Callable[[str], Sequence[str]]
) -> None:
    """Make `pc` gather host candidates on `local` only, each offered as `advertised(address)`.

    Call it after setRemoteDescription (which creates the ICE transports) and
    before setLocalDescription (which gathers). aioice binds one socket per
    address it is given; an advertised address other than the socket's own is
    an extra host candidate on the same socket (an announced public address of
    a 1:1 NAT), and ICE checks arriving for it reach that socket all the same,
    since aioice pairs by socket, not by candidate address.
    """
    for connection in _ice_connections(pc):
        _require(connection, _GATHERING_STARTED)
        _require(connection, _GET_COMPONENT_CANDIDATES)
        if getattr(connection, _GATHERING_STARTED):
            raise SeamError("offer_addresses() called after gathering started")
        setattr(
            connection,
            _GET_COMPONENT_CANDIDATES,
            _gather_on(getattr(connection, _GET_COMPONENT_CANDIDATES), local, advertised),
        )


def _gather_on(
    original: Callable[..., Any],
    local: Sequence[str],
    advertised: Callable[[str], Sequence[str]],
) -> Callable[..., Any]:
    async def get_component_candidates(
        component: int,
        addresses: list[str],
        timeout: int = 5,  # noqa: ASYNC109 - aioice's own signature
    ) -> list[Candidate]:
        # aioice passes no addresses under the relay-only policy: keep it that way.
        chosen = list(local) if addresses else []
        gathered: list[Candidate] = await original(
            component=component, addresses=chosen, timeout=timeout
        )
        candidates = []
        for candidate in gathered:
            if candidate.type != "host":
                candidates.append(candidate)
                continue
            for address in advertised(candidate.host):
                candidates.append(
                    candidate
                    if address == candidate.host
                    else Candidate(
                        foundation=candidate_foundation("host", candidate.transport, address),
                        component=candidate.component,
                        transport=candidate.transport,
                        priority=candidate.priority,
                        host=address,
                        port=candidate.port,
                        type="host",
                    )
                )
        return candidates

    return get_component_candidates


def quiet_connect_after_close(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Stop aiortc's connect task from logging a traceback when the connection closes under it.

    setRemoteDescription starts ``RTCPeerConnection.__connect`` as a task nobody
    awaits. When the server closes a connection while it is still connecting (a
    refused ban, a visitor gone during ICE), the task's next step finds the ICE
    transport closed, raises InvalidStateError, and asyncio logs "Task exception
    was never retrieved" with a traceback: an error in the log for a normal
    event. This loop exception handler logs exactly that case at debug and hands
    everything else to the handler that was there before. Answers a function
    that puts that handler back.
    """
    connect = getattr(RTCPeerConnection, "_RTCPeerConnection__connect", None)
    if connect is None or connect.__qualname__ != _CONNECT_TASK:
        raise SeamError(f"aiortc has no {_CONNECT_TASK}; update aiortc_seam")
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        task = context.get("future")
        if (
            isinstance(context.get("exception"), InvalidStateError)
            and isinstance(task, asyncio.Task)
            and getattr(task.get_coro(), "__qualname__", None) == _CONNECT_TASK
        ):
            logger.debug("a connection closed while connecting: %s", context["exception"])
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return lambda: loop.set_exception_handler(previous)
