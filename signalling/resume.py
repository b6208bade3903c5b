"""Resume tokens: what lets a new WebSocket take over a session whose socket dropped.

A token is `<session id>.<secret>`, and in a cluster `<session id>.<secret>.<node>`. The
session keeps only its current secret; every `hello` and `resumed` hands out a new one,
so a token works once, a copy of an old one (stolen, or replayed by a confused client)
is refused, and nothing works once the session has ended (its grace passed). Secrets
are compared in constant time.

In a cluster a token may reach another node than the one holding the session (a
balancer without affinity, a phone on a new network). That node asks the holder over
the SessionBus (`claim`, with the secret); the holder checks it, forgets the session
and answers `handover` with what the session needs, so it moves and exactly one node
holds it; a second claim with the same token finds nothing and is refused. The
partner, wherever it is, is told `moved` and its media is bridged to the new node once
the session's new media connection is up (`rebridge`/`rebridged`, see `Resumer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from cluster.node import SessionRef
from signalling import protocol as p
from signalling.limits import Slot
from signalling.recent import MAX_TRANSCRIPT, RecentPartner
from signalling.session import CLOSE_REPLACED, DELIBERATE_CLOSES, Session, State

if TYPE_CHECKING:
    from signalling.lobby import Lobby

logger = logging.getLogger(__name__)

# 192 bits: guessing one during a 20 s grace is out of reach.
SECRET_BYTES: Final = 24
# Seconds a resume waits for the node holding the session to answer its claim. Over a
# live bus it takes milliseconds; a dead node is known from the registry at once.
CLAIM_TIMEOUT: Final = 3.0
# The bus messages of a session moving between nodes (the Lobby passes them here).
HANDOVER_MESSAGES: Final = frozenset(
    {"claim", "handover", "unclaimable", "moved", "rebridge", "rebridged"}
)


@dataclass(frozen=True)
class ResumeSettings:
    """How long a dropped session and its pair are held, and how many may be held at once."""

    # Seconds; 0 turns resuming off (a dropped socket ends the session at once).
    grace: float = 20.0
    # Held sessions per node; past this a dropped session ends at once, so a flood of
    # dropped sockets cannot pin memory and media connections.
    max_held: int = 1000


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def make_token(session_id: str, secret: str, node: str | None = None) -> str:
    """`node` (in a cluster) names who holds the session, for a resume on another node."""
    token = f"{session_id}.{secret}"
    return token if node is None else f"{token}.{node}"


def split_token(token: str) -> tuple[str, str, str | None] | None:
    """(session id, secret, node or None), or None when `token` has not the shape of one.

    Ids and secrets are URL-safe base64 (no dots); a node id may hold dots (a host name).
    """
    session_id, dot, rest = token.partition(".")
    secret, dot2, node = rest.partition(".")
    if not dot or not session_id or not secret or (dot2 and not node):
        return None
    return session_id, secret, node or None


def secret_matches(expected: str | None, given: str) -> bool:
    """Whether `given` is the session's current secret (in constant time)."""
    if expected is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


class Resumer:
    """Holds the sessions whose socket dropped, and hands them to the socket that resumes them.

    A session is "away" while its socket is gone (held, see `disconnected`) or, in a
    pair, while its media connection is gone. Its partner hears `partner_reconnecting`
    once; `partner_back` when the session has its socket and its media again; or, when
    the grace ends first, `partner_left` with reason `disconnect`.

    The Lobby owns the sessions and the pairs; this asks it to end, idle or queue one.
    """

    def __init__(self, lobby: Lobby, settings: ResumeSettings) -> None:
        self.lobby = lobby
        self.settings = settings
        # Ids of sessions whose socket dropped, held for a resume (at most settings.max_held).
        self.held: set[str] = set()
        self.resumes = 0
        # Resumes waiting for another node's answer to their claim, by the new socket's id.
        self._claims: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Sessions whose `rebridge` awaits the partner's `rebridged` (weak: one that ends
        # meanwhile leaves no trace).
        self._rebridging: weakref.WeakSet[Session] = weakref.WeakSet()

    async def disconnected(self, session: Session, ws: web.WebSocketResponse) -> None:
        """`ws`, which carried `session`, has closed: hold the session for a resume, or end it.

        A client that closed with 1000/1001 (it left), a socket the server closed
        (kick, ban, flood, drain) and a node over `max_held` end at once.
        """
        lobby = self.lobby
        if session.ws is not ws:
            return  # a resumed socket carries the session now
        if (
            self.settings.grace <= 0
            or session.ended_by_server
            or session.close_code in DELIBERATE_CLOSES
            or lobby.draining
            or len(self.held) >= self.settings.max_held
            or lobby.sessions.get(session.id) is not session
        ):
            await lobby.leave(session)
            return
        session.detach()
        self.held.add(session.id)
        logger.info("%r: socket dropped (code %s); held for a resume", session, session.close_code)
        self.hold(session)
        if session.queued:
            # Nobody is matched with a visitor who is not there; back in the queue on resume
            # (a resume during this await finds `queued` False and enqueues after it).
            session.queued = False
            await lobby.matcher.dequeue(session.id)

    def new_token(self, session: Session) -> str:
        session.resume_secret = new_secret()
        # In a cluster the token names this node: another node reached with it asks here.
        node = self.lobby.node if self.lobby.registry is not None else None
        return make_token(session.id, session.resume_secret, node)

    def hold(self, session: Session) -> None:
        """Start the grace (once per absence) and tell the partner."""
        if session.held_until is not None:
            return
        if session.partner is not None:
            self.lobby.bus.send(
                session.partner,
                session.ref,
                {"t": "client", "m": {"type": "partner_reconnecting"}},
            )
        self._start_grace(session, self.settings.grace)

    def _start_grace(self, session: Session, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        until = session.held_until = loop.time() + seconds
        # A timer, not a sleeping task: cancelled when the session comes back or ends.
        session.hold_timer = loop.call_later(
            seconds,
            lambda: self.lobby._spawn(self._end_hold(session, until), f"end hold {session.id}"),
        )

    async def _end_hold(self, session: Session, until: float) -> None:
        lobby = self.lobby
        if session.held_until != until or lobby.sessions.get(session.id) is not session:
            return  # back in time, or gone another way
        session.held_until = None
        session.hold_timer = None
        if not session.attached:
            logger.info("%r: not resumed within %g s; ended", session, self.settings.grace)
            await lobby.leave(session)
        elif session.state == State.PAIRED and not session.ready:
            logger.info("%r: no new media within %g s; pair ended", session, self.settings.grace)
            await lobby._go_idle(session, "disconnect")
            session.send({"type": "partner_left", "reason": "disconnect"})

    def maybe_back(self, session: Session) -> None:
        """End the absence once the session has its socket, and its media when paired."""
        if session.held_until is None or not session.attached:
            return
        if session.state == State.PAIRED and not session.ready:
            return
        session.end_hold()
        if session.partner is not None:
            self.lobby.bus.send(
                session.partner, session.ref, {"t": "client", "m": {"type": "partner_back"}}
            )
            logger.info("%r is back with %s", session, session.partner.id)

    async def resume(self, fresh: Session, resume: p.Resume, *, first: bool) -> Session:
        """A new socket takes over a session by its token; answers the session it carries."""
        lobby = self.lobby
        if not first:
            raise p.ProtocolError(
                "bad_state",
                "resume must be the first message on a new connection",
                in_reply_to="resume",
            )
        parts = split_token(resume.token)
        if (
            parts is not None
            and parts[2] is not None
            and parts[2] != lobby.node
            and parts[0] not in lobby.sessions
            and lobby.registry is not None
        ):
            return await self._claim(fresh, SessionRef(parts[0], parts[2]), parts[1])
        held = self._resumable(parts)
        if held is fresh:
            raise p.ProtocolError(
                "bad_state", "this connection already carries that session", in_reply_to="resume"
            )
        ws = fresh.ws
        assert ws is not None
        # The new socket's own session never started: it ends without a trace, and its
        # place in its address's count (the new network's) passes to the resumed one.
        lobby.sessions.pop(fresh.id, None)
        fresh.release_socket()
        held.session_slot.release()
        held.session_slot, fresh.session_slot = fresh.session_slot, Slot(None, None)
        held.ip = fresh.ip
        held.identity = fresh.identity or held.identity
        self.held.discard(held.id)
        held.take_over(ws, self._resumed(held))
        self.resumes += 1
        logger.info("%r resumed", held)
        if held.state == State.WAITING:
            await lobby._enqueue(held)
        self.maybe_back(held)
        return held

    def _resumed(self, session: Session) -> dict[str, Any]:
        return {
            "type": "resumed",
            "id": session.id,
            "state": session.state.value,
            "mode": "text" if session.text_only else "video",
            "media": session.media_ready,
            "interests": list(session.interests),
            "shared": list(session.shared),
            # Fresh TURN credentials: the next media connection may need them after a long visit.
            "iceServers": self.lobby._ice_servers(repr(session)),
            "resumeToken": self.new_token(session),
        }

    def _resumable(self, parts: tuple[str, str, str | None] | None) -> Session:
        session = self.lobby.sessions.get(parts[0]) if parts is not None else None
        if session is None or parts is None or not secret_matches(session.resume_secret, parts[1]):
            raise _refused()
        return session

    # -- a resume on another node than the one holding the session ----------
    #
    # New node (N)                 holding node (H)                  partner's node (P)
    # claim(secret) ----------->   checks, forgets the session
    #                              moved(node N) ----------------->  partner ref -> N,
    #                                                                old media link dropped
    # <------------ handover(state)
    # `resumed` (media: false); the page makes a new media connection on N; once it is up:
    # rebridge(N's pipe streams) ------------------------------->    bridges to the new peer
    # <--------------------------------------------------------- rebridged(its streams)
    # partner_back ---------------------------------------------->
    #
    # Over the bus, which runs through the cluster's own Redis: the secret travels no
    # further than the matcher's records do. A partner on N itself is paired locally.

    async def _claim(self, fresh: Session, held: SessionRef, secret: str) -> Session:
        """Ask the node holding `held` for it; on `handover`, `fresh` becomes that session."""
        lobby = self.lobby
        if not await lobby._alive(held.node):
            raise p.ProtocolError(
                "resume_failed",
                "this session cannot be resumed: the server that held it is gone, so its "
                "token cannot be checked; start a new visit on this connection",
                in_reply_to="resume",
            )
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._claims[fresh.id] = answer
        try:
            lobby.bus.send(held, fresh.ref, {"t": "claim", "secret": secret})
            async with asyncio.timeout(CLAIM_TIMEOUT):
                reply = await answer
        except TimeoutError:
            raise p.ProtocolError(
                "resume_failed",
                "this session cannot be resumed: the server that held it did not answer; "
                "start a new visit on this connection",
                in_reply_to="resume",
            ) from None
        finally:
            self._claims.pop(fresh.id, None)
        state = reply.get("session")
        if reply.get("t") != "handover" or not isinstance(state, dict):
            raise _refused()
        self._adopt(fresh, held.id, state)
        self.resumes += 1
        logger.info("%r resumed here, moved from %s", fresh, held.node)
        if fresh.state == State.WAITING:
            await lobby._enqueue(fresh)
        self.maybe_back(fresh)
        return fresh

    def _adopt(self, session: Session, session_id: str, state: dict[str, Any]) -> None:
        """`session` (a new socket's, never started) becomes the moved one, with its state."""
        lobby = self.lobby
        lobby.sessions.pop(session.id, None)
        session.id = session_id
        session.ref = SessionRef(session_id, lobby.node)
        lobby.sessions[session_id] = session
        _unpack(session, state)
        remaining = float(state.get("away", 0.0))
        if session.partner is not None and remaining > 0:
            # Still away for its partner (who heard partner_reconnecting on the old node):
            # back once its new media is up, or partner_left when the grace left ends.
            self._start_grace(session, remaining)
        session.send(self._resumed(session))

    def on_bus(self, to: str, sender: SessionRef, message: dict[str, Any]) -> None:
        """The handover's messages (`HANDOVER_MESSAGES`), from the Lobby's bus handler."""
        kind = message.get("t")
        if kind == "claim":
            self._on_claim(to, sender, str(message.get("secret", "")))
        elif kind in ("handover", "unclaimable"):
            answer = self._claims.get(to)
            if answer is not None and not answer.done():
                answer.set_result(message)
            elif kind == "handover":
                self._orphan(to, sender, message)
        else:
            session = self.lobby.sessions.get(to)
            if session is None or session.partner is None:
                return
            if kind == "moved" and session.partner == sender:
                self._partner_moved(session, SessionRef(sender.id, str(message.get("node"))))
            elif kind == "rebridge" and session.partner == sender:
                media = message.get("media")
                self.lobby._spawn(
                    self._rebridged(session, media if isinstance(media, dict) else {}),
                    f"rebridge {session.id}",
                )
            elif kind == "rebridged" and session.partner == sender and session.peer is not None:
                if session not in self._rebridging:
                    return  # ours was given up for the partner's (see _rebridged)
                self._rebridging.discard(session)
                media = message.get("media")
                if isinstance(media, dict) and media:  # empty: the partner is away itself
                    self.lobby._spawn(
                        self.lobby.relay.bridge.connect(session.peer, media),
                        f"bridge {session.id}",
                    )

    def _on_claim(self, to: str, claimant: SessionRef, secret: str) -> None:
        """Another node has this session's token: check it, then let the session go there.

        Synchronous up to the point the session is out of this node's sessions, so a
        second claim (or a resume here) with the same token finds nothing.
        """
        lobby = self.lobby
        session = lobby.sessions.get(to)
        if session is None or not secret_matches(session.resume_secret, secret):
            lobby.bus.send(claimant, SessionRef(to, lobby.node), {"t": "unclaimable"})
            return
        session.resume_secret = None
        del lobby.sessions[to]
        self.held.discard(to)
        loop = asyncio.get_running_loop()
        away = 0.0
        if session.held_until is not None:
            away = max(session.held_until - loop.time(), 0.1)
        elif session.state == State.PAIRED:
            # Its socket had not been seen dead here: the partner was never told it was
            # away, so it gets partner_reconnecting now and a full grace on the new node.
            away = self.settings.grace
            if session.partner is not None:
                lobby.bus.send(
                    session.partner,
                    session.ref,
                    {"t": "client", "m": {"type": "partner_reconnecting"}},
                )
        session.end_hold()
        state = _pack(session) | {"away": away}
        partner = session.partner
        if partner is not None:
            local = lobby._local_partner(session)
            if local is not None and local.peer is not None and session.peer is not None:
                lobby.relay.unpair(session.peer, local.peer)
            lobby.bus.send(partner, session.ref, {"t": "moved", "node": claimant.node})
        if session.pending is not None:
            lobby.bus.send(session.pending, session.ref, {"t": "refuse"})
        if session.attached:
            # A socket not yet seen dead here: the page resumed elsewhere, this one is stale.
            session.close(CLOSE_REPLACED, "resumed on another connection")
        logger.info("%r moves to %s", session, claimant.node)
        remote_partner = partner is not None and partner.node != lobby.node
        lobby._spawn(
            self._let_go(session, claimant, state, remote_partner=remote_partner),
            f"move {session.id}",
        )

    async def _let_go(
        self, session: Session, claimant: SessionRef, state: dict[str, Any], *, remote_partner: bool
    ) -> None:
        """What this node still held for a session that moved: queue place, media, socket."""
        lobby = self.lobby
        if session.queued:
            # Out of the shared queue before the new node may put it back in.
            session.queued = False
            with contextlib.suppress(Exception):
                await lobby.matcher.dequeue(session.id)
        lobby.bus.send(
            claimant, SessionRef(session.id, lobby.node), {"t": "handover", "session": state}
        )
        if remote_partner and session.peer is not None:
            await lobby.relay.bridge.disconnect(session.peer)
        session.session_slot.release()
        await lobby._drop_incoming(session)
        await lobby._drop_peer(session)
        if not session.attached:
            await session.finish()
        if not lobby.sessions:
            lobby._emptied.set()

    def _orphan(self, to: str, sender: SessionRef, message: dict[str, Any]) -> None:
        """A handover for a claim given up (it came too late): the session is lost; its
        partner, already pointed here by `moved`, is told it left."""
        state = message.get("session")
        partner = _ref(state.get("partner")) if isinstance(state, dict) else None
        if partner is not None:
            self.lobby.bus.send(
                partner,
                SessionRef(sender.id, self.lobby.node),
                {"t": "left", "reason": "disconnect"},
            )
        logger.warning(
            "handover of %s from %s came after the claim gave up", sender.id, sender.node
        )

    def _partner_moved(self, session: Session, moved: SessionRef) -> None:
        """The partner now lives on `moved.node`: talk to it there; media follows (rebridge)."""
        lobby = self.lobby
        old, session.partner = session.partner, moved
        if session.pair is not None:
            session.pair.partner = moved
        if old is not None and old.node != lobby.node and session.peer is not None:
            lobby._spawn(lobby.relay.bridge.disconnect(session.peer), f"unbridge {session.id}")
        logger.info("%r: partner %s moved to %s", session, moved.id, moved.node)

    async def rebridge(self, session: Session) -> None:
        """`session`'s media is (again) up, its partner on another node: bridge them anew."""
        lobby = self.lobby
        partner, peer = session.partner, session.peer
        if partner is None or peer is None:
            return
        await lobby.relay.bridge.disconnect(peer)
        media = await lobby.relay.bridge.offer_streams(peer)
        if session.partner != partner or session.peer is not peer:
            await lobby.relay.bridge.disconnect(peer)
            return
        self._rebridging.add(session)
        lobby.bus.send(partner, session.ref, {"t": "rebridge", "media": media})

    async def _rebridged(self, session: Session, media: dict[str, Any]) -> None:
        """The partner's new media connection (on its node) offers its streams: answer ours."""
        lobby = self.lobby
        partner, peer = session.partner, session.peer
        if partner is None:
            return
        if peer is None:
            # Away itself: its own rebridge follows its new media. Answered all the same,
            # so the partner is not left waiting for an answer that would win a tie.
            lobby.bus.send(partner, session.ref, {"t": "rebridged", "media": {}})
            return
        if session in self._rebridging:
            # Both sides' media came back at once and each offered: one offer is answered,
            # the same one on both nodes (the side with the smaller session id's).
            if session.id < partner.id:
                return
            self._rebridging.discard(session)
        await lobby.relay.bridge.disconnect(peer)
        mine = await lobby.relay.bridge.offer_streams(peer)
        if session.partner != partner or session.peer is not peer:
            await lobby.relay.bridge.disconnect(peer)
            return
        lobby.bus.send(partner, session.ref, {"t": "rebridged", "media": mine})
        await lobby.relay.bridge.connect(peer, media)


def _refused() -> p.ProtocolError:
    return p.ProtocolError(
        "resume_failed",
        "this session cannot be resumed: the token was used already or is not "
        "valid, or the session ended (its grace passed); "
        "start a new visit on this connection",
        in_reply_to="resume",
    )


def _ref(value: Any) -> SessionRef | None:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return SessionRef(value[0], value[1])
    return None


def _pack(session: Session) -> dict[str, Any]:
    """What a session that moves takes with it: its search, its pair and the pairs it may
    still report or block (with their chat), and who it is for bans and blocks."""
    now = time.time()
    recent = [
        {
            "pair": r.pair_id,
            "partner": [r.partner.id, r.partner.node],
            "person": r.person,
            "address": r.address,
            "started": r.started_at,
            "ended": r.ended_at,
            # A pair that ended keeps its last lines only: a handover stays small.
            "transcript": [
                list(line)
                for line in list(r.transcript)[-(MAX_TRANSCRIPT if r is session.pair else 50) :]
            ],
        }
        for r in session.recent
        if r.live_at(now, session.recent.window)
    ]
    partner = session.partner
    return {
        "state": session.state.value,
        "text": session.text_only,
        "interests": list(session.interests),
        "shared": list(session.shared),
        "partner": None if partner is None else [partner.id, partner.node],
        "pair": None if session.pair is None else session.pair.pair_id,
        "recent": recent,
        "avoid": list(session.avoid),
        "identity": session.identity,
        "person": session.person,
    }


def _unpack(session: Session, state: dict[str, Any]) -> None:
    """The other half of `_pack`, onto the new socket's session (whose own address stays)."""
    session.text_only = state.get("text") is True
    session.interests = tuple(str(i) for i in state.get("interests", ()))[: p.MAX_INTERESTS]
    session.shared = tuple(str(i) for i in state.get("shared", ()))
    identity, person = state.get("identity"), state.get("person")
    session.identity = session.identity or (identity if isinstance(identity, str) else None)
    session.person = session.person or (person if isinstance(person, str) else None)
    for tag in state.get("avoid", ()):
        if isinstance(tag, str):
            session.avoid[tag] = None
    pair_id = state.get("pair")
    for r in state.get("recent", ()):
        ref = _ref(r.get("partner")) if isinstance(r, dict) else None
        if ref is None or not isinstance(r.get("pair"), str):
            continue
        person_key, address = r.get("person"), r.get("address")
        recent = RecentPartner(
            r["pair"],
            ref,
            person_key if isinstance(person_key, str) else None,
            address if isinstance(address, str) else None,
            started_at=float(r.get("started") or 0.0),
            ended_at=None if r.get("ended") is None else float(r["ended"]),
        )
        recent.transcript.extend(
            (float(t), str(who), str(text)) for t, who, text in r.get("transcript", ())
        )
        session.recent.add(recent)
        if recent.pair_id == pair_id:
            session.pair = recent
    try:
        session.state = State(state.get("state"))
    except ValueError:
        session.state = State.IDLE
    session.partner = _ref(state.get("partner"))
    if session.state == State.PAIRED and (session.partner is None or session.pair is None):
        session.state, session.partner, session.pair = State.IDLE, None, None
    if session.state != State.PAIRED:
        session.partner, session.pair = None, None
    if session.pair is not None:
        session.transcript = session.pair.transcript
    if session.state == State.WAITING:
        session.waiting_since = asyncio.get_running_loop().time()
