"""The HTTP surface: the page, its static files, the WebSocket and health."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, hdrs, web
from aiortc import RTCIceServer

from config import Settings
from matcher.base import MatcherSettings
from matcher.memory import MemoryMatcher
from moderation import auth
from moderation.routes import MODERATION, WATCH_ICE, setup_routes
from moderation.service import (
    FlagCollector,
    Moderation,
    ModerationSettings,
    ban_message,
    ban_until,
)
from moderation.store import ModerationStore
from moderation.throttle import AuditHook as LoginThrottleAudit
from moderation.throttle import LoginThrottle
from rtc.peer import PeerSettings
from rtc.relay import Relay
from signalling import headers
from signalling.limits import AddressLimits, LimitExceeded, LimitSettings
from signalling.lobby import CLOSE_KICKED, Lobby
from signalling.metrics import METRICS, setup_metrics
from signalling.protocol import HARD_MAX_MESSAGE_BYTES, error_message
from signalling.request_origin import client_ip, origin_allowed
from signalling.session import CLOSE_TOO_MANY

logger = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
LOBBY = web.AppKey("lobby", Lobby)
# What the page may send as its persistent client id (`/ws?clientId=`).
_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def create_app(settings: Settings) -> web.Application:
    """The whole server as an aiohttp application; tests build it the same way."""
    app = web.Application()
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_lobby_context)
    app.cleanup_ctx.append(_moderation_context)
    moderators = (
        auth.Moderators.from_file(settings.moderators_file)
        if settings.moderators_file
        else auth.Moderators.from_env()
    )
    if not len(moderators):
        logger.info("no moderators configured: /moderate and /api/moderate refuse everyone")
    auth.install(
        app,
        moderators,
        trusted_proxy=settings.trusted_proxy,
        throttle=LoginThrottle(free_failures=settings.login_throttle_after),
    )
    headers.install(app, trusted_proxy=settings.trusted_proxy)
    app[WATCH_ICE] = list(_rtc_ice_servers(settings))
    setup_routes(app, os.path.join(settings.web_dir, "moderate"))
    app.on_shutdown.append(_close_sessions)
    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    setup_metrics(
        app,
        LOBBY,
        settings.relay,
        host=settings.metrics_host,
        port=settings.metrics_port,
        token=settings.metrics_token,
    )
    app.on_startup.append(_moderation_metrics)
    if os.path.isdir(settings.web_dir):
        app.router.add_static("/static/", settings.web_dir, follow_symlinks=False)
    return app


async def _lobby_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    peer_settings = PeerSettings(
        ice_servers=_rtc_ice_servers(settings),
        keyframe_interval=settings.keyframe_interval,
        media_timeout=settings.media_timeout,
        connect_timeout=settings.connect_timeout,
        transcode=settings.relay == "transcode",
    )
    matcher_settings = MatcherSettings(
        interest_timeout=settings.interest_timeout, rematch_after=settings.rematch_after
    )
    limits = LimitSettings(
        max_sessions=settings.ip_max_sessions,
        max_peers=settings.ip_max_peers,
        max_new_sessions=settings.ip_max_new_sessions,
    )
    lobby = Lobby(
        Relay(peer_settings),
        lambda on_match: MemoryMatcher(on_match, matcher_settings),
        ice_servers=[s.to_json() for s in settings.ice_servers],
        limits=AddressLimits(limits),
    )
    lobby.report_moves_on = settings.report_moves_on
    await lobby.start()
    app[LOBBY] = lobby
    yield
    await lobby.close()


async def _moderation_metrics(app: web.Application) -> None:
    # After setup_metrics' own on_startup handler has made the registry.
    app[METRICS].registry.register(FlagCollector(app[MODERATION]))


def _rtc_ice_servers(settings: Settings) -> tuple[RTCIceServer, ...]:
    return tuple(
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
        for s in settings.ice_servers
    )


async def _moderation_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if os.path.dirname(settings.db):
        os.makedirs(os.path.dirname(settings.db), mode=0o700, exist_ok=True)
    moderation = Moderation(
        app[LOBBY],
        ModerationStore(settings.db),
        app[auth.MODERATORS],
        ModerationSettings(
            recordings_dir=settings.recordings_dir,
            recording_retention=settings.recording_retention,
            evidence_seconds=settings.evidence_seconds,
            analyzer_interval=settings.analyzer_interval,
        ),
    )
    await moderation.start()
    app[MODERATION] = moderation
    throttle = app[auth.LOGIN_THROTTLE]
    throttle.audit = _audit_logins(moderation.store)
    yield
    throttle.audit = None
    await moderation.close()


def _audit_logins(store: ModerationStore) -> LoginThrottleAudit:
    """Failed logins and lock-outs into the audit log, written off the event loop."""
    loop = asyncio.get_running_loop()

    def audit(action: str, target: str, detail: str) -> None:
        written = loop.run_in_executor(None, store.audit, "anonymous", action, target, detail)
        written.add_done_callback(_log_audit_failure)

    return audit


def _log_audit_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("writing a login event to the audit log failed", exc_info=future.exception())


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
    client_id = request.query.get("clientId")
    identity = client_id if client_id and _CLIENT_ID.fullmatch(client_id) else None
    ip = client_ip(request, trusted_proxy=settings.trusted_proxy)
    ban = await request.app[MODERATION].ban_for(identity, ip)
    # heartbeat finds sockets whose TCP died without a close frame.
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=HARD_MAX_MESSAGE_BYTES)
    await ws.prepare(request)
    if ban is not None:
        refusal = error_message("banned", ban_message(ban))
        await ws.send_json(refusal | {"reason": ban.reason, "until": ban_until(ban)})
        await ws.close(code=CLOSE_KICKED, message=b"banned")
        return ws
    try:
        session = lobby.join(ws, identity=identity, ip=ip)
    except LimitExceeded as exc:
        # Accepted, then refused: a browser's WebSocket API only shows a
        # message and a close code, never an HTTP status.
        logger.debug("refused a session from %s: %s", ip, exc.code)
        await ws.send_json(error_message(exc.code, exc.message))
        await ws.close(code=CLOSE_TOO_MANY, message=exc.code.encode())
        return ws
    try:
        async for msg in session.messages():
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                await lobby.receive(session, msg.data)
            elif msg.type == WSMsgType.ERROR:
                logger.info("%r: WebSocket error %s", session, ws.exception())
                break
    finally:
        await lobby.leave(session)
    return ws
