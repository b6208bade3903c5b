"""What a public server refuses, on the real server process: origins, per-address limits."""

from __future__ import annotations

import json

import aiohttp
import pytest

TIMEOUT = 20.0


async def first_message(ws: aiohttp.ClientWebSocketResponse) -> dict:
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_websocket_from_another_site_is_refused_before_the_upgrade(relay_server) -> None:
    own = relay_server.http_url
    async with aiohttp.ClientSession() as http:
        for origin in (None, own):
            async with http.ws_connect(relay_server.ws_url, origin=origin) as ws:
                assert (await first_message(ws))["type"] == "hello"
        for origin in ("https://evil.example", "null", own.replace("127.0.0.1", "localhost")):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(relay_server.ws_url, origin=origin)
            assert refused.value.status == 403, origin
        async with http.get(
            relay_server.ws_url.replace("ws:", "http:"),
            headers={
                "Origin": "https://evil.example",
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ) as response:
            assert response.status == 403
            assert "--allowed-origin" in await response.text()


@pytest.mark.parametrize(
    "relay_server_args", [["--allowed-origin", "https://embed.example"]], indirect=False
)
async def test_an_allowed_origin_may_open_the_websocket(relay_server) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(relay_server.ws_url, origin="https://embed.example") as ws,
    ):
        assert (await first_message(ws))["type"] == "hello"
