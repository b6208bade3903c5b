"""The live view: everyone online on every node, and the actions on one live session.

The dashboard of any node lists the people of every node. Each node filters and sorts
its own people and answers the first `offset + limit` with its counts (the `sessions`
request of moderation/channel.py); the asking node merges those sorted lists and cuts
the page. So a page of 60 out of 1,000 people moves 60 rows per node, not 1,000, and a
search runs where the sessions are.

Kick, release and the facts a ban by session needs run on the node in the session's
`node` field, through the channel; a node that is gone or silent is an explanation for
the moderator (a ChannelError), never a hang.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from moderation.channel import ChannelError
from moderation.service import Moderation
from moderation.store import ReportStatus
from signalling.session import Session, State

DEFAULT_LIMIT = 60
# Chat lines the watch view shows.
LIVE_CHAT_LINES = 100
MAX_LIMIT = 500
MAX_QUERY = 200
STATES = tuple(s.value for s in State)


@dataclass(frozen=True)
class SessionQuery:
    """Which people a dashboard page shows: a search, filters, and the page."""

    # Words that must each appear (any case) in one of the fields a moderator looks
    # for: id, node, state, mode, interests, flags, address, browser identity.
    words: tuple[str, ...] = ()
    state: str | None = None
    node: str | None = None
    ip: str | None = None
    # Only people with an analyzer flag raised or their video held back.
    flagged: bool = False
    # Only people with open reports about this visit.
    reported: bool = False
    offset: int = 0
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> SessionQuery:
        """From the URL query of GET /api/moderate/sessions; ValueError says what is wrong."""
        text = query.get("q", "")
        if len(text) > MAX_QUERY:
            raise ValueError(f"q: at most {MAX_QUERY} characters")
        state = query.get("state") or None
        if state is not None and state not in STATES:
            raise ValueError(f"state: one of {', '.join(STATES)}")
        for name in ("node", "ip"):
            if len(query.get(name, "")) > MAX_QUERY:
                raise ValueError(f"{name}: at most {MAX_QUERY} characters")
        return cls(
            words=tuple(w.lower() for w in text.split()),
            state=state,
            node=query.get("node") or None,
            ip=query.get("ip") or None,
            flagged=_flag(query, "flagged"),
            reported=_flag(query, "reported"),
            offset=_number(query, "offset", 0, 0, 1_000_000),
            limit=_number(query, "limit", DEFAULT_LIMIT, 0, MAX_LIMIT),
        )

    def args(self) -> dict[str, Any]:
        """What each node needs to answer (its first offset + limit matches)."""
        return {
            "words": list(self.words),
            "state": self.state,
            "ip": self.ip,
            "flagged": self.flagged,
            "reported": self.reported,
            "top": self.offset + self.limit,
        }


def _flag(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "")
    if value not in ("", "0", "1", "true", "false"):
        raise ValueError(f"{name}: 1 or 0")
    return value in ("1", "true")


def _number(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise ValueError(f"{name}: a whole number from {low} to {high}")
    return value


def _order(row: dict[str, Any]) -> tuple[float, str]:
    # By the wall-clock time they arrived, unrounded: the same on every call and every
    # node, so pages walked one after another neither repeat nor skip anyone.
    return (float(row["since"]), str(row["id"]))


class LiveSessions:
    """The cluster's live view for one node's dashboard, and its requests to other nodes."""

    def __init__(self, moderation: Moderation) -> None:
        self.moderation = moderation
        self.channel = moderation.channel
        self.node = moderation.lobby.node
        for op, handler in (
            ("sessions", self._sessions_here),
            ("kick", self._kick_here),
            ("describe", self._describe_here),
            ("release", self._release_here),
            ("thumbnail", self._thumbnail_here),
            ("chat", self._chat_here),
        ):
            self.channel.handle(op, handler)

    # -- asked by this node's routes -------------------------------------------

    async def page(self, query: SessionQuery) -> dict[str, Any]:
        """One page of everyone matching `query`, on every node (or on `query.node`)."""
        args = query.args()
        if query.node is not None:
            try:
                answers = {query.node: await self.channel.call(query.node, "sessions", args)}
                missed: dict[str, str] = {}
            except ChannelError as exc:
                answers, missed = {}, {query.node: exc.message}
        else:
            answers, missed = await self.channel.call_all("sessions", args)
        merged = heapq.merge(*(a["sessions"] for a in answers.values()), key=_order)
        rows = list(merged)[query.offset : query.offset + query.limit]
        remote = self.moderation.remote
        if remote is not None:
            # Recorded by this node through the pipe (moderation/remote.py): the holder
            # does not know, this node's moderators must (to stop it).
            for row in rows:
                if (row["node"], row["id"]) in remote.recordings:
                    row["recording"] = True
        return {
            "sessions": rows,
            "total": sum(int(a["total"]) for a in answers.values()),
            "offset": query.offset,
            "limit": query.limit,
            "nodes": [
                {
                    "node": node,
                    "online": a["online"],
                    "paired": a["paired"],
                    "flagged": a["flagged"],
                }
                for node, a in sorted(answers.items())
            ],
            "missing": [{"node": node, "error": error} for node, error in sorted(missed.items())],
        }

    async def kick(self, node: str, session_id: str, message: str) -> str:
        """Kick on `node` (or wherever they are now); the node that did it."""
        done, _ = await self._on_holder(node, "kick", {"id": session_id, "message": message})
        return done

    async def release(self, node: str, session_id: str) -> str:
        done, _ = await self._on_holder(node, "release", {"id": session_id})
        return done

    async def describe(self, node: str, session_id: str) -> dict[str, Any]:
        """identity, ip, person and address of a live session (what a ban by session keeps)."""
        _, answer = await self._on_holder(node, "describe", {"id": session_id})
        return answer

    async def thumbnail(self, node: str, session_id: str) -> bytes:
        # Not looked for elsewhere: "no thumbnail yet" is common and the page polls them;
        # a moved person's row gets its new node at the next listing.
        answer = await self.channel.call(node, "thumbnail", {"id": session_id})
        return base64.b64decode(answer["jpeg"])

    async def chat(self, node: str, session_id: str) -> dict[str, Any]:
        """The current pair's chat of a live session: `{"partner", "chat": [...]}`."""
        _, answer = await self._on_holder(node, "chat", {"id": session_id})
        return answer

    async def _on_holder(
        self, node: str, op: str, args: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        """`op` about session `args["id"]` on `node`, or on the node holding them now.

        A dashboard row names the node that held the person when the page was drawn; a
        resume on another node moves the session there (signalling/resume.py, same id),
        and the node named then answers 404 (or 410 when it stopped). The session is
        then looked for on every node once, and the request sent where it is.
        """
        try:
            return node, await self.channel.call(node, op, args)
        except ChannelError as exc:
            if exc.status not in (404, 410):
                raise
            first = exc
        try:
            found = await self.locate(str(args["id"]), None)
        except ChannelError:
            raise first from None
        if found == node:
            raise first  # they are there: what failed was the request itself
        return found, await self.channel.call(found, op, args)

    async def locate(self, session_id: str, node: str | None) -> str:
        """The node holding `session_id`: the one named, this one, or found by asking all."""
        if node:
            return node
        if session_id in self.moderation.lobby.sessions:
            return self.node
        answers, _ = await self.channel.call_all("describe", {"id": session_id, "quiet": True})
        for found, answer in answers.items():
            if answer.get("found"):
                return found
        raise ChannelError(404, "no such session on any node")

    # -- answered for any node ---------------------------------------------------

    async def _sessions_here(self, args: dict[str, Any]) -> dict[str, Any]:
        moderation = self.moderation
        reports = await asyncio.to_thread(
            moderation.store.reports, status=ReportStatus.OPEN, limit=10_000
        )
        open_reports: dict[str, int] = {}
        for report in reports:
            open_reports[report.reported_id] = open_reports.get(report.reported_id, 0) + 1
        loop_now = asyncio.get_running_loop().time()
        # What loop time 0 is on the wall clock (`since`, comparable across nodes).
        wall_offset = time.time() - loop_now
        words = [str(w) for w in args.get("words") or ()]
        rows = []
        paired = flagged = 0
        for session in moderation.lobby.sessions.values():
            row = self._row(session, open_reports.get(session.id, 0), loop_now, wall_offset)
            paired += session.state == State.PAIRED
            flagged += bool(row["flags"] or row["held"])
            if _matches(row, words, args):
                rows.append(row)
        top = max(0, int(args.get("top", DEFAULT_LIMIT)))
        return {
            "sessions": heapq.nsmallest(top, rows, key=_order),
            "total": len(rows),
            "online": len(moderation.lobby.sessions),
            "paired": paired,
            "flagged": flagged,
        }

    def _row(
        self, session: Session, open_reports: int, loop_now: float, wall_offset: float
    ) -> dict[str, Any]:
        followed = self.moderation.person(session.id)
        return {
            "id": session.id,
            # The node holding them: pass it back with any action on this person.
            "node": self.node,
            "state": session.state.value,
            "partner": session.partner.id if session.partner is not None else None,
            "partnerNode": session.partner.node if session.partner is not None else None,
            "onlineSeconds": round(loop_now - session.connected_at, 1),
            "since": wall_offset + session.connected_at,
            "interests": list(session.interests),
            "identity": session.identity,
            "ip": session.ip,
            "mode": "text" if session.text_only else "video",
            "media": session.media_ready,
            # Their socket dropped and the visit is held for a resume.
            "away": not session.attached,
            "openReports": open_reports,
            "flags": [
                {"name": f.name, "detail": f.detail, "score": f.score}
                for f in (followed.flags if followed else [])
            ],
            # The flag that holds their video back from partners (--nudity-blur).
            "held": None
            if followed is None or followed.held is None
            else {"name": followed.held.name, "detail": followed.held.detail},
            "thumbnailAt": followed.thumbnail_at if followed else None,
            "recording": bool(followed and followed.recording),
        }

    async def _kick_here(self, args: dict[str, Any]) -> dict[str, Any]:
        message = str(args.get("message") or "a moderator ended your session")
        if not self.moderation.lobby.kick(str(args["id"]), message):
            raise ChannelError(404, f"no such session on node {self.node} (they may have left)")
        return {"kicked": True}

    async def _release_here(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.moderation.release(str(args["id"])):
            raise ChannelError(404, f"no such session with held video on node {self.node}")
        return {"released": True}

    async def _describe_here(self, args: dict[str, Any]) -> dict[str, Any]:
        session = self.moderation.lobby.sessions.get(str(args["id"]))
        if session is None:
            if args.get("quiet"):
                return {"found": False}
            raise ChannelError(404, f"no such session on node {self.node} (they may have left)")
        return {
            "found": True,
            "identity": session.identity,
            "ip": session.ip,
            "person": session.person,
            "address": session.address,
        }

    async def _chat_here(self, args: dict[str, Any]) -> dict[str, Any]:
        session = self.moderation.lobby.sessions.get(str(args["id"]))
        if session is None:
            raise ChannelError(404, f"no such session on node {self.node}")
        lines = list(session.transcript)[-LIVE_CHAT_LINES:]
        return {
            "partner": session.partner.id if session.partner else None,
            "chat": [{"at": at, "sender": sender, "text": text} for at, sender, text in lines],
        }

    async def _thumbnail_here(self, args: dict[str, Any]) -> dict[str, Any]:
        followed = self.moderation.person(str(args["id"]))
        if followed is None or followed.thumbnail is None:
            raise ChannelError(404, "no thumbnail")
        return {"jpeg": base64.b64encode(followed.thumbnail).decode()}


def _matches(row: dict[str, Any], words: list[str], args: dict[str, Any]) -> bool:
    if args.get("state") and row["state"] != args["state"]:
        return False
    if args.get("ip") and row["ip"] != args["ip"]:
        return False
    if args.get("flagged") and not (row["flags"] or row["held"]):
        return False
    if args.get("reported") and not row["openReports"]:
        return False
    if not words:
        return True
    haystack = " ".join(
        [
            row["id"],
            row["node"],
            row["state"],
            row["mode"],
            row["ip"] or "",
            row["identity"] or "",
            *row["interests"],
            *(f["name"] for f in row["flags"]),
            "held" if row["held"] else "",
        ]
    ).lower()
    return all(word in haystack for word in words)
