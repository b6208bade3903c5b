"""TURN credentials per visitor (coturn use-auth-secret) and what the server itself gathers with.

That coturn accepts these credentials, and refuses them once expired, is shown
against the real coturn in tests/test_networks.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import aiohttp

from config import IceServer, IceSettings, Settings
from rtc.ice_servers import IceServers, rest_credentials

STUN = IceServer("stun:stun.example:3478")
TURN = IceServer("turns:turn.example:443?transport=tcp")


def test_rest_credentials_follow_the_turn_rest_scheme() -> None:
    username, password = rest_credentials("s3cret", 600, 1_700_000_000.4, "abc")
    assert username == "1700000600:abc"
    expected = hmac.new(b"s3cret", b"1700000600:abc", hashlib.sha1).digest()
    assert base64.b64decode(password) == expected


def test_each_visitor_gets_fresh_credentials_valid_for_the_ttl() -> None:
    servers = IceServers((STUN, TURN), turn_secret="s3cret", turn_ttl=600, clock=lambda: 1000.0)
    first, second = servers.for_visitor(), servers.for_visitor()
    assert first[0] == {"urls": STUN.urls}
    assert first[1]["urls"] == TURN.urls
    for given in (first[1], second[1]):
        expiry, _, who = given["username"].partition(":")
        assert expiry == "1600" and len(who) >= 12
        assert rest_credentials("s3cret", 600, 1000.0, who) == (
            given["username"],
            given["credential"],
        )
    assert first[1]["username"] != second[1]["username"]


def test_static_credentials_are_handed_out_as_configured() -> None:
    static = IceServer(TURN.urls, "user", "pass")
    assert IceServers((static,)).for_visitor() == [static.to_json()]


def test_the_server_itself_uses_stun_but_not_turn_unless_asked() -> None:
    servers = IceServers((STUN, TURN), turn_secret="s3cret")
    assert [s.urls for s in servers.for_server()] == [STUN.urls]
    # An announced address replaces what STUN would find.
    assert IceServers((STUN, TURN), server_uses_stun=False).for_server() == []
    both = IceServers((STUN, TURN), turn_secret="s3cret", server_uses_turn=True).for_server()
    assert [s.urls for s in both] == [STUN.urls, TURN.urls]
    assert both[1].username is not None and both[1].username.count(":") == 1


async def test_every_hello_carries_credentials_of_its_own(local_server) -> None:
    """A reconnecting visitor (a new WebSocket) gets fresh credentials, not the old ones."""
    server = await local_server(
        Settings(ice_servers=(STUN, TURN), ice=IceSettings(turn_secret="s3cret", turn_ttl=60))
    )
    seen = []
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.ws_connect(server.ws_url, origin=server.http_url) as ws:
                hello = await ws.receive_json()
                assert hello["type"] == "hello"
                stun, turn = hello["iceServers"]
                assert stun == {"urls": STUN.urls}
                assert hello["id"] not in turn["username"]
                seen.append(turn["username"])
    assert seen[0] != seen[1]
