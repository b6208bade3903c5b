"""Visitors for tests: headless clients on a test server, and what its /metrics says.

Every client is appended to the test's `clients` list, which the fixture closes,
so a failing test leaves no peer connection behind.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from rtc.client import ChatClient

TIMEOUT = 20.0


async def connected(
    where: Any, clients: list[ChatClient], tag: int, client_id: str | None = None, **kwargs: Any
) -> ChatClient:
    """A client with hello done; `where` is a test server or a WebSocket URL."""
    url = where if isinstance(where, str) else where.ws_url
    if client_id:
        url += f"?clientId={client_id}"
    client = ChatClient(url, tag=tag, **kwargs)
    clients.append(client)
    await client.connect()
    return client


async def matched(a: ChatClient, b: ChatClient, *, frames: int = 0) -> None:
    """Both press Start and are matched (with each other when nobody else waits);
    with `frames`, each has also received that many of the other's stamped frames."""
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    if frames:
        await a.wait_frames(tag=b.tag, count=frames, timeout=TIMEOUT)
        await b.wait_frames(tag=a.tag, count=frames, timeout=TIMEOUT)


def metric(server: Any, name: str) -> float:
    """One unlabelled metric from the server's /metrics."""
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
