"""A Session: one visitor's WebSocket, their place in the chat, and what is sent to them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from asyncio import FIRST_COMPLETED
from collections import deque
from enum import Enum
from typing import Any, Final

from aiohttp import WSMessage, WSMsgType, web

from cluster.node import SessionRef
from rtc.peer import MediaState, Peer
from signalling.limits import Slot
from signalling.recent import RecentPartner, RecentPartners, tags_of

logger = logging.getLogger(__name__)

# Messages waiting for a client that does not read. Past this the client is
# dropped rather than letting its backlog grow.
OUTBOX_SIZE: Final = 256
CLOSE_FLOOD: Final = 4008
# Refused because the client's address is over a per-address limit (signalling/limits.py).
CLOSE_TOO_MANY: Final = 4029
CLOSE_GOING_AWAY: Final = 1001
# The node is draining (SIGTERM): reconnect soon, another node will answer.
CLOSE_SERVICE_RESTART: Final = 1012
# Another WebSocket resumed this session (signalling/resume.py): this one is stale.
CLOSE_REPLACED: Final = 4009
# Close codes a client sends when it means to leave (normal closure, page going away):
# such a session ends at once; any other end of the socket holds it for a resume.
DELIBERATE_CLOSES: Final = frozenset({1000, 1001})


class State(Enum):
    IDLE = "idle"
    WAITING = "waiting"
    PAIRED = "paired"


class RateLimiter:
    """Token bucket: `rate` messages per second on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: int, clock: Any) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()
        # Messages refused in a row; a client that ignores refusals gets closed.
        self.refused_in_a_row = 0

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            self.refused_in_a_row = 0
            return True
        self.refused_in_a_row += 1
        return False


class Session:
    """One visit: from WebSocket open to close."""

    def __init__(
        self,
        ws: web.WebSocketResponse | None,
        *,
        rate: float = 20.0,
        burst: int = 60,
        identity: str | None = None,
        ip: str | None = None,
        node: str = "local",
    ) -> None:
        self.id = secrets.token_urlsafe(9)
        # The socket carrying the session; None while held for a resume (set by _attach).
        self.ws: web.WebSocketResponse | None = None
        self.ref = SessionRef(self.id, node)
        # The browser's persistent random id (`/ws?clientId=`) and address, for bans.
        self.identity = identity
        self.ip = ip
        # Keyed hashes of identity and address (moderation/pseudonyms.py): what blocks and
        # bans made after this visitor left are keyed on.
        self.person: str | None = None
        self.address: str | None = None
        # Matcher tags this visitor never meets (their blocks), oldest first, bounded
        # by the Lobby to the matcher's MAX_AVOID.
        self.avoid: dict[str, None] = {}
        # The current pair and the recent ones, for reports and blocks by pairId.
        self.pair: RecentPartner | None = None
        self.recent = RecentPartners()
        # The current pair's chat, (time.time(), sender session id, text), for reports
        # (the pair's own, bounded: signalling/recent.py).
        self.transcript: deque[tuple[float, str, str]] = deque()
        self.state = State.IDLE
        # The partner, on this node or another; messages to it go through the SessionBus.
        self.partner: SessionRef | None = None
        # A match across nodes being agreed (signalling/lobby.py's handshake): the other
        # side, and a number that tells this attempt's timer from a later one's.
        self.pending: SessionRef | None = None
        self.attempt = 0
        self.interests: tuple[str, ...] = ()
        # Set by each `start`: a text-only search (chat, no media connection, meets only
        # other text-only sessions) rather than a video one.
        self.text_only = False
        # Whether the matcher currently holds this session in its waiting set.
        self.queued = False
        # loop.time() of the start or next that made this session wait (for time to match).
        self.waiting_since: float | None = None
        self.peer: Peer | None = None
        # A second media connection offered while `peer` exists (a network change):
        # it takes `peer`'s place once connected.
        self.incoming: Peer | None = None
        self.incoming_slot = Slot(None, None)
        # This session's and its peer's places in the per-address counts (the Lobby's).
        self.session_slot = Slot(None, None)
        self.peer_slot = Slot(None, None)
        loop = asyncio.get_running_loop()
        self.connected_at = loop.time()
        self.limiter = RateLimiter(rate, burst, loop.time)
        # Shared interests of the current pair (for `resumed`).
        self.shared: tuple[str, ...] = ()
        # Resume (signalling/resume.py): the secret of the one token that may take this
        # session over, whether a client message has been read on this socket yet (only
        # a first message may be `resume`), and the close code the socket ended with.
        self.resume_secret: str | None = None
        self.fresh = True
        self.close_code: int | None = None
        # The pair is held for a resume (socket or media away): loop.time() it ends.
        self.held_until: float | None = None
        self.hold_timer: asyncio.TimerHandle | None = None
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX_SIZE)
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        # (code, reason) once `close()` has flushed the outbox; the handler
        # reading `receive()` then does the closing handshake itself.
        self._close_request: asyncio.Future[tuple[int, str]] = loop.create_future()
        self._attach(ws)

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.state.value}>"

    @property
    def attached(self) -> bool:
        """Whether a WebSocket carries this session now (False while held for a resume)."""
        return self.ws is not None

    def _attach(self, ws: web.WebSocketResponse | None) -> None:
        self.ws = ws
        if ws is not None:
            self._writer = asyncio.create_task(self._write(ws), name=f"writer {self.id}")

    def detach(self) -> None:
        """The socket is gone: stop writing; what is sent from now on waits for a resume.

        Synchronous, so that no resume can slip in between a drop and its bookkeeping.
        """
        self.ws = None
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()  # it ends at its next step; nothing else waits for it

    def take_over(self, ws: web.WebSocketResponse, first: dict[str, Any]) -> None:
        """A resumed socket carries this session from now on; `first` goes before the backlog."""
        if self.ws is not None and not self._close_request.done():
            # The old socket (dead but not yet noticed, or a stolen token's victim) closes.
            self._close_request.set_result((CLOSE_REPLACED, "resumed on another connection"))
        self.detach()
        backlog: list[dict[str, Any] | None] = []
        while not self._outbox.empty():
            backlog.append(self._outbox.get_nowait())
        self._outbox.put_nowait(first)
        for message in backlog[: OUTBOX_SIZE - 1]:
            if message is not None:
                self._outbox.put_nowait(message)
        self.fresh = False
        self.close_code = None
        loop = asyncio.get_running_loop()
        self._closing = False
        self._close_task = None
        self._close_request = loop.create_future()
        self._attach(ws)

    def release_socket(self) -> None:
        """Give up the socket without closing it (a resume moves it to another session)."""
        self._closing = True
        self.detach()

    def end_hold(self) -> None:
        self.held_until = None
        if self.hold_timer is not None:
            self.hold_timer.cancel()
            self.hold_timer = None

    @property
    def tags(self) -> frozenset[str]:
        """What others' blocks against this visitor match (signalling/recent.py)."""
        return tags_of(self.id, self.person)

    @property
    def media_ready(self) -> bool:
        return self.peer is not None and self.peer.state == MediaState.CONNECTED

    @property
    def ready(self) -> bool:
        """Has what its kind of pair needs: media up, or nothing when text-only."""
        return self.text_only or self.media_ready

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for this client; never blocks the caller."""
        if self._closing:
            return
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            if self.ws is None:
                # Held for a resume: the oldest news matters least; `resumed` has the state.
                self._outbox.get_nowait()
                self._outbox.put_nowait(message)
                return
            logger.warning("%r does not read its messages; closing", self)
            self.close(CLOSE_FLOOD, "not reading messages")

    async def _write(self, ws: web.WebSocketResponse) -> None:
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            try:
                await ws.send_str(json.dumps(message))
            except (ConnectionError, RuntimeError):
                # The socket is going away; the reader side cleans up.
                return

    def close(self, code: int, reason: str) -> None:
        """Close the WebSocket after what is already queued has been sent."""
        if self._closing:
            return
        self._closing = True
        self._close_task = asyncio.create_task(self._close(code, reason), name=f"close {self.id}")

    async def _close(self, code: int, reason: str) -> None:
        # Let queued messages (the error that explains the close) go first.
        writer = self._writer
        if writer is not None and not writer.done():
            self._outbox_put_final(writer)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), timeout=2)
        if not self._close_request.done():
            self._close_request.set_result((code, reason))

    async def receive(self, ws: web.WebSocketResponse) -> WSMessage | None:
        """The client's next frame on `ws`; None once it closes, `close()` ended the
        visit, or a resumed socket took the session over.

        Only the task reading here may call the WebSocket's close(): called
        from another task while this one waits in receive(), aiohttp closes
        the socket without waiting for the client's close frame, and a client
        still sending (a flood) then gets a TCP reset that destroys the error
        and close frame meant for it (seen under load in the flood test).
        """
        if self.ws is not ws:
            await ws.close(code=CLOSE_REPLACED, message=b"resumed on another connection")
            return None
        receiving = asyncio.ensure_future(ws.receive())
        close_request = self._close_request
        await asyncio.wait((receiving, close_request), return_when=FIRST_COMPLETED)
        if not receiving.done():
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
            code, reason = close_request.result()
            # Reads (and drops) what the client still sends until its close frame.
            await ws.close(code=code, message=reason.encode())
            return None
        message = receiving.result()
        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            self.close_code = ws.close_code
            return None
        return message

    @property
    def ended_by_server(self) -> bool:
        """Whether the server asked this socket to close (kick, ban, flood, drain)."""
        return self._closing

    def _outbox_put_final(self, writer: asyncio.Task[None]) -> None:
        try:
            self._outbox.put_nowait(None)
        except asyncio.QueueFull:
            writer.cancel()

    async def finish(self) -> None:
        """Stop the writer; called once the WebSocket is closed."""
        self._closing = True
        tasks: list[asyncio.Task[None]] = []
        if self._writer is not None:
            self._writer.cancel()
            tasks.append(self._writer)
        if self._close_task is not None and self._close_task is not asyncio.current_task():
            tasks.append(self._close_task)
        await asyncio.gather(*tasks, return_exceptions=True)
