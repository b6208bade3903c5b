"""The composition root: settings in, the whole server out as an aiohttp application.

It picks the parts: in memory for one node, Redis (matcher, bus, node registry) when
the node joins a cluster. Tests build the app the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from redis.asyncio import Redis

from cluster.bus import LocalBus, RedisBus, SessionBus
from cluster.connect import connect as cluster_connect
from cluster.node import new_node_id
from cluster.registry import BEAT_TTL, NodeRegistry
from config import Settings
from matcher.base import MatcherSettings, MatchHandler
from matcher.memory import MemoryMatcher
from matcher.redis import RedisMatcher
from moderation import auth
from moderation.channel import LocalChannel, ModerationChannel, RedisChannel
from moderation.files import RemoteFiles
from moderation.live import LiveSessions
from moderation.remote import RemoteFeedCollector, RemoteMedia
from moderation.routes import FILES, LIVE, MODERATION, follow_new_media, setup_routes
from moderation.service import FlagCollector, Moderation, ModerationSettings
from moderation.store_protocol import ModerationStoreProtocol, open_store
from moderation.throttle import AuditHook as LoginThrottleAudit
from moderation.throttle import LoginThrottle, SharedFailures
from rtc import aiortc_seam, host_addresses, packet_path
from rtc.ice_servers import IceServers
from rtc.mux import MediaMux
from rtc.peer import PeerSettings
from rtc.pipe import PipeEndpoint
from rtc.pipe_bridge import PipeBridge
from rtc.relay import Relay
from signalling import headers
from signalling.limits import AddressLimits, LimitSettings
from signalling.lobby import Lobby, MatcherFactory
from signalling.metrics import METRICS, setup_metrics
from signalling.resume import ResumeSettings
from signalling.web import LOBBY, SETTINGS, add_routes

logger = logging.getLogger(__name__)

REDIS = web.AppKey("redis", Redis)


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
    if settings.cluster_secret:
        # Every node (and worker) has the cluster secret: a login holds on all of them.
        moderators.share_tokens(settings.cluster_secret)
    if not len(moderators):
        logger.info("no moderators configured: /moderate and /api/moderate refuse everyone")
    auth.install(
        app,
        moderators,
        trusted_proxy=settings.trusted_proxy,
        throttle=LoginThrottle(free_failures=settings.login_throttle_after),
    )
    headers.install(app, trusted_proxy=settings.trusted_proxy)
    setup_routes(app, os.path.join(settings.web_dir, "moderate"))
    app.on_shutdown.append(_close_sessions)
    add_routes(app)
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
    ice_servers = _ice_servers(settings)
    hosts = host_addresses.choose(settings.ice, aiortc_seam.interface_addresses())
    logger.info("media on %s, packet path %s", hosts.describe(), packet_path.name())
    peer_settings = PeerSettings(
        ice_servers=ice_servers.for_server,
        host_addresses=hosts,
        keyframe_interval=settings.keyframe_interval,
        media_timeout=settings.media_timeout,
        connect_timeout=settings.connect_timeout,
        transcode=settings.relay == "transcode",
        media=await _open_media(settings, hosts),
    )
    matcher_settings = MatcherSettings(
        interest_timeout=settings.interest_timeout, rematch_after=settings.rematch_after
    )
    limits = LimitSettings(
        max_sessions=settings.ip_max_sessions,
        max_peers=settings.ip_max_peers,
        max_new_sessions=settings.ip_max_new_sessions,
    )
    node = settings.node_id or new_node_id()
    redis: Redis | None = None
    registry: NodeRegistry | None = None
    bus: SessionBus
    matcher_factory: MatcherFactory
    if settings.redis is None:
        bus = LocalBus(node)

        def matcher_factory(on_match: MatchHandler) -> MemoryMatcher:
            return MemoryMatcher(on_match, matcher_settings)

    else:
        redis = cluster_connect(settings.redis)
        app[REDIS] = redis
        assert settings.cluster_secret is not None  # parse_settings insists with --redis
        bus = RedisBus(redis, node, secret=settings.cluster_secret.encode())
        registry = NodeRegistry(redis, node)
        client = redis

        def matcher_factory(on_match: MatchHandler) -> RedisMatcher:
            # A dead node's waiters leave the queue when their records expire: as soon
            # as its heartbeat does (the sweep renews a live node's every 0.25 s).
            return RedisMatcher(
                on_match, matcher_settings, client=client, node_id=node, waiting_ttl=BEAT_TTL
            )

    bridge: PipeBridge | None = None
    if settings.clustered:
        assert settings.cluster_secret is not None  # parse_settings insists
        endpoint = PipeEndpoint(
            settings.cluster_secret.encode(),
            host=settings.pipe_host,
            port=settings.pipe_port,
            encrypt=settings.pipe_encrypt,
            keyframe_interval=settings.keyframe_interval,
        )
        await endpoint.start()
        bridge = PipeBridge(endpoint, announce=settings.pipe_announce)
        logger.info("media pipe on udp %s:%d", *bridge.address())
    lobby = Lobby(
        Relay(peer_settings, bridge=bridge),
        matcher_factory,
        ice_servers=ice_servers.for_visitor,
        limits=AddressLimits(limits),
        bus=bus,
        registry=registry,
        announce_node=settings.clustered,
        resume=ResumeSettings(grace=settings.resume_grace),
    )
    lobby.report_moves_on = settings.report_moves_on
    lobby.show_online = settings.show_online
    await lobby.start()
    app[LOBBY] = lobby
    restore_handler = aiortc_seam.quiet_connect_after_close(asyncio.get_running_loop())
    if settings.clustered:
        logger.info("node %s joined the lobby at %s", node, _redacted(settings.redis))
    yield
    await lobby.close()
    restore_handler()
    if peer_settings.media is not None:
        peer_settings.media.close()
    if redis is not None:
        await redis.aclose()


async def _open_media(settings: Settings, hosts: host_addresses.HostAddresses) -> MediaMux | None:
    """The shared media port(s), when configured; every peer connection gathers on them.

    They are bound on the addresses `--media-ip` chose and offered as `--announce-ip` says.
    """
    if not settings.media_port:
        return None
    media = await MediaMux.open(
        settings.media_port,
        hosts.local,
        {local: hosts.advertised(local) for local in hosts.local},
        tcp_port=settings.media_tcp_port,
    )
    for udp in media.udp:
        logger.info("media port udp %s:%d", udp.host, udp.port)
    for tcp in media.tcp:
        logger.info("media port tcp %s:%d (ICE-TCP, passive)", tcp.host, tcp.port)
    return media


async def _moderation_metrics(app: web.Application) -> None:
    # After setup_metrics' own on_startup handler has made the registry.
    app[METRICS].registry.register(FlagCollector(app[MODERATION]))
    remote = app[MODERATION].remote
    if remote is not None:
        app[METRICS].registry.register(RemoteFeedCollector(remote))


def _ice_servers(settings: Settings) -> IceServers:
    return IceServers(
        settings.ice_servers,
        turn_secret=settings.ice.turn_secret,
        turn_ttl=settings.ice.turn_ttl,
        server_uses_turn=settings.ice.server_uses_turn,
        # An announced address is what STUN would have found, without the round trip.
        server_uses_stun=not settings.ice.announce_ips,
    )


async def _moderation_context(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Blocking (connecting, migrating): off the event loop like every store call.
    store = await asyncio.to_thread(open_store, settings.db)
    lobby = app[LOBBY]
    # In a cluster a moderator's request reaches the node holding the session over Redis.
    channel: ModerationChannel = (
        RedisChannel(
            app[REDIS],
            lobby.node,
            lobby.registry,
            secret=(settings.cluster_secret or "").encode() or None,
        )
        if REDIS in app and lobby.registry is not None
        else LocalChannel(lobby.node)
    )
    await channel.start()
    moderation = Moderation(
        lobby,
        store,
        app[auth.MODERATORS],
        ModerationSettings(
            recordings_dir=settings.recordings_dir,
            recording_retention=settings.recording_retention,
            evidence_seconds=settings.evidence_seconds,
            analyzer_interval=settings.analyzer_interval,
            report_window=settings.report_window,
            block_days=settings.block_days,
            appeal=settings.appeal,
            nudity=settings.nudity,
            nudity_threshold=settings.nudity_threshold,
            nudity_rate=settings.nudity_rate,
            nudity_blur=settings.nudity_blur,
        ),
        channel,
    )
    await moderation.start()
    app[MODERATION] = moderation
    follow_new_media(app)
    app[LIVE] = LiveSessions(moderation)
    app[FILES] = RemoteFiles(moderation)
    # Watching and recording people held by other nodes: their media through the pipe,
    # negotiated on a bus of its own on Redis (moderation/remote.py).
    # Watching and recording across nodes ride the same channel (None: no other node).
    moderation.remote = RemoteMedia(lobby, channel if REDIS in app else None)
    await moderation.remote.start()
    throttle = app[auth.LOGIN_THROTTLE]
    throttle.audit = _audit_logins(moderation.store)
    if REDIS in app:
        # Failures counted for the whole cluster: N nodes do not give a guesser N times the tries.
        throttle.shared = SharedFailures(app[REDIS])
    yield
    throttle.audit = None
    throttle.shared = None
    await moderation.remote.close()
    await moderation.close()
    await channel.close()


def _audit_logins(store: ModerationStoreProtocol) -> LoginThrottleAudit:
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


async def drain(app: web.Application) -> None:
    """SIGTERM: this node stops taking visitors and hands its users to the others."""
    await app[LOBBY].drain()


def _redacted(url: str | None) -> str:
    """A Redis URL without its password, for logs."""
    if url is None or "@" not in url:
        return str(url)
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
