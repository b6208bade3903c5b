"""The media port: one UDP socket that every peer connection of a process shares.

Without it aioice binds a fresh ephemeral port per connection and per local
address, so a firewall in front of the server must open the whole ephemeral
range. A `UdpMux` is one socket on a fixed port, read by the event loop and
demultiplexed the way pion's UDPMux and mediasoup's WebRtcServer do it:

1. by remote address, for addresses a connection has authenticated;
2. for an unknown address, only a STUN Binding request is considered: the
   local ufrag in its USERNAME names the connection(s), and the first whose
   password checks the MESSAGE-INTEGRITY learns the address;
3. STUN responses from an address the connection itself sent a check to
   reach that connection (its check to a candidate the client signalled).

Anything else from an unknown address (RTP, garbage, STUN with a wrong ufrag
or a bad integrity) is counted and dropped. An address is only remembered
once it proved the password (or once the server sent to it), per connection
at most `MAX_ADDRESSES` of each, and forgotten when the connection closes:
the tables cannot be grown by someone spraying the port.

The aioice side (a connection's share of the socket, its candidates) is in
rtc/aiortc_seam.py; this module knows only endpoints: a ufrag, a password and
`datagram_received`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from aioice import stun

logger = logging.getLogger(__name__)

Address = tuple[str, int]

# Addresses remembered per connection: a client's host, server-reflexive and
# relayed candidates, v4 and v6, with room to spare.
MAX_ADDRESSES = 16
# Datagrams read per wake-up of the event loop before other callbacks get a turn.
DRAIN_LIMIT = 64
# Larger than any datagram a browser sends (MTU-sized); a bigger one is cut and fails to decrypt.
RECV_SIZE = 8192
# The kernel's receive queue for the shared socket (capped by net.core.rmem_max).
RECV_BUFFER = 4 * 1024 * 1024
_STUN_COOKIE = b"\x21\x12\xa4\x42"
# ICE-TCP: seconds a new stream has to send a check with a connection's password,
# how many may be waiting to, and what may queue on one before packets are dropped.
TCP_AUTH_TIMEOUT = 10.0
MAX_TCP_PENDING = 256
MAX_TCP_BUFFER = 256 * 1024


class MuxError(OSError):
    """The media port cannot be opened; the message says which address and why."""


class Endpoint(Protocol):
    """One ICE connection's share of a socket."""

    @property
    def ufrag(self) -> str: ...

    @property
    def password(self) -> bytes: ...

    def datagram_received(self, data: bytes, addr: Any) -> None: ...


class UdpMux(asyncio.DatagramTransport):
    """One UDP socket on one local address, shared by many ICE connections.

    It is the `transport` of each connection's protocol, so aioice and the
    packet path send with `sendto` as they would on a socket of their own.
    """

    def __init__(self, sock: socket.socket, announce: Sequence[str] = ()) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        host, port = sock.getsockname()[:2]
        self.host: str = host
        self.port: int = port
        # The addresses written into candidates: announced public ones, or the bound one.
        self.candidate_hosts: tuple[str, ...] = tuple(announce) or (host,)
        self.routes: dict[Address, Endpoint] = {}
        self._sent_to: dict[Address, Endpoint] = {}
        self._by_ufrag: dict[str, list[Endpoint]] = {}
        # Per endpoint, the addresses it holds in `routes` and `_sent_to`, oldest first.
        self._owned: dict[Endpoint, tuple[dict[Address, None], dict[Address, None]]] = {}
        self.received = 0
        self.dropped_unknown = 0
        self.dropped_unauthenticated = 0
        self.send_failures = 0
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._read_ready)

    @classmethod
    def open(cls, host: str, port: int, announce: Sequence[str] = ()) -> UdpMux:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            sock.setblocking(False)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise MuxError(
                exc.errno, f"media port: cannot bind UDP {host} port {port}: {exc.strerror}"
            ) from None
        return cls(sock, announce)

    def __repr__(self) -> str:
        return f"<UdpMux {self.host}:{self.port} {len(self._owned)} connections>"

    # -- endpoints ---------------------------------------------------------

    def register(self, endpoint: Endpoint) -> None:
        if endpoint in self._owned:
            return
        self._owned[endpoint] = ({}, {})
        self._by_ufrag.setdefault(endpoint.ufrag, []).append(endpoint)

    def unregister(self, endpoint: Endpoint) -> None:
        owned = self._owned.pop(endpoint, None)
        if owned is None:
            return
        routes, sent_to = owned
        for addr in routes:
            if self.routes.get(addr) is endpoint:
                del self.routes[addr]
        for addr in sent_to:
            if self._sent_to.get(addr) is endpoint:
                del self._sent_to[addr]
        same = self._by_ufrag.get(endpoint.ufrag, [])
        if endpoint in same:
            same.remove(endpoint)
        if not same:
            self._by_ufrag.pop(endpoint.ufrag, None)

    def sending_check(self, endpoint: Endpoint, addr: Address) -> None:
        """`endpoint` sends a STUN request to `addr`: let the response find it."""
        owned = self._owned.get(endpoint)
        if owned is None or addr in owned[1] or addr in self._sent_to:
            return
        if len(owned[1]) >= MAX_ADDRESSES:
            self._forget(self._sent_to, endpoint, owned[1], next(iter(owned[1])))
        owned[1][addr] = None
        self._sent_to[addr] = endpoint

    def _learn(self, endpoint: Endpoint, addr: Address) -> None:
        """`addr` proved `endpoint`'s password: its datagrams go there from now on."""
        owned = self._owned[endpoint]
        previous = self.routes.get(addr)
        if previous is endpoint:
            return
        if previous is not None:
            # The address authenticated to another connection (a client port reused).
            self._owned[previous][0].pop(addr, None)
        if len(owned[0]) >= MAX_ADDRESSES:
            self._forget(self.routes, endpoint, owned[0], next(iter(owned[0])))
        owned[0][addr] = None
        self.routes[addr] = endpoint

    @staticmethod
    def _forget(
        table: dict[Address, Endpoint],
        endpoint: Endpoint,
        owned: dict[Address, None],
        addr: Address,
    ) -> None:
        del owned[addr]
        if table.get(addr) is endpoint:
            del table[addr]

    @property
    def connections(self) -> int:
        return len(self._owned)

    @property
    def remembered(self) -> int:
        """Addresses the socket remembers, authenticated or sent to."""
        return len(self.routes) + len(self._sent_to)

    # -- receiving ---------------------------------------------------------

    def _read_ready(self) -> None:
        # Drain what arrived rather than one datagram per event-loop callback.
        sock = self._sock
        routes = self.routes
        for _ in range(DRAIN_LIMIT):
            try:
                data, addr = sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # An ICMP error reported on the socket; nothing to read behind it.
                logger.debug("%r: %r", self, exc)
                return
            self.received += 1
            if len(addr) > 2:  # IPv6: (host, port, flowinfo, scope_id)
                addr = addr[:2]
            endpoint = routes.get(addr)
            try:
                if endpoint is not None:
                    endpoint.datagram_received(data, addr)
                else:
                    self._from_unknown(data, addr)
            except Exception:
                # One connection's bug must not stop the socket for everyone.
                logger.exception("%r: handling a datagram from %s failed", self, addr)

    def _from_unknown(self, data: bytes, addr: Address) -> None:
        message = _parse_stun(data)
        if message is None:
            self.dropped_unknown += 1
            return
        if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            endpoint = self._sent_to.get(addr)
            if endpoint is None:
                self.dropped_unknown += 1
            else:
                endpoint.datagram_received(data, addr)
            return
        candidates = self._by_ufrag.get(_check_ufrag(message) or "")
        if not candidates:
            self.dropped_unknown += 1
            return
        for endpoint in candidates:
            if message.check_message_integrity(endpoint.password):
                self._learn(endpoint, addr)
                endpoint.datagram_received(data, addr)
                return
        self.dropped_unauthenticated += 1

    # -- the transport each endpoint sends with ------------------------------

    def sendto(self, data: Any, addr: Any = None) -> None:
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            # The kernel's queue is full: drop, as the network would.
            self.send_failures += 1
        except OSError as exc:
            self.send_failures += 1
            logger.debug("%r: sending to %s failed: %r", self, addr, exc)

    def get_write_buffer_size(self) -> int:
        # Nothing is buffered in user space: what the kernel does not take is dropped.
        return 0

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the socket itself; only the owner (MediaMux) does this."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self.routes.clear()
        self._sent_to.clear()
        self._by_ufrag.clear()
        self._owned.clear()

    def abort(self) -> None:
        self.close()


def frame(data: bytes) -> bytes:
    """One datagram as RFC 4571 frames it on a TCP stream: a 2-byte length first."""
    return len(data).to_bytes(2, "big") + data


class FrameReader:
    """Cuts an RFC 4571 byte stream back into datagrams."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        frames = []
        while len(buffer) >= 2:
            size = int.from_bytes(buffer[:2], "big")
            if len(buffer) < 2 + size:
                break
            frames.append(bytes(buffer[2 : 2 + size]))
            del buffer[: 2 + size]
        return frames


class _TcpStream(asyncio.Protocol):
    """One ICE-TCP connection a client opened to the passive port (RFC 6544).

    Datagrams come framed by a 2-byte length (RFC 4571). Until its first frame
    proves a connection's password the stream belongs to no one; it must do
    so within `TCP_AUTH_TIMEOUT` or it is closed.
    """

    def __init__(self, listener: TcpMux) -> None:
        self._listener = listener
        self._reader = FrameReader()
        self.transport: asyncio.Transport | None = None
        self.addr: Address = ("", 0)
        self.endpoint: Endpoint | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.addr = (peer[0], peer[1])
        if not self._listener.admit(self):
            transport.abort()
            return
        self._timer = asyncio.get_running_loop().call_later(
            TCP_AUTH_TIMEOUT, self._unauthenticated_timeout
        )

    def _unauthenticated_timeout(self) -> None:
        if self.endpoint is None and self.transport is not None:
            self._listener.dropped_unauthenticated += 1
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        for datagram in self._reader.feed(data):
            endpoint = self.endpoint
            try:
                if endpoint is not None:
                    endpoint.datagram_received(datagram, self.addr)
                elif not self._listener.authenticate(self, datagram):
                    assert self.transport is not None
                    self.transport.abort()
                    return
            except Exception:
                logger.exception("%r: handling a frame from %s failed", self._listener, self.addr)

    def send(self, data: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing() or len(data) > 0xFFFF:
            return False
        if transport.get_write_buffer_size() > MAX_TCP_BUFFER:
            # A congested TCP path: drop like UDP would rather than queue without end.
            return False
        transport.write(frame(data))
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._listener.lost(self)
        self.transport = None


class TcpMux(asyncio.DatagramTransport):
    """The passive ICE-TCP port on one local address, shared by every ICE connection.

    Like `UdpMux` it is the transport of each connection's TCP share: `sendto`
    frames a datagram onto the stream the client opened from `addr`.
    """

    def __init__(self, announce: Sequence[str] = ()) -> None:
        super().__init__()
        self._server: asyncio.Server | None = None
        self.host = ""
        self.port = 0
        self._announce = announce
        self.candidate_hosts: tuple[str, ...] = ()
        self._by_ufrag: dict[str, list[Endpoint]] = {}
        self._streams: dict[Endpoint, dict[Address, _TcpStream]] = {}
        self.routes: dict[Address, _TcpStream] = {}
        self._pending: set[_TcpStream] = set()
        self.received = 0
        self.dropped_unknown = 0
        self.dropped_unauthenticated = 0
        self.send_failures = 0
        self._closed = False

    @classmethod
    async def open(cls, host: str, port: int, announce: Sequence[str] = ()) -> TcpMux:
        listener = cls(announce)
        loop = asyncio.get_running_loop()
        try:
            listener._server = await loop.create_server(
                lambda: _TcpStream(listener), host, port, reuse_address=True
            )
        except OSError as exc:
            raise MuxError(
                exc.errno, f"media TCP port: cannot listen on {host} port {port}: {exc.strerror}"
            ) from None
        bound = listener._server.sockets[0].getsockname()
        listener.host, listener.port = bound[0], bound[1]
        listener.candidate_hosts = tuple(announce) or (listener.host,)
        return listener

    def __repr__(self) -> str:
        return f"<TcpMux {self.host}:{self.port} {len(self._streams)} connections>"

    # -- endpoints (the same contract as UdpMux) -------------------------------

    def register(self, endpoint: Endpoint) -> None:
        if endpoint in self._streams:
            return
        self._streams[endpoint] = {}
        self._by_ufrag.setdefault(endpoint.ufrag, []).append(endpoint)

    def unregister(self, endpoint: Endpoint) -> None:
        streams = self._streams.pop(endpoint, None)
        if streams is None:
            return
        for stream in list(streams.values()):
            if stream.transport is not None:
                stream.transport.abort()
        same = self._by_ufrag.get(endpoint.ufrag, [])
        if endpoint in same:
            same.remove(endpoint)
        if not same:
            self._by_ufrag.pop(endpoint.ufrag, None)

    def sending_check(self, endpoint: Endpoint, addr: Address) -> None:
        # Passive: the server only answers on streams clients opened.
        pass

    @property
    def connections(self) -> int:
        return len(self._streams)

    @property
    def remembered(self) -> int:
        return len(self.routes) + len(self._pending)

    # -- streams -----------------------------------------------------------

    def admit(self, stream: _TcpStream) -> bool:
        if self._closed or len(self._pending) >= MAX_TCP_PENDING:
            self.dropped_unknown += 1
            return False
        self._pending.add(stream)
        return True

    def authenticate(self, stream: _TcpStream, frame: bytes) -> bool:
        """The stream's first frame: a STUN check naming a connection, with its password."""
        self.received += 1
        self._pending.discard(stream)
        message = _parse_stun(frame)
        ufrag = None if message is None else _check_ufrag(message)
        if message is None or ufrag is None:
            self.dropped_unknown += 1
            return False
        for endpoint in self._by_ufrag.get(ufrag, []):
            if message.check_message_integrity(endpoint.password):
                streams = self._streams[endpoint]
                if len(streams) >= MAX_ADDRESSES:
                    oldest = next(iter(streams.values()))
                    if oldest.transport is not None:
                        oldest.transport.abort()
                    self.lost(oldest)
                stream.endpoint = endpoint
                streams[stream.addr] = stream
                self.routes[stream.addr] = stream
                endpoint.datagram_received(frame, stream.addr)
                return True
        self.dropped_unauthenticated += 1
        return False

    def lost(self, stream: _TcpStream) -> None:
        self._pending.discard(stream)
        if self.routes.get(stream.addr) is stream:
            del self.routes[stream.addr]
        if stream.endpoint is not None:
            streams = self._streams.get(stream.endpoint)
            if streams is not None and streams.get(stream.addr) is stream:
                del streams[stream.addr]

    # -- the transport each endpoint sends with ------------------------------

    def sendto(self, data: Any, addr: Any = None) -> None:
        stream = self.routes.get(addr)
        if stream is None or not stream.send(data):
            self.send_failures += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for stream in [*self.routes.values(), *self._pending]:
            if stream.transport is not None:
                stream.transport.abort()
        self.routes.clear()
        self._pending.clear()
        self._streams.clear()
        self._by_ufrag.clear()

    def abort(self) -> None:
        self.close()


def _parse_stun(data: bytes) -> stun.Message | None:
    # RFC 7983: STUN starts with 0-3 and carries the magic cookie.
    if len(data) < 20 or data[0] > 3 or data[4:8] != _STUN_COOKIE:
        return None
    try:
        return stun.parse_message(data)
    except ValueError:
        return None


def _check_ufrag(message: stun.Message) -> str | None:
    """The local ufrag a connectivity check names (RFC 8445 7.2.2), if `message` is one."""
    username = message.attributes.get("USERNAME")
    if (
        message.message_class != stun.Class.REQUEST
        or message.message_method != stun.Method.BINDING
        or not isinstance(username, str)
        or "MESSAGE-INTEGRITY" not in message.attributes
    ):
        return None
    return username.partition(":")[0]


class MediaMux:
    """The media ports of one process: per local address a UdpMux on the media
    port and, with ICE-TCP, a TcpMux on the TCP port."""

    def __init__(self, udp: list[UdpMux], tcp: list[TcpMux] | None = None) -> None:
        self.udp = udp
        self.tcp = tcp or []

    @classmethod
    async def open(
        cls,
        port: int,
        addresses: Iterable[str],
        announce: Mapping[str, Sequence[str]] | None = None,
        tcp_port: int = 0,
    ) -> MediaMux:
        """Bind `port` (and `tcp_port`, unless 0) on every address in `addresses`.

        `announce` maps a bound address to the ones written into candidates instead
        (a public address behind a 1:1 NAT, with or without the bound one).
        """
        media = cls([])
        try:
            for host in addresses:
                hosts = (announce or {}).get(host, ())
                media.udp.append(UdpMux.open(host, port, hosts))
                if tcp_port:
                    media.tcp.append(await TcpMux.open(host, tcp_port, hosts))
        except BaseException:
            media.close()
            raise
        if not media.udp:
            raise MuxError(f"media port {port}: no local address to bind it on")
        return media

    def close(self) -> None:
        for mux in [*self.udp, *self.tcp]:
            mux.close()

    def stats(self) -> dict[str, int]:
        """Totals over the sockets, for tests and metrics."""
        every: list[UdpMux | TcpMux] = [*self.udp, *self.tcp]
        return {
            # Each connection has a share of every socket.
            "connections": max((m.connections for m in self.udp), default=0),
            "remembered": sum(m.remembered for m in every),
            "received": sum(m.received for m in self.udp),
            "dropped_unknown": sum(m.dropped_unknown for m in every),
            "dropped_unauthenticated": sum(m.dropped_unauthenticated for m in every),
            "send_failures": sum(m.send_failures for m in self.udp),
            "tcp_streams": sum(len(m.routes) for m in self.tcp),
        }
