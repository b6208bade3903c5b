"""The pipe: media streams between two nodes of one cluster, over UDP.

A node forwards the RTP it already decrypted from its browser to another node,
where the stream becomes a `PipePublisher`: a source like any local
`Publisher`, so a Subscriber forwards it with the same continuity rewrite and
keyframe gating, and moderation taps its frames. This is mediasoup's
PipeTransport idea (a remote router is one more transport) with Janus's
remote-publisher habit of sending keyframe requests back on the same path.

One UDP socket per node (`PipeEndpoint`) carries every stream both ways.
Messages for one destination node are packed into as few datagrams as fit:
each is queued, and the datagram leaves once the event loop has run the
callbacks of the turn after the one that queued the first message (so the
packets read while this node was busy join it, and no timer delays it: an idle
loop runs that turn at once), or earlier when the next message would make it
larger than the destination's datagram limit (`max_datagram`: 1,400 bytes,
safe on any network, or 32 KiB to a loopback address, which has no
fragmentation). A datagram is

    | version 1 | sender epoch 8 | counter 8 | message... | tag 16 |

and each message in it is

    | type 1 | stream id 4 | body length 2 | body |

Version 2 is this batched layout (version 1 carried one message per datagram);
nodes of different versions drop each other's datagrams as malformed.

The sender epoch is random per endpoint and the counter counts every datagram
it sends, so (epoch, counter) never repeats. By default the tag is HMAC-SHA256
over header and messages, truncated to 16 bytes; with `encrypt=True` the
messages are sealed with AES-128-GCM (the tag is GCM's), the header as
associated data, under a key per sender epoch and the counter as nonce. Every
key is derived with HKDF from the cluster secret, so nothing else crosses
Redis: sharing the secret is the key exchange. Both ends must agree on
`encrypt`. Authentication and the replay check are per datagram: a datagram
that does not authenticate, was seen before, or whose messages do not add up
to its length exactly is dropped whole, none of its messages delivered.

The receiver drops, and counts in `PipeEndpoint.dropped`, anything malformed,
unauthenticated, replayed (a 128-datagram sliding window per sender epoch):
whole datagrams; and messages for a stream it does not expect, or from
another address than the stream's: one message each.

Bodies by type: RTP is `marker|payload type (1) seq (2) timestamp (4)` and
the codec payload; CODEC is the sending publisher's codec as JSON, sent when
the stream starts and ahead of every keyframe, and again on CODEC_REQUEST
(which the receiver sends when a packet's payload type does not match the
codec it knows); KEYFRAME_REQUEST asks the sending publisher for a keyframe
(it rate limits); BYE says the sender stopped the stream.

On the native packet path (rtc/packet_path.py) the sending side runs in C
(rtc/native/pipe_out.c): a `PipeWriter` per endpoint batches, seals and sends
the datagrams, and each stream out has a `PipeOut` in its source's C fan-out,
so no Python runs per packet; the bytes are the same.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import ipaddress
import json
import logging
import os
import socket
import struct
from collections import Counter, OrderedDict, deque
from typing import TYPE_CHECKING, Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rtc import packet_path
from rtc.rtp import RtpView
from rtc.source import DecodedSink, PacketSource

if TYPE_CHECKING:
    from rtc._fastpath import PipeDestination, PipeOut, PipeReader, PipeWriter

logger = logging.getLogger(__name__)

Address = tuple[str, int]

VERSION = 2
TAG_SIZE = 16
_HEADER = struct.Struct("!B8sQ")
HEADER_SIZE = _HEADER.size
# One message: type, stream id, body length.
_MESSAGE = struct.Struct("!BIH")
MESSAGE_HEADER_SIZE = _MESSAGE.size
# The start of an RTP body: marker|payload type, sequence number, timestamp.
_RTP = struct.Struct("!BHI")
# An RTP message's header and the start of its body, packed in one call per packet.
_RTP_MESSAGE = struct.Struct("!BIHBHI")
MAX_BODY = 0xFFFF
# The largest datagram sent to another machine: under any path's MTU (1,500 on
# Ethernet, less through tunnels), so nothing is fragmented.
NETWORK_DATAGRAM = 1_400
# To a loopback address (the workers of one machine): no MTU to respect, and a
# bigger datagram carries more packets per wake-up of the receiving node.
LOOPBACK_DATAGRAM = 32_768
# Datagrams read per wake-up of the socket at most, so other work gets its turn.
DRAIN = 64
# Socket buffers asked for (the kernel caps them at net.core.rmem_max/wmem_max):
# a node the scheduler leaves out for 100 ms must still find what arrived meanwhile
# (the default, about 200 KB, holds roughly that much of a few pairs' media).
SOCKET_BUFFER = 2 * 1024 * 1024
_RECEIVE_SIZE = 65_535
_NONCE_PAD = bytes(4)
# How far back (in datagrams from one sender) a late datagram is still accepted once.
REPLAY_WINDOW = 128
# Sender epochs remembered per endpoint (a node restarting starts a new one).
MAX_EPOCHS = 256
# At most one CODEC_REQUEST per stream this often (seconds), however many packets wait.
CODEC_REQUEST_INTERVAL = 0.2
_MAC_INFO = b"roulette-relay pipe v1 hmac-sha256"
_AEAD_INFO = b"roulette-relay pipe v1 aes-128-gcm"
_EMPTY = b""
_MAX_STREAM_ID = 0xFFFFFFFF


class MessageType(enum.IntEnum):
    RTP = 1
    CODEC = 2
    CODEC_REQUEST = 3
    KEYFRAME_REQUEST = 4
    BYE = 5


def _hkdf(secret: bytes, length: int, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(secret)


def _address(address: tuple[Any, ...]) -> Address:
    """`address` as the socket reports a sender's: an IP literal in canonical form, and a port."""
    host, port = address[0], address[1]
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"a pipe address needs an IP address, not {host!r}") from None
    return host, int(port)


def codec_to_json(codec: RTCRtpCodecParameters) -> bytes:
    return json.dumps(
        {
            "mimeType": codec.mimeType,
            "clockRate": codec.clockRate,
            "channels": codec.channels,
            "payloadType": codec.payloadType,
            "parameters": dict(codec.parameters),
        },
        separators=(",", ":"),
    ).encode()


def codec_from_json(data: bytes, kind: str) -> RTCRtpCodecParameters | None:
    """The codec in a CODEC body, or None if it is not one for `kind`."""
    try:
        value = json.loads(data)
        mime_type, clock_rate = value["mimeType"], value["clockRate"]
        channels, payload_type = value.get("channels"), value["payloadType"]
        parameters = value.get("parameters", {})
    except (ValueError, TypeError, KeyError):
        return None
    if not (
        isinstance(mime_type, str)
        and mime_type.lower().startswith(f"{kind}/")
        and isinstance(clock_rate, int)
        and clock_rate > 0
        and isinstance(payload_type, int)
        and 0 <= payload_type < 128
        and (channels is None or isinstance(channels, int))
        and isinstance(parameters, dict)
        and all(isinstance(v, str | int) for v in parameters.values())
    ):
        return None
    return RTCRtpCodecParameters(
        mimeType=mime_type,
        clockRate=clock_rate,
        channels=channels,
        payloadType=payload_type,
        parameters=parameters,
    )


class ReplayWindow:
    """Accepts each counter of one sender once, within `REPLAY_WINDOW` of the highest seen."""

    __slots__ = ("mask", "top")

    def __init__(self) -> None:
        self.top = -1
        # Bit i set: counter `top - i` was seen.
        self.mask = 0

    def accept(self, counter: int) -> bool:
        if counter > self.top:
            shift = counter - self.top
            self.mask = ((self.mask << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.top = counter
            return True
        bit = 1 << (self.top - counter)
        if self.top - counter >= REPLAY_WINDOW or self.mask & bit:
            return False
        self.mask |= bit
        return True


class PipePublisher(PacketSource):
    """A stream arriving from another node: a Source like a local Publisher.

    Keyframe requests go back over the pipe (rate limited here as well as at
    the sending publisher). Decoding for a subscriber whose codec differs is
    not supported across nodes: pairs across nodes must share a codec.
    """

    def __init__(
        self,
        endpoint: PipeEndpoint,
        stream_id: int,
        kind: str,
        peer: Address,
        *,
        name: str,
        keyframe_interval: float,
    ) -> None:
        super().__init__(name, kind, keyframe_interval=keyframe_interval)
        self.stream_id = stream_id
        self.peer = peer
        # The sender said BYE: no more packets will come.
        self.ended = False
        self._endpoint = endpoint
        self._last_codec_request = -CODEC_REQUEST_INTERVAL
        # The CODEC body `codec` came from.
        self._codec_body: bytes | None = None

    def _receive_rtp(self, data: bytes, start: int, end: int) -> bool:
        """The RTP message whose body is `data[start:end]`."""
        if end - start < _RTP.size:
            return False
        first, sequence_number, timestamp = _RTP.unpack_from(data, start)
        codec = self.codec
        payload_type = first & 0x7F
        if codec is None or codec.payloadType != payload_type:
            self._ask_for_codec()
            return True
        self._on_packet(
            codec,
            RtpView(
                self.stream_id,
                payload_type,
                sequence_number,
                timestamp,
                first > 0x7F,
                data[start + _RTP.size : end],
            ),
        )
        return True

    def _on_native_leftover(
        self, payload_type: int, sequence_number: int, timestamp: int, marker: bool, payload: bytes
    ) -> None:
        """The Python part of a packet the native reader pushed to the fan-out (which
        took it: the codec is this one) when the fan-out says Python must see it too."""
        codec = self.codec
        if codec is not None:
            view = RtpView(
                self.stream_id, payload_type, sequence_number, timestamp, marker, payload
            )
            self._on_python_packet(codec, view)

    def _receive_codec(self, body: bytes) -> bool:
        # The sender repeats its CODEC ahead of every keyframe: the same bytes, nothing to parse.
        if body == self._codec_body:
            return True
        codec = codec_from_json(body, self.kind)
        if codec is None:
            return False
        self._codec_body = body
        self._set_codec(codec)
        return True

    def _ask_for_codec(self) -> None:
        now = self._loop.time()
        if now - self._last_codec_request >= CODEC_REQUEST_INTERVAL:
            self._last_codec_request = now
            self._endpoint._send(MessageType.CODEC_REQUEST, self.stream_id, _EMPTY, self.peer)

    def _ask_upstream(self) -> None:
        self._endpoint._send(MessageType.KEYFRAME_REQUEST, self.stream_id, _EMPTY, self.peer)

    def decode_for(self, subscriber: DecodedSink) -> None:
        logger.warning(
            "%r: %r needs another codec than %s; transcoding across nodes is not supported",
            self,
            subscriber,
            self.codec.mimeType if self.codec else "none yet",
        )

    def stop_decoding_for(self, subscriber: DecodedSink) -> None:
        pass

    async def close(self) -> None:
        self._close_sources()
        self._endpoint._forget_incoming(self)


class _OutgoingStream:
    """Sits in a local source's fan-out and sends every packet on over the pipe.

    On the native path its `lane` (rtc/native/pipe_out.c) does `push_packet`'s work in
    the source's C fan-out; Python sees a packet only to set the codec and activate it.
    """

    __slots__ = (
        "_codec",
        "_codec_body",
        "_endpoint",
        "_last_sequence",
        "_restarting",
        "_sequence_offset",
        "lane",
        "publisher",
        "sees_held",
        "stream_id",
        "to",
    )

    def __init__(
        self,
        endpoint: PipeEndpoint,
        publisher: PacketSource,
        to: Address,
        stream_id: int,
        *,
        sees_held: bool = False,
        lane: PipeOut | None = None,
    ) -> None:
        self._endpoint = endpoint
        self.lane = lane
        # A stream to a moderator's watcher on another node goes on while the publisher
        # is held for review (PacketSource.hold), as a local watcher's does.
        self.sees_held = sees_held
        self.publisher = publisher
        self.to = to
        self.stream_id = stream_id
        self._codec: RTCRtpCodecParameters | None = None
        # `_codec` as a CODEC body, encoded once per codec (it goes ahead of every keyframe).
        self._codec_body = b""
        # After a pause in the publisher's fan-out (a stream held for review,
        # PacketSource.hold): start again at a keyframe, numbered on from the last
        # packet sent, so the receiving node's subscriber sees no gap to wait out.
        self._restarting = False
        self._sequence_offset = 0
        self._last_sequence = 0

    def __repr__(self) -> str:
        return f"<pipe out {self.stream_id} {self.publisher!r} -> {self.to}>"

    def restart(self) -> None:
        """Resume after a pause at the publisher's next keyframe (see `__init__`)."""
        self._restarting = True
        if self.lane is not None:
            self.lane.restart()
            # Python sees the packets up to the keyframe: the codec may have changed
            # while the stream was out of the fan-out (held), unseen by the lane.
            self.lane.active = False

    def push_packet(self, codec: RTCRtpCodecParameters, view: RtpView, keyframe: bool) -> None:
        lane = self.lane
        if lane is not None:
            self._push_native(lane, codec, view, keyframe)
            return
        if self._restarting:
            if not keyframe:
                return
            self._restarting = False
            self._sequence_offset = (self._last_sequence + 1 - view.sequence_number) & 0xFFFF
        sequence_number = (view.sequence_number + self._sequence_offset) & 0xFFFF
        self._last_sequence = sequence_number
        # The codec goes ahead of every keyframe too, not only when it changes: a
        # receiver that attached after the first CODEC message drops packets until it
        # knows the codec, and the keyframe it asked for must not be among them (that
        # cost a cross-node `next` a whole keyframe interval, 0.5 s, in the benchmark).
        if codec is not self._codec or keyframe:
            if codec is not self._codec:
                self._codec, self._codec_body = codec, codec_to_json(codec)
            self.send_codec()
        payload = view.payload
        self._endpoint._queue(
            self.to,
            _RTP_MESSAGE.pack(
                MessageType.RTP,
                self.stream_id,
                _RTP.size + len(payload),
                view.payload_type | 0x80 if view.marker else view.payload_type,
                sequence_number,
                view.timestamp,
            ),
            payload,
        )

    def _push_native(
        self, lane: PipeOut, codec: RTCRtpCodecParameters, view: RtpView, keyframe: bool
    ) -> None:
        """A packet the fan-out left to Python (its codec changed, or the lane is new):
        give the lane the codec, activate it, and let it take this packet."""
        if lane.restarting and not keyframe:
            return  # as push_packet: the codec is not taken before the restart
        if codec is not self._codec:
            self._codec, self._codec_body = codec, codec_to_json(codec)
            lane.set_codec(self._codec_body, True)
        lane.active = True
        lane.push(
            view.sequence_number,
            view.timestamp,
            view.marker,
            view.payload_type,
            view.payload,
            keyframe,
        )

    def send_codec(self) -> None:
        codec = self._codec or self.publisher.codec
        if codec is None:
            return
        lane = self.lane
        if codec is not self._codec or not self._codec_body:
            self._codec = codec
            self._codec_body = codec_to_json(codec)
            if lane is not None:
                lane.set_codec(self._codec_body, False)
        if lane is not None:
            # Queued by the writer, in one sequence with the lane's RTP messages.
            lane.send_codec()
            return
        self._endpoint._send(MessageType.CODEC, self.stream_id, self._codec_body, self.to)

    def detach(self) -> None:
        """The publisher went away (closed): the stream ends."""
        self._endpoint.stop_sending(self.stream_id)


class _Batch:
    """The messages waiting for one destination's next datagram."""

    __slots__ = ("parts", "room", "size")

    def __init__(self, room: int) -> None:
        self.room = room
        self.parts: list[bytes] = []
        self.size = 0


def _split(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]] | None:
    """The messages in `data[start:end]` as (type, stream id, body start, body end),
    or None unless they fill it exactly (a datagram cut short, or a bad length)."""
    messages = []
    unpack = _MESSAGE.unpack_from
    while start < end:
        if end - start < MESSAGE_HEADER_SIZE:
            return None
        kind, stream_id, length = unpack(data, start)
        start += MESSAGE_HEADER_SIZE
        if start + length > end:
            return None
        messages.append((kind, stream_id, start, start + length))
        start += length
    return messages if messages else None


class PipeEndpoint:
    """This node's end of every pipe: one UDP socket, streams out and streams in."""

    def __init__(
        self,
        secret: bytes,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        encrypt: bool = False,
        keyframe_interval: float = 0.5,
        max_datagram: int | None = None,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the cluster secret needs at least 16 bytes")
        if max_datagram is not None and not (
            HEADER_SIZE + MESSAGE_HEADER_SIZE + TAG_SIZE < max_datagram <= _RECEIVE_SIZE
        ):
            raise ValueError(f"a pipe datagram of {max_datagram} bytes cannot be sent")
        self.host = host
        self.port = port
        self.encrypt = encrypt
        # None: NETWORK_DATAGRAM, or LOOPBACK_DATAGRAM to a loopback address.
        self.max_datagram = max_datagram
        self.keyframe_interval = keyframe_interval
        self._secret = secret
        self._mac_key = _hkdf(secret, 32, _MAC_INFO)
        self._epoch = os.urandom(8)
        self._counter = 0
        self._aead = AESGCM(_hkdf(secret, 16, _AEAD_INFO, self._epoch))
        # Receiving: the AEAD of each sender epoch seen, and its replay window.
        self._peer_aeads: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._windows: OrderedDict[tuple[Address, bytes], ReplayWindow] = OrderedDict()
        self._retired: deque[tuple[Address, bytes]] = deque(maxlen=4 * MAX_EPOCHS)
        self._outgoing: dict[int, _OutgoingStream] = {}
        self._incoming: dict[tuple[Address, int], PipePublisher] = {}
        # The native path's reader (rtc/native/pipe_in.c), made in `start`: it owns the
        # checks, keys, replay windows and counters above for what it reads.
        self._reader: PipeReader | None = None
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Messages waiting for their datagram (see `_queue`), by destination.
        self._batches: dict[Address, _Batch] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._rooms: dict[Address, int] = {}
        # The native path's sender (rtc/native/pipe_out.c), made in `start`: it does
        # `_queue`, `_flush` and `_send_datagram` in C; its destinations by address.
        self._writer: PipeWriter | None = None
        self._destinations: dict[Address, PipeDestination] = {}
        # Datagrams and messages, both ways: Python's part (all of it on the Python
        # path); the properties add the native writer's and reader's.
        self._sent = 0
        self._received = 0
        self._messages_sent = 0
        self._messages_received = 0
        self._errors = 0
        self._dropped: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<PipeEndpoint {self.host}:{self.port}>"

    # -- counters (Python's plus the native writer's and reader's) ------------

    @property
    def sent(self) -> int:
        """Datagrams sent."""
        return self._sent + (self._writer.sent if self._writer is not None else 0)

    @property
    def messages_sent(self) -> int:
        """Messages queued to be sent."""
        writer = self._writer
        return self._messages_sent + (writer.messages_sent if writer is not None else 0)

    @property
    def errors(self) -> int:
        """Messages too large, datagrams not sent, socket errors receiving."""
        return self._errors + (self._writer.errors if self._writer is not None else 0)

    @errors.setter
    def errors(self, value: int) -> None:
        # `self.errors += 1` where Python counts one (the receiving side).
        self._errors = value - (self._writer.errors if self._writer is not None else 0)

    @property
    def received(self) -> int:
        """Datagrams taken: authentic, well formed, not replayed."""
        reader = self._reader
        return self._received + (0 if reader is None else reader.received)

    @property
    def messages_received(self) -> int:
        reader = self._reader
        return self._messages_received + (0 if reader is None else reader.messages_received)

    @property
    def dropped(self) -> Counter[str]:
        """What was thrown away, by reason: malformed, unauthenticated, replayed (whole
        datagrams), unknown_stream, wrong_address (one message each)."""
        reader = self._reader
        if reader is None:
            return Counter(self._dropped)
        dropped = Counter(self._dropped)
        dropped.update({reason: count for reason, count in reader.dropped.items() if count})
        return dropped

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # A plain non-blocking socket rather than asyncio's datagram transport:
        # a wake-up reads every datagram waiting, not one (see `_read_ready`).
        family, kind, proto, _, address = (
            await loop.getaddrinfo(
                self.host, self.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
            )
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        self._socket, self._loop = sock, loop
        self.host, self.port = sock.getsockname()[:2]
        key = _hkdf(self._secret, 16, _AEAD_INFO, self._epoch) if self.encrypt else self._mac_key
        self._writer = packet_path.pipe_writer(
            sock.fileno(), self._epoch, key, self.encrypt, self._on_pending
        )
        if self._reader is None:
            self._reader = packet_path.pipe_reader(
                None if self.encrypt else self._mac_key,
                self._derive_key if self.encrypt else None,
                self._on_native_message,
            )
            if self._reader is not None:
                for publisher in self._incoming.values():
                    self._expect(publisher)
        loop.add_reader(sock.fileno(), self._read_ready)

    @property
    def address(self) -> Address:
        """Where this endpoint receives (announce a routable IP when bound to 0.0.0.0)."""
        return self.host, self.port

    async def close(self) -> None:
        for stream_id in list(self._outgoing):
            self.stop_sending(stream_id)
        for publisher in list(self._incoming.values()):
            await publisher.close()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()  # the BYEs
        if self._writer is not None:
            self._writer.close()  # before the socket: its descriptor may be reused
        sock, self._socket = self._socket, None
        if self._reader is not None:
            self._reader.close()  # a drain under way stops (see `_read_ready`)
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    # -- sending ---------------------------------------------------------

    def send_stream(
        self, publisher: PacketSource, to: Address, stream_id: int, *, sees_held: bool = False
    ) -> None:
        """Send every packet of `publisher` to the endpoint at `to`, as stream `stream_id`.

        Stream ids are this endpoint's to allocate (unique among its streams out).
        `sees_held`: for a moderator, so it flows while the publisher is held for review.
        """
        if not 0 <= stream_id <= _MAX_STREAM_ID:
            raise ValueError(f"stream id {stream_id} is not a 32-bit number")
        if stream_id in self._outgoing:
            raise ValueError(f"stream {stream_id} is already being sent")
        address = _address(to)
        writer = self._writer
        lane = None
        if writer is not None and self._socket is not None:
            lane = packet_path.pipe_out(writer, self._destination(address), stream_id)
        stream = _OutgoingStream(
            self, publisher, address, stream_id, sees_held=sees_held, lane=lane
        )
        self._outgoing[stream_id] = stream
        publisher.add_subscriber(stream)
        stream.send_codec()
        # The receiving node asks for a keyframe when it attaches the stream, which
        # may be before this node knew the stream: that request is dropped, and the
        # next one would wait out the publisher's keyframe interval. Asking here as
        # well gets the receiver its keyframe whichever node connects first.
        publisher.request_keyframe()

    def stop_sending(self, stream_id: int) -> None:
        stream = self._outgoing.pop(stream_id, None)
        if stream is None:
            return
        stream.publisher.remove_subscriber(stream)
        self._send(MessageType.BYE, stream_id, _EMPTY, stream.to)

    def allocate_stream_id(self) -> int:
        """A stream id not in use among this endpoint's streams out."""
        while True:
            stream_id = int.from_bytes(os.urandom(4), "big")
            if stream_id not in self._outgoing:
                return stream_id

    def _send(self, kind: MessageType, stream_id: int, body: bytes, to: Address) -> None:
        """Queue one message for `to` (it leaves with the next datagram there)."""
        self._queue(to, _MESSAGE.pack(kind, stream_id, len(body)), body)

    def _queue(self, to: Address, head: bytes, body: bytes) -> None:
        """Queue a message (its header, then its body) for the datagram to `to`."""
        if self._socket is None:
            return
        if len(body) > MAX_BODY:
            self._errors += 1
            logger.warning("%r: a %d-byte message does not fit in the pipe", self, len(body))
            return
        writer = self._writer
        if writer is not None:
            writer.queue(self._destination(to), head, body)
            return
        size = len(head) + len(body)
        batch = self._batches.get(to)
        if batch is None:
            batch = self._batches[to] = _Batch(self._room(to))
            if self._flush_handle is None:
                assert self._loop is not None
                self._flush_handle = self._loop.call_soon(self._flush_next_turn)
        elif batch.size + size > batch.room and batch.parts:
            self._send_datagram(to, batch.parts)
            batch.parts = []
            batch.size = 0
        batch.parts.append(head)
        batch.parts.append(body)
        batch.size += size
        self._messages_sent += 1

    def _destination(self, to: Address) -> PipeDestination:
        """The native writer's destination `to` (there is a writer)."""
        destination = self._destinations.get(to)
        if destination is None:
            assert self._writer is not None
            destination = self._writer.destination(to[0], to[1], self._room(to))
            if len(self._destinations) >= MAX_EPOCHS:  # bounded as `_rooms`
                self._destinations.clear()
            self._destinations[to] = destination
        return destination

    def _on_pending(self) -> None:
        """The native writer queued the first message of a flush cycle (as `_queue` does)."""
        assert self._writer is not None and self._loop is not None
        # Tests and the benchmark catch datagrams by replacing `_sendto` on the
        # endpoint: then the writer hands them to it instead of sending them itself.
        self._writer.transmit = self.__dict__.get("_sendto")
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush_next_turn)

    def _room(self, to: Address) -> int:
        """How many bytes of messages one datagram to `to` carries."""
        room = self._rooms.get(to)
        if room is None:
            limit = self.max_datagram
            if limit is None:
                loopback = ipaddress.ip_address(to[0]).is_loopback
                limit = LOOPBACK_DATAGRAM if loopback else NETWORK_DATAGRAM
            room = limit - HEADER_SIZE - TAG_SIZE
            if len(self._rooms) >= MAX_EPOCHS:  # bounded like the epochs remembered
                self._rooms.clear()
            self._rooms[to] = room
        return room

    def _flush_next_turn(self) -> None:
        # A browser's packets come in bursts (a video frame is several), but the
        # loop reads one per socket per turn: waiting one more turn lets the
        # packets that arrived meanwhile share the datagram (1.6-3.1 a datagram
        # instead of 1.3 in the cluster benchmark), for the time one turn takes.
        assert self._loop is not None
        self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send every queued message: one datagram per destination, or a few if they are many."""
        self._flush_handle = None
        if self._writer is not None:
            self._writer.flush()
        batches, self._batches = self._batches, {}
        for to, batch in batches.items():
            if batch.parts:
                self._send_datagram(to, batch.parts)

    def _send_datagram(self, to: Address, parts: list[bytes]) -> None:
        if self._socket is None:
            return
        counter = self._counter
        self._counter = counter + 1
        header = _HEADER.pack(VERSION, self._epoch, counter)
        messages = _EMPTY.join(parts)
        if self.encrypt:
            datagram = header + self._aead.encrypt(_NONCE_PAD + header[-8:], messages, header)
        else:
            message = header + messages
            datagram = message + hmac.digest(self._mac_key, message, "sha256")[:TAG_SIZE]
        try:
            self._sendto(datagram, to)
        except OSError as exc:
            # A full send buffer (BlockingIOError) or an unreachable node: media
            # tolerates a lost datagram, and a blocked event loop would cost more.
            self._errors += 1
            logger.debug("%r: sending to %s failed: %r", self, to, exc)
            return
        self._sent += 1

    def _sendto(self, datagram: bytes, to: Address) -> None:
        """Where a datagram leaves (tests and the benchmark catch it here; on the native
        path replacing it on the endpoint makes the writer hand datagrams to it)."""
        assert self._socket is not None
        self._socket.sendto(datagram, to)

    # -- receiving -------------------------------------------------------

    def receive_stream(
        self, stream_id: int, kind: str, from_addr: Address, *, name: str | None = None
    ) -> PipePublisher:
        """Expect stream `stream_id` of `kind` from the endpoint at `from_addr`; its source."""
        peer = _address(from_addr)
        if (peer, stream_id) in self._incoming:
            raise ValueError(f"stream {stream_id} from {peer} is already being received")
        publisher = PipePublisher(
            self,
            stream_id,
            kind,
            peer,
            name=name or f"pipe:{peer[0]}:{peer[1]}/{stream_id}",
            keyframe_interval=self.keyframe_interval,
        )
        if self._reader is not None:
            self._expect(publisher)  # first: a stream the reader refused is not expected at all
        self._incoming[peer, stream_id] = publisher
        return publisher

    def _expect(self, publisher: PipePublisher) -> None:
        """Tell the native reader about a stream in (its packets go to its fan-out)."""
        assert self._reader is not None
        host, port = publisher.peer
        self._reader.add_stream(host, port, publisher.stream_id, publisher.native_fanout, publisher)

    async def stop_receiving(self, stream_id: int, from_addr: Address) -> None:
        publisher = self._incoming.get((_address(from_addr), stream_id))
        if publisher is not None:
            await publisher.close()

    def _forget_incoming(self, publisher: PipePublisher) -> None:
        key = (publisher.peer, publisher.stream_id)
        if self._incoming.get(key) is publisher:
            del self._incoming[key]
            if self._reader is not None:
                self._reader.remove_stream(
                    publisher.peer[0], publisher.peer[1], publisher.stream_id
                )

    def _read_ready(self) -> None:
        """The socket is readable: take what is waiting, up to DRAIN datagrams."""
        sock = self._socket
        if sock is None:
            return
        if self._reader is not None:
            # One C call: recvmmsg, and each datagram checked and handed on in C.
            try:
                self._reader.drain(sock.fileno(), DRAIN)
            except OSError as exc:
                self.errors += 1
                logger.debug("pipe socket error: %r", exc)
            return
        for _ in range(DRAIN):
            try:
                data, addr = sock.recvfrom(_RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.errors += 1
                logger.debug("pipe socket error: %r", exc)
                return
            self._receive(data, addr)
            if self._socket is None:  # closed by what the datagram set off
                return

    def _receive(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """One datagram from `addr` (the native reader's, when there is one)."""
        if self._reader is not None:
            self._reader.receive(data, addr[0], addr[1])
            return
        if len(data) < HEADER_SIZE + TAG_SIZE:
            self._dropped["malformed"] += 1
            return
        version, epoch, counter = _HEADER.unpack_from(data)
        if version != VERSION:
            self._dropped["malformed"] += 1
            return
        if self.encrypt:
            opened = self._open(data, epoch)
            if opened is None:
                self._dropped["unauthenticated"] += 1
                return
            data, start, end = opened, 0, len(opened)
        else:
            end = len(data) - TAG_SIZE
            tag = hmac.digest(self._mac_key, data[:end], "sha256")[:TAG_SIZE]
            if not hmac.compare_digest(tag, data[end:]):
                self._dropped["unauthenticated"] += 1
                return
            start = HEADER_SIZE
        messages = _split(data, start, end)
        if messages is None:
            self._dropped["malformed"] += 1
            return
        peer: Address = (addr[0], addr[1])
        if not self._fresh(peer, epoch, counter):
            self._dropped["replayed"] += 1
            return
        self._received += 1
        self._messages_received += len(messages)
        incoming = self._incoming
        for kind, stream_id, body_start, body_end in messages:
            if kind == MessageType.RTP:
                publisher = incoming.get((peer, stream_id))
                if publisher is None:
                    self._drop_unknown(stream_id, any(s == stream_id for _, s in incoming))
                elif not publisher._receive_rtp(data, body_start, body_end):
                    self._dropped["malformed"] += 1
            else:
                self._receive_control(peer, kind, stream_id, data[body_start:body_end])

    def _receive_control(self, peer: Address, kind: int, stream_id: int, body: bytes) -> None:
        """One message other than RTP."""
        if kind in (MessageType.CODEC, MessageType.BYE):
            publisher = self._incoming.get((peer, stream_id))
            if publisher is None:
                self._drop_unknown(stream_id, any(s == stream_id for _, s in self._incoming))
            elif kind == MessageType.CODEC:
                if not publisher._receive_codec(body):
                    self._dropped["malformed"] += 1
            else:
                logger.info("%r: the sender ended the stream", publisher)
                publisher.ended = True
        elif kind in (MessageType.KEYFRAME_REQUEST, MessageType.CODEC_REQUEST):
            stream = self._outgoing.get(stream_id)
            if stream is None or stream.to != peer:
                self._drop_unknown(stream_id, stream is not None)
            elif kind == MessageType.KEYFRAME_REQUEST:
                stream.publisher.request_keyframe()
            else:
                stream.send_codec()
        else:
            self._dropped["malformed"] += 1

    def _on_native_message(
        self, host: str, port: int, kind: int, stream_id: int, body: bytes
    ) -> None:
        """A message other than RTP, from the native reader."""
        self._receive_control((host, port), kind, stream_id, body)

    def _derive_key(self, epoch: bytes) -> bytes:
        """The AES-GCM key of a sender epoch (the native reader asks once per new epoch)."""
        return _hkdf(self._secret, 16, _AEAD_INFO, epoch)

    def _drop_unknown(self, stream_id: int, known_elsewhere: bool) -> None:
        self._dropped["wrong_address" if known_elsewhere else "unknown_stream"] += 1

    def _open(self, data: bytes, epoch: bytes) -> bytes | None:
        """The body of an encrypted datagram, or None if it does not authenticate."""
        aead = self._peer_aeads.get(epoch)
        fresh = aead is None
        if aead is None:
            aead = AESGCM(_hkdf(self._secret, 16, _AEAD_INFO, epoch))
        try:
            body = aead.decrypt(
                _NONCE_PAD + data[HEADER_SIZE - 8 : HEADER_SIZE],
                data[HEADER_SIZE:],
                data[:HEADER_SIZE],
            )
        except InvalidTag:
            return None
        if fresh:
            # Only epochs that authenticated are kept: forged ones cost a derivation, no memory.
            self._peer_aeads[epoch] = aead
            if len(self._peer_aeads) > MAX_EPOCHS:
                self._peer_aeads.popitem(last=False)
        return body

    def _fresh(self, peer: Address, epoch: bytes, counter: int) -> bool:
        key = (peer, epoch)
        window = self._windows.get(key)
        if window is None:
            if key in self._retired:
                return False
            window = self._windows[key] = ReplayWindow()
            if len(self._windows) > MAX_EPOCHS:
                old, _ = self._windows.popitem(last=False)
                self._retired.append(old)
        return window.accept(counter)

    # -- what exists -------------------------------------------------------

    @property
    def streams_out(self) -> frozenset[int]:
        return frozenset(self._outgoing)

    @property
    def streams_in(self) -> tuple[PipePublisher, ...]:
        return tuple(self._incoming.values())
