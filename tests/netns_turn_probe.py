"""Take the TURN credentials a relay hands out in `hello` and try them on the TURN server.

    python tests/netns_turn_probe.py --url ws://198.51.100.10:443/ws --wait 6

Run by tests/test_networks.py inside a client namespace: reads `hello`, waits
`--wait` seconds (to let the credentials expire), then asks the first TURN
server in it for an allocation, as a browser would. Prints one JSON line:
``{"allocated": bool, "error": str | null, "username": str}``, and with
`--peer IP` also ``"peer_error"``: why the TURN server refused to relay to IP, or null.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp
from aioice import turn
from aiortc.rtcicetransport import parse_stun_turn_uri


class _Peer(asyncio.DatagramProtocol):
    """Remembers why sending through the allocation failed (aioice reports it here)."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.ws_connect(args.url) as ws:
        hello = json.loads((await ws.receive()).data)
    server = next(s for s in hello["iceServers"] if s["urls"].startswith("turn"))
    await asyncio.sleep(args.wait)
    parsed = parse_stun_turn_uri(server["urls"])
    result: dict[str, Any] = {"username": server["username"], "error": None}
    try:
        transport, peer = await asyncio.wait_for(
            turn.create_turn_endpoint(
                _Peer,
                server_addr=(parsed["host"], parsed["port"]),
                username=server["username"],
                password=server["credential"],
                ssl=parsed["scheme"] == "turns",
                transport=parsed["transport"],
            ),
            10,
        )
    except Exception as exc:
        result.update(allocated=False, error=f"{type(exc).__name__}: {exc}")
    else:
        result["allocated"] = True
        if args.peer:
            # Sending binds a channel to the peer first; the TURN server may refuse it (403).
            transport.sendto(b"probe", (args.peer, 9))
            for _ in range(40):
                if peer.errors:
                    break
                await asyncio.sleep(0.05)
            result["peer_error"] = f"{peer.errors[0]}" if peer.errors else None
        transport.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--wait", type=float, default=0.0)
    parser.add_argument("--peer", help="then send one datagram through the allocation to this IP")
    print(json.dumps(asyncio.run(probe(parser.parse_args()))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
