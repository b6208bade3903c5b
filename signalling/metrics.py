"""`GET /metrics`: the server's numbers in Prometheus text format.

Served on a listener of its own (`--metrics-host`/`--metrics-port`, loopback
by default) and on the public port only with `--metrics-token`.

Everything is read from the lobby and its peers when Prometheus scrapes, so
nothing on the media path pays for metrics. The one exception is time to
match, a histogram the lobby feeds through `Lobby.pair_listeners` when it
pairs two sessions.

Media counters live on each peer's publishers, subscribers and RTP senders
(`Peer.counters()`); the Relay adds a closing peer's final numbers to its
retired total in the step that lets the peer go, so the exported counters are
retired + live and stay monotonic while nothing here keeps a closed peer alive.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any, Final

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from rtc.peer import COUNTER_NAMES
from rtc.pipe_bridge import PipeBridge
from signalling.limits import LIMIT_CODES
from signalling.lobby import Lobby
from signalling.memory_report import add_memory_routes
from signalling.pauses import LoopPauses
from signalling.session import Session, State

logger = logging.getLogger(__name__)

# The classic text format every Prometheus version reads.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
TIME_TO_MATCH_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
KINDS: Final = ("audio", "video")

# Help text of each per-kind media counter, exported as relay_<name>_total.
MEDIA_COUNTER_HELP: Final = {
    "received_frames": "Encoded frames received from publishers",
    "received_bytes": "Bytes of encoded frames received from publishers",
    "forwarded_frames": "Frames handed to subscribers' RTP senders",
    "forwarded_packets": "RTP packets sent to subscribers",
    "forwarded_bytes": "RTP payload bytes sent to subscribers",
    "dropped_frames": "Frames dropped because a subscriber's queue was full",
    "keyframe_requests_received": "Keyframe requests (PLI/FIR) received from subscribers' browsers",
    "keyframe_requests_sent": "Keyframe requests (PLI) sent to publishers' browsers",
}


class _LobbyCollector(Collector):
    """Reads the lobby at scrape time."""

    def __init__(self, lobby: Lobby, mode: str) -> None:
        self._lobby = lobby
        self._mode = mode

    def collect(self) -> Iterator[Any]:
        sessions = list(self._lobby.sessions.values())
        states = Counter(s.state for s in sessions)
        yield InfoMetricFamily(
            "relay_mode", "How the relay forwards media", value={"mode": self._mode}
        )
        yield GaugeMetricFamily(
            "relay_users_connected", "Open signalling connections", len(sessions)
        )
        yield GaugeMetricFamily(
            "relay_users_waiting", "Users looking for a partner", states[State.WAITING]
        )
        yield GaugeMetricFamily("relay_users_paired", "Users with a partner", states[State.PAIRED])
        yield GaugeMetricFamily(
            "relay_users_held",
            "Users whose WebSocket dropped, held for a resume (counted as connected too)",
            len(self._lobby.held),
        )
        yield CounterMetricFamily(
            "relay_resumes", "Sessions taken over by a new WebSocket", self._lobby.resumes
        )
        yield GaugeMetricFamily(
            "relay_media_connections",
            "Users with a media connection (connecting or up)",
            sum(1 for s in sessions if s.peer is not None),
        )
        yield CounterMetricFamily(
            "relay_matches", "Pairs made since the server started", self._lobby.matches_made
        )
        # Matches this node's matcher made between users of two nodes (Redis matcher only).
        yield CounterMetricFamily(
            "relay_matches_cross_node",
            "Matches this node's matcher made between users on two different nodes",
            getattr(self._lobby.matcher, "matches_cross_node", 0),
        )
        refusals = CounterMetricFamily(
            "relay_limit_refusals",
            "Sessions and media connections refused by a per-address limit",
            labels=["code"],
        )
        for code in LIMIT_CODES:
            refusals.add_metric([code], self._lobby.limits.refused[code])
        yield refusals
        media = self._lobby.relay.counters()
        for name in COUNTER_NAMES:
            family = CounterMetricFamily(f"relay_{name}", MEDIA_COUNTER_HELP[name], labels=["kind"])
            for kind in KINDS:
                family.add_metric([kind], media[name, kind])
            yield family
        media_port = self._lobby.relay.settings.media
        if media_port is not None:
            yield from _media_port_metrics(media_port.stats())
        bridge = self._lobby.relay.bridge
        if isinstance(bridge, PipeBridge):
            yield from _pipe_metrics(bridge)
        # The scrape runs on the event loop's thread: its CPU time is the
        # forwarding path's, while process_cpu_seconds_total adds codec threads.
        yield CounterMetricFamily(
            "relay_event_loop_cpu_seconds",
            "CPU time of the thread running the event loop (signalling and forwarding)",
            time.thread_time(),
        )


def _media_port_metrics(stats: dict[str, int]) -> Iterator[Any]:
    """The shared media port (--media-port, rtc/mux.py)."""
    yield GaugeMetricFamily(
        "relay_media_port_connections", "ICE connections on the media port", stats["connections"]
    )
    yield GaugeMetricFamily(
        "relay_media_port_addresses",
        "Remote addresses the media port remembers (authenticated or checked)",
        stats["remembered"],
    )
    yield CounterMetricFamily(
        "relay_media_port_datagrams_received", "Datagrams read on the media port", stats["received"]
    )
    yield GaugeMetricFamily(
        "relay_media_port_tcp_streams",
        "ICE-TCP streams (--media-tcp-port) that authenticated to a connection",
        stats["tcp_streams"],
    )
    dropped = CounterMetricFamily(
        "relay_media_port_dropped",
        "Datagrams dropped on the media port: from an address no connection knows "
        "(unknown), or STUN naming a connection without its password (unauthenticated)",
        labels=["reason"],
    )
    dropped.add_metric(["unknown"], stats["dropped_unknown"])
    dropped.add_metric(["unauthenticated"], stats["dropped_unauthenticated"])
    yield dropped


def _pipe_metrics(bridge: PipeBridge) -> Iterator[Any]:
    """The pipe between nodes: datagrams and the messages (mostly RTP packets) in them."""
    endpoint = bridge.endpoint
    datagrams = CounterMetricFamily(
        "relay_pipe_datagrams", "Datagrams of the pipe between nodes", labels=["direction"]
    )
    messages = CounterMetricFamily(
        "relay_pipe_messages",
        "Messages (RTP packets, keyframe requests...) in the pipe's datagrams",
        labels=["direction"],
    )
    datagrams.add_metric(["sent"], endpoint.sent)
    datagrams.add_metric(["received"], endpoint.received)
    messages.add_metric(["sent"], endpoint.messages_sent)
    messages.add_metric(["received"], endpoint.messages_received)
    dropped = CounterMetricFamily(
        "relay_pipe_dropped",
        "Pipe datagrams (or single messages, for an unknown stream) thrown away",
        labels=["reason"],
    )
    for reason, count in sorted(endpoint.dropped.items()):
        dropped.add_metric([reason], count)
    yield datagrams
    yield messages
    yield dropped
    streams = GaugeMetricFamily(
        "relay_pipe_streams",
        "Streams in the pipe now (partners on other nodes, moderators watching or recording)",
        labels=["direction"],
    )
    streams.add_metric(["out"], len(endpoint.streams_out))
    streams.add_metric(["in"], len(endpoint.streams_in))
    yield streams
    yield CounterMetricFamily(
        "relay_pipe_send_errors", "Pipe datagrams the socket would not send", endpoint.errors
    )


class RelayMetrics:
    """Every metric of one server, in a registry of its own (tests run many servers per process)."""

    def __init__(self, lobby: Lobby, mode: str) -> None:
        self.lobby = lobby
        self.registry = CollectorRegistry()
        self.time_to_match = Histogram(
            "relay_time_to_match_seconds",
            "From start or next to matched, per user",
            buckets=TIME_TO_MATCH_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.registry.register(_LobbyCollector(lobby, mode))
        self.pauses = LoopPauses()
        self.registry.register(self.pauses)
        lobby.pair_listeners.append(self.on_pair)

    def on_pair(self, session: Session) -> None:
        now = asyncio.get_running_loop().time()
        if session.waiting_since is not None:
            self.time_to_match.observe(max(0.0, now - session.waiting_since))

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", RelayMetrics)
_LISTENER = web.AppKey("metrics_listener", web.AppRunner)


def setup_metrics(
    app: web.Application,
    lobby_key: web.AppKey[Lobby],
    mode: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
) -> None:
    """Serve `GET /metrics` for the lobby the app's cleanup context creates.

    On a listener of its own at `host`:`port` (none when `port` is 0), and on
    the app's own port only with `token` (``Authorization: Bearer <token>``):
    the numbers say how busy the server is and who it serves, which is no
    business of the public.
    """

    async def attach(app: web.Application) -> None:
        # on_startup handlers run after the cleanup contexts have started.
        app[METRICS] = RelayMetrics(app[lobby_key], mode)
        app[METRICS].pauses.start()

    async def detach(app: web.Application) -> None:
        if METRICS in app:
            await app[METRICS].pauses.stop()

    async def render(request: web.Request) -> web.Response:
        body = app[METRICS].render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def guarded(request: web.Request) -> web.Response:
        assert token is not None
        given = request.headers.get(hdrs.AUTHORIZATION, "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise web.HTTPUnauthorized(
                text="/metrics needs Authorization: Bearer <token>\n",
                headers={hdrs.WWW_AUTHENTICATE: 'Bearer realm="metrics"'},
            )
        return await render(request)

    async def start_listener(app: web.Application) -> None:
        listener = web.Application()
        listener.router.add_get("/metrics", render)
        # Operators' memory breakdown: on this (loopback by default) listener only.
        add_memory_routes(listener)
        runner = web.AppRunner(listener, access_log=None)
        await runner.setup()
        app[_LISTENER] = runner
        await web.TCPSite(runner, host, port).start()
        logger.info("metrics on http://%s:%d/metrics", host, port)

    async def stop_listener(app: web.Application) -> None:
        if _LISTENER in app:
            await app[_LISTENER].cleanup()

    app.on_startup.append(attach)
    app.on_cleanup.append(detach)
    if port:
        app.on_startup.append(start_listener)
        app.on_cleanup.append(stop_listener)
    if token:
        app.router.add_get("/metrics", guarded)
