"""--show-online: `hello` and `waiting` say how many people are online, rounded."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from config import parse_settings
from signalling.lobby import rounded_online

TIMEOUT = 10.0


@pytest.fixture
def relay_server_args() -> list[str]:
    return ["--show-online"]


@contextlib.asynccontextmanager
async def sockets(url: str, n: int) -> AsyncIterator[list[aiohttp.ClientWebSocketResponse]]:
    async with aiohttp.ClientSession() as http, contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(http.ws_connect(url)) for _ in range(n)]


async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        msg: dict[str, Any] = await asyncio.wait_for(ws.receive_json(), TIMEOUT)
        if msg["type"] == kind:
            return msg


async def test_hello_and_waiting_carry_the_count(relay_server: Any) -> None:
    async with sockets(relay_server.ws_url, 3) as (a, b, c):
        assert [(await next_of(ws, "hello"))["online"] for ws in (a, b, c)] == [1, 2, 3]
        await c.send_json({"type": "start"})
        assert (await next_of(c, "waiting"))["online"] == 3
    async with sockets(relay_server.ws_url, 1) as (d,):
        assert (await next_of(d, "hello"))["online"] == 1  # the others' sockets are gone


def test_the_count_is_rounded_down_to_two_significant_digits() -> None:
    assert [rounded_online(n) for n in (0, 1, 7, 15, 99, 100, 123, 999, 1234, 98765)] == [
        0,
        1,
        7,
        15,
        99,
        100,
        120,
        990,
        1200,
        98000,
    ]


def test_off_by_default_and_allowed_in_a_cluster() -> None:
    assert parse_settings([]).show_online is False
    assert parse_settings(["--show-online"]).show_online is True
    cluster = ["--redis", "redis://127.0.0.1:1/0", "--cluster-secret", "x" * 16]
    assert parse_settings(["--show-online", *cluster]).show_online is True


async def seen_on_arrival(url: str, expected: int) -> dict[str, Any]:
    """The `hello` of a visitor arriving once the count shown is `expected` (other
    nodes' counts come with their heartbeats, a second or so late); each try is a
    visitor who leaves again."""
    seen = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            async with sockets(url, 1) as (ws,):
                hello = await next_of(ws, "hello")
                seen.append(hello["online"])
                if hello["online"] == expected:
                    await ws.send_json({"type": "start", "mode": "text"})
                    waiting = await next_of(ws, "waiting")
                    return hello | {"waiting": waiting["online"], "tries": seen}
            await asyncio.sleep(0.2)


async def test_a_cluster_shows_everyone_on_every_live_node(nodes: Any) -> None:
    one, two = nodes("--show-online"), nodes("--show-online")
    async with sockets(two.ws_url, 3) as there:
        hellos = [await next_of(ws, "hello") for ws in there]
        assert [h["online"] for h in hellos][-1] == 3  # node one has nobody yet
        # A visitor on node one counts node two's three, and themselves.
        arrival = await seen_on_arrival(one.ws_url, 4)
        assert arrival["node"] != hellos[0]["node"]
        assert arrival["waiting"] == 4
        await there[0].close()
        await there[1].close()
        # Those who left stop being counted once node two has beaten again.
        await seen_on_arrival(one.ws_url, 2)
    # A node that dies stops being counted when its heartbeat key expires.
    async with sockets(two.ws_url, 2) as there:
        for ws in there:
            await next_of(ws, "hello")
        await seen_on_arrival(one.ws_url, 3)
        two.send_signal(signal.SIGKILL)
        two.wait(TIMEOUT)
        await seen_on_arrival(one.ws_url, 1)
