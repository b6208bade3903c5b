"""A Session: one visitor's WebSocket, their place in the chat, and what is sent to them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from asyncio import FIRST_COMPLETED
from collections import deque
from collections.abc import AsyncIterator
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
        ws: web.WebSocketResponse,
        *,
        rate: float = 20.0,
        burst: int = 60,
        identity: str | None = None,
        ip: str | None = None,
        node: str = "local",
    ) -> None:
        self.id = secrets.token_urlsafe(9)
        self.ref = SessionRef(self.id, node)
        self.ws = ws
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
        # Whether the matcher currently holds this session in its waiting set.
        self.queued = False
        # loop.time() of the start or next that made this session wait (for time to match).
        self.waiting_since: float | None = None
        self.peer: Peer | None = None
        # This session's and its peer's places in the per-address counts (the Lobby's).
        self.session_slot = Slot(None, None)
        self.peer_slot = Slot(None, None)
        loop = asyncio.get_running_loop()
        self.connected_at = loop.time()
        self.limiter = RateLimiter(rate, burst, loop.time)
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(OUTBOX_SIZE)
        self._writer = asyncio.create_task(self._write(), name=f"writer {self.id}")
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        # (code, reason) once `close()` has flushed the outbox; the handler
        # reading `messages()` then does the closing handshake itself.
        self._close_request: asyncio.Future[tuple[int, str]] = loop.create_future()

    def __repr__(self) -> str:
        return f"<Session {self.id} {self.state.value}>"

    @property
    def tags(self) -> frozenset[str]:
        """What others' blocks against this visitor match (signalling/recent.py)."""
        return tags_of(self.id, self.person)

    @property
    def media_ready(self) -> bool:
        return self.peer is not None and self.peer.state == MediaState.CONNECTED

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message for this client; never blocks the caller."""
        if self._closing:
            return
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            logger.warning("%r does not read its messages; closing", self)
            self.close(CLOSE_FLOOD, "not reading messages")

    async def _write(self) -> None:
        while True:
            message = await self._outbox.get()
            if message is None:
                return
            try:
                await self.ws.send_str(json.dumps(message))
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
        if not self._writer.done():
            self._outbox_put_final()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._writer), timeout=2)
        if not self._close_request.done():
            self._close_request.set_result((code, reason))

    async def messages(self) -> AsyncIterator[WSMessage]:
        """The client's frames, until it closes or `close()` asks to end the visit.

        Only the task reading here may call the WebSocket's close(): called
        from another task while this one waits in receive(), aiohttp closes
        the socket without waiting for the client's close frame, and a client
        still sending (a flood) then gets a TCP reset that destroys the error
        and close frame meant for it (seen under load in the flood test).
        """
        ws = self.ws
        while True:
            receiving = asyncio.ensure_future(ws.receive())
            await asyncio.wait((receiving, self._close_request), return_when=FIRST_COMPLETED)
            if not receiving.done():
                receiving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiving
                code, reason = self._close_request.result()
                # Reads (and drops) what the client still sends until its close frame.
                await ws.close(code=code, message=reason.encode())
                return
            message = receiving.result()
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return
            yield message

    def _outbox_put_final(self) -> None:
        try:
            self._outbox.put_nowait(None)
        except asyncio.QueueFull:
            self._writer.cancel()

    async def finish(self) -> None:
        """Stop the writer; called once the WebSocket is closed."""
        self._closing = True
        self._writer.cancel()
        tasks: list[asyncio.Task[None]] = [self._writer]
        if self._close_task is not None and self._close_task is not asyncio.current_task():
            tasks.append(self._close_task)
        await asyncio.gather(*tasks, return_exceptions=True)
