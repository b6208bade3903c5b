"""`GET /metrics`: the server's numbers in Prometheus text format.

Served on a listener of its own (`--metrics-host`/`--metrics-port`, loopback
by default) and on the public port only with `--metrics-token`.

Everything is read from the lobby and its peers when Prometheus scrapes, so
nothing on the media path pays for metrics. The one exception is time to
match, a histogram the lobby feeds through `Lobby.pair_listeners` when it
pairs two sessions.

Media counters live on each peer's publishers, subscribers and RTP senders
and vanish with the peer. To keep the exported counters monotonic, a peer is
remembered from the first time it is seen (at a scrape, or when it is paired)
until the scrape after it closed, where its final numbers move into a
"retired" total. So every peer that was ever paired is counted in full; a
visit that never got a partner and ended between two scrapes may leave out
what it sent up.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import hdrs, web
from aiortc import RTCRtpSender
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from rtc.peer import Peer
from signalling.limits import LIMIT_CODES
from signalling.lobby import Lobby
from signalling.session import Session, State

logger = logging.getLogger(__name__)

# The classic text format every Prometheus version reads.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
TIME_TO_MATCH_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
KINDS: Final = ("audio", "video")

# (counter name without _total, help) of every per-kind media counter.
MEDIA_COUNTERS: Final = (
    ("relay_received_frames", "Encoded frames received from publishers"),
    ("relay_received_bytes", "Bytes of encoded frames received from publishers"),
    ("relay_forwarded_frames", "Frames handed to subscribers' RTP senders"),
    ("relay_forwarded_packets", "RTP packets sent to subscribers"),
    ("relay_forwarded_bytes", "RTP payload bytes sent to subscribers"),
    ("relay_dropped_frames", "Frames dropped because a subscriber's queue was full"),
    (
        "relay_keyframe_requests_received",
        "Keyframe requests (PLI/FIR) received from subscribers' browsers",
    ),
    ("relay_keyframe_requests_sent", "Keyframe requests (PLI) sent to publishers' browsers"),
)

Key = tuple[str, str]  # (counter name, kind)


@dataclass
class _PeerCounters:
    """The counter holders of one peer, kept alive until their final numbers are read."""

    peer: Peer
    holders: dict[Key, Any] = field(default_factory=dict)
    senders: dict[str, RTCRtpSender] = field(default_factory=dict)
    sender_stats: Counter[Key] = field(default_factory=Counter)

    def capture(self) -> None:
        """Remember the publishers, subscribers and senders the peer has now."""
        for kind, publisher in self.peer.publishers.items():
            self.holders[("publisher", kind)] = publisher
        for kind, subscriber in self.peer.subscribers.items():
            self.holders[("subscriber", kind)] = subscriber
        pc = self.peer.connection
        if pc is not None:
            for sender in pc.getSenders():
                if sender.kind in KINDS:
                    self.senders[sender.kind] = sender

    async def refresh_senders(self) -> None:
        for kind, sender in self.senders.items():
            try:
                report = await sender.getStats()
            except Exception:
                continue  # a closed transport: keep the last numbers read
            for stats in report.values():
                if getattr(stats, "type", None) == "outbound-rtp":
                    self.sender_stats[("relay_forwarded_packets", kind)] = stats.packetsSent
                    self.sender_stats[("relay_forwarded_bytes", kind)] = stats.bytesSent

    def read(self) -> Counter[Key]:
        values: Counter[Key] = Counter(self.sender_stats)
        for (role, kind), holder in self.holders.items():
            if role == "publisher":
                values[("relay_received_frames", kind)] += holder.frames
                values[("relay_received_bytes", kind)] += holder.bytes
                values[("relay_keyframe_requests_sent", kind)] += holder.keyframe_requests
            else:
                values[("relay_forwarded_frames", kind)] += holder.forwarded
                values[("relay_dropped_frames", kind)] += holder.dropped
                values[("relay_keyframe_requests_received", kind)] += holder.keyframe_requests
        return values


class MediaTotals:
    """Monotonic media counters over peers that come and go."""

    def __init__(self) -> None:
        self._tracked: dict[int, _PeerCounters] = {}
        self._retired: Counter[Key] = Counter()
        self.totals: Counter[Key] = Counter()

    def track(self, peer: Peer) -> None:
        record = self._tracked.get(id(peer))
        if record is None:
            record = self._tracked[id(peer)] = _PeerCounters(peer)
        record.capture()

    async def refresh(self, live: Iterable[Peer]) -> None:
        """Re-read every counter; peers not in ``live`` are read a last time and retired."""
        live_ids = set()
        for peer in live:
            self.track(peer)
            live_ids.add(id(peer))
        records = list(self._tracked.values())
        await asyncio.gather(*(r.refresh_senders() for r in records))
        totals = Counter(self._retired)
        for record in records:
            values = record.read()
            totals.update(values)
            if id(record.peer) not in live_ids:
                self._retired.update(values)
                del self._tracked[id(record.peer)]
        self.totals = totals


class _LobbyCollector(Collector):
    """Reads the lobby at scrape time."""

    def __init__(self, lobby: Lobby, media: MediaTotals, mode: str) -> None:
        self._lobby = lobby
        self._media = media
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
            "relay_media_connections",
            "Users with a media connection (connecting or up)",
            sum(1 for s in sessions if s.peer is not None),
        )
        yield CounterMetricFamily(
            "relay_matches", "Pairs made since the server started", self._lobby.matches_made
        )
        refusals = CounterMetricFamily(
            "relay_limit_refusals",
            "Sessions and media connections refused by a per-address limit",
            labels=["code"],
        )
        for code in LIMIT_CODES:
            refusals.add_metric([code], self._lobby.limits.refused[code])
        yield refusals
        for name, help_text in MEDIA_COUNTERS:
            family = CounterMetricFamily(name, help_text, labels=["kind"])
            for kind in KINDS:
                family.add_metric([kind], self._media.totals[(name, kind)])
            yield family
        # The scrape runs on the event loop's thread: its CPU time is the
        # forwarding path's, while process_cpu_seconds_total adds codec threads.
        yield CounterMetricFamily(
            "relay_event_loop_cpu_seconds",
            "CPU time of the thread running the event loop (signalling and forwarding)",
            time.thread_time(),
        )


class RelayMetrics:
    """Every metric of one server, in a registry of its own (tests run many servers per process)."""

    def __init__(self, lobby: Lobby, mode: str) -> None:
        self.lobby = lobby
        self.registry = CollectorRegistry()
        self.media = MediaTotals()
        self.time_to_match = Histogram(
            "relay_time_to_match_seconds",
            "From start or next to matched, per user",
            buckets=TIME_TO_MATCH_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.registry.register(_LobbyCollector(lobby, self.media, mode))
        lobby.pair_listeners.append(self.on_pair)

    def on_pair(self, a: Session, b: Session) -> None:
        now = asyncio.get_running_loop().time()
        for session in (a, b):
            if session.waiting_since is not None:
                self.time_to_match.observe(max(0.0, now - session.waiting_since))
            if session.peer is not None:
                self.media.track(session.peer)

    async def render(self) -> bytes:
        peers = [s.peer for s in self.lobby.sessions.values() if s.peer is not None]
        await self.media.refresh(peers)
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

    async def render(request: web.Request) -> web.Response:
        body = await app[METRICS].render()
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
        runner = web.AppRunner(listener, access_log=None)
        await runner.setup()
        app[_LISTENER] = runner
        await web.TCPSite(runner, host, port).start()
        logger.info("metrics on http://%s:%d/metrics", host, port)

    async def stop_listener(app: web.Application) -> None:
        if _LISTENER in app:
            await app[_LISTENER].cleanup()

    app.on_startup.append(attach)
    if port:
        app.on_startup.append(start_listener)
        app.on_cleanup.append(stop_listener)
    if token:
        app.router.add_get("/metrics", guarded)
