"""Security headers on every response: the page, its files, the dashboard, the API.

The Content-Security-Policy allows only this server's own scripts and styles
(nothing inline), its own WebSocket, media from itself and from MediaStreams,
and no framing by any site.
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from signalling.request_origin import forwarded_proto, served_host

# A Host header we are willing to copy into the policy; anything else gets 'self' only.
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
HSTS: Final = "max-age=31536000"
PERMISSIONS_POLICY: Final = (
    "camera=(self), microphone=(self), display-capture=(), geolocation=(), payment=(), usb=()"
)


def content_security_policy(host: str | None) -> str:
    # 'self' covers ws:/wss: to the same host only in recent browsers: name them too.
    sockets = f" ws://{host} wss://{host}" if host and _HOST.fullmatch(host) else ""
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            # Dashboard thumbnails and the favicon are served here; blob: for media snapshots.
            "img-src 'self' blob:",
            # Recordings play from here; camera and partner streams are MediaStreams.
            "media-src 'self' blob: mediastream:",
            f"connect-src 'self'{sockets}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def install(app: web.Application, *, trusted_proxy: bool) -> None:
    """Add the headers to every response `app` prepares, errors and static files included."""

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        host = served_host(request, trusted_proxy=trusted_proxy)
        headers.setdefault("Content-Security-Policy", content_security_policy(host))
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        if forwarded_proto(request, trusted_proxy=trusted_proxy) == "https":
            headers.setdefault("Strict-Transport-Security", HSTS)

    app.on_response_prepare.append(add_headers)
