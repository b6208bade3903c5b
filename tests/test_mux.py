"""rtc/mux.py: the shared media socket's routing, on real loopback sockets.

Endpoints here are plain recorders (what an ICE connection's share of the
socket would be); the socket, the STUN messages and the kernel are real.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aioice import stun

from rtc import mux
from rtc.mux import MediaMux, MuxError, TcpMux, UdpMux


class Recorder:
    def __init__(self, ufrag: str, password: str) -> None:
        self.ufrag = ufrag
        self.password = password.encode()
        self.got: list[tuple[bytes, Any]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append((data, addr))


def check(ufrag: str, password: bytes) -> bytes:
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{ufrag}:remote"
    message.attributes["PRIORITY"] = 1
    message.add_message_integrity(password)
    return bytes(message)


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def shared():
    media = UdpMux.open("127.0.0.1", 0)
    clients: list[socket.socket] = []

    def client() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        clients.append(sock)
        return sock

    yield media, client
    media.close()
    for sock in clients:
        sock.close()


async def test_an_address_is_learned_only_with_the_password(shared) -> None:
    media, client = shared
    alice, bob = Recorder("alic", "a" * 22), Recorder("bobb", "b" * 22)
    media.register(alice)
    media.register(bob)
    target = ("127.0.0.1", media.port)
    a, stranger = client(), client()
    # Media before any check, a check naming nobody, a check with a wrong password.
    a.sendto(b"\x80\x60" + bytes(100), target)
    stranger.sendto(check("nobody", b"x" * 22), target)
    stranger.sendto(check("bobb", b"wrong password"), target)
    await _until(lambda: media.received == 3)
    assert alice.got == [] and bob.got == []
    assert (media.dropped_unknown, media.dropped_unauthenticated, media.remembered) == (2, 1, 0)

    a.sendto(check("alic", alice.password), target)
    a.sendto(b"\x80\x60media", target)
    await _until(lambda: len(alice.got) == 2)
    assert alice.got[1] == (b"\x80\x60media", a.getsockname())
    assert bob.got == [] and media.remembered == 1
    # Bob's password from another address routes there; alice's address stays hers.
    b = client()
    b.sendto(check("bobb", bob.password), target)
    a.sendto(b"\x80\x60again", target)
    await _until(lambda: len(bob.got) == 1 and len(alice.got) == 3)

    media.unregister(alice)
    a.sendto(b"\x80\x60after", target)
    await _until(lambda: media.dropped_unknown == 3)
    assert len(alice.got) == 3 and media.remembered == 1


async def test_two_connections_with_one_ufrag_are_told_apart_by_password(shared) -> None:
    media, client = shared
    first, second = Recorder("same", "1" * 22), Recorder("same", "2" * 22)
    media.register(first)
    media.register(second)
    sock = client()
    sock.sendto(check("same", second.password), ("127.0.0.1", media.port))
    await _until(lambda: len(second.got) == 1)
    assert first.got == []


async def test_remembered_addresses_are_bounded_per_connection(shared) -> None:
    media, client = shared
    alice = Recorder("alic", "a" * 22)
    media.register(alice)
    socks = [client() for _ in range(mux.MAX_ADDRESSES + 4)]
    for sock in socks:
        sock.sendto(check("alic", alice.password), ("127.0.0.1", media.port))
    await _until(lambda: len(alice.got) == len(socks))
    assert media.remembered == mux.MAX_ADDRESSES
    # The oldest went; the newest still route.
    assert socks[0].getsockname() not in media.routes
    assert socks[-1].getsockname() in media.routes
    for port in range(1000, 1000 + 2 * mux.MAX_ADDRESSES):
        media.sending_check(alice, ("127.0.0.1", port))
    assert media.remembered == 2 * mux.MAX_ADDRESSES
    media.unregister(alice)
    assert media.remembered == 0 and media.connections == 0


async def test_a_stun_response_reaches_the_connection_that_sent_the_check(shared) -> None:
    media, client = shared
    alice = Recorder("alic", "a" * 22)
    media.register(alice)
    remote = client()
    media.sending_check(alice, remote.getsockname())
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)
    response.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 9)
    remote.sendto(bytes(response), ("127.0.0.1", media.port))
    # Only STUN responses come that way: data from there is not the connection's yet.
    remote.sendto(b"\x80\x60media", ("127.0.0.1", media.port))
    await _until(lambda: media.received == 2)
    assert [data for data, _ in alice.got] == [bytes(response)]


async def test_a_burst_is_drained_and_every_datagram_delivered(shared) -> None:
    media, client = shared
    alice = Recorder("alic", "a" * 22)
    media.register(alice)
    sock = client()
    sock.sendto(check("alic", alice.password), ("127.0.0.1", media.port))
    await _until(lambda: len(alice.got) == 1)
    for i in range(5 * mux.DRAIN_LIMIT):
        sock.sendto(b"\x80\x60" + i.to_bytes(4, "big"), ("127.0.0.1", media.port))
    await _until(lambda: len(alice.got) == 1 + 5 * mux.DRAIN_LIMIT)
    assert [int.from_bytes(d[2:], "big") for d, _ in alice.got[1:]] == list(
        range(5 * mux.DRAIN_LIMIT)
    )


async def test_a_port_in_use_is_a_clear_error() -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(MuxError, match=r"cannot bind UDP 127\.0\.0\.1 port \d+"):
            await MediaMux.open(taken.getsockname()[1], ["127.0.0.1"])
    finally:
        taken.close()


# -- the ICE-TCP listener ---------------------------------------------------------


async def _stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(5):
        try:
            return await reader.read() == b""
        except ConnectionResetError:
            return True


async def test_a_tcp_stream_belongs_to_whoever_its_first_check_authenticates_to() -> None:
    listener = await TcpMux.open("127.0.0.1", 0)
    alice = Recorder("alic", "a" * 22)
    listener.register(alice)
    try:
        reader, writer = await _stream(listener.port)
        check_frame = check("alic", alice.password)
        # Split across writes: framing must not depend on how TCP cuts the bytes.
        data = mux.frame(check_frame) + mux.frame(b"\x80\x60media")
        writer.write(data[:7])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(data[7:])
        await _until(lambda: len(alice.got) == 2)
        addr = writer.get_extra_info("sockname")[:2]
        assert alice.got == [(check_frame, addr), (b"\x80\x60media", addr)]
        # The connection's replies go back on that stream, framed.
        listener.sendto(b"reply", addr)
        assert await reader.readexactly(7) == mux.frame(b"reply")
        listener.unregister(alice)
        assert await _closed_by_server(reader)
        await _until(lambda: listener.remembered == 0)
        writer.close()
    finally:
        listener.close()


async def test_tcp_streams_that_do_not_authenticate_are_closed() -> None:
    listener = await TcpMux.open("127.0.0.1", 0)
    alice = Recorder("alic", "a" * 22)
    listener.register(alice)
    try:
        writers = []
        for first in (mux.frame(b"GET / HTTP/1.1\r\n\r\n"), mux.frame(check("alic", b"wrong" * 5))):
            reader, writer = await _stream(listener.port)
            writers.append(writer)
            writer.write(first)
            assert await _closed_by_server(reader)
        assert alice.got == []
        assert (listener.dropped_unknown, listener.dropped_unauthenticated) == (1, 1)
        # One that says nothing (or sends an unframed request) is closed after
        # TCP_AUTH_TIMEOUT (shortened here).
        listener_timeout, mux.TCP_AUTH_TIMEOUT = mux.TCP_AUTH_TIMEOUT, 0.2
        try:
            reader, writer = await _stream(listener.port)
            writers.append(writer)
            assert await _closed_by_server(reader)
        finally:
            mux.TCP_AUTH_TIMEOUT = listener_timeout
        await _until(lambda: listener.remembered == 0)
        for writer in writers:
            writer.close()
    finally:
        listener.close()
