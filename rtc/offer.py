"""Offers: a client's SDP offer checked, and normalised, before aiortc sees it.

aiortc assumes well-formed browser SDP. Given less it raised from deep inside
createAnswer (an m-line without a direction, a duplicated or missing `a=mid`,
a BUNDLE group naming an unknown mid) and left a connection whose close()
raised too, or it accepted the offer and failed later in a background task
(no fingerprint, an unknown hash, a candidate port over 65535). Each of those
is refused here with a message naming what is wrong; the one omission RFC
3264 gives a meaning to, a missing direction (sendrecv), is written in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from aiortc import RTCRtpSender
from aiortc.sdp import SessionDescription

from rtc.candidate import MAX_REMOTE_CANDIDATES, CandidateError, check_candidate

KINDS: Final = ("audio", "video")
DIRECTIONS: Final = ("sendrecv", "sendonly", "recvonly", "inactive")
# Chromium's offer for audio and video is about 150 lines.
MAX_LINES: Final = 1000
MAX_LINE_CHARS: Final = 1024
# RFC 8843 sends the mid in every RTP packet's header extension, one byte per character.
MAX_MID_CHARS: Final = 32
# The digests aiortc can check a DTLS certificate against.
FINGERPRINT_HASHES: Final = ("sha-256", "sha-384", "sha-512")
SETUP_ROLES: Final = ("actpass", "active", "passive")

_LINE: Final = re.compile(r"[a-z]=[\x20-\x7e]*")
_MLINE: Final = re.compile(r"m=([a-z]+) ([0-9]{1,5})(?:/[0-9]{1,3})? ([A-Za-z/]{1,32}) (.+)")
# RFC 4566 token characters, 1 to MAX_MID_CHARS of them.
_TOKEN: Final = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]{1,32}")
_ICE_CHARS: Final = re.compile(r"[A-Za-z0-9+/]+")
_FINGERPRINT: Final = re.compile(r"(\S+) ([0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){15,63})")
_RTPMAP: Final = re.compile(r"([0-9]{1,3}) ([A-Za-z0-9_.-]{1,32})/([0-9]{1,6})(?:/([0-9]{1,2}))?")
_PT_PREFIX: Final = re.compile(r"([0-9]{1,3}|\*) \S")
_EXTMAP: Final = re.compile(r"([0-9]{1,3})(?:/[a-z]+)? \S+")
_SSRC: Final = re.compile(r"([0-9]{1,10}) [A-Za-z0-9_-]+:.*")
_SSRC_GROUP: Final = re.compile(r"[A-Za-z0-9_-]+(?: [0-9]{1,10})*")
_RTCP: Final = re.compile(r"([0-9]{1,5})(?: IN IP[46] \S+)?")
_CONNECTION: Final = re.compile(r"IN IP[46] \S+")
# RTP payload types are 7 bits; 72-76 collide with RTCP packet types (RFC 5761).
_PAYLOAD_TYPES: Final = frozenset(range(128)) - frozenset(range(72, 77))


class OfferError(ValueError):
    """The offer cannot be answered; the message says why, for the client."""


@dataclass(frozen=True)
class CheckedOffer:
    sdp: str
    # Candidates inside the offer; they count against MAX_REMOTE_CANDIDATES.
    candidates: int


class _Section:
    def __init__(self, index: int, kind: str, formats: list[int]) -> None:
        self.index = index
        self.kind = kind
        self.formats = formats
        self.lines: list[str] = []

    def name(self) -> str:
        return f"m-line {self.index} ({self.kind})"

    def values(self, attribute: str) -> list[str]:
        prefix = f"a={attribute}:"
        return [line[len(prefix) :] for line in self.lines if line.startswith(prefix)]

    def flags(self, attribute: str) -> int:
        return sum(1 for line in self.lines if line == f"a={attribute}")


def check_offer(sdp: str) -> CheckedOffer:
    """The offer as aiortc may be given it, or `OfferError` saying what is wrong."""
    if not sdp.isascii() or re.search(r"[^\x20-\x7e\r\n]", sdp):
        raise OfferError("the offer must be printable ASCII text")
    lines = [line for line in re.split(r"\r\n|\n", sdp) if line]
    if len(lines) > MAX_LINES:
        raise OfferError(f"the offer has {len(lines)} lines; at most {MAX_LINES} are accepted")
    for line in lines:
        if len(line) > MAX_LINE_CHARS:
            raise OfferError(f"an offer line is longer than {MAX_LINE_CHARS} characters")
        if not _LINE.fullmatch(line):
            raise OfferError(f"'{_shown(line)}' is not an SDP line (<letter>=<value>)")
    if not lines or lines[0] != "v=0":
        raise OfferError("the offer must start with v=0")
    session, sections = _split(lines)
    kinds = [s.kind for s in sections]
    for kind in KINDS:
        if kinds.count(kind) != 1:
            raise OfferError(
                f"the offer must have exactly one {kind} m-line (has {kinds.count(kind)})"
            )
    _check_session(session)
    mids = [_check_section(section, session) for section in sections]
    _check_bundle(session, mids)
    candidates = sum(len(s.values("candidate")) for s in sections)
    if candidates > MAX_REMOTE_CANDIDATES:
        raise OfferError(f"at most {MAX_REMOTE_CANDIDATES} candidates (the offer has {candidates})")
    for section in sections:
        _check_codecs(section)
    checked = _join(session, sections)
    try:
        SessionDescription.parse(checked)
    except Exception as exc:  # aiortc's parser asserts and indexes freely
        raise OfferError(f"the offer is not valid SDP: {exc or type(exc).__name__}") from None
    return CheckedOffer(checked, candidates)


def _split(lines: list[str]) -> tuple[list[str], list[_Section]]:
    session: list[str] = []
    sections: list[_Section] = []
    for line in lines:
        if line.startswith("m="):
            match = _MLINE.fullmatch(line)
            if match is None:
                raise OfferError(f"'{_shown(line)}' is not an m-line")
            kind, port = match.group(1), int(match.group(2))
            if kind not in KINDS:
                raise OfferError(f"only audio and video m-lines are accepted, not {kind}")
            if port > 65535:
                raise OfferError(f"the {kind} m-line's port is over 65535")
            formats = _formats(match.group(4), kind)
            sections.append(_Section(len(sections), kind, formats))
            sections[-1].lines.append(line)
        elif sections:
            sections[-1].lines.append(line)
        else:
            session.append(line)
    return session, sections


def _formats(text: str, kind: str) -> list[int]:
    formats = []
    for item in text.split(" "):
        if not item.isdigit() or len(item) > 3 or int(item) not in _PAYLOAD_TYPES:
            raise OfferError(f"the {kind} m-line's payload types must be 0-71 or 77-127")
        formats.append(int(item))
    return formats


def _check_session(session: list[str]) -> None:
    for line in session:
        if line.startswith("c=") and not _CONNECTION.fullmatch(line[2:]):
            raise OfferError(f"'{_shown(line)}' is not a connection line (c=IN IP4 <address>)")
    directions = [line for line in session if line[2:] in DIRECTIONS]
    if len(directions) > 1:
        raise OfferError("the session has more than one direction attribute")


def _one(values: list[str], what: str, where: str) -> str | None:
    if len(values) > 1:
        raise OfferError(f"{where} has {len(values)} {what} lines")
    return values[0] if values else None


def _check_section(section: _Section, session: list[str]) -> str:
    """Check one m-line's attributes, write in its direction; answer its mid."""
    where = section.name()
    session_attrs = _Section(-1, "session", [])
    session_attrs.lines = session

    mid = _one(section.values("mid"), "a=mid", where)
    if mid is None:
        raise OfferError(f"{where} has no a=mid")
    if not _TOKEN.fullmatch(mid):
        raise OfferError(
            f"{where}: a=mid must be 1 to {MAX_MID_CHARS} letters, digits or token characters"
        )

    directions = [line for line in section.lines if line[2:] in DIRECTIONS]
    if len(directions) > 1:
        raise OfferError(f"{where} has more than one direction attribute")
    if not directions:
        # RFC 3264 section 5.1: no direction means the session's, or sendrecv.
        inherited = [line for line in session if line[2:] in DIRECTIONS]
        section.lines.append(inherited[0] if inherited else "a=sendrecv")

    for attribute, low, high in (("ice-ufrag", 4, 256), ("ice-pwd", 22, 256)):
        value = _one(section.values(attribute), f"a={attribute}", where)
        if value is None:
            value = _one(session_attrs.values(attribute), f"a={attribute}", "the session")
        if value is None:
            raise OfferError(f"{where} has no a={attribute}")
        if not low <= len(value) <= high or not _ICE_CHARS.fullmatch(value):
            raise OfferError(
                f"{where}: a={attribute} must be {low} to {high} letters, digits, '+' or '/'"
            )

    fingerprints = session_attrs.values("fingerprint") + section.values("fingerprint")
    if len(fingerprints) > 8:
        raise OfferError(f"{where} has more than 8 fingerprints")
    usable = 0
    for fingerprint in fingerprints:
        match = _FINGERPRINT.fullmatch(fingerprint)
        if match is None:
            raise OfferError(f"{where}: a=fingerprint must be '<hash> <hex bytes with colons>'")
        usable += match.group(1).lower() in FINGERPRINT_HASHES
    if not usable:
        raise OfferError(f"{where} has no a=fingerprint with {', '.join(FINGERPRINT_HASHES)}")

    setup = _one(section.values("setup"), "a=setup", where)
    if setup is None:
        setup = _one(session_attrs.values("setup"), "a=setup", "the session")
    if setup not in SETUP_ROLES:
        raise OfferError(f"{where}: a=setup must be one of {', '.join(SETUP_ROLES)}")

    if not section.flags("rtcp-mux"):
        raise OfferError(f"{where} has no a=rtcp-mux (RTP and RTCP must share a port)")
    for line in section.lines[1:]:
        if line.startswith("c=") and not _CONNECTION.fullmatch(line[2:]):
            raise OfferError(f"'{_shown(line)}' is not a connection line (c=IN IP4 <address>)")
    for value in section.values("rtcp"):
        match = _RTCP.fullmatch(value)
        if match is None or int(match.group(1)) > 65535:
            raise OfferError(f"{where}: a=rtcp must be a port (0-65535) and optional address")
    extmap_ids = []
    for value in section.values("extmap"):
        match = _EXTMAP.fullmatch(value)
        if match is None or not 1 <= int(match.group(1)) <= 255:
            raise OfferError(f"{where}: a=extmap must be '<id 1-255> <uri>'")
        extmap_ids.append(match.group(1))
    if len(set(extmap_ids)) != len(extmap_ids):
        raise OfferError(f"{where} uses an a=extmap id twice")
    for value in section.values("ssrc"):
        match = _SSRC.fullmatch(value)
        if match is None or int(match.group(1)) >= 1 << 32:
            raise OfferError(f"{where}: a=ssrc must be '<ssrc 0-4294967295> <attribute>:<value>'")
    for value in section.values("ssrc-group"):
        if not _SSRC_GROUP.fullmatch(value) or any(
            int(ssrc) >= 1 << 32 for ssrc in value.split(" ")[1:]
        ):
            raise OfferError(f"{where}: a=ssrc-group must be '<semantics> <ssrc>...'")
    for value in section.values("candidate"):
        try:
            check_candidate(value)
        except CandidateError as exc:
            raise OfferError(f"{where}: a candidate is not usable: {exc}") from None
    return mid


def _check_codecs(section: _Section) -> None:
    where = section.name()
    mapped: dict[int, tuple[str, int]] = {}
    for value in section.values("rtpmap"):
        match = _RTPMAP.fullmatch(value)
        if match is None:
            raise OfferError(f"{where}: a=rtpmap must be '<payload type> <codec>/<clock rate>'")
        pt = int(match.group(1))
        if pt not in section.formats:
            raise OfferError(f"{where}: a=rtpmap for payload type {pt}, which the m-line lacks")
        if pt in mapped:
            raise OfferError(f"{where}: payload type {pt} has two a=rtpmap lines")
        channels = match.group(4)
        if channels is not None and not 1 <= int(channels) <= 8:
            raise OfferError(f"{where}: a=rtpmap channels must be 1 to 8")
        mapped[pt] = (match.group(2).lower(), int(match.group(3)))
    for attribute in ("fmtp", "rtcp-fb"):
        for value in section.values(attribute):
            match = _PT_PREFIX.match(value)
            if match is None:
                raise OfferError(f"{where}: a={attribute} must be '<payload type> <value>'")
            if match.group(1) != "*" and int(match.group(1)) not in mapped:
                raise OfferError(f"{where}: a={attribute} for a payload type without a=rtpmap")
    ours = {
        (c.mimeType.split("/")[1].lower(), c.clockRate)
        for c in RTCRtpSender.getCapabilities(section.kind).codecs
        if not c.mimeType.lower().endswith("/rtx")
    }
    if not ours & set(mapped.values()):
        names = sorted({name for name, _ in ours})
        raise OfferError(f"{where} offers no codec the server has ({', '.join(names)})")


def _check_bundle(session: list[str], mids: list[str]) -> None:
    groups = [line.split(" ")[1:] for line in session if line.startswith("a=group:BUNDLE")]
    if len(groups) > 1:
        raise OfferError("the offer has more than one BUNDLE group")
    if len(set(mids)) != len(mids):
        raise OfferError(f"two m-lines have the same a=mid ({_shown(mids[-1])})")
    for items in groups:
        if len(set(items)) != len(items):
            raise OfferError("the BUNDLE group names a mid twice")
        unknown = [item for item in items if item not in mids]
        if unknown:
            raise OfferError(f"the BUNDLE group names '{_shown(unknown[0])}', which no m-line has")


def _join(session: list[str], sections: list[_Section]) -> str:
    lines = session + [line for section in sections for line in section.lines]
    return "\r\n".join(lines) + "\r\n"


def _shown(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "…"
