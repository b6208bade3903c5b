"""What reading the media port costs per datagram: `python -m bench.mux [--datagrams N]`.

A sender process blasts 1,100-byte datagrams (about a VP8 packet from
Chromium at 640x480) in bursts at one socket; this process reads them on its
event loop and hands each to an endpoint that only counts. Receiving CPU
(this thread's) per datagram, for:

- `per_connection`: asyncio's own datagram endpoint, one datagram per
  event-loop callback: how each aioice socket is read without --media-port;
- `mux_drain_1`: the media port's UdpMux reading one datagram per wake-up;
- `mux`: the UdpMux as it runs, draining up to DRAIN_LIMIT per wake-up, with
  the address lookup that finds the connection.

Each run is repeated and the median printed; the JSON has every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from rtc import mux

PAYLOAD = bytes([0x80, 96]) + bytes(1098)
BURST = 30


class _Counter(asyncio.DatagramProtocol):
    ufrag = "benc"
    password = b"x" * 22

    def __init__(self) -> None:
        self.count = 0
        self.done: asyncio.Future[None] | None = None
        self.target = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.count += 1
        if self.count >= self.target and self.done is not None and not self.done.done():
            self.done.set_result(None)


def _sender(port: int, datagrams: int, source: int) -> subprocess.Popen[bytes]:
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('127.0.0.1', {source}))\n"
        f"p = {PAYLOAD!r}\n"
        f"for i in range({datagrams} // {BURST}):\n"
        f"    for _ in range({BURST}): s.sendto(p, ('127.0.0.1', {port}))\n"
        "    time.sleep(0.001)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


async def _run(kind: str, datagrams: int) -> float:
    """Receiving CPU microseconds per datagram."""
    loop = asyncio.get_running_loop()
    counter = _Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        source = probe.getsockname()[1]
    sender_addr = ("127.0.0.1", source)
    if kind == "per_connection":
        transport, _ = await loop.create_datagram_endpoint(
            lambda: counter, local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        close = transport.close
    else:
        udp = mux.UdpMux.open("127.0.0.1", 0)
        udp.register(counter)
        udp.routes[sender_addr] = counter  # as if the sender had authenticated
        port = udp.port
        close = udp.close
    # The kernel may drop some under load: wait for most, then for the sender to end.
    counter.target = int(datagrams * 0.5)
    counter.done = loop.create_future()
    start = time.thread_time()
    proc = _sender(port, datagrams, source)
    try:
        await asyncio.wait_for(counter.done, 60)
        await loop.run_in_executor(None, proc.wait)
        await asyncio.sleep(0.05)
        return (time.thread_time() - start) / counter.count * 1e6
    finally:
        proc.kill()
        proc.wait()
        close()


async def amain(datagrams: int, repeat: int) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"per_connection": [], "mux_drain_1": [], "mux": []}
    limit = mux.DRAIN_LIMIT
    for _ in range(repeat):
        for kind in runs:
            mux.DRAIN_LIMIT = 1 if kind == "mux_drain_1" else limit
            try:
                runs[kind].append(round(await _run(kind, datagrams), 2))
            finally:
                mux.DRAIN_LIMIT = limit
    return {
        "datagrams": datagrams,
        "repeat": repeat,
        "cpus": os.cpu_count(),
        "median_us_per_datagram": {k: statistics.median(v) for k, v in runs.items()},
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--datagrams", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(amain(args.datagrams, args.repeat)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
