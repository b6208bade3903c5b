"""Resume tokens: what lets a new WebSocket take over a session whose socket dropped.

A token is `<session id>.<secret>`. The session keeps only its current secret; every
`hello` and `resumed` hands out a new one, so a token works once, a copy of an old
one (stolen, or replayed by a confused client) is refused, and nothing works once the
session has ended (its grace passed). Secrets are compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import web

from signalling import protocol as p
from signalling.limits import Slot
from signalling.session import DELIBERATE_CLOSES, Session, State

if TYPE_CHECKING:
    from signalling.lobby import Lobby

logger = logging.getLogger(__name__)

# 192 bits: guessing one during a 20 s grace is out of reach.
SECRET_BYTES: Final = 24


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


def make_token(session_id: str, secret: str) -> str:
    return f"{session_id}.{secret}"


def split_token(token: str) -> tuple[str, str] | None:
    """(session id, secret), or None when `token` has not the shape of a token."""
    session_id, dot, secret = token.partition(".")
    if not dot or not session_id or not secret:
        return None
    return session_id, secret


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
        return make_token(session.id, session.resume_secret)

    def hold(self, session: Session) -> None:
        """Start the grace (once per absence) and tell the partner."""
        if session.held_until is not None:
            return
        loop = asyncio.get_running_loop()
        until = session.held_until = loop.time() + self.settings.grace
        if session.partner is not None:
            self.lobby.bus.send(
                session.partner,
                session.ref,
                {"t": "client", "m": {"type": "partner_reconnecting"}},
            )
        # A timer, not a sleeping task: cancelled when the session comes back or ends.
        session.hold_timer = loop.call_later(
            self.settings.grace,
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
        held = self._resumable(resume.token)
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
        resumed = {
            "type": "resumed",
            "id": held.id,
            "state": held.state.value,
            "mode": "text" if held.text_only else "video",
            "media": held.media_ready,
            "interests": list(held.interests),
            "shared": list(held.shared),
            # Fresh TURN credentials: the next media connection may need them after a long visit.
            "iceServers": lobby._ice_servers(repr(held)),
            "resumeToken": self.new_token(held),
        }
        held.take_over(ws, resumed)
        self.resumes += 1
        logger.info("%r resumed", held)
        if held.state == State.WAITING:
            await lobby._enqueue(held)
        self.maybe_back(held)
        return held

    def _resumable(self, token: str) -> Session:
        parts = split_token(token)
        session = self.lobby.sessions.get(parts[0]) if parts is not None else None
        if session is None or parts is None or not secret_matches(session.resume_secret, parts[1]):
            elsewhere = " or is held by another node of this cluster" if self.lobby.registry else ""
            raise p.ProtocolError(
                "resume_failed",
                "this session cannot be resumed: the token was used already or is not "
                f"valid, or the session ended (its grace passed){elsewhere}; "
                "start a new visit on this connection",
                in_reply_to="resume",
            )
        return session
