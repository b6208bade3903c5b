"""Which page origins may use the server, and where a request comes from behind a proxy."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from signalling.request_origin import client_ip, normalize_origin, origin_allowed


def request(headers: dict[str, str], *, secure: bool = False):
    req = make_mocked_request("GET", "/ws", headers=headers)
    if secure:
        req = req.clone(scheme="https")
    return req


@pytest.mark.parametrize(
    ("host", "origin", "allowed"),
    [
        ("chat.example.org", None, True),  # not a browser page
        ("chat.example.org", "https://chat.example.org", True),  # TLS ended by a proxy
        ("chat.example.org", "http://chat.example.org", True),
        ("CHAT.example.org", "https://chat.EXAMPLE.org:443", True),
        ("127.0.0.1:8080", "http://127.0.0.1:8080", True),
        ("127.0.0.1:8080", "http://localhost:8080", False),
        ("127.0.0.1:8080", "http://127.0.0.1:8081", False),
        ("chat.example.org", "https://chat.example.org:8443", False),
        ("chat.example.org", "https://evil.example", False),
        ("chat.example.org", "https://chat.example.org.evil.example", False),
        ("chat.example.org", "null", False),
        ("chat.example.org", "", False),
        ("chat.example.org", "file://", False),
    ],
)
def test_own_origin_only(host: str, origin: str | None, allowed: bool) -> None:
    headers = {"Host": host} if origin is None else {"Host": host, "Origin": origin}
    assert origin_allowed(request(headers), trusted_proxy=False) is allowed


def test_the_scheme_counts_once_the_server_knows_it() -> None:
    headers = {"Host": "chat.example.org:8443", "Origin": "http://chat.example.org:8443"}
    assert origin_allowed(request(headers), trusted_proxy=False)
    assert not origin_allowed(request(headers, secure=True), trusted_proxy=False)


def test_allowed_origins_are_added() -> None:
    headers = {"Host": "chat.example.org", "Origin": "https://blog.example.com"}
    assert not origin_allowed(request(headers), trusted_proxy=False)
    extra = ["https://blog.example.com/", "https://other.example"]
    assert origin_allowed(request(headers), trusted_proxy=False, allowed=extra)
    # Same host, other scheme or port: another origin.
    headers["Origin"] = "http://blog.example.com"
    assert not origin_allowed(request(headers), trusted_proxy=False, allowed=extra)


def test_forwarded_headers_count_only_behind_a_trusted_proxy() -> None:
    headers = {
        "Host": "127.0.0.1:8080",
        "Origin": "https://chat.example.org",
        "X-Forwarded-Host": "chat.example.org",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "203.0.113.9, 198.51.100.7",
    }
    req = request(headers)
    assert not origin_allowed(req, trusted_proxy=False)
    assert origin_allowed(req, trusted_proxy=True)
    assert client_ip(req, trusted_proxy=True) == "198.51.100.7"
    assert client_ip(req, trusted_proxy=False) == req.remote
    # The proxy says the visitor used plain HTTP: an https page is not this one.
    headers["X-Forwarded-Proto"] = "http"
    assert not origin_allowed(request(headers), trusted_proxy=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://example.org", ("https", "example.org", 443)),
        ("http://Example.org:8080/", ("http", "example.org", 8080)),
        ("https://[2001:db8::1]:8443", ("https", "2001:db8::1", 8443)),
        ("example.org", None),
        ("https://example.org/page", None),
        ("ftp://example.org", None),
        ("null", None),
    ],
)
def test_normalize_origin(text: str, expected: tuple[str, str, int] | None) -> None:
    assert normalize_origin(text) == expected
