"""--media-port: every media connection of the server on one shared UDP port.

Real server, real aiortc clients over this machine's interfaces; the frames
that arrive are checked by their stamps (tag = sender, counter = which frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time

import aiohttp
import pytest
from aioice import stun

from bench.target import free_port, free_udp_port
from config import Settings
from rtc.client import ChatClient
from signalling.web import LOBBY

TIMEOUT = 20.0


def candidate_ports(sdp: str) -> set[tuple[str, int]]:
    """(transport, port) of every candidate in an SDP."""
    return {
        (m.group(1).lower(), int(m.group(2)))
        for m in re.finditer(r"^a=candidate:\S+ \d+ (\S+) \d+ \S+ (\d+) typ", sdp, re.M)
    }


@pytest.fixture
def media_port() -> int:
    return free_udp_port()


@pytest.fixture
def relay_server_args(media_port: int) -> list[str]:
    return ["--media-timeout", "3", "--media-port", str(media_port)]


async def test_a_pair_talks_through_the_one_media_port(
    packet_path_mode, relay_server, clients, media_port
) -> None:
    # The server runs the packet path this test is for.
    assert f"packet path {packet_path_mode}" in relay_server.log()
    a = ChatClient(relay_server.ws_url, tag=1)
    b = ChatClient(relay_server.ws_url, tag=2)
    clients += [a, b]
    for client in (a, b):
        await client.connect()
        # The server offers the media port and nothing else.
        assert candidate_ports(client.pc.remoteDescription.sdp) == {("udp", media_port)}
        await client.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    for viewer, partner_tag in ((a, 2), (b, 1)):
        frames = await viewer.wait_frames(tag=partner_tag, count=20, timeout=TIMEOUT)
        got = [f.stamp.counter for f in frames]
        assert got == sorted(got) and len(set(got)) == len(got)


# -- many peers, a hostile sender, and what stays behind ---------------------------

MANY_PAIRS = 26  # 52 peers on one port


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


async def scrape(server) -> str:
    async with aiohttp.ClientSession() as session, session.get(server.metrics_url) as response:
        return await response.text()


def udp_sockets(pid: int) -> int:
    """UDP sockets process `pid` holds (its fds matched against the kernel's UDP tables)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            inodes |= {line.split()[9] for line in list(f)[1:]}
    held = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            held += link.startswith("socket:[") and link[8:-1] in inodes
    return held


def server_addresses(sdp: str) -> set[tuple[str, int]]:
    return {
        (m.group(1), int(m.group(2)))
        for m in re.finditer(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ", sdp, re.M)
    }


def ufrag(sdp: str) -> str:
    match = re.search(r"^a=ice-ufrag:(\S+)", sdp, re.M)
    assert match is not None
    return match.group(1)


class Hostile(asyncio.DatagramProtocol):
    """Sprays the media port from many source ports: STUN that names no one or a
    real user without their password, STUN responses nobody asked for, RTP,
    DTLS-looking records and random bytes."""

    SOURCES = 64

    def __init__(self, targets: set[tuple[str, int]], victim_ufrags: list[str]) -> None:
        # Its sockets are IPv4 ones.
        self.targets = sorted(t for t in targets if ":" not in t[0])
        self.victims = victim_ufrags
        self.sent = 0
        self.replies = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies += 1

    def payloads(self) -> list[bytes]:
        wrong = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        wrong.attributes["USERNAME"] = "nobody:x"
        wrong.add_message_integrity(b"not the password")
        out = [bytes(wrong)]
        for victim in self.victims:
            forged = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            forged.attributes["USERNAME"] = f"{victim}:evil"
            forged.attributes["PRIORITY"] = 1
            forged.attributes["USE-CANDIDATE"] = None
            forged.add_message_integrity(b"guessed password")
            out.append(bytes(forged))
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)
        response.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 9)
        out.append(bytes(response))
        rtp_header = bytes([0x80, 96]) + os.urandom(10)
        out += [rtp_header + os.urandom(1000), bytes([0x16, 0xFE, 0xFD]) + os.urandom(200)]
        out += [os.urandom(n) for n in (1, 19, 20, 100, 1400)]
        return out

    async def spray(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        transports = []
        try:
            for _ in range(self.SOURCES):
                transport, _protocol = await loop.create_datagram_endpoint(
                    lambda: self, local_addr=("0.0.0.0", 0)
                )
                transports.append(transport)
            payloads = self.payloads()
            deadline = loop.time() + seconds
            while loop.time() < deadline:
                for transport in transports:
                    for target in self.targets:
                        for payload in payloads:
                            transport.sendto(payload, target)
                            self.sent += 1
                await asyncio.sleep(0.05)
        finally:
            for transport in transports:
                transport.close()


@pytest.fixture
def many_server(request, media_port):
    from tests.conftest import RelayServer, _log_path

    server = RelayServer(
        _log_path(request),
        [
            "--media-port",
            str(media_port),
            "--ip-max-peers",
            "0",
            "--ip-max-new-sessions",
            "0",
            "--ip-max-sessions",
            "0",
            "--media-timeout",
            "5",
        ],
    )
    server.start()
    try:
        yield server
    finally:
        assert server.stop() in (0, -signal.SIGINT)
        assert "Traceback" not in server.log(), server.log()


@pytest.mark.timeout(240)
async def test_many_peers_and_a_hostile_sender_share_the_port(many_server, clients) -> None:
    server = many_server
    pid = server._proc.pid
    baseline_udp = udp_sockets(pid)
    made: list[ChatClient] = []
    for start in range(0, 2 * MANY_PAIRS, 10):
        batch = [
            ChatClient(server.ws_url, tag=100 + i, width=160, height=120, fps=5)
            for i in range(start, min(start + 10, 2 * MANY_PAIRS))
        ]
        clients += batch
        made += batch
        await asyncio.gather(*(c.connect() for c in batch))
    # Every connection is on the one port: the server bound no socket for any of them.
    assert udp_sockets(pid) == baseline_udp
    for client in made:
        await client.start()
    await asyncio.gather(*(c.wait_for("matched", timeout=60) for c in made))
    await asyncio.gather(*(c.wait_frames(count=3, timeout=60) for c in made))
    before = await scrape(server)
    assert metric(before, "relay_media_port_connections") == 2 * MANY_PAIRS

    targets = server_addresses(made[0].pc.remoteDescription.sdp)
    hostile = Hostile(targets, [ufrag(c.pc.remoteDescription.sdp) for c in made[:8]])
    spray_started = time.monotonic()
    await hostile.spray(4.0)

    # Everyone keeps receiving, and only ever their own partner's frames.
    counts = {c: c.summary()["frames_stamped"] for c in made}
    await asyncio.gather(*(c.wait_frames(count=counts[c] + 5, timeout=30) for c in made))
    for client in made:
        summary = client.summary()
        tags = set(summary["frames_per_tag"])
        assert len(tags) == 1, f"{client.tag} received frames from {tags}"
        assert summary["counter_regressions"] == 0
        assert client.close_code is None
        assert not [m for m in client.messages if m.get("type") == "error"]
    after = await scrape(server)
    dropped = metric(after, 'relay_media_port_dropped_total{reason="unknown"}') + metric(
        after, 'relay_media_port_dropped_total{reason="unauthenticated"}'
    )
    # The spray reached the server and was dropped there. How much of it the kernel
    # itself dropped first (a full receive buffer) depends on the machine's load, so
    # no share is asserted.
    assert 0 < dropped <= hostile.sent, (dropped, hostile.sent)
    assert metric(after, 'relay_media_port_dropped_total{reason="unauthenticated"}') > 0
    # Nothing answered the hostile sender; no address of its was remembered.
    assert hostile.replies == 0
    assert metric(after, "relay_media_port_addresses") <= 4 * 2 * MANY_PAIRS
    assert metric(after, "relay_media_port_addresses") == metric(
        before, "relay_media_port_addresses"
    )
    assert time.monotonic() - spray_started < 60

    # Everyone leaves: nothing stays on the port, no socket was left behind.
    await asyncio.gather(*(c.close() for c in made))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = await scrape(server)
        if metric(left, "relay_media_port_connections") == 0:
            break
        await asyncio.sleep(0.2)
    assert metric(left, "relay_media_port_connections") == 0
    assert metric(left, "relay_media_port_addresses") == 0
    assert udp_sockets(pid) == baseline_udp


async def test_each_worker_takes_its_own_media_port(nodes, clients) -> None:
    first = free_udp_port(span=2)
    server = nodes("--workers", "2", "--media-port", f"{first}-{first + 1}")
    by_node: dict[str, ChatClient] = {}
    # The server answers once one worker listens; the other may still be starting
    # (a loaded machine), so connections keep coming, a little apart, for a while.
    for tag in range(1, 100):
        client = ChatClient(server.ws_url, tag=tag)
        clients.append(client)
        await client.connect()
        if client.hello["node"] in by_node:
            await client.close()
            await asyncio.sleep(0.1)
        else:
            by_node[client.hello["node"]] = client
        if len(by_node) == 2:
            break
    assert len(by_node) == 2, "the kernel gave every connection to one worker"
    ports = {
        node: {port for _, port in candidate_ports(c.pc.remoteDescription.sdp)}
        for node, c in by_node.items()
    }
    assert {ports[node].pop() for node in sorted(by_node)} == {first, first + 1}
    assert all(not p for p in ports.values())
    a, b = by_node.values()
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    for viewer, partner_tag in ((a, b.tag), (b, a.tag)):
        frames = await viewer.wait_frames(tag=partner_tag, count=10, timeout=TIMEOUT)
        assert len({f.stamp.counter for f in frames}) == 10


# -- ICE over TCP --------------------------------------------------------------


async def test_a_client_with_only_tcp_connects_over_ice_tcp(local_server, clients) -> None:
    """A client that can only open TCP (as behind a network dropping UDP) reaches
    the server's passive ICE-TCP candidate; its partner stays on UDP."""
    media_port, tcp_port = free_udp_port(), free_port()
    server = await local_server(
        Settings(media_port=media_port, media_tcp_port=tcp_port, media_timeout=3.0)
    )
    media = server.app[LOBBY].relay.settings.media
    assert media is not None
    tcp_only = ChatClient(server.ws_url, tag=1, ice_tcp="only")
    on_udp = ChatClient(server.ws_url, tag=2)
    clients += [tcp_only, on_udp]
    for client in (tcp_only, on_udp):
        await client.connect()
        sdp = client.pc.remoteDescription.sdp
        # UDP first, then the passive TCP candidate, lower in priority.
        assert candidate_ports(sdp) == {("udp", media_port), ("tcp", tcp_port)}
        priorities = {
            m.group(1): int(m.group(2))
            for m in re.finditer(r"^a=candidate:\S+ \d+ (\S+) (\d+) ", sdp, re.M)
        }
        assert priorities["tcp"] < priorities["udp"]
        assert "tcptype passive" in sdp
        await client.start()
    await tcp_only.wait_for("matched", timeout=TIMEOUT)
    for viewer, partner_tag in ((tcp_only, 2), (on_udp, 1)):
        frames = await viewer.wait_frames(tag=partner_tag, count=20, timeout=TIMEOUT)
        got = [f.stamp.counter for f in frames]
        assert got == sorted(got) and len(set(got)) == len(got)
    assert media.stats()["tcp_streams"] >= 1
    await tcp_only.close()
    await on_udp.close()

    async def settled() -> None:
        while media.stats()["connections"] or media.stats()["tcp_streams"]:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(settled(), 20)
    assert media.stats()["remembered"] == 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(180)
async def test_peers_coming_and_going_on_the_shared_ports_leave_nothing_behind(
    local_server,
) -> None:
    """Waves of visitors (half over UDP, half over ICE-TCP) connect, see media and
    leave: the mux's tables, the ICE-TCP streams and this process's file
    descriptors (server and clients both live here) return to where they were."""
    server = await local_server(
        Settings(
            media_port=free_udp_port(),
            media_tcp_port=free_port(),
            ip_max_peers=0,
            ip_max_sessions=0,
            ip_max_new_sessions=0,
        )
    )
    media = server.app[LOBBY].relay.settings.media
    assert media is not None

    async def wave(size: int, tag: int) -> None:
        made = [
            ChatClient(
                server.ws_url,
                tag=tag + i,
                width=160,
                height=120,
                fps=5,
                ice_tcp="only" if i % 2 else "no",
            )
            for i in range(size)
        ]
        try:
            await asyncio.gather(*(c.connect() for c in made))
            for c in made:
                await c.start()
            await asyncio.gather(*(c.wait_frames(count=2, timeout=30) for c in made))
            assert media.stats()["connections"] == size
            assert media.stats()["tcp_streams"] >= size // 2
        finally:
            await asyncio.gather(*(c.close() for c in made), return_exceptions=True)

    async def settled() -> None:
        while media.stats()["connections"] or media.stats()["remembered"]:
            await asyncio.sleep(0.1)

    await wave(4, 10)  # warm-up: imports, codecs, the executor's threads
    await asyncio.wait_for(settled(), 20)
    before = open_fds()
    for n in range(3):
        await wave(8, 100 + 10 * n)
        await asyncio.wait_for(settled(), 20)
    assert media.stats()["tcp_streams"] == 0
    deadline = time.monotonic() + 10
    while open_fds() > before and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert open_fds() <= before, f"{open_fds() - before} file descriptors left open"
