"""Take the TURN credentials a relay hands out in `hello` and try them on the TURN server.

    python tests/netns_turn_probe.py --url ws://198.51.100.10:443/ws --wait 6

Run by tests/test_networks.py inside a client namespace: reads `hello`, waits
`--wait` seconds (to let the credentials expire), then asks the first TURN
server in it for an allocation, as a browser would. Prints one JSON line:
``{"allocated": bool, "error": str | null, "username": str}``.
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


class _Ignore(asyncio.DatagramProtocol):
    pass


async def probe(args: argparse.Namespace) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.ws_connect(args.url) as ws:
        hello = json.loads((await ws.receive()).data)
    server = next(s for s in hello["iceServers"] if s["urls"].startswith("turn"))
    await asyncio.sleep(args.wait)
    parsed = parse_stun_turn_uri(server["urls"])
    result: dict[str, Any] = {"username": server["username"], "error": None}
    try:
        transport, _ = await asyncio.wait_for(
            turn.create_turn_endpoint(
                _Ignore,
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
        transport.close()
        result["allocated"] = True
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--wait", type=float, default=0.0)
    print(json.dumps(asyncio.run(probe(parser.parse_args()))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
