"""The Lobby: every session, what each message does, and how pairs are made and ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from matcher.base import AlreadyWaiting, Match, Matcher, MatchHandler
from rtc.peer import MediaState, Peer, PeerError
from rtc.relay import Relay
from signalling import protocol as p
from signalling.limits import AddressLimits, LimitExceeded, LimitSettings
from signalling.session import CLOSE_FLOOD, CLOSE_GOING_AWAY, Session, State

logger = logging.getLogger(__name__)

MatcherFactory = Callable[[MatchHandler], Matcher]
# Called with (reporter, reported, reason) before anything changes; answers the report id.
ReportHandler = Callable[["Session", "Session", str], Awaitable[int | None]]
# Close code for a session a moderator ended (kick or ban).
CLOSE_KICKED = 4003
# A client that ignores this many `rate_limited` errors in a row is closed.
MAX_REFUSED_IN_A_ROW = 100


class Lobby:
    """Turns client messages into state changes, matches and forwarding.

    Handlers are thin: each message type maps to one method below, and every
    state change goes through `_pair` / `_unpair`.
    """

    def __init__(
        self,
        relay: Relay,
        matcher_factory: MatcherFactory,
        *,
        ice_servers: list[dict[str, str]],
        limits: AddressLimits | None = None,
    ) -> None:
        self.relay = relay
        # Per-address counts: a slot is taken in join/_offer and released in
        # leave/_drop_peer, the only ways a session or a peer ends.
        self.limits = limits or AddressLimits(LimitSettings(0, 0, 0))
        self.matcher = matcher_factory(self._on_match)
        self.sessions: dict[str, Session] = {}
        self.matches_made = 0
        # Called with both sessions each time a pair is made (metrics observe here).
        self.pair_listeners: list[Callable[[Session, Session], None]] = []
        # Moderation saves evidence here; without one a report is only logged.
        self.report_handler: ReportHandler | None = None
        self.report_moves_on = True
        self._ice_servers = ice_servers
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.matcher.start()

    def shutdown(self) -> None:
        """Tell every client the server is going away (their handlers then clean up)."""
        for session in list(self.sessions.values()):
            session.close(CLOSE_GOING_AWAY, "server shutting down")

    async def close(self) -> None:
        self.shutdown()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.matcher.close()
        await self.relay.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    # -- connection lifecycle ---------------------------------------------

    def join(
        self, ws: web.WebSocketResponse, *, identity: str | None = None, ip: str | None = None
    ) -> Session:
        """A new session, greeted with `hello`; `LimitExceeded` when its address is over a limit."""
        slot = self.limits.open_session(ip)
        try:
            session = Session(ws, identity=identity, ip=ip)
        except BaseException:
            slot.release()
            raise
        session.session_slot = slot
        self.sessions[session.id] = session
        session.send(
            {"type": "hello", "id": session.id, "iceServers": self._ice_servers, "limits": p.LIMITS}
        )
        logger.info("%r joined (%d online)", session, len(self.sessions))
        return session

    async def leave(self, session: Session) -> None:
        """The WebSocket closed: end everything this session held."""
        if self.sessions.pop(session.id, None) is None:
            return
        session.session_slot.release()
        if session.state == State.PAIRED:
            self._unpair(session, "disconnect")
        session.state = State.IDLE
        session.queued = False
        await self.matcher.forget(session.id)
        await self._drop_peer(session)
        await session.finish()
        logger.info("%r left (%d online)", session, len(self.sessions))

    async def receive(self, session: Session, data: str | bytes) -> None:
        """One WebSocket frame from the client."""
        if not session.limiter.allow():
            if session.limiter.refused_in_a_row > MAX_REFUSED_IN_A_ROW:
                session.close(CLOSE_FLOOD, "flooding")
            elif (
                session.limiter.refused_in_a_row == 1 or session.limiter.refused_in_a_row % 20 == 0
            ):
                session.send(p.error_message("rate_limited", "too many messages; slow down"))
            return
        kind = "?"
        try:
            message = p.parse_message(data)
            kind = p.message_type(message)
            await self._dispatch(session, message)
        except p.ProtocolError as exc:
            session.send(exc.to_json())
        except PeerError as exc:
            session.send(p.error_message(exc.code, exc.message, in_reply_to=kind))
        except Exception:
            logger.exception("%r: handling %s failed", session, kind)
            session.send(
                p.error_message(
                    "internal", "the server failed to handle this message", in_reply_to=kind
                )
            )

    async def _dispatch(self, session: Session, message: p.ClientMessage) -> None:
        match message:
            case p.Offer():
                await self._offer(session, message)
            case p.Candidate():
                await self._candidate(session, message)
            case p.Start():
                await self._start(session, message)
            case p.Next():
                await self._next(session)
            case p.Stop():
                await self._stop(session)
            case p.Chat():
                partner = self._partner_of(session, "chat")
                line = (time.time(), session.id, message.text)
                session.transcript.append(line)
                partner.transcript.append(line)
                partner.send({"type": "chat", "text": message.text})
            case p.Typing():
                self._partner_of(session, "typing").send(
                    {"type": "typing", "active": message.active}
                )
            case p.MediaStateMessage():
                self._partner_of(session, "media_state").send(
                    {"type": "media_state", "camera": message.camera, "mic": message.mic}
                )
            case p.Report():
                await self._report(session, message)

    # -- media -----------------------------------------------------------

    async def _offer(self, session: Session, offer: p.Offer) -> None:
        if session.peer is not None:
            raise p.ProtocolError(
                "bad_state", "this connection already has a media session", in_reply_to="offer"
            )
        try:
            slot = self.limits.open_peer(session.ip)
        except LimitExceeded as exc:
            raise p.ProtocolError(exc.code, exc.message, in_reply_to="offer") from None
        peer = self.relay.create_peer(session.id, self._on_media_state)
        session.peer, session.peer_slot = peer, slot
        try:
            answer = await peer.answer(offer.sdp)
        except BaseException:
            if session.peer is peer:
                await self._drop_peer(session)
            raise
        session.send({"type": "answer", "sdp": answer})

    async def _candidate(self, session: Session, candidate: p.Candidate) -> None:
        if session.peer is None:
            raise p.ProtocolError(
                "bad_state", "send the offer before ICE candidates", in_reply_to="candidate"
            )
        if candidate.candidate is None:
            return  # end of candidates: aiortc needs no signal for it
        await session.peer.add_candidate(
            candidate.candidate, candidate.sdp_mid, candidate.sdp_mline_index
        )

    def _on_media_state(self, peer: Peer, state: MediaState, why: str) -> None:
        session = self.sessions.get(peer.name)
        if session is None or session.peer is not peer:
            return
        if state == MediaState.CONNECTED:
            self._spawn(self._enqueue(session), f"enqueue {session.id}")
        elif state == MediaState.LOST:
            self._spawn(self._media_lost(session, peer, why), f"media lost {session.id}")

    async def _media_lost(self, session: Session, peer: Peer, why: str) -> None:
        if session.peer is not peer:
            return
        if session.state == State.PAIRED:
            self._unpair(session, "disconnect")
        if session.queued:
            session.queued = False
            await self.matcher.dequeue(session.id)
        session.state = State.IDLE
        session.send(
            p.error_message(
                "media_lost",
                f"the media connection was lost ({why}); send a new offer, then start again",
            )
        )
        await self._drop_peer(session)

    async def _drop_peer(self, session: Session) -> None:
        peer, session.peer = session.peer, None
        session.peer_slot.release()
        if peer is not None:
            await self.relay.close_peer(peer)

    # -- matching --------------------------------------------------------

    async def _start(self, session: Session, start: p.Start) -> None:
        if session.state != State.IDLE:
            raise p.ProtocolError(
                "bad_state",
                f"already {session.state.value}; send stop or next instead",
                in_reply_to="start",
            )
        session.interests = start.interests
        await self._look_for_partner(session)

    async def _next(self, session: Session) -> None:
        if session.state == State.IDLE:
            raise p.ProtocolError("bad_state", "not chatting; send start first", in_reply_to="next")
        if session.state == State.PAIRED:
            self._unpair(session, "next")
        await self._look_for_partner(session)

    async def _look_for_partner(self, session: Session) -> None:
        if session.state != State.WAITING:
            session.state = State.WAITING
            session.waiting_since = asyncio.get_running_loop().time()
        session.send({"type": "waiting"})
        await self._enqueue(session)

    async def _stop(self, session: Session) -> None:
        if session.state == State.PAIRED:
            self._unpair(session, "stop")
        if session.queued:
            session.queued = False
            await self.matcher.dequeue(session.id)
        session.state = State.IDLE
        session.send({"type": "stopped"})

    async def _enqueue(self, session: Session) -> None:
        """Offer a waiting session to the matcher once its media can flow."""
        if session.state != State.WAITING or session.queued or not session.media_ready:
            return
        if self.sessions.get(session.id) is not session:
            return
        session.queued = True
        with contextlib.suppress(AlreadyWaiting):
            await self.matcher.enqueue(session.id, session.interests)

    def _on_match(self, match: Match) -> None:
        a, b = self.sessions.get(match.a), self.sessions.get(match.b)
        for session in (a, b):
            if session is not None:
                session.queued = False
        if a is None or b is None or not _can_pair(a) or not _can_pair(b):
            # One side vanished between queueing and matching: the other waits on.
            for session in (a, b):
                if session is not None and session.state == State.WAITING:
                    self._spawn(self._enqueue(session), f"requeue {session.id}")
            return
        assert a.peer is not None and b.peer is not None
        a.state = b.state = State.PAIRED
        a.partner, b.partner = b, a
        a.transcript, b.transcript = [], []
        self.relay.pair(a.peer, b.peer)
        self.matches_made += 1
        for listener in self.pair_listeners:
            listener(a, b)
        shared = list(match.shared_interests)
        a.send({"type": "matched", "interests": shared})
        b.send({"type": "matched", "interests": shared})
        logger.info("paired %s with %s (shared: %s)", a.id, b.id, shared)

    def _unpair(self, session: Session, reason: str) -> None:
        """End `session`'s pair; the partner is told why and left idle."""
        partner = session.partner
        session.partner = None
        if partner is None:
            return
        partner.partner = None
        partner.state = State.IDLE
        if session.peer is not None and partner.peer is not None:
            self.relay.unpair(session.peer, partner.peer)
        partner.send({"type": "partner_left", "reason": reason})
        logger.info("%s left %s (%s)", session.id, partner.id, reason)

    # -- between partners --------------------------------------------------

    @staticmethod
    def _partner_of(session: Session, kind: str) -> Session:
        if session.partner is None:
            raise p.ProtocolError(
                "not_paired", "there is no partner to send this to", in_reply_to=kind
            )
        return session.partner

    async def _report(self, session: Session, report: p.Report) -> None:
        partner = self._partner_of(session, "report")
        logger.warning("report by %s about %s: %r", session.id, partner.id, report.reason)
        report_id = None
        if self.report_handler is not None:
            report_id = await self.report_handler(session, partner, report.reason)
        reply: dict[str, Any] = {"type": "reported"}
        if report_id is not None:
            reply["reportId"] = report_id
        session.send(reply)
        move_on = self.report_moves_on if report.move_on is None else report.move_on
        if move_on and session.partner is partner:
            await self._next(session)

    # -- moderation ------------------------------------------------------

    def kick(self, session_id: str, message: str, *, code: str = "kicked", **fields: Any) -> bool:
        """End a session now: the client gets an `error` explaining why, then the close."""
        session = self.sessions.get(session_id)
        if session is None:
            return False
        session.send(p.error_message(code, message) | fields)
        session.close(CLOSE_KICKED, code)
        return True


def _can_pair(session: Session) -> bool:
    return session.state == State.WAITING and session.media_ready


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("task %s failed", task.get_name(), exc_info=task.exception())
