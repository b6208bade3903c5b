"""Many visitors of the cheapest kind (a WebSocket, connected and idle) over two nodes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

TIMEOUT = 20.0
# Nodes taking a crowd from one address need these (the default allows 64 per address).
UNLIMITED = ["--ip-max-sessions", "0", "--ip-max-new-sessions", "0"]


@contextlib.asynccontextmanager
async def crowd(one: Any, two: Any, people: int) -> AsyncIterator[dict[str, str]]:
    """`people` visitors, half on each node, connected and idle; yields session id ->
    the node holding it (from each one's hello). All leave at the end."""
    holder: dict[str, str] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sockets: list[aiohttp.ClientWebSocketResponse] = []

        async def visit(server: Any) -> None:
            ws = await http.ws_connect(server.ws_url)
            sockets.append(ws)
            hello = await ws.receive_json(timeout=TIMEOUT)
            holder[hello["id"]] = hello["node"]

        try:
            for start in range(0, people, 100):
                await asyncio.gather(
                    *(visit(one if i % 2 else two) for i in range(start, min(start + 100, people)))
                )
            yield holder
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
