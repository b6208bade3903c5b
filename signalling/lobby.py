"""The Lobby: every session, what each message does, and how pairs are made and ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from aiohttp import web

from cluster.bus import LocalBus, SessionBus
from cluster.node import SessionRef
from cluster.registry import NodeRegistry
from matcher.base import MAX_AVOID, AlreadyWaiting, Match, Matcher, MatchHandler, RemoteMatches
from rtc.peer import MediaState, Peer, PeerError
from rtc.relay import Relay
from signalling import protocol as p
from signalling.limits import AddressLimits, LimitExceeded, LimitSettings, Slot
from signalling.recent import DEFAULT_WINDOW, RecentPartner, new_pair_id
from signalling.resume import HANDOVER_MESSAGES, Resumer, ResumeSettings
from signalling.session import (
    CLOSE_FLOOD,
    CLOSE_GOING_AWAY,
    CLOSE_SERVICE_RESTART,
    Session,
    State,
)

logger = logging.getLogger(__name__)

MatcherFactory = Callable[[MatchHandler], Matcher]
# Called with (reporter, the pair reported, reason, category or None) before anything
# changes; answers the report id. The partner may be gone, or on another node.
ReportHandler = Callable[["Session", RecentPartner, str, "str | None"], Awaitable[int | None]]
# Called with (blocker, the pair blocked) to keep the block beyond this visit.
BlockHandler = Callable[["Session", RecentPartner], Awaitable[None]]

# Close code for a session a moderator ended (kick or ban).
CLOSE_KICKED = 4003
# A client that ignores this many `rate_limited` errors in a row is closed.
MAX_REFUSED_IN_A_ROW = 100
# Seconds a match across nodes may take to be agreed (propose -> accept over the bus)
# before the side still waiting gives up and waits for someone else. Over a live bus
# it takes milliseconds; a dead node's heartbeat is gone within BEAT_TTL.
PAIR_TIMEOUT = 3.0
# Seconds between checks that the nodes of this node's partners are alive.
WATCH_INTERVAL = 1.0
# Seconds a draining node waits for its clients to go before it stops.
DRAIN_SECONDS = 3.0
# Seconds before a user the matcher could not take (Redis away) is offered again.
ENQUEUE_RETRY = 0.5
# The matcher pool of text-only searches; video searches use the default pool "".
TEXT_POOL = "text"
# Messages about the media connection, which a text-only session has not got.
_MEDIA_MESSAGES = (p.Offer, p.Candidate, p.MediaStateMessage)


class Lobby:
    """Turns client messages into state changes, matches and forwarding.

    Handlers are thin: each message type maps to one method below, and every
    state change goes through `_on_match` / `_unpair` / `_partner_gone`.

    A partner is a SessionRef; everything said to it goes through the SessionBus,
    so a pair across nodes differs from a local one only in the handshake that
    forms it (see "across nodes") and in the media, which the Relay's bridge carries.
    """

    def __init__(
        self,
        relay: Relay,
        matcher_factory: MatcherFactory,
        *,
        ice_servers: Callable[[str], list[dict[str, str]]],
        limits: AddressLimits | None = None,
        bus: SessionBus | None = None,
        registry: NodeRegistry | None = None,
        announce_node: bool = False,
        resume: ResumeSettings | None = None,
    ) -> None:
        self.relay = relay
        self.resume = resume or ResumeSettings()
        # Dropped sessions held for a resume, and resumes (signalling/resume.py).
        self.resumer = Resumer(self, self.resume)
        # Per-address counts: a slot is taken in join/_offer and released in
        # leave/_drop_peer, the only ways a session or a peer ends.
        self.limits = limits or AddressLimits(LimitSettings(0, 0, 0))
        self.matcher = matcher_factory(self._on_match)
        self.bus: SessionBus = bus if bus is not None else LocalBus()
        self.bus.set_handler(self._on_bus)
        self.node = self.bus.node
        self.registry = registry
        if registry is not None:
            registry.count = lambda: len(self.sessions)
        self._announce_node = announce_node
        self.sessions: dict[str, Session] = {}
        self.matches_made = 0
        # --show-online: hello and waiting carry a rounded count of the sessions of this
        # node and, in a cluster, of the other live nodes (their last heartbeat's).
        self.show_online = False
        # Called with each session of this node that was just paired (metrics observe here).
        self.pair_listeners: list[Callable[[Session], None]] = []
        # Moderation saves evidence here; without one a report is only logged.
        self.report_handler: ReportHandler | None = None
        self.block_handler: BlockHandler | None = None
        # Called with each session of this node whose pair just ended (moderation keeps
        # that pair's last seconds for reports made after the partner left).
        self.pair_end_listeners: list[Callable[[Session, RecentPartner], None]] = []
        # Called with a session and its new media connection once it is answered, before
        # anything is forwarded from it (moderation holds a held person's video back on
        # every connection they make, not only the first).
        self.peer_listeners: list[Callable[[Session, Peer], None]] = []
        self.report_moves_on = True
        # Seconds after a pair ends during which either side may still report or block.
        self.report_window = DEFAULT_WINDOW
        # Set by drain(): no new sessions.
        self.draining = False
        self._emptied = asyncio.Event()
        self._ice_servers = ice_servers
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.bus.start()
        if self.registry is not None:
            self.registry.on_rejoin = self._rejoin
            await self.registry.start()
            self._spawn(self._watch_nodes(), "watch nodes")
        await self.matcher.start()
        if isinstance(self.matcher, RemoteMatches):
            self._spawn(self._read_remote_matches(self.matcher), "remote matches")

    def shutdown(self) -> None:
        """Tell every client the server is going away (their handlers then clean up)."""
        for session in list(self.sessions.values()):
            session.close(CLOSE_GOING_AWAY, "server shutting down")
            if not session.attached:
                self._spawn(self.leave(session), f"end held {session.id}")

    async def drain(self) -> None:
        """Stop taking visitors; partners elsewhere are told and clients asked to reconnect."""
        self.draining = True
        for session in list(self.sessions.values()):
            # Redis may be what is failing: the node drains all the same.
            with contextlib.suppress(Exception):
                await self._go_idle(session, "disconnect")
            session.close(CLOSE_SERVICE_RESTART, "node restarting; reconnect")
            if not session.attached:
                await self.leave(session)
        if self.registry is not None:
            # Gone from the registry now, so no one proposes a pair to this node.
            await self.registry.close()
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._emptied.wait(), DRAIN_SECONDS)

    async def close(self) -> None:
        self.shutdown()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.matcher.close()
        if self.registry is not None:
            await self.registry.close()
        await self.bus.close()
        await self.relay.close()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    # -- connection lifecycle ---------------------------------------------

    def join(
        self,
        ws: web.WebSocketResponse,
        *,
        identity: str | None = None,
        ip: str | None = None,
        person: str | None = None,
        address: str | None = None,
        avoid: Sequence[str] = (),
    ) -> Session:
        """A new session, greeted with `hello`; `LimitExceeded` when its address is over a limit.

        `person` and `address` are keyed hashes of identity and ip; `avoid` the matcher
        tags this browser blocked on earlier visits, oldest first.
        """
        slot = self.limits.open_session(ip)
        try:
            session = Session(ws, identity=identity, ip=ip, node=self.node)
        except BaseException:
            slot.release()
            raise
        session.session_slot = slot
        session.person, session.address = person, address
        _avoid(session, avoid)
        session.recent.window = self.report_window
        self.sessions[session.id] = session
        hello = {
            "type": "hello",
            "id": session.id,
            # Minted per session: TURN credentials of its own (rtc/ice_servers.py).
            "iceServers": self._ice_servers(repr(session)),
            "limits": p.LIMITS,
            # How long after a pair ends `report`/`block` still take its pairId.
            "reportWindow": self.report_window,
        }
        if self._announce_node:
            hello["node"] = self.node
        if self.resume.grace > 0:
            hello["resumeToken"] = self.resumer.new_token(session)
        session.send(hello | self._online())
        logger.info("%r joined (%d online)", session, len(self.sessions))
        return session

    async def disconnected(self, session: Session, ws: web.WebSocketResponse) -> None:
        """`ws`, which carried `session`, has closed: held for a resume, or ended."""
        await self.resumer.disconnected(session, ws)

    @property
    def held(self) -> set[str]:
        """Ids of the sessions whose socket dropped, held for a resume."""
        return self.resumer.held

    @property
    def resumes(self) -> int:
        return self.resumer.resumes

    async def leave(self, session: Session) -> None:
        """The session ends: end everything it held."""
        if self.sessions.pop(session.id, None) is None:
            return
        self.resumer.held.discard(session.id)
        session.end_hold()
        session.resume_secret = None
        session.session_slot.release()
        if session.state == State.PAIRED:
            self._unpair(session, "disconnect")
        session.state = State.IDLE
        session.queued = False
        session.pending = None
        try:
            await self.matcher.forget(session.id)
        except Exception as exc:
            # Redis away: the record expires on its own; the peer must still be closed.
            logger.warning("%r: the matcher could not forget it (%s)", session, exc)
        await self._drop_incoming(session)
        await self._drop_peer(session)
        await session.finish()
        logger.info("%r left (%d online)", session, len(self.sessions))
        if not self.sessions:
            self._emptied.set()

    async def receive(self, session: Session, data: str | bytes) -> Session:
        """One WebSocket frame from the client; answers the session the socket carries
        from now on (another one after a `resume`)."""
        first, session.fresh = session.fresh, False
        if not session.limiter.allow():
            if session.limiter.refused_in_a_row > MAX_REFUSED_IN_A_ROW:
                session.close(CLOSE_FLOOD, "flooding")
            elif (
                session.limiter.refused_in_a_row == 1 or session.limiter.refused_in_a_row % 20 == 0
            ):
                session.send(p.error_message("rate_limited", "too many messages; slow down"))
            return session
        kind = "?"
        try:
            message = p.parse_message(data)
            kind = p.message_type(message)
            if isinstance(message, p.Resume):
                return await self.resumer.resume(session, message, first=first)
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
        return session

    async def _dispatch(self, session: Session, message: p.ClientMessage) -> None:
        if isinstance(message, _MEDIA_MESSAGES) and session.text_only:
            _refuse_in_text_mode(session, p.message_type(message))
        match message:
            case p.Offer():
                await self._offer(session, message)
            case p.Candidate():
                await self._candidate(session, message)
            case p.Start():
                await self._start(session, message)
            case p.SetInterests():
                await self._set_interests(session, message.interests)
            case p.Next():
                await self._next(session)
            case p.Stop():
                await self._stop(session)
            case p.Chat():
                partner = self._partner_of(session, "chat")
                at = time.time()
                session.transcript.append((at, session.id, message.text))
                self.bus.send(partner, session.ref, {"t": "chat", "text": message.text, "at": at})
            case p.Typing():
                self.bus.send(
                    self._partner_of(session, "typing"),
                    session.ref,
                    {"t": "client", "m": {"type": "typing", "active": message.active}},
                )
            case p.MediaStateMessage():
                self.bus.send(
                    self._partner_of(session, "media_state"),
                    session.ref,
                    {
                        "t": "client",
                        "m": {"type": "media_state", "camera": message.camera, "mic": message.mic},
                    },
                )
            case p.Report():
                await self._report(session, message)
            case p.Block():
                await self._block(session, message)

    # -- media -----------------------------------------------------------

    async def _offer(self, session: Session, offer: p.Offer) -> None:
        """Answer an offer: the visit's media connection, or one that replaces it.

        A new offer while a connection exists (a changed network, or a page recovering
        from a failed ICE state) is answered with a new connection on the server; the
        old one keeps forwarding until the new one is up, then the new one takes its
        place in the pair (aiortc has no ICE restart on an existing connection).
        """
        if session.incoming is not None:
            raise p.ProtocolError(
                "bad_state", "a new media connection is being set up already", in_reply_to="offer"
            )
        try:
            slot = self.limits.open_peer(session.ip)
        except LimitExceeded as exc:
            raise p.ProtocolError(exc.code, exc.message, in_reply_to="offer") from None
        peer = self.relay.create_peer(session.id, self._on_media_state)
        replacing = session.peer is not None
        if replacing:
            session.incoming, session.incoming_slot = peer, slot
        else:
            session.peer, session.peer_slot = peer, slot
        try:
            answer = await peer.answer(offer.sdp)
        except BaseException:
            if session.peer is peer:
                await self._drop_peer(session)
            elif session.incoming is peer:
                await self._drop_incoming(session)
            raise
        for listener in self.peer_listeners:
            listener(session, peer)
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
        if session is None:
            return
        if session.incoming is peer:
            if state == MediaState.CONNECTED:
                self._spawn(self._replace_media(session), f"replace media {session.id}")
            elif state == MediaState.LOST:
                self._spawn(self._drop_incoming(session), f"drop media {session.id}")
            return
        if session.peer is not peer:
            return
        if state == MediaState.CONNECTED:
            self._spawn(self._media_back(session), f"media up {session.id}")
        elif state == MediaState.LOST:
            self._spawn(self._media_lost(session, peer, why), f"media lost {session.id}")

    async def _replace_media(self, session: Session) -> None:
        """The new media connection is up: it takes the old one's place, in the pair too."""
        new = session.incoming
        if new is None:
            return
        old = session.peer
        if old is not None and session.partner is not None and session.partner.node != self.node:
            # The bridge to a partner on another node is built anew on the new connection.
            await self.relay.bridge.disconnect(old)
        if session.incoming is not new:
            return
        session.incoming = None
        old_slot = session.peer_slot
        session.peer, session.peer_slot = new, session.incoming_slot
        session.incoming_slot = Slot(None, None)
        partner = self._local_partner(session)
        if old is not None and partner is not None and partner.peer is not None:
            self.relay.unpair(old, partner.peer)
        logger.info("%r: media connection replaced", session)
        await self._media_back(session)
        old_slot.release()
        if old is not None:
            await self.relay.close_peer(old)

    async def _media_back(self, session: Session) -> None:
        """`session.peer` is (again) connected: forward to and from its partner, or queue it."""
        if session.state != State.PAIRED:
            await self._enqueue(session)
            return
        partner = self._local_partner(session)
        if partner is None:
            # A partner on another node (or one that moved there): bridged anew.
            await self.resumer.rebridge(session)
        elif session.peer is not None and partner.peer is not None:
            self.relay.pair(session.peer, partner.peer)
        self.resumer.maybe_back(session)

    def _local_partner(self, session: Session) -> Session | None:
        partner = session.partner
        if partner is None or partner.node != self.node:
            return None
        return self.sessions.get(partner.id)

    async def _media_lost(self, session: Session, peer: Peer, why: str) -> None:
        if session.peer is not peer:
            return
        if session.state == State.PAIRED and self.resume.grace > 0:
            # Likely a network change: the pair is held while the client sends a new offer
            # (a partner on another node is bridged to the new connection: `_media_back`).
            await self.relay.bridge.disconnect(peer)
            await self._drop_peer(session)
            self.resumer.hold(session)
            if session.incoming is not None:
                return  # the client is on it already: the new connection takes over
            session.send(
                p.error_message(
                    "media_lost",
                    f"the media connection was lost ({why}); send a new offer within "
                    f"{self.resume.grace:g} s to keep your partner",
                )
            )
            return
        await self._go_idle(session, "disconnect")
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

    async def _drop_incoming(self, session: Session) -> None:
        peer, session.incoming = session.incoming, None
        session.incoming_slot.release()
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
        session.text_only = start.mode == "text"
        if session.text_only:
            # A text-only search needs no media connection: one left from a video search
            # is closed, so the camera it carried is not relayed or watched any more.
            await self._drop_incoming(session)
            await self._drop_peer(session)
        await self._look_for_partner(session)

    async def _set_interests(self, session: Session, interests: tuple[str, ...]) -> None:
        """Idle or paired: kept for the next search. Waiting: the search goes on with them."""
        session.interests = interests
        if session.state == State.WAITING and session.queued:
            session.queued = False
            await self.matcher.dequeue(session.id)
            await self._enqueue(session)

    async def _next(self, session: Session) -> None:
        if session.state == State.IDLE:
            raise p.ProtocolError("bad_state", "not chatting; send start first", in_reply_to="next")
        if session.state == State.PAIRED:
            self._unpair(session, "next")
        await self._look_for_partner(session)

    async def _look_for_partner(self, session: Session) -> None:
        # A pair still being agreed across nodes is given up: a late accept is answered
        # with `left`, a late proposal with `refuse`.
        session.pending = None
        if session.state != State.WAITING:
            session.state = State.WAITING
            session.waiting_since = asyncio.get_running_loop().time()
        session.send({"type": "waiting"} | self._online())
        await self._enqueue(session)

    def _online(self) -> dict[str, int]:
        """`online` for hello and waiting, when the operator shows it (--show-online)."""
        if not self.show_online:
            return {}
        others = self.registry.others_online if self.registry is not None else 0
        return {"online": rounded_online(len(self.sessions) + others)}

    async def _stop(self, session: Session) -> None:
        await self._go_idle(session, "stop")
        session.send({"type": "stopped"})

    async def _go_idle(self, session: Session, reason: str) -> None:
        """Out of any pair (the partner told `reason`), any pending pair and the queue."""
        if session.state == State.PAIRED:
            self._unpair(session, reason)
        session.pending = None
        if session.queued:
            session.queued = False
            await self.matcher.dequeue(session.id)
        session.state = State.IDLE

    async def _enqueue(self, session: Session) -> None:
        """Offer a waiting session to the matcher once its media can flow."""
        if session.state != State.WAITING or session.queued or not session.ready:
            return
        if session.pending is not None or self.draining or not session.attached:
            return
        if self.sessions.get(session.id) is not session:
            return
        session.queued = True
        try:
            await self.matcher.enqueue(
                session.id,
                session.interests,
                tags=session.tags,
                avoid=tuple(session.avoid),
                pool=TEXT_POOL if session.text_only else "",
            )
        except AlreadyWaiting:
            pass
        except Exception as exc:
            # The matcher's store is away (Redis restarting): the user keeps waiting and
            # is offered again shortly, rather than waiting forever unqueued.
            session.queued = False
            logger.warning(
                "%r: could not queue (%s); retrying in %s s", session, exc, ENQUEUE_RETRY
            )
            self._spawn(self._enqueue_later(session), f"requeue {session.id}")

    async def _enqueue_later(self, session: Session) -> None:
        await asyncio.sleep(ENQUEUE_RETRY)
        await self._enqueue(session)

    def _on_match(self, match: Match) -> None:
        """A match this node's matcher made; one side may be on another node."""
        node_a, node_b = match.node_a or self.node, match.node_b or self.node
        if node_a != self.node or node_b != self.node:
            local, remote = (
                (match.a, SessionRef(match.b, node_b))
                if node_a == self.node
                else (match.b, SessionRef(match.a, node_a))
            )
            self._propose(local, remote, match.shared_interests)
            return
        a, b = self.sessions.get(match.a), self.sessions.get(match.b)
        for session in (a, b):
            if session is not None:
                session.queued = False
        if a is None or b is None or not _can_pair(a) or not _can_pair(b):
            # One side vanished between queueing and matching: the other waits on.
            for session in (a, b):
                if session is not None:
                    self._requeue(session)
            return
        if a.peer is not None and b.peer is not None:  # a text-only pair has no media
            self.relay.pair(a.peer, b.peer)
        pair_id = new_pair_id()
        self._paired(a, RecentPartner(pair_id, b.ref, b.person, b.address), match.shared_interests)
        self._paired(b, RecentPartner(pair_id, a.ref, a.person, a.address), match.shared_interests)
        self.matches_made += 1
        logger.info("paired %s with %s (shared: %s)", a.id, b.id, list(match.shared_interests))

    def _paired(self, session: Session, pair: RecentPartner, shared: Sequence[str]) -> None:
        """Record a pair on `session`'s side and tell its client."""
        session.state = State.PAIRED
        session.partner = pair.partner
        session.pending = None
        session.transcript = pair.transcript
        session.shared = tuple(shared)
        session.pair = pair
        session.recent.add(pair)
        for listener in self.pair_listeners:
            listener(session)
        session.send({"type": "matched", "interests": list(shared), "pairId": pair.pair_id})

    def _pair_ended(self, session: Session) -> None:
        """`session`'s side of its pair is over: keep it among the recent ones."""
        pair, session.pair = session.pair, None
        if pair is None:
            return
        pair.ended_at = time.time()
        for listener in self.pair_end_listeners:
            try:
                listener(session, pair)
            except Exception:
                logger.exception("a pair-end listener failed for %r", session)

    def _requeue(self, session: Session) -> None:
        if session.state == State.WAITING:
            self._spawn(self._enqueue(session), f"requeue {session.id}")

    def _unpair(self, session: Session, reason: str) -> None:
        """End `session`'s pair; the partner is told why and left idle."""
        partner = session.partner
        session.partner = None
        if partner is None:
            return
        self._pair_ended(session)
        if partner.node == self.node:
            other = self.sessions.get(partner.id)
            if session.peer is not None and other is not None and other.peer is not None:
                self.relay.unpair(session.peer, other.peer)
        else:
            self._disconnect_bridge(session)
        self.bus.send(partner, session.ref, {"t": "left", "reason": reason})
        logger.info("%s left %s (%s)", session.id, partner.id, reason)

    def _partner_gone(self, session: Session, reason: str) -> None:
        """`session`'s partner ended the pair (or its node died): idle, and told why."""
        partner, session.partner = session.partner, None
        session.state = State.IDLE
        self._pair_ended(session)
        if partner is not None and partner.node != self.node:
            self._disconnect_bridge(session)
        session.send({"type": "partner_left", "reason": reason})

    def _disconnect_bridge(self, session: Session) -> None:
        if session.peer is not None:
            self._spawn(self.relay.bridge.disconnect(session.peer), f"unbridge {session.id}")

    # -- across nodes ----------------------------------------------------
    #
    # The node holding a session decides whether it joins a pair: a match from Redis is
    # a proposal. The node that made the match (the proposer, holding `a`) sends
    # `propose` with its bridge description; the node holding `b` answers `accept` with
    # its own (and tells its client `matched`) or `refuse` (b left or moved on). On
    # `accept` the proposer tells its client `matched`; on `refuse`, or no answer within
    # PAIR_TIMEOUT (a dead node), its user waits on in the queue, never told of the
    # match. An accept for a user who moved on is answered with `left`, so the other
    # side gets `partner_left`. The match also reaches b's node through the matcher's
    # feed; if no proposal follows (the proposer died), b waits on after PAIR_TIMEOUT.

    def _propose(self, local_id: str, remote: SessionRef, shared: Sequence[str]) -> None:
        session = self.sessions.get(local_id)
        if session is not None:
            session.queued = False
        if session is None or not _can_pair(session):
            self.bus.send(remote, SessionRef(local_id, self.node), {"t": "refuse"})
            if session is not None:
                self._requeue(session)
            return
        attempt = self._expect(session, remote)
        self._spawn(self._send_proposal(session, remote, shared, attempt), f"propose {local_id}")

    def _expect(self, session: Session, remote: SessionRef) -> int:
        """Hold `session` for a pair with `remote` until agreed, or PAIR_TIMEOUT."""
        session.pending = remote
        session.attempt += 1
        attempt = session.attempt
        self._spawn(self._give_up_after(session, attempt), f"pair timeout {session.id}")
        return attempt

    async def _give_up_after(self, session: Session, attempt: int) -> None:
        await asyncio.sleep(PAIR_TIMEOUT)
        if session.attempt == attempt and session.pending is not None:
            logger.info("%s: no answer from %s; waiting on", session.id, session.pending)
            session.pending = None
            self._disconnect_bridge(session)
            self._requeue(session)

    async def _send_proposal(
        self, session: Session, remote: SessionRef, shared: Sequence[str], attempt: int
    ) -> None:
        if self.registry is not None and not await self._alive(remote.node):
            # A dead node's waiters linger in the queue until their records expire.
            logger.info("%s was matched with %s on a dead node; waiting on", session.id, remote)
            if session.attempt == attempt and session.pending == remote:
                session.pending = None
                self._requeue(session)
            return
        media: dict[str, Any] = {}
        if session.peer is not None:  # a text-only pair has no media
            media = await self.relay.bridge.offer_streams(session.peer)
        if session.attempt != attempt or session.pending != remote:
            self._disconnect_bridge(session)
            self.bus.send(remote, session.ref, {"t": "refuse"})
            return
        # The pair id and each side's person and address keys travel with the handshake
        # (blocks, reports, bans from reports); node to node only, never to a page.
        message = {"t": "propose", "shared": list(shared), "media": media}
        keys = {"person": session.person, "address": session.address}
        self.bus.send(remote, session.ref, message | {"pair": new_pair_id()} | keys)

    async def _alive(self, node: str) -> bool:
        assert self.registry is not None
        try:
            return node in await self.registry.alive([node])
        except Exception:
            return True  # Redis cannot say: the timeout decides

    async def _accept(
        self, session: Session, pair: RecentPartner, shared: Sequence[str], media: dict[str, Any]
    ) -> None:
        sender = pair.partner
        if session.queued:
            # The flag may be stale (this very match took b out of the queue) or b may
            # be queued again; either way b leaves the queue before joining a pair.
            # A match this node's matcher makes meanwhile is handled before this
            # returns, and leaves b unable to pair, so b is never in two pairs.
            session.queued = False
            await self.matcher.dequeue(session.id)
        if not _can_pair(session, expecting=sender) or self.sessions.get(session.id) is not session:
            self.bus.send(sender, session.ref, {"t": "refuse"})
            return
        session.pending = None
        session.state = State.PAIRED  # nobody else can claim b from here on
        session.partner = sender
        peer = session.peer  # None in a text-only pair: no media to bridge
        mine = {} if peer is None else await self.relay.bridge.offer_streams(peer)
        if session.partner != sender:
            # b moved on meanwhile; _unpair has already sent `left`.
            if peer is not None:
                await self.relay.bridge.disconnect(peer)
            return
        # The proposer's user is told the shared interests too: they come back with the accept.
        self.bus.send(
            sender,
            session.ref,
            {
                "t": "accept",
                "media": mine,
                "shared": list(shared),
                "pair": pair.pair_id,
                "person": session.person,
                "address": session.address,
            },
        )
        self.matches_made += 1
        self._paired(session, pair, shared)
        logger.info("paired %s with %s on %s", session.id, sender.id, sender.node)
        if peer is not None:
            await self.relay.bridge.connect(peer, media)

    def _accepted(
        self,
        session: Session | None,
        to: str,
        pair: RecentPartner,
        media: Any,
        shared: Sequence[str],
    ) -> None:
        sender = pair.partner
        if session is None or session.pending != sender:
            reason = "disconnect" if session is None else "next"
            self.bus.send(sender, SessionRef(to, self.node), {"t": "left", "reason": reason})
            return
        self._paired(session, pair, shared)
        if session.peer is not None:  # a text-only pair has no media
            self._spawn(
                self.relay.bridge.connect(session.peer, media if isinstance(media, dict) else {}),
                f"bridge {session.id}",
            )
        logger.info("paired %s with %s on %s", session.id, sender.id, sender.node)

    def _on_bus(self, to: str, sender: SessionRef, message: dict[str, Any]) -> None:
        """A message for one of this node's sessions, from a session on any node."""
        session = self.sessions.get(to)
        kind = message.get("t")
        if kind in HANDOVER_MESSAGES:
            self.resumer.on_bus(to, sender, message)  # a session moving between nodes
        elif kind == "propose":
            if session is None:
                self.bus.send(sender, SessionRef(to, self.node), {"t": "refuse"})
                return
            shared = [str(i) for i in message.get("shared", ())]
            media = message.get("media")
            self._spawn(
                self._accept(
                    session,
                    _remote_pair(sender, message),
                    shared,
                    media if isinstance(media, dict) else {},
                ),
                f"accept {to}",
            )
        elif kind == "accept":
            shared = [str(i) for i in message.get("shared", ())]
            self._accepted(session, to, _remote_pair(sender, message), message.get("media"), shared)
        elif session is None:
            return
        elif kind == "refuse" or (kind == "left" and session.pending == sender):
            if session.pending == sender:
                session.pending = None
                self._disconnect_bridge(session)
                self._requeue(session)
        elif session.partner != sender:
            return  # from a pair that has ended
        elif kind == "chat":
            text = str(message.get("text", ""))
            session.transcript.append((float(message.get("at", time.time())), sender.id, text))
            session.send({"type": "chat", "text": text})
        elif kind == "client" and isinstance(message.get("m"), dict):
            session.send(message["m"])
        elif kind == "left":
            self._partner_gone(session, str(message.get("reason", "disconnect")))
            logger.info("%s's partner %s left", session.id, sender.id)

    def _on_remote_match(self, match: Match) -> None:
        """Another node matched one of ours; its proposal (or refusal) follows on the bus."""
        for local, other, node in (
            (match.a, match.b, match.node_b),
            (match.b, match.a, match.node_a),
        ):
            session = self.sessions.get(local)
            if session is None or node is None:
                continue
            remote = SessionRef(other, node)
            if session.partner == remote or session.pending == remote:
                return  # the proposal came first
            if _can_pair(session) and session.queued:
                session.queued = False
                self._expect(session, remote)
            return

    async def _read_remote_matches(self, matcher: RemoteMatches) -> None:
        while True:
            try:
                async for match in matcher.remote_matches():
                    self._on_remote_match(match)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("reading matches made elsewhere failed (%s); retrying", exc)
                await asyncio.sleep(0.5)

    def _rejoin(self) -> None:
        """Redis lost this node's records (a restart): put its waiting users back."""
        for session in self.sessions.values():
            if session.queued and session.pending is None:
                session.queued = False
                self._requeue(session)

    async def _watch_nodes(self) -> None:
        """Partners on a node that stopped beating are gone: tell ours within seconds."""
        assert self.registry is not None
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            nodes = {
                ref.node
                for s in self.sessions.values()
                for ref in (s.partner, s.pending)
                if ref is not None and ref.node != self.node
            }
            if not nodes:
                continue
            try:
                alive = await self.registry.alive(nodes)
                if nodes - alive and not await self.registry.settled():
                    continue  # Redis just restarted: keys are missing, nodes are not dead
            except Exception as exc:
                # Redis cannot say; nobody is declared dead for that.
                logger.warning("cannot check nodes (%s)", exc)
                continue
            for dead in nodes - alive:
                logger.warning("node %s is gone; ending its pairs here", dead)
                for session in list(self.sessions.values()):
                    if session.partner is not None and session.partner.node == dead:
                        self._partner_gone(session, "disconnect")
                    elif session.pending is not None and session.pending.node == dead:
                        session.pending = None
                        self._requeue(session)

    # -- between partners --------------------------------------------------

    @staticmethod
    def _partner_of(session: Session, kind: str) -> SessionRef:
        if session.partner is None:
            raise p.ProtocolError(
                "not_paired", "there is no partner to send this to", in_reply_to=kind
            )
        return session.partner

    def _pair_for(self, session: Session, pair_id: str | None, kind: str) -> RecentPartner:
        """The current pair (no `pair_id`), or a recent one still within the report window."""
        if pair_id is None:
            self._partner_of(session, kind)
            assert session.pair is not None
            return session.pair
        pair = session.recent.find(pair_id)
        if pair is None:
            minutes = self.report_window / 60
            raise p.ProtocolError(
                "unknown_pair",
                f"no partner of this visit with that pairId in the last {minutes:g} minutes",
                field="pairId",
                in_reply_to=kind,
            )
        return pair

    async def _report(self, session: Session, report: p.Report) -> None:
        """Report implies block; the reported person is never told who reported them."""
        pair = self._pair_for(session, report.pair_id, "report")
        logger.warning("report by %s about %s: %r", session.id, pair.partner.id, report.reason)
        report_id = None
        if self.report_handler is not None:
            report_id = await self.report_handler(session, pair, report.reason, report.category)
        await self._keep_apart(session, pair)
        reply: dict[str, Any] = {"type": "reported", "pairId": pair.pair_id}
        if report_id is not None:
            reply["reportId"] = report_id
        session.send(reply)
        move_on = self.report_moves_on if report.move_on is None else report.move_on
        if move_on and session.pair is pair:
            await self._next(session)

    async def _block(self, session: Session, block: p.Block) -> None:
        """Never paired again; blocking the current partner also moves on."""
        pair = self._pair_for(session, block.pair_id, "block")
        await self._keep_apart(session, pair)
        session.send({"type": "blocked", "pairId": pair.pair_id})
        if session.pair is pair:
            await self._next(session)

    async def _keep_apart(self, session: Session, pair: RecentPartner) -> None:
        """Add the partner's tags to what `session` avoids, here and in the matcher."""
        _avoid(session, sorted(pair.tags))
        if self.block_handler is not None:
            await self.block_handler(session, pair)
        if session.queued and await self.matcher.dequeue(session.id):
            # Waiting already: the matcher must hold the new avoid list.
            session.queued = False
            await self._enqueue(session)

    # -- moderation ------------------------------------------------------

    def kick(self, session_id: str, message: str, *, code: str = "kicked", **fields: Any) -> bool:
        """End a session now: the client gets an `error` explaining why, then the close."""
        session = self.sessions.get(session_id)
        if session is None:
            return False
        session.send(p.error_message(code, message) | fields)
        session.close(CLOSE_KICKED, code)
        if not session.attached:
            self._spawn(self.leave(session), f"end held {session.id}")
        return True


def _can_pair(session: Session, expecting: SessionRef | None = None) -> bool:
    """Waiting with media up, and in no pair nor handshake (but the one `expecting`)."""
    return (
        session.state == State.WAITING
        and session.attached
        and session.ready
        and session.partner is None
        and session.pending in (None, expecting)
    )


def _avoid(session: Session, tags: Sequence[str]) -> None:
    """Add `tags` to what `session` avoids; past the matcher's bound the oldest go."""
    for tag in tags:
        session.avoid.pop(tag, None)
        session.avoid[tag] = None
    while len(session.avoid) > MAX_AVOID:
        del session.avoid[next(iter(session.avoid))]


def _remote_pair(sender: SessionRef, message: dict[str, Any]) -> RecentPartner:
    """The pair a cross-node handshake message describes, with the partner's keyed hashes."""
    pair_id, person, address = message.get("pair"), message.get("person"), message.get("address")
    return RecentPartner(
        pair_id if isinstance(pair_id, str) and pair_id else new_pair_id(),
        sender,
        person if isinstance(person, str) else None,
        address if isinstance(address, str) else None,
    )


def _refuse_in_text_mode(session: Session, kind: str) -> None:
    """Media messages make no sense in a text-only search (idle, the next may be video)."""
    if session.state != State.IDLE:
        raise p.ProtocolError(
            "text_mode",
            f"'{kind}' is about video, and this session is in text-only mode; to use the "
            'camera, send stop, then start with "mode": "video"',
            in_reply_to=kind,
        )


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("task %s failed", task.get_name(), exc_info=task.exception())


def rounded_online(count: int) -> int:
    """`count` rounded down to two significant digits (7, 15, 120, 1200, 98000): a
    number that means "how busy", changes rarely, and does not track each arrival."""
    if count < 100:
        return max(count, 0)
    scale: int = 10 ** (len(str(count)) - 2)
    return count // scale * scale
