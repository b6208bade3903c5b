"""A person held by another node, watched or recorded here: their media through the pipe.

A moderator's dashboard may be served by any node of a cluster, and the person
they watch or record may be held by any other. The moderator's node (the
viewer) asks the person's node (the holder) to send that person's streams
through the pipe (rtc/pipe.py); they arrive here as PipePublishers, which a
Watcher's subscribers and a Recorder take exactly like a local person's
Publishers. The moderator is never sent to the other node.

The asking and answering are requests on the moderation channel
(moderation/channel.py, the one path for moderation between nodes: signed with the
cluster secret, bounded, every failure a reason). Each is about one feed, named by
the viewer's random id, and says which node sent it (`from`):

    feed_open   viewer -> holder  {feed, session, pipe: [host, port], purpose}
                answered          {t: opened, pipe, streams: {kind: id}, codecs: {kind: codec}}
                               or {t: refused, code, message}
    feed_renew  viewer -> holder  {feeds: [...]}, every RENEW_INTERVAL: the lease;
                answered          {gone: [...]}: feeds not (or no longer) sent, to let go
    feed_close  viewer -> holder  {feed}
    feed_ended  holder -> viewer  {feed, reason}: the person left, or the lease ran out

Only feed_open's answer is waited for; the others are sent in the background (a lost
one is covered by the lease and the registry checks below).

A feed ends on both nodes however the watching ends: the moderator stops (or
closes the page: the Watcher's connection closes), the person leaves (their
Publisher closes, the pipe says BYE, the holder says `ended`), or either node
goes (each side ends the feeds of a node the registry no longer lists, within
its few seconds; and the holder stops sending what no renewal came for in LEASE
seconds, whatever the reason). Both sides hold at most MAX_FEEDS feeds.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from prometheus_client.core import GaugeMetricFamily

from moderation.channel import ChannelError, ModerationChannel
from moderation.recorder import Recorder, Track, new_recording_path
from rtc.media import EncodedFrame
from rtc.peer import KINDS, Peer
from rtc.pipe import PipePublisher, codec_from_json, codec_to_json
from rtc.pipe_bridge import PipeBridge, parse_address

if TYPE_CHECKING:
    from moderation.service import Recording
    from signalling.lobby import Lobby

logger = logging.getLogger(__name__)

# Feeds one node asks for, and feeds one node sends, at most.
MAX_FEEDS = 32
# Seconds closing waits for the last feed_close/feed_ended to go out.
CLOSE_GRACE = 1.0
# The viewer renews its feeds this often; the holder stops a feed not renewed for LEASE
# (a viewer node that died, or a lost `close`). LEASE covers a few lost renewals.
RENEW_INTERVAL = 2.0
LEASE = 10.0
# How often each side checks its feeds (the person left, a node went).
CHECK_INTERVAL = 1.0
PURPOSES = ("watch", "record")


class RemoteFeedError(Exception):
    """Why another node's person cannot be watched or recorded: `code` and a sentence."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RemoteFeed:
    """Another node's person, arriving here: their streams as PipePublishers by kind."""

    def __init__(self, feed_id: str, node: str, session_id: str) -> None:
        self.id = feed_id
        self.node = node
        self.session_id = session_id
        # What a Watcher calls the person it shows (a Peer's name is its session id).
        self.name = session_id
        self.publishers: dict[str, PipePublisher] = {}
        self.codecs: dict[str, RTCRtpCodecParameters] = {}
        # Why it ended (None while it runs).
        self.ended: str | None = None
        self._on_end: list[Callable[[str], None]] = []

    def __repr__(self) -> str:
        return f"<RemoteFeed {self.id} of {self.session_id} on {self.node}>"

    def on_end(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` once the feed ends, whichever side ends it."""
        self._on_end.append(callback)


@dataclass
class _Served:
    """One feed this node sends to a viewer node."""

    viewer: str
    session_id: str
    peer: Peer
    streams: dict[str, int]
    expires: float = field(default_factory=lambda: time.monotonic() + LEASE)


@dataclass
class _RemoteRecording:
    recording: Recording
    feed: RemoteFeed


class RemoteMedia:
    """This node's side of both: feeds it asks other nodes for, and feeds it sends them."""

    def __init__(self, lobby: Lobby, channel: ModerationChannel | None) -> None:
        """`channel` None: this server is not part of a cluster (no other node to ask)."""
        self._lobby = lobby
        self._channel = channel
        # Requests waiting for their answer: feed id -> (the node asked, the answer).
        self._pending: dict[str, str] = {}
        # Viewer side, by feed id; and the recordings made from feeds, by (node, session).
        self.feeds: dict[str, RemoteFeed] = {}
        self.recordings: dict[tuple[str, str], _RemoteRecording] = {}
        # Holder side, by feed id.
        self.served: dict[str, _Served] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # The background requests (close, ended, renew): awaited a moment on closing.
        self._sends: set[asyncio.Task[Any]] = set()
        self._checker: asyncio.Task[None] | None = None

    @property
    def node(self) -> str:
        return self._lobby.node

    def _bridge(self) -> PipeBridge | None:
        bridge = self._lobby.relay.bridge
        return bridge if isinstance(bridge, PipeBridge) else None

    async def start(self) -> None:
        if self._channel is None:
            return
        for op, handler in (
            ("feed_open", self._serve),
            ("feed_renew", self._renew),
            ("feed_close", self._close_served),
            ("feed_ended", self._ended),
        ):
            self._channel.handle(op, handler)
        self._checker = asyncio.create_task(self._check_forever(), name="remote feeds")

    async def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            await asyncio.gather(self._checker, return_exceptions=True)
        for feed in list(self.feeds.values()):
            await self.release(feed)
        for feed_id in list(self.served):
            self._stop_serving(feed_id, "closing")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The `feed_close`s and `feed_ended`s just sent: the other nodes stop at once
        # rather than at the lease or the registry's notice.
        if self._sends:
            await asyncio.wait(set(self._sends), timeout=CLOSE_GRACE)
        for task in list(self._sends):
            task.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)

    def _send(self, node: str, op: str, args: dict[str, Any]) -> None:
        """Send `op` to `node` in the background; its answer (if any use) is handled by op."""
        assert self._channel is not None
        task = asyncio.create_task(self._sent(node, op, args), name=f"remote {op}")
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _sent(self, node: str, op: str, args: dict[str, Any]) -> None:
        assert self._channel is not None
        try:
            answer = await self._channel.call(node, op, args | {"from": self.node})
        except ChannelError as exc:
            logger.debug("%s to node %s: %s", op, node, exc.message)
            return
        if op == "feed_renew":
            for feed_id in answer.get("gone") or ():
                await self._ended({"from": node, "feed": feed_id, "reason": "gone"})

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- viewer: asking for another node's person ---------------------------------

    async def open(self, node: str, session_id: str, purpose: str) -> RemoteFeed:
        """Start receiving `session_id`'s media from `node`; RemoteFeedError says why not."""
        bridge = self._bridge()
        if self._channel is None or bridge is None:
            raise RemoteFeedError(
                "no_node", f"there is no node {node}: this server is not part of a cluster"
            )
        if len(self.feeds) + len(self._pending) >= MAX_FEEDS:
            raise RemoteFeedError(
                "busy", f"this node already receives {MAX_FEEDS} people from other nodes"
            )
        feed_id = secrets.token_urlsafe(9)
        # Counted among the pending from here, so requests made meanwhile see the bound.
        self._pending[feed_id] = node
        try:
            if not await self._alive(node):
                raise RemoteFeedError(
                    "no_node", f"node {node} is not in the cluster (it stopped, or never was)"
                )
            host, port = bridge.address()
            args = {"feed": feed_id, "session": session_id, "pipe": [host, port]}
            reply = await self._channel.call(
                node, "feed_open", args | {"purpose": purpose, "from": self.node}
            )
        except ChannelError as exc:
            if exc.status == 504:
                self._send(node, "feed_close", {"feed": feed_id})  # if it opens late
                raise RemoteFeedError("timeout", exc.message) from None
            code = {404: "no_node", 410: "no_node", 503: "busy"}.get(exc.status, "bad_answer")
            raise RemoteFeedError(code, exc.message) from None
        finally:
            self._pending.pop(feed_id, None)
        if reply.get("t") != "opened":
            raise RemoteFeedError(str(reply.get("code")), str(reply.get("message")))
        pipe, streams = parse_address(reply.get("pipe")), reply.get("streams")
        if pipe is None or not isinstance(streams, dict):
            self._send(node, "feed_close", {"feed": feed_id})
            raise RemoteFeedError("bad_answer", f"node {node} answered with no usable pipe")
        feed = RemoteFeed(feed_id, node, session_id)
        codecs = reply.get("codecs")
        if not isinstance(codecs, dict):
            codecs = {}
        for kind in KINDS:
            stream_id = streams.get(kind)
            if not isinstance(stream_id, int) or isinstance(stream_id, bool):
                continue
            publisher = bridge.endpoint.receive_stream(
                stream_id, kind, pipe, name=f"{session_id}@{node}"
            )
            feed.publishers[kind] = publisher
            codec = codecs.get(kind)
            parsed = codec_from_json(codec.encode(), kind) if isinstance(codec, str) else None
            if parsed is not None:
                feed.codecs[kind] = parsed
            # The holder asked for one when it started sending, perhaps before this
            # node knew the stream: ask again now that its packets are taken.
            publisher.request_keyframe()
        self.feeds[feed_id] = feed
        logger.info("%r opened for %s", feed, purpose)
        return feed

    async def release(self, feed: RemoteFeed) -> None:
        """Stop receiving `feed` (a moderator stopped, or the watcher closed)."""
        if feed.ended is None and self._channel is not None:
            self._send(feed.node, "feed_close", {"feed": feed.id})
        await self._end(feed, "stopped")

    async def _end(self, feed: RemoteFeed, reason: str) -> None:
        if feed.ended is not None:
            return
        feed.ended = reason
        self.feeds.pop(feed.id, None)
        for publisher in feed.publishers.values():
            # Detaches the watcher's subscribers and the recorder's listeners.
            await publisher.close()
        logger.info("%r ended: %s", feed, reason)
        for callback in feed._on_end:
            try:
                callback(reason)
            except Exception:
                logger.exception("%r: an end callback failed", feed)

    async def _alive(self, node: str) -> bool:
        registry = self._lobby.registry
        if registry is None:
            return True
        try:
            return node in await registry.alive([node])
        except Exception:
            return True  # Redis cannot say: the request's timeout decides

    # -- viewer: recording another node's person ----------------------------------

    async def record(self, node: str, session_id: str, moderator: str, folder: Path) -> Recording:
        """Record `session_id` of `node` into a file in `folder` here, until stopped or they leave."""
        from moderation.service import Recording

        key = (node, session_id)
        running = self.recordings.get(key)
        if running is not None:
            return running.recording
        feed = await self.open(node, session_id, "record")
        running = self.recordings.get(key)
        if running is not None:  # started by another request while this one waited
            await self.release(feed)
            return running.recording
        tracks = [Track(kind, codec) for kind, codec in feed.codecs.items()]
        if not tracks:
            await self.release(feed)
            raise RemoteFeedError("no_media", f"no media yet from session {session_id}")
        try:
            recorder = Recorder(new_recording_path(folder), tracks)
        except BaseException:
            await self.release(feed)
            raise
        recording = Recording(session_id, moderator, recorder)
        for kind, publisher in feed.publishers.items():
            if kind in feed.codecs:
                publisher.add_frame_listener(_writer(recorder, kind))
        self.recordings[key] = _RemoteRecording(recording, feed)
        feed.on_end(lambda reason: self._finish_recording(key))
        return recording

    async def stop_recording(self, node: str, session_id: str) -> Path | None:
        running = self.recordings.get((node, session_id))
        if running is None:
            return None
        await self.release(running.feed)  # ends the recording too (on_end)
        path = running.recording.recorder.path
        return path if path.exists() else None

    def _finish_recording(self, key: tuple[str, str]) -> None:
        running = self.recordings.pop(key, None)
        if running is not None:
            running.recording.recorder.close()

    def live_recordings(self) -> dict[str, Recording]:
        """Recordings being made from other nodes' people, by file name."""
        return {r.recording.recorder.path.name: r.recording for r in self.recordings.values()}

    # -- holder: sending one of ours ----------------------------------------------

    async def _ended(self, args: dict[str, Any]) -> dict[str, Any]:
        """The holder stopped sending a feed of ours (the person left, the lease ran out)."""
        feed = self.feeds.get(str(args.get("feed")))
        if feed is not None and feed.node == args.get("from"):
            await self._end(feed, str(args.get("reason", "ended")))
        return {}

    async def _close_served(self, args: dict[str, Any]) -> dict[str, Any]:
        feed_id = str(args.get("feed"))
        served = self.served.get(feed_id)
        if served is not None and served.viewer == args.get("from"):
            self._stop_serving(feed_id, "stopped by the viewer", tell=False)
        return {}

    async def _serve(self, message: dict[str, Any]) -> dict[str, Any]:
        viewer, feed_id = str(message.get("from")), str(message.get("feed"))
        session_id = str(message.get("session"))
        bridge = self._bridge()
        session = self._lobby.sessions.get(session_id)
        peer = session.peer if session is not None else None
        refusal: tuple[str, str] | None = None
        pipe = parse_address(message.get("pipe"))
        if message.get("purpose") not in PURPOSES or pipe is None or bridge is None:
            refusal = ("bad_request", "the request was not understood")
        elif feed_id in self.served:
            refusal = ("bad_request", "that feed exists already")
        elif session is None:
            refusal = ("no_session", f"no session {session_id} on node {self.node} (they left)")
        elif peer is None or not peer.publishers:
            refusal = ("no_media", f"session {session_id} has no media on node {self.node}")
        elif len(self.served) >= MAX_FEEDS:
            refusal = ("busy", f"node {self.node} already sends {MAX_FEEDS} people to moderators")
        if refusal is not None:
            code, text = refusal
            return {"t": "refused", "feed": feed_id, "code": code, "message": text}
        assert bridge is not None and peer is not None and pipe is not None
        streams: dict[str, int] = {}
        codecs: dict[str, str] = {}
        for kind, publisher in peer.publishers.items():
            stream_id = bridge.endpoint.allocate_stream_id()
            # sees_held: a moderator sees what --nudity-blur holds back from partners.
            bridge.endpoint.send_stream(publisher, pipe, stream_id, sees_held=True)
            streams[kind] = stream_id
            if publisher.codec is not None:
                codecs[kind] = codec_to_json(publisher.codec).decode()
        self.served[feed_id] = _Served(viewer, session_id, peer, streams)
        host, port = bridge.address()
        logger.info(
            "sending %s to node %s for a moderator (%s, feed %s)",
            session_id,
            viewer,
            message.get("purpose"),
            feed_id,
        )
        return {
            "t": "opened",
            "feed": feed_id,
            "pipe": [host, port],
            "streams": streams,
            "codecs": codecs,
        }

    async def _renew(self, args: dict[str, Any]) -> dict[str, Any]:
        viewer, feeds = args.get("from"), args.get("feeds")
        if not isinstance(feeds, list):
            return {"gone": []}
        until = time.monotonic() + LEASE
        gone = []
        for feed_id in feeds[:MAX_FEEDS]:
            served = self.served.get(str(feed_id))
            if served is not None and served.viewer == viewer:
                served.expires = until
            else:
                gone.append(str(feed_id))  # not (or no longer) sent from here: let it go
        return {"gone": gone}

    def _stop_serving(self, feed_id: str, reason: str, *, tell: bool = True) -> None:
        served = self.served.pop(feed_id, None)
        if served is None:
            return
        bridge = self._bridge()
        if bridge is not None:
            for stream_id in served.streams.values():
                bridge.endpoint.stop_sending(stream_id)
        if tell and self._channel is not None:
            self._send(served.viewer, "feed_ended", {"feed": feed_id, "reason": reason})
        logger.info("stopped sending %s to node %s: %s", served.session_id, served.viewer, reason)

    # -- both: checking --------------------------------------------------------------

    async def _check_forever(self) -> None:
        last_renewal = 0.0
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            try:
                alive = await self._nodes_alive()
                self._check_served(alive)
                await self._check_feeds(alive)
                now = time.monotonic()
                if now - last_renewal >= RENEW_INTERVAL:
                    last_renewal = now
                    self._renew_feeds()
            except Exception:
                logger.exception("checking remote feeds failed")

    async def _nodes_alive(self) -> set[str] | None:
        """Which nodes of our feeds (both sides) are alive; None when nobody can say."""
        nodes = {f.node for f in self.feeds.values()} | {s.viewer for s in self.served.values()}
        registry = self._lobby.registry
        if not nodes or registry is None:
            return None
        try:
            return await registry.alive(nodes)
        except Exception:
            return None  # Redis cannot say: nobody is declared gone for that

    def _check_served(self, alive: set[str] | None) -> None:
        bridge = self._bridge()
        out = bridge.endpoint.streams_out if bridge is not None else frozenset()
        now = time.monotonic()
        for feed_id, served in list(self.served.items()):
            session = self._lobby.sessions.get(served.session_id)
            if alive is not None and served.viewer not in alive:
                # Within the registry's few seconds, not the lease's ten.
                self._stop_serving(feed_id, f"node {served.viewer} is gone", tell=False)
            elif now > served.expires:
                self._stop_serving(feed_id, "not renewed")
            elif (
                session is None
                or session.peer is not served.peer
                or not set(served.streams.values()) <= out
            ):
                # Gone, or their media connection was replaced or closed (which ends
                # the pipe streams with it).
                self._stop_serving(feed_id, "left")

    async def _check_feeds(self, alive: set[str] | None) -> None:
        for feed in list(self.feeds.values()):
            if alive is not None and feed.node not in alive:
                await self._end(feed, f"node {feed.node} is gone")
            elif any(p.ended for p in feed.publishers.values()):
                await self._end(feed, "the other node ended the stream")

    def _renew_feeds(self) -> None:
        by_node: dict[str, list[str]] = {}
        for feed in self.feeds.values():
            by_node.setdefault(feed.node, []).append(feed.id)
        for node, ids in by_node.items():
            self._send(node, "feed_renew", {"feeds": ids})


class RemoteFeedCollector:
    """`relay_moderation_remote_feeds{side=...}`: moderators' feeds between nodes now."""

    def __init__(self, remote: RemoteMedia) -> None:
        self._remote = remote

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "relay_moderation_remote_feeds",
            "People watched or recorded across nodes now: received here, or sent from here",
            labels=["side"],
        )
        gauge.add_metric(["receiving"], len(self._remote.feeds))
        gauge.add_metric(["sending"], len(self._remote.served))
        yield gauge


def _writer(recorder: Recorder, kind: str) -> Callable[[EncodedFrame], None]:
    def write(frame: EncodedFrame) -> None:
        recorder.write(kind, frame, time.monotonic())

    return write
