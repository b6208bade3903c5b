"""Moderators, and how a request proves it comes from one.

Configuration: one ``name:secret`` entry per line in a file (blank lines and
``#`` comments ignored), or the same entries in the ``RELAY_MODERATORS``
environment variable separated by newlines, commas or spaces. Names are 1-64
of ``A-Z a-z 0-9 . _ -``; secrets are at least 16 characters without
whitespace or commas, e.g. ``python -c "import secrets; print(secrets.token_urlsafe(24))"``.
Secrets are random tokens, not passwords: they are compared as SHA-256
digests, not through a slow key-derivation function.

A request carries credentials in one of these places, first match wins:

1. ``Authorization: Basic base64(name:secret)`` (what a browser's login
   prompt sends) or ``Authorization: Bearer name:secret``;
2. ``Authorization: Bearer <token>``, the ``moderator_token`` cookie, or, on
   GET requests only, a ``?token=<token>`` query parameter, where ``<token>``
   comes from :meth:`Moderators.issue_token`. Browsers cannot set headers on a
   WebSocket, so the dashboard gets a short-lived token (HMAC-signed with a key
   that lives only in this process) instead of the secret itself.

No credentials at all: 401 with a ``WWW-Authenticate: Basic`` challenge.
Credentials that are wrong (unknown name, wrong secret, bad or expired token):
403. Both answers are the same whatever the name, so they do not reveal which
moderators exist. A guarded request that may change state (not GET/HEAD) or
opens a WebSocket, from a browser page of another origin, is also refused with
403: browsers attach cookies and cached Basic credentials to cross-site requests.
After a few failures an address (and a name) is locked out for a growing
while: every attempt then gets 429 with Retry-After, right credentials too
(see `moderation.throttle`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from moderation.throttle import LoginThrottle
from signalling.request_origin import client_ip, origin_allowed

__all__ = [
    "DEFAULT_PREFIXES",
    "ENV_VAR",
    "LOGIN_THROTTLE",
    "MODERATOR",
    "MODERATORS",
    "TOKEN_COOKIE",
    "ConfigError",
    "Moderator",
    "Moderators",
    "check",
    "guard",
    "install",
    "set_token_cookie",
]

logger = logging.getLogger(__name__)

ENV_VAR: Final = "RELAY_MODERATORS"
DEFAULT_PREFIXES: Final = ("/moderate", "/api/moderate")
TOKEN_COOKIE: Final = "moderator_token"
TOKEN_QUERY: Final = "token"
TOKEN_TTL: Final = 3600.0
MIN_SECRET_LENGTH: Final = 16

_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TOKEN_VERSION = "v1"
_REALM = 'Basic realm="moderation", charset="UTF-8"'
_SAFE_METHODS = frozenset({"GET", "HEAD"})


class ConfigError(ValueError):
    """The moderator configuration cannot be used (the message never contains a secret)."""


@dataclass(frozen=True, slots=True)
class Moderator:
    """Someone allowed to review reports, ban and watch; known by name only."""

    name: str


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class Moderators:
    """The configured moderators: their names and the digests of their secrets.

    The secrets themselves are not kept, so no repr, log line or traceback
    can show one.
    """

    def __init__(self, entries: Mapping[str, str], *, token_key: bytes | None = None) -> None:
        for name, secret in entries.items():
            _validate(name, secret, where=f"moderator {name!r}")
        self._digests = {name: _digest(secret) for name, secret in entries.items()}
        self._name_digests = [(_digest(name), name) for name in self._digests]
        # Tokens signed with a per-process key die with the process; a cluster
        # derives one shared key from its secret (share_tokens).
        self._token_key = token_key if token_key is not None else secrets.token_bytes(32)

    def __repr__(self) -> str:
        return f"<Moderators {len(self._digests)}>"

    def __len__(self) -> int:
        return len(self._digests)

    def __contains__(self, name: object) -> bool:
        return name in self._digests

    # -- loading -----------------------------------------------------------

    @classmethod
    def parse(cls, text: str, *, source: str = "moderators", lines: bool = True) -> Moderators:
        """Entries from `text`: one per line (`lines=True`) or separated by newlines, commas or spaces."""
        entries: dict[str, str] = {}
        if lines:
            items = [
                (number, line.strip())
                for number, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.strip().startswith("#")
            ]
        else:
            items = [(number, item) for number, item in enumerate(re.split(r"[\s,]+", text), 1)]
            items = [(number, item) for number, item in items if item]
        for number, item in items:
            where = f"{source}, {'line' if lines else 'entry'} {number}"
            name, colon, secret = item.partition(":")
            if not colon:
                raise ConfigError(f"{where}: expected name:secret")
            _validate(name, secret, where=where)
            if name in entries:
                raise ConfigError(f"{where}: moderator {name!r} is listed twice")
            entries[name] = secret
        return cls(entries)

    @classmethod
    def from_file(cls, path: str | Path) -> Moderators:
        path = Path(path)
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("%s is readable by other users; chmod 600 it", path)
        return cls.parse(path.read_text(encoding="utf-8"), source=str(path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Moderators:
        """From ``RELAY_MODERATORS``; none configured when it is unset."""
        return cls.parse(environ.get(ENV_VAR, ""), source=ENV_VAR, lines=False)

    # -- verifying ---------------------------------------------------------

    def verify(self, name: str, secret: str) -> Moderator | None:
        """The moderator these credentials belong to, or None.

        Every configured entry is compared, in constant time, whether or not
        an earlier one matched: the time taken does not depend on the name.
        """
        name_digest, secret_digest = _digest(name), _digest(secret)
        found: str | None = None
        for known_digest, known in self._name_digests:
            same_name = hmac.compare_digest(name_digest, known_digest)
            same_secret = hmac.compare_digest(secret_digest, self._digests[known])
            if same_name & same_secret:
                found = known
        return None if found is None else Moderator(found)

    def issue_token(
        self, moderator: Moderator, *, ttl: float = TOKEN_TTL, now: float | None = None
    ) -> str:
        """A token standing for `moderator` until `ttl` seconds from now, for cookies and URLs."""
        expires = int((time.time() if now is None else now) + ttl)
        body = f"{_TOKEN_VERSION}.{_b64(moderator.name.encode())}.{expires}"
        return f"{body}.{_b64(self._sign(body))}"

    def verify_token(self, token: str, *, now: float | None = None) -> Moderator | None:
        body, _, signature = token.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or parts[0] != _TOKEN_VERSION:
            return None
        try:
            given = _unb64(signature)
            name = _unb64(parts[1]).decode()
            expires = int(parts[2])
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(given, self._sign(body)):
            return None
        if expires <= (time.time() if now is None else now):
            return None
        # A moderator removed from the configuration loses their tokens too.
        return Moderator(name) if name in self._digests else None

    def share_tokens(self, secret: str) -> None:
        """Sign tokens with a key derived from `secret` (the cluster secret), so every
        process configured with it accepts the others' tokens: a moderator logged in
        through one node of a load-balanced cluster stays logged in on every node and
        across restarts. The derivation keeps this key apart from the secret's other use."""
        self._token_key = hmac.new(
            secret.encode(), b"roulette-relay moderator tokens v1", hashlib.sha256
        ).digest()

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._token_key, body.encode(), hashlib.sha256).digest()


def _validate(name: str, secret: str, *, where: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: a name is 1-64 of A-Z a-z 0-9 . _ -")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"{where}: the secret is shorter than {MIN_SECRET_LENGTH} characters")
    if re.search(r"[\s,]", secret):
        raise ConfigError(f"{where}: the secret contains whitespace or a comma")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64") from exc


# -- requests ----------------------------------------------------------------

MODERATORS: Final = web.AppKey("moderators", Moderators)
MODERATOR: Final = web.RequestKey("moderator", Moderator)
LOGIN_THROTTLE: Final = web.AppKey("login_throttle", LoginThrottle)
_TRUSTED_PROXY: Final = web.AppKey("auth_trusted_proxy", bool)


async def check(request: web.Request) -> Moderator:
    """The moderator making `request`.

    Raises `web.HTTPUnauthorized` when it carries no credentials,
    `web.HTTPForbidden` when they are wrong and `web.HTTPTooManyRequests`
    while its address or the name it tries is locked out after failures
    (see `moderation.throttle`). The registry is ``app[MODERATORS]`` (looked
    up through sub-applications too).
    """
    moderators = request.config_dict[MODERATORS]
    throttle = request.config_dict.get(LOGIN_THROTTLE)
    address = client_ip(request, trusted_proxy=request.config_dict.get(_TRUSTED_PROXY, False))
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, value = header.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    name: str | None = None
    secret: str | None = None
    token: str | None = None
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = None
        if decoded is not None:
            name, _, secret = decoded.partition(":")
    elif scheme == "bearer" and value:
        if ":" in value:
            name, _, secret = value.partition(":")
        else:
            token = value
    else:
        token = _token(request)
        if token is None:
            logger.info("moderation: %s %s from %s without credentials", *_who(request))
            raise web.HTTPUnauthorized(headers={hdrs.WWW_AUTHENTICATE: _REALM})
    known = name is not None and name in moderators
    if throttle is not None and (wait := await throttle.wait(address, name, known=known)) > 0:
        # Checked before the credentials, so a lock-out answers the same to right and wrong.
        logger.warning("moderation: %s %s from %s refused: locked out", *_who(request))
        seconds = math.ceil(wait)
        raise web.HTTPTooManyRequests(
            text=f"too many failed logins; try again in {seconds} s\n",
            headers={hdrs.RETRY_AFTER: str(seconds)},
        )
    moderator: Moderator | None = None
    if name is not None and secret is not None:
        moderator = moderators.verify(name, secret)
    elif token is not None:
        moderator = moderators.verify_token(token)
    if moderator is None:
        if throttle is not None:
            shown = _shown(name, token, moderators)
            await throttle.failure(address, name, shown_name=shown, known=known)
        _refuse(request, "wrong credentials" if name or token else "undecodable credentials")
    if throttle is not None and name is not None:
        await throttle.success(address, name)
    return moderator


def _shown(name: str | None, token: str | None, moderators: Moderators) -> str:
    """What the audit log may say was tried: a moderator's name, never any other.

    Anything that is not a moderator's name may be a secret typed into the wrong field.
    """
    if name is None:
        return "a token" if token is not None else "undecodable credentials"
    return name if name in moderators else "an unknown name"


def _token(request: web.Request) -> str | None:
    if token := request.cookies.get(TOKEN_COOKIE):
        return token
    # Only GET: a token in the URL of a form or fetch that changes state would
    # end up in places (history, proxies) a cookie does not.
    if request.method == "GET":
        return request.query.get(TOKEN_QUERY) or None
    return None


def _refuse(request: web.Request, why: str) -> NoReturn:
    logger.warning("moderation: %s %s from %s refused: %s", *_who(request), why)
    raise web.HTTPForbidden(text="forbidden")


def _who(request: web.Request) -> tuple[str, str, str]:
    # The path only: a query string may carry a token.
    return request.method, request.path, request.remote or "?"


def _is_guarded(request: web.Request, prefixes: tuple[str, ...]) -> bool:
    paths = [request.path]
    # The route the router picked, too: whatever spelling reached it, it is guarded.
    resource = request.match_info.route.resource
    if resource is not None:
        paths.append(resource.canonical)
    return any(
        path == prefix or path.startswith(prefix.rstrip("/") + "/")
        for path in paths
        for prefix in prefixes
    )


def install(
    app: web.Application,
    moderators: Moderators,
    prefixes: Iterable[str] = DEFAULT_PREFIXES,
    *,
    trusted_proxy: bool = False,
    throttle: LoginThrottle | None = None,
) -> None:
    """Guard `prefixes` of `app` with `moderators` (call before the app starts).

    `trusted_proxy`: read the client address, public host and scheme from
    X-Forwarded-For, -Host and -Proto (see `signalling.request_origin`).
    `throttle`: failed logins lock out their address and name (a default
    `LoginThrottle` when not given); its `audit` hook is the caller's to set.
    """
    app[MODERATORS] = moderators
    app[LOGIN_THROTTLE] = throttle if throttle is not None else LoginThrottle()
    app[_TRUSTED_PROXY] = trusted_proxy
    app.middlewares.append(guard(prefixes, trusted_proxy=trusted_proxy))


def guard(prefixes: Iterable[str] = DEFAULT_PREFIXES, *, trusted_proxy: bool = False) -> Middleware:
    """Middleware: requests under `prefixes` need a moderator (see :func:`check`).

    The moderator is then in ``request[MODERATOR]``. Unauthenticated requests
    are refused before routing answers, so a 404 never tells an outsider
    which moderation routes exist.
    """
    guarded = tuple(prefixes)

    @web.middleware
    async def moderation_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _is_guarded(request, guarded):
            return await handler(request)
        moderator = await check(request)
        unsafe = request.method not in _SAFE_METHODS
        upgrade = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
        # Only the served origin: pages allowed to embed the chat (--allowed-origin)
        # have no business with the moderators' cookie.
        if (unsafe or upgrade) and not origin_allowed(request, trusted_proxy=trusted_proxy):
            _refuse(request, f"cross-origin request from {request.headers.get(hdrs.ORIGIN)!r}")
        request[MODERATOR] = moderator
        return await handler(request)

    return moderation_guard


def set_token_cookie(
    response: web.StreamResponse, token: str, *, secure: bool, max_age: float = TOKEN_TTL
) -> None:
    """Give the browser `token` for the dashboard's WebSocket and API calls.

    `secure` should be true whenever the site is served over HTTPS.
    """
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        max_age=int(max_age),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )
