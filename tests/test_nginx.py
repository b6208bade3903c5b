"""Debian's nginx, running the documented docs/nginx-cluster.conf, in front of two nodes.

Two real `server.py --redis ... --trusted-proxy` nodes on one real
redis-server; nginx ends TLS (a self-signed certificate made for the test) and
balances visitors between them. Every client goes through nginx, as browsers
would; media still goes straight to the node (ICE), only HTTP and the
WebSocket pass through nginx.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from conftest import ARTIFACTS
from nginx_server import NginxServer

from rtc.client import ChatClient

TIMEOUT = 20.0

# conftest.RelayServer (pytest gives its fixtures, not its names, to test modules).
RelayServer = Any
Cluster = tuple[NginxServer, RelayServer, RelayServer]


@pytest.fixture
def behind_nginx(
    request: pytest.FixtureRequest, nodes: Callable[..., RelayServer]
) -> Iterator[Callable[..., Cluster]]:
    """`behind_nginx(*node_flags)`: two nodes with --trusted-proxy and nginx in front."""
    started: list[NginxServer] = []

    def start(*flags: str) -> Cluster:
        one = nodes("--trusted-proxy", *flags)
        two = nodes("--trusted-proxy", *flags)
        nginx = NginxServer(
            [f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"],
            ARTIFACTS / "server-logs" / f"test_nginx-{request.node.name}",
        )
        started.append(nginx)
        return nginx, one, two

    yield start
    for nginx in started:
        nginx.stop()


def trusting(nginx: NginxServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(nginx.cert_path))


async def through(nginx: NginxServer, clients: list, tag: int) -> ChatClient:
    client = ChatClient(nginx.ws_url, tag=tag, ssl_context=trusting(nginx))
    clients.append(client)
    await client.connect()
    return client


async def one_per_node(nginx: NginxServer, clients: list) -> tuple[ChatClient, ChatClient]:
    """Clients through nginx until two sit on different nodes (the others are closed)."""
    by_node: dict[str, ChatClient] = {}
    for tag in range(1, 9):
        client = await through(nginx, clients, tag)
        node = client.hello["node"]
        if node in by_node:
            await client.close()
        else:
            by_node[node] = client
        if len(by_node) == 2:
            a, b = by_node.values()
            return a, b
    raise AssertionError(f"nginx sent every connection to one node: {list(by_node)}")


async def test_nginx_balances_the_nodes_and_a_pair_across_them_flows(behind_nginx, clients) -> None:
    nginx, one, two = behind_nginx()
    a, b = await one_per_node(nginx, clients)
    assert {a.hello["node"], b.hello["node"]} == {
        _healthz(one)["node"],
        _healthz(two)["node"],
    }
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    # The frames that arrive are the partner's, in order, none twice.
    for receiver, tag in ((a, b.tag), (b, a.tag)):
        frames = await receiver.wait_frames(tag=tag, count=20, timeout=TIMEOUT)
        counters = [f.stamp.counter for f in frames]
        assert counters == sorted(counters) and len(set(counters)) == len(counters), counters
    await a.chat("through nginx")
    assert (await b.wait_for("chat", timeout=TIMEOUT))["text"] == "through nginx"
    await b.close()
    assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "disconnect"


async def test_the_page_loads_through_nginx_with_its_security_headers(behind_nginx) -> None:
    nginx, _one, _two = behind_nginx()
    connector = aiohttp.TCPConnector(ssl=trusting(nginx))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(nginx.url + "/") as page:
            assert page.status == 200
            assert "<html" in (await page.text()).lower()
            headers = page.headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "camera=(self)" in headers["Permissions-Policy"]
        # Only sent to visitors who came over HTTPS: X-Forwarded-Proto reached the node.
        assert headers["Strict-Transport-Security"].startswith("max-age=")

        # Plain HTTP only sends the browser to HTTPS.
        http_url = f"http://127.0.0.1:{nginx.http_port}/?x=1"
        async with http.get(http_url, allow_redirects=False) as redirect:
            assert redirect.status == 301
            assert redirect.headers["Location"] == "https://127.0.0.1/?x=1"


async def test_origins_are_checked_against_what_the_browser_used(behind_nginx) -> None:
    nginx, one, _two = behind_nginx()
    connector = aiohttp.TCPConnector(ssl=trusting(nginx))
    async with aiohttp.ClientSession(connector=connector) as http:
        # The page served by nginx: the node sees nginx's host, port and scheme.
        async with http.ws_connect(nginx.ws_url, origin=nginx.origin) as ws:
            assert (await _first(ws))["type"] == "hello"
        for origin in (
            "https://evil.example",
            # Same host and port, but not the scheme the browser used.
            nginx.origin.replace("https:", "http:"),
            # The node's own address is not where the visitor's page came from.
            f"http://127.0.0.1:{one.port}",
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(nginx.ws_url, origin=origin)
            assert refused.value.status == 403, origin


async def test_the_per_address_limit_counts_visitors_not_nginx(behind_nginx) -> None:
    """Every request reaches the nodes from nginx's 127.0.0.1; the limit must be per
    visitor, read from X-Forwarded-For. Visitors here are 127.0.0.2 and 127.0.0.3."""
    nginx, _one, _two = behind_nginx("--ip-max-sessions", "2")
    # Two sessions per address on each node: four through nginx, then refusals.
    greedy = _visitor(nginx, "127.0.0.2")
    other = _visitor(nginx, "127.0.0.3")
    try:
        held: list[aiohttp.ClientWebSocketResponse] = []
        per_node: dict[str, int] = {}
        for _ in range(8):
            ws = await greedy.ws_connect(nginx.ws_url, origin=nginx.origin)
            first = await _first(ws)
            if first["type"] == "hello":
                held.append(ws)
                per_node[first["node"]] = per_node.get(first["node"], 0) + 1
            else:
                assert first["code"] == "too_many_sessions", first
                await ws.close()
            if per_node and all(n == 2 for n in per_node.values()) and len(per_node) == 2:
                break
        assert sorted(per_node.values()) == [2, 2], per_node
        # Full on both nodes: 127.0.0.2 is refused wherever nginx sends it...
        for _ in range(2):
            async with greedy.ws_connect(nginx.ws_url, origin=nginx.origin) as ws:
                refusal = await _first(ws)
                assert refusal["code"] == "too_many_sessions", refusal
                assert (await ws.receive(timeout=TIMEOUT)).type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == 4029
        # ...while another visitor, through the same nginx, is welcome.
        for _ in range(2):
            async with other.ws_connect(nginx.ws_url, origin=nginx.origin) as ws:
                assert (await _first(ws))["type"] == "hello"
        for ws in held:
            await ws.close()
    finally:
        await greedy.close()
        await other.close()


async def test_a_draining_node_sends_newcomers_to_the_other(behind_nginx, clients) -> None:
    """SIGTERM: the node answers /ws with 503 until it exits, and nginx
    (proxy_next_upstream http_503) tries the other node instead of failing."""
    nginx, one, two = behind_nginx()
    a, b = await one_per_node(nginx, clients)
    on_two = a if a.hello["node"] == _healthz(two)["node"] else b
    two.send_signal(signal.SIGTERM)
    await asyncio.wait_for(_until(lambda: on_two.close_code is not None), TIMEOUT)
    assert on_two.close_code == 1012
    survivor = _healthz(one)["node"]
    for tag in range(10, 14):
        client = ChatClient(nginx.ws_url, tag=tag, ssl_context=trusting(nginx))
        clients.append(client)
        await client.connect_signalling()
        assert client.hello["node"] == survivor
    assert await asyncio.to_thread(two.wait, TIMEOUT) == 0


def _visitor(nginx: NginxServer, address: str) -> aiohttp.ClientSession:
    """A client whose connections to nginx come from `address` (any 127/8 is loopback)."""
    connector = aiohttp.TCPConnector(ssl=trusting(nginx), local_addr=(address, 0))
    return aiohttp.ClientSession(connector=connector)


async def _first(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    message: dict[str, Any] = json.loads(msg.data)
    return message


def _healthz(server: RelayServer) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(server.http_url + "/healthz", timeout=5) as r:
        body: dict[str, Any] = json.loads(r.read())
        return body


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.05)
