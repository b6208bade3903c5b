"""The WebSocket protocol: every client message validated into a typed object.

docs/protocol.md is the reference for clients; this module is the one place
that decides what a well-formed message is. Anything else becomes a
`ProtocolError` carrying the code and the human message sent back to the client.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

from matcher.base import normalize_interests

MAX_MESSAGE_BYTES: Final = 65536
# Frames above this are not even read: aiohttp closes the socket with 1009.
HARD_MAX_MESSAGE_BYTES: Final = 1 << 20
MAX_CHAT_CHARS: Final = 2000
MAX_REPORT_CHARS: Final = 500
MAX_INTERESTS: Final = 10
MAX_INTEREST_CHARS: Final = 32
MAX_SDP_CHARS: Final = 60000
# What a report is about, most severe first (moderation/queue.py orders its queue so).
REPORT_CATEGORIES: Final = ("minor", "sexual", "violence", "harassment", "other", "spam")
# A pair id is 16 URL-safe characters (signalling/recent.py); a little slack for others.
MAX_PAIR_ID_CHARS: Final = 64
MAX_CANDIDATE_CHARS: Final = 1000
MAX_RESUME_TOKEN_CHARS: Final = 200

# A lone UTF-16 surrogate ("\\ud800" in JSON) is not a character: SQLite,
# UTF-8 logs and other clients' JSON parsers refuse it. Decided once, here, for
# every string of every message (keys, values, interests, SDP): each becomes
# U+FFFD REPLACEMENT CHARACTER, as a browser's TextDecoder would make it. The
# SDP and candidate checks in rtc/ then refuse it as non-ASCII.
_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# Escapes that may decode to one; without them the decoded object needs no walk.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89abcdefABCDEF]")

LIMITS: Final = {
    "maxMessageBytes": MAX_MESSAGE_BYTES,
    "maxChatChars": MAX_CHAT_CHARS,
    "maxInterests": MAX_INTERESTS,
}


class ProtocolError(Exception):
    """Bad input from a client; becomes an `error` message, never a crash."""

    def __init__(
        self, code: str, message: str, *, field: str | None = None, in_reply_to: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.in_reply_to = in_reply_to

    def to_json(self) -> dict[str, Any]:
        return error_message(
            self.code, self.message, field=self.field, in_reply_to=self.in_reply_to
        )


def error_message(
    code: str, message: str, *, field: str | None = None, in_reply_to: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if field is not None:
        out["field"] = field
    if in_reply_to is not None:
        out["inReplyTo"] = in_reply_to
    return out


@dataclass(frozen=True)
class Offer:
    sdp: str


@dataclass(frozen=True)
class Candidate:
    """A trickled ICE candidate; `candidate` is None for end-of-candidates."""

    candidate: str | None
    sdp_mid: str | None
    sdp_mline_index: int | None


# What a search is for: "video" (the default, needs a media connection) or "text" (chat
# only, no media connection; text-only people meet only each other).
MODES: Final = ("video", "text")


@dataclass(frozen=True)
class Start:
    interests: tuple[str, ...]
    mode: str = "video"


@dataclass(frozen=True)
class SetInterests:
    """New interests while waiting (the search goes on with them) or paired (for the next)."""

    interests: tuple[str, ...]


@dataclass(frozen=True)
class Next:
    pass


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class Chat:
    text: str


@dataclass(frozen=True)
class Typing:
    active: bool


@dataclass(frozen=True)
class Report:
    reason: str
    # Whether the reporter moves on to a new partner; None: the server's default.
    move_on: bool | None = None
    # A recent partner's pair (from `matched`); None: the current partner.
    pair_id: str | None = None
    # One of REPORT_CATEGORIES; None: read from the reason's words (moderation/queue.py).
    category: str | None = None


@dataclass(frozen=True)
class Block:
    """Never meet this partner (current, or recent by `pair_id`) again."""

    pair_id: str | None = None


@dataclass(frozen=True)
class MediaStateMessage:
    """The sender turned their camera or microphone off or on."""

    camera: bool
    mic: bool


@dataclass(frozen=True)
class Resume:
    """Take over a held session (signalling/resume.py); only as a socket's first message."""

    token: str


ClientMessage = (
    Offer
    | Candidate
    | Start
    | Next
    | Stop
    | Chat
    | Typing
    | Report
    | Block
    | MediaStateMessage
    | SetInterests
    | Resume
)


_TYPE_NAMES: Final[dict[type, str]] = {
    Offer: "offer",
    Candidate: "candidate",
    Start: "start",
    Next: "next",
    Stop: "stop",
    Chat: "chat",
    Typing: "typing",
    Report: "report",
    Block: "block",
    MediaStateMessage: "media_state",
    SetInterests: "interests",
    Resume: "resume",
}


def message_type(message: ClientMessage) -> str:
    """The protocol's `type` for a parsed message."""
    return _TYPE_NAMES[type(message)]


def _string(
    obj: dict[str, Any],
    name: str,
    kind: str,
    *,
    max_chars: int,
    min_chars: int = 1,
    strip: bool = False,
) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise ProtocolError("bad_field", f"'{name}' must be a string", field=name, in_reply_to=kind)
    if strip:
        value = value.strip()
    if not min_chars <= len(value) <= max_chars:
        raise ProtocolError(
            "bad_field",
            f"'{name}' must be {min_chars} to {max_chars} characters long",
            field=name,
            in_reply_to=kind,
        )
    return value


def _interests(obj: dict[str, Any], kind: str = "start") -> tuple[str, ...]:
    raw = obj.get("interests", [])
    if raw is None:
        raw = []
    if not isinstance(raw, list) or not all(isinstance(i, str) for i in raw):
        raise ProtocolError(
            "bad_field",
            "'interests' must be a list of strings",
            field="interests",
            in_reply_to=kind,
        )
    if len(raw) > MAX_INTERESTS:
        raise ProtocolError(
            "bad_field",
            f"at most {MAX_INTERESTS} interests",
            field="interests",
            in_reply_to=kind,
        )
    for item in raw:
        if not 1 <= len(item.strip()) <= MAX_INTEREST_CHARS:
            raise ProtocolError(
                "bad_field",
                f"each of 'interests' must be 1 to {MAX_INTEREST_CHARS} characters long",
                field="interests",
                in_reply_to=kind,
            )
    # The matcher owns what makes two interests the same.
    return tuple(sorted(normalize_interests(raw)))


def _mode(obj: dict[str, Any]) -> str:
    mode = obj.get("mode", "video")
    if not isinstance(mode, str) or mode not in MODES:
        raise ProtocolError(
            "bad_field",
            '\'mode\' must be "video" or "text"',
            field="mode",
            in_reply_to="start",
        )
    return mode


def _candidate(obj: dict[str, Any]) -> Candidate:
    cand = obj.get("candidate")
    if cand is not None and (not isinstance(cand, str) or len(cand) > MAX_CANDIDATE_CHARS):
        raise ProtocolError(
            "bad_field",
            f"'candidate' must be a string of at most {MAX_CANDIDATE_CHARS} characters, or null",
            field="candidate",
            in_reply_to="candidate",
        )
    mid = obj.get("sdpMid")
    if mid is not None and not isinstance(mid, str):
        raise ProtocolError(
            "bad_field", "'sdpMid' must be a string", field="sdpMid", in_reply_to="candidate"
        )
    index = obj.get("sdpMLineIndex")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise ProtocolError(
            "bad_field",
            "'sdpMLineIndex' must be a non-negative integer",
            field="sdpMLineIndex",
            in_reply_to="candidate",
        )
    return Candidate(candidate=cand or None, sdp_mid=mid, sdp_mline_index=index)


def _boolean(obj: dict[str, Any], name: str, kind: str) -> bool:
    value = obj.get(name)
    if not isinstance(value, bool):
        raise ProtocolError(
            "bad_field", f"'{name}' must be true or false", field=name, in_reply_to=kind
        )
    return value


def _pair_id(obj: dict[str, Any], kind: str) -> str | None:
    if obj.get("pairId") is None:
        return None
    return _string(obj, "pairId", kind, max_chars=MAX_PAIR_ID_CHARS)


def _category(obj: dict[str, Any]) -> str | None:
    value = obj.get("category")
    if value is None:
        return None
    if value not in REPORT_CATEGORIES:
        raise ProtocolError(
            "bad_field",
            f"'category' must be one of {', '.join(REPORT_CATEGORIES)}",
            field="category",
            in_reply_to="report",
        )
    return str(value)


def parse_message(data: str | bytes) -> ClientMessage:
    """Validate one WebSocket frame; raise `ProtocolError` for anything malformed."""
    if isinstance(data, bytes):
        raise ProtocolError("bad_json", "binary frames are not accepted; send JSON text")
    if (
        len(data) > MAX_MESSAGE_BYTES
        or len(data.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES
    ):
        raise ProtocolError("too_large", f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
    try:
        obj = json.loads(data)
    except ValueError:
        raise ProtocolError("bad_json", "the message is not valid JSON") from None
    except RecursionError:
        raise ProtocolError("bad_json", "the JSON is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object")
    if _SURROGATE_ESCAPE.search(data):
        obj = _replace_lone_surrogates(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "a message needs a string 'type'", field="type")
    match kind:
        case "offer":
            return Offer(sdp=_string(obj, "sdp", kind, max_chars=MAX_SDP_CHARS))
        case "candidate":
            return _candidate(obj)
        case "start":
            return Start(interests=_interests(obj), mode=_mode(obj))
        case "interests":
            return SetInterests(interests=_interests(obj, kind))
        case "next":
            return Next()
        case "stop":
            return Stop()
        case "chat":
            return Chat(text=_string(obj, "text", kind, max_chars=MAX_CHAT_CHARS, strip=True))
        case "typing":
            return Typing(active=_boolean(obj, "active", kind))
        case "media_state":
            return MediaStateMessage(
                camera=_boolean(obj, "camera", kind), mic=_boolean(obj, "mic", kind)
            )
        case "resume":
            return Resume(token=_string(obj, "token", kind, max_chars=MAX_RESUME_TOKEN_CHARS))
        case "report":
            return Report(
                reason=_string(obj, "reason", kind, max_chars=MAX_REPORT_CHARS, strip=True),
                move_on=_boolean(obj, "moveOn", kind) if "moveOn" in obj else None,
                pair_id=_pair_id(obj, kind),
                category=_category(obj),
            )
        case "block":
            return Block(pair_id=_pair_id(obj, kind))
    shown = kind if len(kind) <= 40 else kind[:40] + "…"
    raise ProtocolError(
        "unknown_type", f"unknown message type '{shown}'", field="type", in_reply_to=shown
    )


def _replace_lone_surrogates(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` with every lone surrogate in every string replaced by U+FFFD."""

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            return _LONE_SURROGATE.sub("\ufffd", value)
        return value

    root: dict[str, Any] = {}
    # Iterative: the JSON may be nested as deep as json.loads allows.
    stack: list[tuple[Any, Any]] = [(obj, root)]
    while stack:
        source, target = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, value in items:
            if isinstance(value, dict | list):
                copy: Any = {} if isinstance(value, dict) else [None] * len(value)
                stack.append((value, copy))
                value = copy
            if isinstance(target, dict):
                target[fix(key)] = fix(value)
            else:
                target[key] = fix(value)
    return root
