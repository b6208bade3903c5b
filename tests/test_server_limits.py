"""What a public server refuses, on the real server process: origins, per-address limits."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import aiohttp
import pytest

from rtc.client import ChatClient, SignallingError

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


LIMITED = ["--media-timeout", "3", "--ip-max-sessions", "2", "--ip-max-new-sessions", "4"]


async def expect_refusal(ws: aiohttp.ClientWebSocketResponse, code: str) -> None:
    refusal = await first_message(ws)
    assert refusal["type"] == "error" and refusal["code"] == code, refusal
    assert refusal["message"]
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4029


@pytest.mark.parametrize("relay_server_args", [LIMITED])
async def test_one_address_gets_a_limited_number_of_websockets(relay_server) -> None:
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(relay_server.ws_url)
        second = await http.ws_connect(relay_server.ws_url)
        for ws in (first, second):
            assert (await first_message(ws))["type"] == "hello"
        async with http.ws_connect(relay_server.ws_url) as third:
            await expect_refusal(third, "too_many_sessions")
        # Closing one gives its place back.
        await first.close()
        await _until_sessions(http, relay_server, 1)
        async with http.ws_connect(relay_server.ws_url) as again:
            assert (await first_message(again))["type"] == "hello"
        await _until_sessions(http, relay_server, 1)
        # Four admitted within the minute: the fifth is refused however few are open.
        async with http.ws_connect(relay_server.ws_url) as fourth:
            assert (await first_message(fourth))["type"] == "hello"
        async with http.ws_connect(relay_server.ws_url) as fifth:
            await expect_refusal(fifth, "too_many_new_sessions")
        await second.close()


@pytest.mark.parametrize("relay_server_args", [["--media-timeout", "3", "--ip-max-peers", "1"]])
async def test_one_address_gets_a_limited_number_of_media_connections(
    relay_server, clients
) -> None:
    a = ChatClient(relay_server.ws_url, tag=1)
    b = ChatClient(relay_server.ws_url, tag=2)
    clients += [a, b]
    await a.connect()
    await b.connect_signalling()
    with pytest.raises(SignallingError) as refused:
        await b.negotiate()
    assert refused.value.message["code"] == "too_many_peers"
    # The WebSocket stays usable.
    await b.start()
    await b.wait_for("waiting", timeout=TIMEOUT)

    # A's media dies (media_lost): its place is given back.
    for sender in a.pc.getSenders():
        sender.replaceTrack(None)
    assert (await a.wait_for("error", timeout=TIMEOUT))["code"] == "media_lost"
    await b.negotiate()
    with pytest.raises(SignallingError):
        await a.negotiate()

    # B leaves: its place is given back too.
    await b.close()
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                await a.negotiate()
                break
            except SignallingError as exc:
                assert exc.message["code"] == "too_many_peers"
                await asyncio.sleep(0.2)


async def _until_sessions(http: aiohttp.ClientSession, server, count: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        while True:
            async with http.get(server.http_url + "/healthz") as response:
                if (await response.json())["sessions"] == count:
                    return
            await asyncio.sleep(0.05)


SECURITY_HEADERS = (
    "Content-Security-Policy",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "Referrer-Policy",
    "Permissions-Policy",
)


@pytest.mark.parametrize("relay_server_args", [["--trusted-proxy"]])
async def test_every_response_carries_the_security_headers(relay_server) -> None:
    paths = {
        "/": 200,
        "/static/app.js": 200,
        "/static/no-such-file.js": 404,
        "/moderate": 401,
        "/moderate/static/dashboard.js": 401,
        "/api/moderate/reports": 401,
        "/healthz": 200,
        "/nowhere": 404,
    }
    async with aiohttp.ClientSession() as http:
        for path, expected in paths.items():
            async with http.get(relay_server.http_url + path) as response:
                assert response.status == expected, path
                for name in SECURITY_HEADERS:
                    assert name in response.headers, (path, name)
                assert "Strict-Transport-Security" not in response.headers, path
        async with http.get(relay_server.http_url + "/") as response:
            csp = response.headers["Content-Security-Policy"]
            host = relay_server.http_url.removeprefix("http://")
            assert f"connect-src 'self' ws://{host} wss://{host}" in csp
            assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
            assert response.headers["X-Frame-Options"] == "DENY"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        # Behind the proxy the visitor used HTTPS: browsers should keep to it.
        proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "chat.example.org"}
        async with http.get(relay_server.http_url + "/", headers=proxied) as response:
            assert response.headers["Strict-Transport-Security"].startswith("max-age=")
            assert "wss://chat.example.org" in response.headers["Content-Security-Policy"]


async def test_forwarded_headers_are_ignored_without_trusted_proxy(relay_server) -> None:
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(relay_server.http_url + "/", headers=proxied) as response,
    ):
        assert "Strict-Transport-Security" not in response.headers
        assert "evil.example" not in response.headers["Content-Security-Policy"]


class TestLoginThrottle:
    SECRET = "mia-secret-0123456789abc"

    @pytest.fixture
    def relay_server_args(self, tmp_path: Path) -> list[str]:
        moderators = tmp_path / "moderators"
        moderators.write_text(f"mia:{self.SECRET}\nnoor:{self.SECRET}x\n")
        moderators.chmod(0o600)
        return [
            "--moderators-file",
            str(moderators),
            "--db",
            str(tmp_path / "moderation.sqlite3"),
            "--recordings-dir",
            str(tmp_path / "recordings"),
            "--trusted-proxy",
        ]

    async def test_guessing_locks_out_and_is_audited(self, relay_server) -> None:
        url = relay_server.http_url + "/api/moderate/audit"

        def basic(name: str, secret: str, address: str) -> dict[str, str]:
            token = base64.b64encode(f"{name}:{secret}".encode()).decode()
            return {"Authorization": f"Basic {token}", "X-Forwarded-For": address}

        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(8):
                async with http.get(url, headers=basic("mia", "wrong", "192.0.2.1")) as r:
                    statuses.append(r.status)
            assert statuses[:6] == [403] * 6 and statuses[6:] == [429] * 2
            # Right credentials from the locked address, or for the locked name: still 429.
            async with http.get(url, headers=basic("noor", self.SECRET + "x", "192.0.2.1")) as r:
                assert r.status == 429 and int(r.headers["Retry-After"]) > 0
            async with http.get(url, headers=basic("mia", self.SECRET, "192.0.2.2")) as r:
                assert r.status == 429
            # Another moderator elsewhere reads what happened in the audit log.
            async with asyncio.timeout(TIMEOUT):
                while True:
                    headers = basic("noor", self.SECRET + "x", "198.51.100.1")
                    async with http.get(url, headers=headers) as r:
                        assert r.status == 200
                        entries = (await r.json())["audit"]
                    if {"login_failed", "login_locked"} <= {e["action"] for e in entries}:
                        break
                    await asyncio.sleep(0.1)
        targets = {(e["action"], e["target"]) for e in entries}
        assert ("login_locked", "name:mia") in targets
        assert ("login_locked", "address:192.0.2.1") in targets
        assert not any(self.SECRET in json.dumps(e) for e in entries)
