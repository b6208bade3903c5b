"""What the pipe between nodes costs per packet: `python -m bench.pipe [--packets N]`.

Two measurements, each with HMAC (the default) and with AES-GCM (--pipe-encrypt):

- `send_us` and `receive_us`: the pipe's own Python per packet, without the
  socket: the sending sink (message header, the datagram, its tag) and the
  receiving endpoint (check, replay window, parse, the PipePublisher's fan-out
  to no one).
- `source_send_us`: the sending node's whole cost per packet, from the
  source's fan-out (`PacketSource._on_packet`) to the socket: on the native
  packet path (RR_PACKET_PATH) that is the C fan-out and rtc/native/pipe_out.c,
  with no Python per packet; `send_us` calls the Python sink directly.
- `loopback_cpu_us`: process CPU per packet through two real endpoints on
  loopback, both sides in this process, sockets and event loop included.

The pipe packs the packets of one event-loop turn into one datagram (up to
its size limit), so both depend on how many packets a turn hands it:
`--per-turn` (default 1, the worst case: a datagram per packet).

The packets are 1,100-byte VP8 packets, about what Chromium sends at 640x480.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from rtc.pipe import HEADER_SIZE, MESSAGE_HEADER_SIZE, TAG_SIZE, PipeEndpoint
from rtc.rtp import RtpView
from rtc.source import PacketSource

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
SECRET = b"benchmark cluster secret"
PAYLOAD_SIZE = 1100
BURST = 40


class _Source(PacketSource):
    def _ask_upstream(self) -> None:
        pass


class _Arrivals:
    """Counts the packets a PipePublisher hands on; wakes the sender at `goal`."""

    def __init__(self) -> None:
        self.count = 0
        self.goal = 0
        self.reached = asyncio.Event()

    def push_packet(self, codec: RTCRtpCodecParameters, view: RtpView, keyframe: bool) -> None:
        self.count += 1
        if self.count >= self.goal:
            self.reached.set()

    def detach(self) -> None:
        pass


def _views(count: int) -> list[RtpView]:
    payload = b"\x90\x80\x80\x01" + bytes(PAYLOAD_SIZE - 4)
    return [
        RtpView(1, 96, index & 0xFFFF, (index // 5 * 3000) & 0xFFFFFFFF, index % 5 == 4, payload)
        for index in range(count)
    ]


async def _endpoints(encrypt: bool) -> tuple[PipeEndpoint, PipeEndpoint, _Source, Any]:
    node_x = PipeEndpoint(SECRET, encrypt=encrypt)
    node_y = PipeEndpoint(SECRET, encrypt=encrypt)
    await node_x.start()
    await node_y.start()
    source = _Source("bench", "video", keyframe_interval=1.0)
    node_x.send_stream(source, node_y.address, 1)
    piped = node_y.receive_stream(1, "video", node_x.address)
    return node_x, node_y, source, piped


async def measure(encrypt: bool, count: int, per_turn: int) -> dict[str, Any]:
    views = _views(count)
    # Without the socket: the datagrams are caught as they would leave.
    node_x, node_y, source, piped = await _endpoints(encrypt)
    captured: list[bytes] = []

    def capture(data: bytes, to: Any = None) -> None:
        captured.append(data)

    node_x._sendto = capture  # type: ignore[method-assign,assignment]
    (sink,) = source.subscribers
    source._on_packet(VP8, views[0])  # the CODEC message goes first
    node_x._flush()
    node_y._receive(captured.pop(0), node_x.address)
    captured.clear()
    started = time.perf_counter()
    for first in range(0, count, per_turn):
        for view in views[first : first + per_turn]:
            sink.push_packet(VP8, view, False)
        node_x._flush()  # what the end of the event loop's turn does
    sent = time.perf_counter()
    address = node_x.address
    for datagram in captured:
        node_y._receive(datagram, address)
    received = time.perf_counter()
    assert piped.bytes >= count * PAYLOAD_SIZE, (piped.bytes, node_y.dropped)
    await node_x.close()
    await node_y.close()

    # From the source's fan-out to the socket (what node_y does not read, the kernel drops).
    node_x, node_y, source, piped = await _endpoints(encrypt)
    source._on_packet(VP8, views[0])
    node_x._flush()
    started_source = time.perf_counter()
    for first in range(0, count, per_turn):
        for view in views[first : first + per_turn]:
            source._on_packet(VP8, view)
        node_x._flush()
    source_send = time.perf_counter() - started_source
    await node_x.close()
    await node_y.close()

    # Over loopback, both ends in this process.
    node_x, node_y, source, piped = await _endpoints(encrypt)
    arrivals = _Arrivals()
    piped.add_subscriber(arrivals)
    source._on_packet(VP8, views[0])
    await asyncio.sleep(0.05)
    start = arrivals.count
    cpu = time.process_time()
    wall = time.perf_counter()
    for first in range(0, count, BURST):
        last = min(first + BURST, count)
        for turn in range(first, last, per_turn):
            for view in views[turn : min(turn + per_turn, last)]:
                source._on_packet(VP8, view)
            await asyncio.sleep(0)  # the turn ends: the datagram leaves
        arrivals.goal = start + min(first + BURST, count)
        arrivals.reached.clear()
        # Let the receiver catch up before the next burst, so the socket buffer never overflows.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrivals.reached.wait(), 0.2)
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    delivered = arrivals.count - start
    datagrams = node_x.sent
    await node_x.close()
    await node_y.close()
    return {
        "auth": "aes-128-gcm" if encrypt else "hmac-sha256-128",
        "packets": count,
        "per_turn": per_turn,
        "datagrams": datagrams,
        "payload_bytes": PAYLOAD_SIZE,
        "send_us": round((sent - started) / count * 1e6, 2),
        "source_send_us": round(source_send / count * 1e6, 2),
        "receive_us": round((received - sent) / count * 1e6, 2),
        "loopback_cpu_us": round(cpu / count * 1e6, 2),
        "loopback_delivered": round(delivered / count, 4),
        # Per packet: message header and RTP fields (the RTP header they replace is 12
        # bytes), plus the datagram's header and tag shared by the packets of a turn.
        "overhead_bytes": round(
            MESSAGE_HEADER_SIZE + 7 - 12 + (HEADER_SIZE + TAG_SIZE) * datagrams / count, 1
        ),
        "wall_s": round(wall, 3),
    }


async def main_async(count: int, per_turn: int) -> list[dict[str, Any]]:
    return [await measure(encrypt, count, per_turn) for encrypt in (False, True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument(
        "--per-turn", type=int, default=1, help="packets handed to the pipe per event-loop turn"
    )
    args = parser.parse_args(argv)
    if args.per_turn < 1:
        parser.error("--per-turn must be at least 1")
    for result in asyncio.run(main_async(args.packets, args.per_turn)):
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
