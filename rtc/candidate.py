"""Remote ICE candidates: a client's candidate line checked before aioice sees it.

aioice trusts what it is given: a port of 65536 raised OverflowError inside
the peer's UDP socket (killing it) and its retry callbacks then raised too.
So every candidate, trickled or inside the offer, is checked here against the
grammar of RFC 8839 section 5.1, narrowed to what this server can use.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

# Each remote candidate makes aioice pair it with every local one and check
# the pairs; browsers send a handful (Chromium: 2-8 per connection).
MAX_REMOTE_CANDIDATES: Final = 50
MAX_CANDIDATE_CHARS: Final = 512

_FOUNDATION: Final = re.compile(r"[A-Za-z0-9+/]{1,32}")
_ICE_CHARS: Final = re.compile(r"[A-Za-z0-9+/]{1,256}")
_DIGITS: Final = re.compile(r"[0-9]{1,10}")
# Browsers hide host addresses behind a random mDNS name (RFC draft mdns-ice-candidates).
_MDNS: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.local", re.IGNORECASE
)
_EXTENSION_NAME: Final = re.compile(r"[A-Za-z0-9-]{1,32}")
_EXTENSION_VALUE: Final = re.compile(r"[\x21-\x7e]{1,64}")
TYPES: Final = ("host", "srflx", "prflx", "relay")
TCP_TYPES: Final = ("active", "passive", "so")
MAX_EXTENSIONS: Final = 8


class CandidateError(ValueError):
    """The candidate cannot be used; the message says why, for the client."""


def check_candidate(line: str) -> str:
    """The candidate attribute value (without `a=` / `candidate:`), or `CandidateError`."""
    if len(line) > MAX_CANDIDATE_CHARS:
        raise CandidateError(f"a candidate is at most {MAX_CANDIDATE_CHARS} characters")
    value = line.removeprefix("a=").removeprefix("candidate:")
    if not value.isascii() or not value.isprintable():
        raise CandidateError("a candidate must be printable ASCII")
    bits = value.split(" ")
    if len(bits) < 8 or bits[6] != "typ":
        raise CandidateError(
            "expected 'candidate:<foundation> <component> <transport> <priority> "
            "<address> <port> typ <type> ...'"
        )
    foundation, component, transport, priority, address, port, _, kind = bits[:8]
    if not _FOUNDATION.fullmatch(foundation):
        raise CandidateError("the foundation must be 1 to 32 letters, digits, '+' or '/'")
    if component not in ("1", "2"):
        raise CandidateError("the component must be 1 (RTP) or 2 (RTCP)")
    transport = transport.lower()
    if transport not in ("udp", "tcp"):
        raise CandidateError("the transport must be udp or tcp")
    _number(priority, "priority", (1 << 32) - 1)
    _check_address(address, "address")
    # Port 9 with tcptype active is the browsers' "I will connect" placeholder.
    low = 1 if transport == "udp" else 0
    if not low <= _number(port, "port", 65535):
        raise CandidateError(f"the port must be {low} to 65535 for {transport}")
    if kind not in TYPES:
        raise CandidateError(f"the type must be one of {', '.join(TYPES)}")
    rest = bits[8:]
    if len(rest) % 2:
        raise CandidateError("after the type, attributes come in name-value pairs")
    if len(rest) // 2 > MAX_EXTENSIONS:
        raise CandidateError(f"at most {MAX_EXTENSIONS} attributes after the type")
    seen: set[str] = set()
    for name, attr in zip(rest[::2], rest[1::2], strict=True):
        if name in seen:
            raise CandidateError(f"'{_shown(name)}' is given twice")
        seen.add(name)
        if name == "raddr":
            _check_address(attr, "raddr", allow_unspecified=True)
        elif name == "rport":
            _number(attr, "rport", 65535)
        elif name == "tcptype":
            if transport != "tcp" or attr not in TCP_TYPES:
                raise CandidateError("tcptype is active, passive or so, on tcp candidates only")
        elif name in ("generation", "network-id", "network-cost"):
            _number(attr, name, (1 << 32) - 1)
        elif name == "ufrag":
            if not _ICE_CHARS.fullmatch(attr):
                raise CandidateError("ufrag must be letters, digits, '+' or '/'")
        elif not _EXTENSION_NAME.fullmatch(name) or not _EXTENSION_VALUE.fullmatch(attr):
            raise CandidateError(f"the attribute '{_shown(name)}' is malformed")
    return value


def _number(text: str, name: str, maximum: int) -> int:
    if not _DIGITS.fullmatch(text) or int(text) > maximum:
        raise CandidateError(f"{name} must be a whole number from 0 to {maximum}")
    return int(text)


def _check_address(text: str, name: str, *, allow_unspecified: bool = False) -> None:
    if _MDNS.fullmatch(text):
        return
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise CandidateError(
            f"{name} must be an IPv4 or IPv6 address, or a '<uuid>.local' mDNS name"
        ) from None
    if "%" in text:
        raise CandidateError(f"{name} must not carry an IPv6 scope")
    if address.is_multicast or (address.is_unspecified and not allow_unspecified):
        raise CandidateError(f"{name} must be a unicast address")


def _shown(text: str) -> str:
    return text if len(text) <= 32 else text[:32] + "…"
