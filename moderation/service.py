"""Moderation: the building blocks of this package wired to the live Lobby.

One `Moderation` per server. It follows every session with media through
frame listeners on its Publishers: ring buffers (while paired, for report
evidence), live recordings, and a sparse sampler that decodes one keyframe
per stream every `analyzer_interval` seconds for thumbnails and analyzers.
Everything blocking (SQLite, decoding, writing files) runs in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import stat
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import cv2
import numpy as np
import numpy.typing as npt
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from prometheus_client.core import GaugeMetricFamily

from moderation import queue
from moderation.analyzers import (
    Analyzer,
    Flag,
    FlagChanges,
    StreamAnalysis,
    default_analyzers,
)
from moderation.auth import Moderators
from moderation.ban_terms import BanScope, BanTermError
from moderation.channel import LocalChannel, ModerationChannel
from moderation.events import EventHub
from moderation.pseudonyms import Pseudonyms
from moderation.recorder import (
    RECORDING_NAME,
    Recorder,
    Track,
    delete_expired,
    new_recording_path,
)
from moderation.ringbuffer import BufferedFrame, RingBuffer
from moderation.store import (
    Ban,
    Report,
    ReportStatus,
    TranscriptLine,
    normalize_ip,
)
from moderation.store_protocol import ModerationStoreProtocol
from rtc.media import EncodedFrame
from rtc.peer import KINDS, Peer
from rtc.pipe import PipePublisher
from rtc.publisher import Publisher
from signalling.lobby import Lobby
from signalling.protocol import error_message
from signalling.recent import PERSON_TAG, RecentPartner
from signalling.session import Session, State

if TYPE_CHECKING:
    from moderation.remote import RemoteMedia

logger = logging.getLogger(__name__)

THUMBNAIL_WIDTH = 192
# The reporter of reports the nudity analyzer files (never a session id).
AUTOMATIC_REPORTER = "analyzer:nudity"
# How often the sampler and the bookkeeping run, and how often retention runs.
TICK = 0.25
RETENTION_EVERY = 60.0
_DECODERS = {"vp8": "vp8", "h264": "h264"}


@dataclass
class ModerationSettings:
    recordings_dir: str
    recording_retention: float = 30 * 86400.0
    evidence_seconds: float = 30.0
    analyzer_interval: float = 5.0
    # Seconds after a pair ends that it can still be reported (its last seconds kept).
    report_window: float = 300.0
    # Days a block holds between two browsers (by identity) beyond the visit.
    block_days: float = 7.0
    # Most bytes of ended pairs' media kept for late reports; the oldest go first.
    retained_bytes: int = 256_000_000
    # Shown to a banned person: where or how to appeal (a URL or a sentence).
    appeal: str | None = None

    # The nudity analyzer (moderation/nudity.py, an optional extra) and its blur.
    nudity: bool = False
    nudity_threshold: float = 0.5
    nudity_rate: float = 4.0
    nudity_blur: bool = False


@dataclass
class BanMade:
    """A stored ban and what it did now: visits ended, and nodes it could not reach."""

    ban: Ban
    ended: int = 0
    # Node -> why it was not reached (its visits the ban covers go on until they
    # reconnect, when they are refused).
    missed: dict[str, str] = field(default_factory=dict)


@dataclass
class Retained:
    """One person's last seconds of a pair that has ended, kept for a late report."""

    # The pair's ring buffers themselves, no longer fed: their frames stay compact
    # (no objects for the garbage collector) until a report takes a snapshot.
    buffers: dict[str, RingBuffer]
    bytes: int
    ended_at: float = field(default_factory=time.monotonic)


@dataclass
class Recording:
    """A live recording of one user, running until stopped or until they leave."""

    session_id: str
    started_by: str
    recorder: Recorder
    started_at: float = field(default_factory=time.time)


class Followed:
    """What moderation keeps about one session's media (one Peer)."""

    def __init__(self, session: Session, peer: Peer, analysis: StreamAnalysis) -> None:
        self.session = session
        self.peer = peer
        self.buffers: dict[str, RingBuffer] = {}
        self.recording: Recording | None = None
        self.analysis = analysis
        self.thumbnail: bytes | None = None
        self.thumbnail_at: float | None = None
        self.sample_wanted_at: float | None = None
        self.last_sample_at = -1e9
        self.decoding = False
        # The nudity flag that holds this stream's video back from partners, until
        # a moderator releases it (--nudity-blur); it outlives the flag itself.
        self.held: Flag | None = None
        self._listeners: dict[str, Any] = {}
        # A partner on another node: their last seconds as this node receives them
        # through the pipe, so evidence of a pair across nodes holds both people.
        self.partner_buffers: dict[str, RingBuffer] = {}
        self._piped: dict[str, tuple[PipePublisher, Any]] = {}

    def listen(self, on_frame: Any) -> None:
        for kind, publisher in self.peer.publishers.items():
            if kind not in self._listeners:
                listener = on_frame(self, kind)
                self._listeners[kind] = (publisher, listener)
                publisher.add_frame_listener(listener)

    def unlisten(self) -> None:
        for publisher, listener in self._listeners.values():
            publisher.remove_frame_listener(listener)
        self._listeners.clear()
        self.unlisten_partner()

    def listen_to_partner(self, evidence_seconds: float) -> None:
        """Buffer what the peer receives from a partner on another node (a PipePublisher)."""
        for kind, subscriber in self.peer.subscribers.items():
            source = subscriber.source
            if not isinstance(source, PipePublisher):
                continue
            old = self._piped.get(kind)
            if old is not None and old[0] is source:
                continue
            if old is not None:  # a stream of an earlier partner
                old[0].remove_frame_listener(old[1])
            buffer = RingBuffer(
                max_seconds=evidence_seconds, on_keyframe_needed=source.request_keyframe
            )

            def on_frame(frame: EncodedFrame, buffer: RingBuffer = buffer) -> None:
                buffer.push(frame, time.monotonic())

            source.add_frame_listener(on_frame)
            self._piped[kind] = (source, on_frame)
            self.partner_buffers[kind] = buffer

    def unlisten_partner(self) -> None:
        for source, listener in self._piped.values():
            source.remove_frame_listener(listener)
        self._piped.clear()
        self.partner_buffers.clear()

    @property
    def flags(self) -> list[Flag]:
        return list(self.analysis.active.values())

    def take_over(self, earlier: Followed) -> None:
        """Go on with what moderation kept of this person on their earlier media connection.

        A changed network (or a page recovering its connection) gives a person a new
        Peer; they stay the same person to moderation: their flags, their hold, their
        thumbnail, and a recording a moderator started, which goes on in the same file.
        """
        self.analysis = earlier.analysis
        self.thumbnail, self.thumbnail_at = earlier.thumbnail, earlier.thumbnail_at
        self.last_sample_at = earlier.last_sample_at
        self.held = earlier.held
        self.recording, earlier.recording = earlier.recording, None
        if self.recording is not None:
            # The file goes on from the new connection's first keyframe.
            self.recording.recorder.new_source()
            video = self.peer.publishers.get("video")
            if video is not None:
                video.request_keyframe()


class Moderation:
    """Reports with evidence, bans, recordings, thumbnails and flags for one Lobby."""

    def __init__(
        self,
        lobby: Lobby,
        store: ModerationStoreProtocol,
        moderators: Moderators,
        settings: ModerationSettings,
        channel: ModerationChannel | None = None,
    ) -> None:
        self.lobby = lobby
        # How a request reaches the node holding a session (moderation/channel.py).
        self.channel: ModerationChannel = channel or LocalChannel(lobby.node)
        self.channel.handle("enforce", self._enforce_here)
        self.channel.handle("presence", self._presence_here)
        self.channel.on_notice(self._on_notice)
        self.store = store
        self.moderators = moderators
        self.settings = settings
        self.recordings_dir = Path(settings.recordings_dir)
        self.followed: dict[str, Followed] = {}
        # People whose media connection went away while they stay (a changed network,
        # a visit held for a resume): what was kept of them, until their next connection.
        self.parked: dict[str, Followed] = {}
        # Called with a session id and the Peer moderation follows it on from now,
        # the first or a new one (routes.py points moderators' watchers at it).
        self.media_listeners: list[Callable[[str, Peer], None]] = []
        self.pseudonyms = Pseudonyms(store.pseudonym_key())
        # (pair id, session id) -> that person's media of a pair that ended, oldest first.
        self.retained: dict[tuple[str, str], Retained] = {}
        self.retained_total = 0
        # What changed, for dashboards listening over SSE (routes.py `events`).
        self.events = EventHub()
        self._sessions_seen = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        # Loaded in start(): one model and one rate limit shared by every stream.
        self._nudity: tuple[Any, Any] | None = None
        # Every sample is decoded and analysed on this one thread, not asyncio's
        # default pool: each pool thread kept a face cascade and a glibc arena of
        # freed decode buffers of its own, about 18 MB over six threads that
        # showed up as RSS per pair (issue 14). One thread does 20 streams' samples
        # (4 a second, a few milliseconds each) with room to spare.
        self._sampler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moderation-sampler")
        # People held by other nodes, watched and recorded here (set by app.py).
        self.remote: RemoteMedia | None = None

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        self.recordings_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.settings.nudity:
            # Imported only when asked for: the extra may not be installed.
            from moderation.nudity import NudityModel, RateLimit

            model = await asyncio.to_thread(NudityModel)
            self._nudity = (model, RateLimit(self.settings.nudity_rate))
        # What the first sample would load (the cascade, the decoder's and the JPEG
        # encoder's code), loaded now: the first pair does not wait for it, and it
        # shows in the server's size at start, not as if each pair cost it.
        await asyncio.get_running_loop().run_in_executor(self._sampler, _warm_up)
        self.lobby.report_handler = self.on_report
        self.lobby.block_handler = self.on_block
        self.lobby.report_window = self.settings.report_window
        self.lobby.pair_listeners.append(self._on_pair)
        self.lobby.pair_end_listeners.append(self._on_pair_end)
        self.lobby.peer_listeners.append(self._on_new_peer)
        self._loop_task = asyncio.create_task(self._run(), name="moderation")
        self._retention_task = asyncio.create_task(self._retention(), name="retention")

    async def close(self) -> None:
        for task in (self._loop_task, self._retention_task, *self._tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *(t for t in (self._loop_task, self._retention_task, *self._tasks) if t is not None),
            return_exceptions=True,
        )
        for followed in [*self.followed.values(), *self.parked.values()]:
            self._forget(followed)
        self.lobby.report_handler = None
        self.lobby.block_handler = None
        with contextlib.suppress(ValueError):
            self.lobby.pair_listeners.remove(self._on_pair)
        with contextlib.suppress(ValueError):
            self.lobby.pair_end_listeners.remove(self._on_pair_end)
        self.retained.clear()
        self._sampler.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.store.close)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        while True:
            try:
                self._reconcile()
                self._publish_session_changes()
                self._expire_retained()
                self._sample()
            except Exception:
                logger.exception("moderation tick failed")
            await asyncio.sleep(TICK)

    async def _retention(self) -> None:
        while True:
            try:
                await self.apply_retention()
            except Exception:
                logger.exception("retention failed")
            await asyncio.sleep(min(RETENTION_EVERY, max(1.0, self.settings.recording_retention)))

    async def apply_retention(self) -> list[Path]:
        """Delete recordings older than the retention age; detach them from reports."""
        deleted = await asyncio.to_thread(
            delete_expired, self.recordings_dir, self.settings.recording_retention
        )
        if deleted:
            gone = {str(path) for path in deleted}
            reports = await asyncio.to_thread(self.store.reports, limit=10_000)
            for report in reports:
                if report.evidence_path in gone:
                    await asyncio.to_thread(self.store.set_evidence, report.id, None)
            logger.info("retention deleted %d recordings", len(deleted))
        await asyncio.to_thread(self.store.delete_expired_blocks)
        return deleted

    # -- following sessions ----------------------------------------------

    def _on_pair(self, session: Session) -> None:
        self._reconcile()
        followed = self.person(session.id)
        if followed is not None and followed.held is not None:
            # A new partner of a held stream: its page covers the picture from the
            # start. Soon, not now: listeners run before `matched` is sent.
            asyncio.get_running_loop().call_soon(self._tell_partner, session, True)

    def person(self, session_id: str) -> Followed | None:
        """What moderation keeps of someone here, whether their media is up or not."""
        return self.followed.get(session_id) or self.parked.get(session_id)

    def _on_new_peer(self, session: Session, peer: Peer) -> None:
        """A media connection was answered: a held person's video is held on it too.

        Now, before it connects and anything is forwarded from it; waiting for the
        next tick would show the partner up to a second of what the hold hides.
        """
        followed = self.person(session.id)
        video = peer.publishers.get("video")
        if followed is not None and followed.held is not None and video is not None:
            video.hold(True)

    def _reconcile(self) -> None:
        """Follow every session whose media is up; buffer only paired ones."""
        sessions = self.lobby.sessions
        for session_id, gone in list(self.followed.items()):
            session = sessions.get(session_id)
            if session is None:
                self._forget(gone)
            elif session.peer is not gone.peer:
                self._park(gone)
        for session_id, parked in list(self.parked.items()):
            if session_id not in sessions:
                self._forget(parked)
        for session in sessions.values():
            peer = session.peer
            if peer is None or not peer.publishers:
                continue
            followed = self.followed.get(session.id)
            if followed is None:
                followed = self.followed[session.id] = Followed(
                    session, peer, StreamAnalysis(self._analyzers())
                )
                earlier = self.parked.pop(session.id, None)
                if earlier is not None:
                    # (Its hold is on the new connection already: _on_new_peer.)
                    followed.take_over(earlier)
                    logger.info("%s: moderation follows their new media connection", session.id)
                for listener in self.media_listeners:
                    listener(session.id, peer)
            followed.listen(self._frame_listener)
            if session.state == State.PAIRED:
                for kind, publisher in peer.publishers.items():
                    if kind not in followed.buffers:
                        followed.buffers[kind] = RingBuffer(
                            max_seconds=self.settings.evidence_seconds,
                            on_keyframe_needed=publisher.request_keyframe,
                        )
                partner = session.partner
                if partner is not None and partner.node != self.lobby.node:
                    followed.listen_to_partner(self.settings.evidence_seconds)
            elif followed.buffers or followed.partner_buffers:
                # Not paired: nobody to report, nothing to keep.
                followed.buffers.clear()
                followed.unlisten_partner()

    def _analyzers(self) -> list[Analyzer]:
        analyzers = default_analyzers()
        if self._nudity is not None:
            from moderation.nudity import NudityAnalyzer

            model, rate = self._nudity
            analyzers.append(
                NudityAnalyzer(model, threshold=self.settings.nudity_threshold, rate=rate)
            )
        return analyzers

    def _publish_session_changes(self) -> None:
        """Tell listening dashboards, here and on the other nodes (whose dashboards list
        this node's people too), when anyone arrived, left, or changed pair."""
        if not len(self.events) and isinstance(self.channel, LocalChannel):
            return
        seen = hash(
            frozenset(
                (
                    s.id,
                    s.state.value,
                    s.partner.id if s.partner else "",
                    s.media_ready,
                    f.thumbnail is not None if (f := self.followed.get(s.id)) else False,
                    len(f.analysis.active) if f else 0,
                    f.held is not None if f else False,
                )
                for s in self.lobby.sessions.values()
            )
        )
        if seen != self._sessions_seen:
            self._sessions_seen = seen
            self.events.publish("sessions")
            self.channel.notify("sessions")

    def _on_notice(self, name: str) -> None:
        """Another node's sessions changed: dashboards here list them too."""
        if name == "sessions":
            self.events.publish("sessions")

    def _on_pair_end(self, session: Session, pair: RecentPartner) -> None:
        """Keep this person's last seconds of the pair for the report window, and their
        partner's too when that partner is on another node (as the pipe brought them)."""
        followed = self.followed.get(session.id)
        if followed is None:
            return
        buffers, followed.buffers = followed.buffers, {}
        self._retain(pair.pair_id, session.id, buffers)
        if pair.partner.node != self.lobby.node:
            # The partner's side, as it came through the pipe: their node keeps its own
            # copy, but a late report is made here, where the reporter is.
            self._retain(pair.pair_id, pair.partner.id, dict(followed.partner_buffers))
        followed.unlisten_partner()

    def _retain(self, pair_id: str, session_id: str, buffers: dict[str, RingBuffer]) -> None:
        frames = {kind: b for kind, b in buffers.items() if len(b)}
        if not frames:
            return
        for buffer in frames.values():
            buffer.on_keyframe_needed = None  # nor keep the closed peer's publisher alive
        size = sum(b.bytes for b in frames.values())
        key = (pair_id, session_id)
        old = self.retained.pop(key, None)
        self.retained_total -= old.bytes if old else 0
        self.retained[key] = Retained(frames, size)
        self.retained_total += size
        self._expire_retained()

    def _expire_retained(self) -> None:
        """Drop what is past the report window, then the oldest while over the byte bound."""
        horizon = time.monotonic() - self.settings.report_window
        while self.retained:
            key, oldest = next(iter(self.retained.items()))
            if oldest.ended_at >= horizon and self.retained_total <= self.settings.retained_bytes:
                return
            del self.retained[key]
            self.retained_total -= oldest.bytes

    def _forget(self, followed: Followed) -> None:
        """The person left: their recording ends."""
        self._unfollow(followed)
        self.parked.pop(followed.session.id, None)
        self._close_recording(followed)

    def _park(self, followed: Followed) -> None:
        """Their media connection went away but they stay: keep them for the next one."""
        self._unfollow(followed)
        self.parked[followed.session.id] = followed

    def _unfollow(self, followed: Followed) -> None:
        followed.unlisten()
        followed.buffers.clear()
        self.followed.pop(followed.session.id, None)

    def _frame_listener(self, followed: Followed, kind: str) -> Any:
        def on_frame(frame: EncodedFrame) -> None:
            at = time.monotonic()
            buffer = followed.buffers.get(kind)
            if buffer is not None:
                buffer.push(frame, at)
            if followed.recording is not None:
                followed.recording.recorder.write(kind, frame, at)
            if (
                kind == "video"
                and frame.keyframe
                and followed.sample_wanted_at is not None
                and not followed.decoding
            ):
                followed.sample_wanted_at = None
                followed.decoding = True
                self._spawn(self._analyse(followed, frame), f"sample {followed.session.id}")

        return on_frame

    # -- sampling: thumbnails and analyzers --------------------------------

    def _sample(self) -> None:
        now = time.monotonic()
        interval = self.settings.analyzer_interval
        for followed in self.followed.values():
            publisher = followed.peer.publishers.get("video")
            if publisher is None or publisher.codec is None or followed.decoding:
                continue
            wanted = followed.sample_wanted_at
            if wanted is None and now - followed.last_sample_at >= interval:
                followed.sample_wanted_at = now
                publisher.request_keyframe()
            elif wanted is not None and now - wanted > 2 * interval:
                # The keyframe request was lost or ignored: ask again.
                followed.sample_wanted_at = now
                publisher.request_keyframe()

    async def _analyse(self, followed: Followed, frame: EncodedFrame) -> None:
        try:
            followed.last_sample_at = time.monotonic()
            # Decoding and the analyzers (a face cascade takes tens of
            # milliseconds) run off the event loop, which forwards everyone's media.
            # `followed.decoding` keeps one sample per stream in flight, so
            # its analysis is never fed from two threads at once.
            result = await asyncio.get_running_loop().run_in_executor(
                self._sampler, _sample, frame, followed.analysis
            )
            if result is None:
                return
            jpeg, changes = result
            followed.thumbnail = jpeg
            followed.thumbnail_at = time.time()
            for flag in changes.raised:
                logger.info("%s flagged %s: %s", followed.session.id, flag.name, flag.detail)
                if flag.name == "nudity":
                    if self.settings.nudity_blur:
                        self._hold(followed, flag)
                    self._spawn(
                        self._report_flag(followed.session, flag), f"flag {followed.session.id}"
                    )
        except Exception:
            logger.exception("sampling %s failed", followed.session.id)
        finally:
            followed.decoding = False

    # -- holding a flagged stream back (--nudity-blur) -----------------------
    #
    # The relay forwards encoded packets and never decodes them for a partner,
    # so it cannot blur a picture. It stops forwarding the video instead (the
    # partner still hears them) and tells the partner's page, which covers the
    # picture with a placeholder; moderators' watchers still see it. The hold
    # stays on the person, across new partners, until a moderator releases it
    # (or kicks or bans them).

    def _hold(self, followed: Followed, flag: Flag) -> None:
        if followed.held is not None:
            return
        publisher = followed.peer.publishers.get("video")
        if publisher is None:
            return
        followed.held = flag
        publisher.hold(True)
        logger.warning("%s's video held back from partners: %s", followed.session.id, flag.detail)
        self._tell_partner(followed.session, True)

    def release(self, session_id: str) -> bool:
        """A moderator looked: forward the held video to partners again."""
        followed = self.person(session_id)
        if followed is None or followed.held is None:
            return False
        followed.held = None
        publisher = followed.peer.publishers.get("video")
        if publisher is not None:
            publisher.hold(False)
        self._tell_partner(followed.session, False)
        return True

    def _tell_partner(self, session: Session, held: bool) -> None:
        partner = session.partner
        if partner is None:
            return
        message: dict[str, Any] = (
            {"type": "partner_hidden", "reason": "nudity"} if held else {"type": "partner_shown"}
        )
        # Through the bus, so a partner on another node is told the same way.
        self.lobby.bus.send(partner, session.ref, {"t": "client", "m": message})

    # -- reports -----------------------------------------------------------

    async def on_report(
        self, reporter: Session, pair: RecentPartner, reason: str, category: str | None
    ) -> int:
        """Save the pair's last seconds and chat with a new report; answer its id.

        The pair may have ended: then the media kept when it ended is used (the
        partner's from before they left), within the report window.
        """
        snapshots: dict[str, list[BufferedFrame]] = {}
        for prefix, session_id in (("", pair.partner.id), ("reporter_", reporter.id)):
            for kind, frames in self._media_of(session_id, pair.pair_id).items():
                snapshots[f"{prefix}{kind}"] = frames
        transcript = [TranscriptLine(at, sender, text) for at, sender, text in pair.transcript]
        evidence = await asyncio.to_thread(self._write_evidence, snapshots)
        report = await asyncio.to_thread(
            lambda: self.store.add_report(
                reporter.id,
                pair.partner.id,
                reason,
                transcript=transcript,
                evidence_path=None if evidence is None else str(evidence),
                pair_id=pair.pair_id,
                category=queue.category_of(reason, category),
                reporter_person=reporter.person,
                reported_person=pair.person,
                reported_address=pair.address,
            )
        )
        logger.info("report %d saved (evidence: %s)", report.id, evidence is not None)
        self.events.publish("queue")
        return report.id

    def _media_of(self, session_id: str, pair_id: str) -> dict[str, list[BufferedFrame]]:
        """One person's last seconds of one pair: kept since it ended, or live."""
        kept = self.retained.get((pair_id, session_id))
        if kept is not None:
            return {kind: buffer.snapshot() for kind, buffer in kept.buffers.items()}
        followed = self.followed.get(session_id)
        buffers = followed.buffers if followed is not None else {}
        pair = followed.session.pair if followed is not None else None
        if pair is None or pair.pair_id != pair_id:
            # Someone on another node: a local partner of theirs received them by pipe.
            buffers = next(
                (
                    f.partner_buffers
                    for f in self.followed.values()
                    if (p := f.session.pair) is not None
                    and p.pair_id == pair_id
                    and p.partner.id == session_id
                ),
                {},
            )
        return {
            kind: buffer.snapshot()
            for kind in KINDS
            if (buffer := buffers.get(kind)) is not None and len(buffer)
        }

    async def on_block(self, blocker: Session, pair: RecentPartner) -> None:
        """Keep a block between two browsers for --block-days (within a visit the Lobby holds it)."""
        if blocker.person is None or pair.person is None:
            return
        seconds = self.settings.block_days * 86400
        await asyncio.to_thread(
            lambda: self.store.add_block(blocker.person or "", pair.person or "", seconds=seconds)
        )

    async def blocked_tags(self, person: str | None) -> list[str]:
        """The matcher tags a returning browser still avoids (its blocks by identity)."""
        if person is None:
            return []
        blocked = await asyncio.to_thread(self.store.blocked_by, person)
        # Oldest first: when a visit adds more, the oldest kept blocks give way.
        return [PERSON_TAG + key for key in reversed(blocked)]

    async def _report_flag(self, session: Session, flag: Flag) -> None:
        """A nudity flag files a report, so it reaches the moderators' queue.

        Filed as sexual content (the queue's most urgent kind after minors), about
        the person (their identity, so a ban from the report reaches them after
        they left), with the same evidence a person's report would keep: their
        last seconds of the current pair, when they are paired.
        """
        try:
            pair = session.pair
            media = self._media_of(session.id, pair.pair_id) if pair is not None else {}
            evidence = await asyncio.to_thread(self._write_evidence, media)
            report = await asyncio.to_thread(
                lambda: self.store.add_report(
                    AUTOMATIC_REPORTER,
                    session.id,
                    f"nudity (automatic: {flag.detail})",
                    evidence_path=None if evidence is None else str(evidence),
                    pair_id=pair.pair_id if pair is not None else None,
                    category="sexual",
                    reporter_person=AUTOMATIC_REPORTER,
                    reported_person=session.person,
                    reported_address=session.address,
                )
            )
            logger.info("report %d filed by the nudity analyzer about %s", report.id, session.id)
            self.events.publish("queue")
        except Exception:
            logger.exception("filing the nudity report about %s failed", session.id)

    def _write_evidence(self, snapshots: dict[str, list[BufferedFrame]]) -> Path | None:
        tracks = [
            Track(name, frames[0].frame.codec)
            for name, frames in snapshots.items()
            if frames[0].frame.codec.mimeType.lower() in ("video/vp8", "audio/opus")
        ]
        if not tracks:
            return None
        path = new_recording_path(self.recordings_dir)
        recorder = Recorder(path, tracks)
        try:
            recorder.write_buffered({t.name: snapshots[t.name] for t in tracks})
        finally:
            recorder.close()
        return path if path.exists() else None

    # -- recordings --------------------------------------------------------

    def start_recording(self, session_id: str, moderator: str) -> Recording:
        followed = self.followed.get(session_id)
        if followed is None:
            raise KeyError(session_id)
        if followed.recording is not None:
            return followed.recording
        tracks = []
        for kind in KINDS:
            publisher: Publisher | None = followed.peer.publishers.get(kind)
            if publisher is not None and publisher.codec is not None:
                tracks.append(Track(kind, publisher.codec))
        if not tracks:
            raise ValueError("no media yet")
        recorder = Recorder(new_recording_path(self.recordings_dir), tracks)
        followed.recording = Recording(session_id, moderator, recorder)
        video = followed.peer.publishers.get("video")
        if video is not None:
            video.request_keyframe()
        return followed.recording

    def stop_recording(self, session_id: str) -> Path | None:
        followed = self.person(session_id)
        if followed is None or followed.recording is None:
            return None
        return self._close_recording(followed)

    def _close_recording(self, followed: Followed) -> Path | None:
        recording, followed.recording = followed.recording, None
        if recording is None:
            return None
        recording.recorder.close()
        path = recording.recorder.path
        return path if path.exists() else None

    def recording_path(self, name: str) -> Path | None:
        """The recording called `name`, if it is a regular file directly in the folder."""
        # Only the shape new_recording_path makes: nothing else can reach the filesystem.
        if not RECORDING_NAME.fullmatch(name):
            return None
        path = self.recordings_dir / name
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return path if stat.S_ISREG(st.st_mode) else None

    def recordings(self) -> list[dict[str, Any]]:
        live = {
            f.recording.recorder.path.name: f.recording
            for f in [*self.followed.values(), *self.parked.values()]
            if f.recording is not None
        }
        if self.remote is not None:
            live |= self.remote.live_recordings()
        out: list[dict[str, Any]] = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.recordings_dir):
                if not entry.name.endswith(".webm") or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                recording = live.get(entry.name)
                out.append(
                    {
                        "name": entry.name,
                        "bytes": st.st_size,
                        "modified": st.st_mtime,
                        "live": recording is not None,
                        "sessionId": recording.session_id if recording else None,
                    }
                )
        out.sort(key=lambda r: r["modified"], reverse=True)
        return out

    # -- bans --------------------------------------------------------------

    async def ban_for(self, identity: str | None, ip: str | None) -> Ban | None:
        """The ban refusing a client with this identity and address now, if any."""
        person, address = self.pseudonyms.person(identity), self.pseudonyms.address(ip)
        return await asyncio.to_thread(
            lambda: self.store.active_ban(identity, ip, person=person, address=address)
        )

    def refusal(self, ban: Ban) -> dict[str, Any]:
        """The `banned` error a banned client gets: why, until when, and how to appeal."""
        out = error_message("banned", ban_message(ban, self.settings.appeal))
        out |= {"reason": ban.reason, "until": ban_until(ban)}
        if self.settings.appeal:
            out["appeal"] = self.settings.appeal
        return out

    async def ban(
        self,
        moderator: str,
        *,
        identity: str | None = None,
        ip: str | None = None,
        person: str | None = None,
        address: str | None = None,
        seconds: float | None,
        reason: str,
        report_id: int | None = None,
    ) -> BanMade:
        """Store a ban and end every visit it reaches now, on every node."""
        expires = None if seconds is None else time.time() + seconds
        ban = await asyncio.to_thread(
            lambda: self.store.add_ban(
                identity=identity,
                ip=ip,
                person=person,
                address=address,
                reason=reason,
                created_by=moderator,
                expires_at=expires,
                report_id=report_id,
            )
        )
        self.events.publish("queue")
        # Every node ends the visits it holds that the ban covers (this one included).
        answers, missed = await self.channel.call_all("enforce", {"ban": ban_json(ban)})
        ended = sum(int(a.get("ended", 0)) for a in answers.values())
        if missed:
            logger.warning("ban %d did not reach %s", ban.id, missed)
        return BanMade(ban, ended, missed)

    async def _enforce_here(self, args: dict[str, Any]) -> dict[str, Any]:
        """A ban made on any node: end the visits of this node it covers."""
        ban = ban_from_json(args["ban"])
        refusal = self.refusal(ban)
        ended = 0
        for session in list(self.lobby.sessions.values()):
            if _reaches(ban, session):
                self.lobby.kick(session.id, refusal["message"], code="banned", **_extra(refusal))
                ended += 1
        return {"ended": ended}

    async def ban_from_report(
        self,
        moderator: str,
        report_id: int,
        *,
        scope: BanScope,
        seconds: float | None,
        reason: str,
    ) -> BanMade:
        """Ban the person a report is about, from what the report kept (they may be gone);
        the report is resolved as `banned` in the same step."""
        report = await asyncio.to_thread(self.store.report, report_id)
        if report is None:
            raise KeyError(f"no report {report_id}")
        person = report.reported_person if scope.by_identity else None
        address = report.reported_address if scope.by_address else None
        if scope.by_identity and person is None:
            raise BanTermError(
                "this report has no browser identity (the client sent no clientId): "
                'use scope "address"'
            )
        if scope.by_address and address is None:
            raise BanTermError('this report has no address: use scope "identity"')
        return await self.ban(
            moderator,
            person=person,
            address=address,
            seconds=seconds,
            reason=reason,
            report_id=report_id,
        )

    async def queue(self, *, limit: int = 200) -> list[dict[str, Any]]:
        """Open reports, most urgent first, with what deciding on each needs."""
        open_reports = await asyncio.to_thread(
            self.store.reports, status=ReportStatus.OPEN, limit=10_000
        )
        since = time.time() - queue.DAY
        reporters = await asyncio.to_thread(self.store.reporters_since, since)
        # Who of them is online, flagged now, and how many share their address: on any node.
        answers, _ = await self.channel.call_all(
            "presence",
            {
                "subjects": sorted({r.subject for r in open_reports}),
                "addresses": sorted({a for r in open_reports if (a := r.reported_address)}),
            },
        )
        online: set[str] = set()
        flagged: set[str] = set()
        sharing: dict[str, int] = {}
        for answer in answers.values():
            online.update(answer["online"])
            flagged.update(answer["flagged"])
            for address, count in answer["sharing"].items():
                sharing[address] = sharing.get(address, 0) + int(count)
        out = []
        for report in queue.order(open_reports, reporters, flagged)[:limit]:
            address = report.reported_address
            out.append(
                report_json(report)
                | {
                    "reporters24h": reporters.get(report.subject, 1),
                    "flaggedNow": report.subject in flagged,
                    "online": report.subject in online,
                    "sharingAddress": sharing.get(address, 0) if address else 0,
                }
            )
        return out

    async def _presence_here(self, args: dict[str, Any]) -> dict[str, Any]:
        """Which of these report subjects are online on this node, which are flagged
        now, and how many here are at each of these addresses (for the queue)."""
        here = {s.person for s in self.lobby.sessions.values() if s.person is not None}
        here |= {f"s:{session_id}" for session_id in self.lobby.sessions}
        wanted = {str(a) for a in args.get("addresses") or ()}
        sharing: dict[str, int] = {}
        for session in self.lobby.sessions.values():
            if session.address in wanted:
                sharing[session.address] = sharing.get(session.address, 0) + 1
        return {
            "online": sorted(here.intersection(str(x) for x in args.get("subjects") or ())),
            "flagged": sorted(self.flagged_subjects()),
            "sharing": sharing,
        }

    def flagged_subjects(self) -> set[str]:
        """Report subjects of the people the nudity analyzer flags now (or holds)."""
        return {
            _subject(followed.session)
            for followed in [*self.followed.values(), *self.parked.values()]
            if followed.held is not None or "nudity" in followed.analysis.active
        }

    async def history(self, subject: str) -> dict[str, Any]:
        """One person's reports (with decisions) and bans."""
        reports, bans = await asyncio.to_thread(self.store.history, subject)
        return {
            "subject": subject,
            "reports": [report_json(r) for r in reports],
            "bans": [ban_json(b) for b in bans],
        }


class FlagCollector:
    """Moderation's gauges: streams with each analyzer flag raised now, and evidence held.

    `relay_moderation_evidence_bytes{pairs="live"}` is the media payload in
    paired people's ring buffers, `{pairs="ended"}` what ended pairs keep for a
    late report; the process's memory is that plus what each frame's record
    costs (see moderation/ringbuffer.py) plus everything else.
    """

    def __init__(self, moderation: Moderation) -> None:
        self._moderation = moderation

    def collect(self) -> Any:
        gauge = GaugeMetricFamily(
            "relay_moderation_flags", "Streams with this analyzer flag raised now", labels=["flag"]
        )
        counts: dict[str, int] = dict.fromkeys(("black", "frozen", "no_face", "nudity"), 0)
        for followed in self._moderation.followed.values():
            for flag in followed.flags:
                counts[flag.name] = counts.get(flag.name, 0) + 1
        for name, count in sorted(counts.items()):
            gauge.add_metric([name], count)
        yield gauge
        evidence = GaugeMetricFamily(
            "relay_moderation_evidence_bytes",
            "Media payload held for reports: in paired people's ring buffers (live) and "
            "kept from ended pairs for late reports (ended)",
            labels=["pairs"],
        )
        live = sum(
            buffer.bytes
            for followed in self._moderation.followed.values()
            for buffer in (*followed.buffers.values(), *followed.partner_buffers.values())
        )
        evidence.add_metric(["live"], live)
        evidence.add_metric(["ended"], self._moderation.retained_total)
        yield evidence
        yield GaugeMetricFamily(
            "relay_moderation_evidence_allocated_bytes",
            "Memory the live ring buffers take: payload, chunk ends and per-frame records",
            sum(
                buffer.allocated
                for followed in self._moderation.followed.values()
                for buffer in (*followed.buffers.values(), *followed.partner_buffers.values())
            ),
        )
        seconds = [
            buffer.seconds
            for followed in self._moderation.followed.values()
            for buffer in followed.buffers.values()
        ]
        yield GaugeMetricFamily(
            "relay_moderation_evidence_seconds_mean",
            "Seconds of media the live ring buffers hold, on average over streams",
            sum(seconds) / len(seconds) if seconds else 0.0,
        )


# 9999-12-31 23:59:59 UTC: the last second gmtime and every JSON reader can show.
_FAR_FUTURE = 253402300799.0


def _subject(session: Session) -> str:
    """Who a report about `session` is filed under (as ModerationStore.add_report keys it)."""
    return session.person or f"s:{session.id}"


def ban_until(ban: Ban) -> float | None:
    """When `ban` ends, for clients and JSON; None: for good.

    Older versions stored any positive number, so a row may hold infinity or
    1e308: those are bans for good too, never NaN/Infinity in JSON.
    """
    expires = ban.expires_at
    if expires is None or not math.isfinite(expires) or expires >= _FAR_FUTURE:
        return None
    return expires


def ban_message(ban: Ban, appeal: str | None = None) -> str:
    until = ban_until(ban)
    when = (
        "for good"
        if until is None
        else "until " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until))
    )
    message = f"you are banned {when}: {ban.reason}"
    return f"{message}. To appeal: {appeal}" if appeal else message


def ban_json(ban: Ban) -> dict[str, Any]:
    return {
        "id": ban.id,
        "identity": ban.identity,
        "ip": ban.ip,
        "person": ban.person,
        "address": ban.address,
        "reason": ban.reason,
        "createdAt": ban.created_at,
        "expiresAt": ban_until(ban),
        "createdBy": ban.created_by,
    }


def ban_from_json(data: dict[str, Any]) -> Ban:
    """The Ban `ban_json` described (a ban made on another node, to enforce here)."""
    expires = data.get("expiresAt")
    return Ban(
        id=int(data["id"]),
        identity=data.get("identity"),
        ip=data.get("ip"),
        reason=str(data["reason"]),
        created_at=float(data["createdAt"]),
        expires_at=None if expires is None else float(expires),
        created_by=str(data["createdBy"]),
        person=data.get("person"),
        address=data.get("address"),
    )


def report_json(report: Report) -> dict[str, Any]:
    return {
        "id": report.id,
        "createdAt": report.created_at,
        "reporterId": report.reporter_id,
        "reportedId": report.reported_id,
        "reason": report.reason,
        "category": report.category,
        "pairId": report.pair_id,
        "subject": report.subject,
        # Whether a ban can reach them by browser and/or by address (the values stay here).
        "hasIdentity": report.reported_person is not None,
        "hasAddress": report.reported_address is not None,
        "evidence": os.path.basename(report.evidence_path) if report.evidence_path else None,
        "transcript": [
            {"at": line.at, "sender": line.sender, "text": line.text} for line in report.transcript
        ],
        "status": report.status.value,
        "claimedBy": report.claimed_by,
        "claimedAt": report.claimed_at,
        "decision": report.decision,
        "note": report.note,
        "reviewedBy": report.reviewed_by,
        "reviewedAt": report.reviewed_at,
    }


def _reaches(ban: Ban, session: Session) -> bool:
    """Whether `ban` refuses this live session."""
    return bool(
        (ban.identity is not None and session.identity == ban.identity)
        or (ban.ip is not None and session.ip is not None and _same_ip(session.ip, ban.ip))
        or (ban.person is not None and session.person == ban.person)
        or (ban.address is not None and session.address == ban.address)
    )


def _extra(refusal: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in refusal.items() if k not in ("type", "code", "message")}


def _same_ip(a: str, b: str) -> bool:
    try:
        return normalize_ip(a) == normalize_ip(b)
    except ValueError:
        return False


def _sample(frame: EncodedFrame, analysis: StreamAnalysis) -> tuple[bytes, FlagChanges] | None:
    """In a worker thread: the thumbnail of one keyframe, and what the analyzers make of it."""
    result = _decode_and_thumbnail(frame)
    if result is None:
        return None
    image, jpeg = result
    return jpeg, analysis.feed(image, time.monotonic())


def _warm_up() -> None:
    """In the sampler thread: sample one VP8 keyframe, to load what sampling uses.

    Camera-sized, so the cascade and the scaler take the code paths real samples take.
    """
    encoder: Any = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 640, 480, "yuv420p"
    picture = av.VideoFrame.from_ndarray(np.zeros((480, 640, 3), np.uint8), format="rgb24")
    packets = encoder.encode(picture.reformat(format="yuv420p")) + encoder.encode(None)
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    data = bytes(packets[0])
    _sample(EncodedFrame(codec, data, 0, True), StreamAnalysis(default_analyzers()))


def _decode_and_thumbnail(
    frame: EncodedFrame,
) -> tuple[npt.NDArray[np.uint8], bytes] | None:
    """Decode one keyframe on its own (no decoder state kept) and make a JPEG thumbnail."""
    name = _DECODERS.get(frame.codec.name.lower())
    if name is None:
        return None
    context: Any = av.CodecContext.create(name, "r")
    try:
        frames = context.decode(av.Packet(frame.data))
    except av.error.FFmpegError:
        return None
    if not frames:
        return None
    image: npt.NDArray[np.uint8] = frames[-1].to_ndarray(format="rgb24")
    height, width = image.shape[:2]
    small: Any = cv2.resize(  # type: ignore[call-overload]
        image, (THUMBNAIL_WIDTH, max(1, height * THUMBNAIL_WIDTH // max(width, 1))), cv2.INTER_AREA
    )
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return (image, jpeg.tobytes()) if ok else None
