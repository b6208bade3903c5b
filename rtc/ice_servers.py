"""The STUN and TURN servers handed to visitors, and those the server's own connections use.

TURN credentials come in two kinds:

- static (`--turn-username`/`--turn-password`): every visitor gets the same
  pair in `hello`, so anyone who opens the page can copy it and use the TURN
  server as a free relay for anything, for as long as the operator keeps it;
  changing it cuts off everyone at once.
- per visitor (`--turn-secret`, coturn's `use-auth-secret`, the TURN REST
  scheme of draft-uberti-behave-turn-rest): username ``<expiry>:<random id>``,
  password base64(HMAC-SHA1(secret, username)). The TURN server checks the
  HMAC and the expiry itself, so nothing but the secret is shared with it, and
  a copied credential stops working when it expires.

The server's own peer connections are reachable by definition (they answer
from the server's addresses), so they do not allocate on TURN: that would
only double the TURN server's load (NOTES.md section 4: 4 of 11 coturn
sessions were the server's). `server_uses_turn` asks for it anyway, for a
server that can only reach the outside through TURN.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Sequence

from aiortc import RTCIceServer

from config import IceServer

logger = logging.getLogger(__name__)

# Bytes of randomness in a per-visitor TURN username: opaque, never the session id
# (the username crosses the network in the clear with TURN over UDP or TCP).
TURN_ID_BYTES = 9


def is_turn(server: IceServer) -> bool:
    return server.urls.startswith(("turn:", "turns:"))


def rest_credentials(secret: str, ttl: float, now: float, user_id: str) -> tuple[str, str]:
    """(username, password) valid until `now + ttl` on a TURN server sharing `secret`."""
    username = f"{int(now + ttl)}:{user_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


class IceServers:
    """This deployment's STUN and TURN servers, with TURN credentials minted per use."""

    def __init__(
        self,
        servers: Sequence[IceServer] = (),
        *,
        turn_secret: str | None = None,
        turn_ttl: float = 86400.0,
        server_uses_turn: bool = False,
        server_uses_stun: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._servers = tuple(servers)
        self._secret = turn_secret
        self._ttl = turn_ttl
        self._server_uses_turn = server_uses_turn
        self._server_uses_stun = server_uses_stun
        self._clock = clock

    def _minted(self, servers: Sequence[IceServer], who: str) -> list[IceServer]:
        if self._secret is None or not any(is_turn(s) for s in servers):
            return list(servers)
        user_id = secrets.token_urlsafe(TURN_ID_BYTES)
        username, password = rest_credentials(self._secret, self._ttl, self._clock(), user_id)
        logger.debug("TURN user %s for %s", username, who)
        return [IceServer(s.urls, username, password) if is_turn(s) else s for s in servers]

    def for_visitor(self, who: str = "a visitor") -> list[dict[str, str]]:
        """The `iceServers` of one `hello`: fresh TURN credentials each time."""
        return [s.to_json() for s in self._minted(self._servers, who)]

    def for_server(self) -> list[RTCIceServer]:
        """What one of the server's own peer connections gathers with."""
        chosen = [
            s
            for s in self._servers
            if (self._server_uses_turn if is_turn(s) else self._server_uses_stun)
        ]
        return [
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self._minted(chosen, "the server")
        ]
