"""The HTTP surface: the page, its static files, the WebSocket and health."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator

from aiohttp import WSMsgType, web
from aiortc import RTCIceServer

from config import Settings
from matcher.base import MatcherSettings
from matcher.memory import MemoryMatcher
from rtc.peer import PeerSettings
from rtc.relay import Relay
from signalling.lobby import Lobby
from signalling.metrics import setup_metrics
from signalling.protocol import HARD_MAX_MESSAGE_BYTES

logger = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
LOBBY = web.AppKey("lobby", Lobby)


def create_app(settings: Settings) -> web.Application:
    """The whole server as an aiohttp application; tests build it the same way."""
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_lobby_context)
    app.on_shutdown.append(_close_sessions)
    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    setup_metrics(app, LOBBY, settings.relay)
    if os.path.isdir(settings.web_dir):
        app.router.add_static("/static/", settings.web_dir, follow_symlinks=False)
    return app


async def _lobby_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    peer_settings = PeerSettings(
        ice_servers=tuple(
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in settings.ice_servers
        ),
        keyframe_interval=settings.keyframe_interval,
        media_timeout=settings.media_timeout,
        connect_timeout=settings.connect_timeout,
        transcode=settings.relay == "transcode",
    )
    matcher_settings = MatcherSettings(
        interest_timeout=settings.interest_timeout, rematch_after=settings.rematch_after
    )
    lobby = Lobby(
        Relay(peer_settings),
        lambda on_match: MemoryMatcher(on_match, matcher_settings),
        ice_servers=[s.to_json() for s in settings.ice_servers],
    )
    await lobby.start()
    app[LOBBY] = lobby
    yield
    await lobby.close()


async def _close_sessions(app: web.Application) -> None:
    app[LOBBY].shutdown()


async def index(request: web.Request) -> web.StreamResponse:
    # FileResponse answers 404 itself when the app is not installed.
    path = os.path.join(request.app[SETTINGS].web_dir, "index.html")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def healthz(request: web.Request) -> web.Response:
    lobby = request.app[LOBBY]
    return web.json_response({"status": "ok", "sessions": len(lobby.sessions)})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    lobby = request.app[LOBBY]
    # heartbeat finds sockets whose TCP died without a close frame.
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=HARD_MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    session = lobby.join(ws)
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await lobby.receive(session, msg.data)
            elif msg.type == WSMsgType.ERROR:
                logger.info("%r: WebSocket error %s", session, ws.exception())
                break
    finally:
        await lobby.leave(session)
    return ws
