"""The HTTP routes: the page, the WebSocket and health (app.py composes the app)."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from aiohttp import WSMsgType, hdrs, web

from config import Settings
from moderation.routes import MODERATION
from signalling.limits import LimitExceeded
from signalling.lobby import CLOSE_KICKED, Lobby
from signalling.protocol import HARD_MAX_MESSAGE_BYTES, error_message
from signalling.request_origin import client_ip, origin_allowed
from signalling.session import CLOSE_TOO_MANY

logger = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
LOBBY = web.AppKey("lobby", Lobby)
# What the page may send as its persistent client id (`/ws?clientId=`).
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/standing", standing)
    app.router.add_get("/sw.js", service_worker)


async def index(request: web.Request) -> web.StreamResponse:
    # FileResponse answers 404 itself when the app is not installed.
    path = os.path.join(request.app[SETTINGS].web_dir, "index.html")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def service_worker(request: web.Request) -> web.StreamResponse:
    # From the root, so its scope is the whole site; never cached, so updates arrive.
    path = os.path.join(request.app[SETTINGS].web_dir, "sw.js")
    return web.FileResponse(
        path,
        headers={"Cache-Control": "no-cache", "Content-Type": "text/javascript; charset=utf-8"},
    )


async def healthz(request: web.Request) -> web.Response:
    lobby = request.app[LOBBY]
    body: dict[str, Any] = {"status": "ok", "sessions": len(lobby.sessions)}
    if request.app[SETTINGS].clustered:
        body["node"] = lobby.node
    if lobby.draining:
        # A load balancer stops sending visitors here.
        return web.json_response(body | {"status": "draining"}, status=503)
    return web.json_response(body)


def _visitor(request: web.Request) -> tuple[str | None, str | None]:
    """The persistent client id (`?clientId=`, when well formed) and address of a visitor."""
    client_id = request.query.get("clientId")
    identity = client_id if client_id and _CLIENT_ID.fullmatch(client_id) else None
    return identity, client_ip(request, trusted_proxy=request.app[SETTINGS].trusted_proxy)


async def standing(request: web.Request) -> web.Response:
    """Whether this visitor is banned, asked by the page before the age check and camera.

    The same check `/ws` makes, without opening a session: a banned person learns it
    before agreeing to anything or lighting their camera (docs/protocol.md).
    """
    identity, ip = _visitor(request)
    moderation = request.app[MODERATION]
    ban = await moderation.ban_for(identity, ip)
    body: dict[str, Any] = {"banned": False}
    if ban is not None:
        # The very `banned` error /ws would send (reason, until, appeal), as a plain answer.
        body = moderation.refusal(ban) | {"banned": True}
        del body["type"]
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    settings = request.app[SETTINGS]
    # A page on another site must not use a visitor's browser (and address) to
    # chat or to eat this address's limits; refused before the upgrade.
    if not origin_allowed(
        request, trusted_proxy=settings.trusted_proxy, allowed=settings.allowed_origins
    ):
        origin = request.headers.get(hdrs.ORIGIN, "")
        logger.info("refused /ws from origin %r (Host %r)", origin, request.host)
        raise web.HTTPForbidden(
            text=f"pages from {origin[:200]!r} may not open this chat's WebSocket; the server "
            "accepts its own origin and those given with --allowed-origin\n"
        )
    lobby = request.app[LOBBY]
    if lobby.draining:
        raise web.HTTPServiceUnavailable(text="this node is restarting; try again\n")
    identity, ip = _visitor(request)
    moderation = request.app[MODERATION]
    ban = await moderation.ban_for(identity, ip)
    # heartbeat finds sockets whose TCP died without a close frame.
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=HARD_MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    if ban is not None:
        await ws.send_json(moderation.refusal(ban))
        await ws.close(code=CLOSE_KICKED, message=b"banned")
        return ws
    person = moderation.pseudonyms.person(identity)
    blocked = await moderation.blocked_tags(person)
    try:
        session = lobby.join(
            ws,
            identity=identity,
            ip=ip,
            person=person,
            address=moderation.pseudonyms.address(ip),
            avoid=blocked,
        )
    except LimitExceeded as exc:
        # Accepted, then refused: a browser's WebSocket API only shows a
        # message and a close code, never an HTTP status.
        logger.debug("refused a session from %s: %s", ip, exc.code)
        await ws.send_json(error_message(exc.code, exc.message))
        await ws.close(code=CLOSE_TOO_MANY, message=exc.code.encode())
        return ws
    try:
        while (msg := await session.receive(ws)) is not None:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                # A `resume` moves this socket to the session it names.
                session = await lobby.receive(session, msg.data)
            elif msg.type == WSMsgType.ERROR:
                logger.info("%r: WebSocket error %s", session, ws.exception())
                break
    finally:
        # Held for a resume, or ended (signalling/lobby.py decides).
        await lobby.disconnected(session, ws)
    return ws
