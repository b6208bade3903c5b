"""Where a request comes from: the client's address and the page's origin.

Behind a reverse proxy the socket peer is the proxy, and the Host and scheme
are what the proxy used. With `trusted_proxy` the headers the proxy adds are
believed instead: the last X-Forwarded-For entry (the address the proxy saw),
X-Forwarded-Host and X-Forwarded-Proto. Without it those headers are ignored,
since any client can send them.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import hdrs, web
from yarl import URL

__all__ = ["client_ip", "forwarded_proto", "normalize_origin", "origin_allowed", "served_host"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _last(value: str) -> str:
    # A proxy appends what it saw: the last entry is the one it vouches for.
    return value.split(",")[-1].strip()


def client_ip(request: web.Request, *, trusted_proxy: bool) -> str | None:
    """The client's address: the socket peer, or behind a trusted proxy its X-Forwarded-For."""
    if trusted_proxy:
        last = _last(request.headers.get("X-Forwarded-For", ""))
        if last:
            return last
    return request.remote


def served_host(request: web.Request, *, trusted_proxy: bool) -> str:
    """The host[:port] the client asked for: Host, or behind a trusted proxy X-Forwarded-Host."""
    if trusted_proxy:
        forwarded = _last(request.headers.get("X-Forwarded-Host", ""))
        if forwarded:
            return forwarded
    return request.host


def forwarded_proto(request: web.Request, *, trusted_proxy: bool) -> str | None:
    """The scheme the client used when the server knows it: "https" or "http", else None.

    A plain-HTTP request without a trusted X-Forwarded-Proto may have come
    through a proxy that ended TLS, so its scheme is unknown.
    """
    if trusted_proxy:
        proto = _last(request.headers.get("X-Forwarded-Proto", "")).lower()
        if proto in ("http", "https"):
            return proto
    return "https" if request.secure else None


def normalize_origin(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin such as ``https://chat.example.org``; None if not one."""
    try:
        url = URL(origin)
    except ValueError:
        return None
    scheme = (url.scheme or "").lower()
    if scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
        return None
    if url.query_string or url.fragment or url.user or url.password:
        return None
    port = url.port if url.port is not None else _DEFAULT_PORTS[scheme]
    return scheme, url.host.lower(), port


def origin_allowed(
    request: web.Request, *, trusted_proxy: bool, allowed: Iterable[str] = ()
) -> bool:
    """Whether the page that made `request` (its Origin header) may use this server.

    No Origin at all is allowed: the request is not from a browser page
    (curl, scripts, the headless client), so nothing was attached to it on
    anyone's behalf. Otherwise the Origin must be the origin this server is
    served at (host and port; the scheme too when the server knows it, see
    `forwarded_proto`) or one of `allowed`.
    """
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    page = normalize_origin(origin)
    if page is None:
        return False  # "null" (sandboxed frames, file: pages) and garbage
    scheme, host, port = page
    for extra in allowed:
        if normalize_origin(extra) == page:
            return True
    known_scheme = forwarded_proto(request, trusted_proxy=trusted_proxy)
    if known_scheme is not None and known_scheme != scheme:
        return False
    try:
        # The Host header has no scheme: read it with the page's, for the default port.
        own = URL.build(scheme=scheme, authority=served_host(request, trusted_proxy=trusted_proxy))
    except ValueError:
        return False
    return (own.host or "").lower() == host and own.port == port
