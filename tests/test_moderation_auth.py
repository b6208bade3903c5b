"""Moderator auth on a real aiohttp server over loopback: every guarded route refuses correctly."""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from moderation.auth import (
    ENV_VAR,
    MODERATOR,
    TOKEN_COOKIE,
    ConfigError,
    Moderator,
    Moderators,
    install,
    set_token_cookie,
)
from moderation.throttle import LoginThrottle

ALICE = "alice-s3cret-0123456789"
BOB = "bob-another-secret-9876"
WRONG = "not-the-right-secret-000"

# Every route the guard covers, with how to call it. The last one has no handler:
# an outsider must not learn that from a 404.
GUARDED = [
    ("GET", "/moderate"),
    ("GET", "/moderate/"),
    ("GET", "/moderate/reports/7"),
    ("POST", "/api/moderate/bans"),
    ("GET", "/api/moderate/reports"),
    ("GET", "/api/moderate/no-such-route"),
    ("GET", "/%6Doderate"),  # percent-encoded "m": still /moderate
]


def basic(name: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def whoami(request: web.Request) -> web.Response:
    return web.json_response({"moderator": request[MODERATOR].name})


async def dashboard(request: web.Request) -> web.Response:
    response = web.json_response({"moderator": request[MODERATOR].name})
    moderators = request.app[MODERATORS_KEY]
    set_token_cookie(response, moderators.issue_token(request[MODERATOR]), secure=False)
    return response


async def live(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(request[MODERATOR].name)
    await ws.close()
    return ws


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


MODERATORS_KEY = web.AppKey("test_moderators", Moderators)


@pytest.fixture
def moderators() -> Moderators:
    return Moderators({"alice": ALICE, "bob": BOB})


@pytest.fixture
async def client(moderators: Moderators) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    # The answers to each kind of wrong credentials, one by one: no throttle
    # (test_failed_logins_lock_out_the_address_then_the_name has one).
    install(app, moderators, throttle=LoginThrottle(free_failures=0))
    app[MODERATORS_KEY] = moderators
    app.router.add_get("/moderate", dashboard)
    app.router.add_get("/moderate/", whoami)
    app.router.add_get("/moderate/reports/{id}", whoami)
    app.router.add_post("/api/moderate/bans", whoami)
    app.router.add_get("/api/moderate/reports", whoami)
    app.router.add_get("/api/moderate/ws", live)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/moderatex", healthz)  # shares the letters, not the prefix
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client


Client = TestClient[web.Request, web.Application]


async def status(client: Client, method: str, path: str, **kwargs: object) -> int:
    async with client.request(method, path, **kwargs) as response:  # type: ignore[arg-type]
        return response.status


async def test_no_credentials_is_401_with_a_basic_challenge(client: Client) -> None:
    for method, path in GUARDED:
        async with client.request(method, path) as response:
            assert response.status == 401, (method, path)
            assert response.headers["WWW-Authenticate"].startswith('Basic realm="moderation"')
    # A query token counts only on GET; an Authorization scheme we do not speak is none at all.
    assert await status(client, "POST", "/api/moderate/bans?token=x") == 401
    assert await status(client, "GET", "/moderate", headers={"Authorization": "Digest x"}) == 401


async def test_wrong_credentials_are_403_and_look_the_same_for_any_name(client: Client) -> None:
    wrong = [
        basic("alice", WRONG),
        basic("mallory", WRONG),
        basic("alice", BOB),  # bob's secret under alice's name
        basic("alice", ""),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": f"Bearer alice:{WRONG}"},
        {"Authorization": "Bearer v1.forged.token"},
        {"Cookie": f"{TOKEN_COOKIE}=v1.YWxpY2U.9999999999.AAAA"},
    ]
    for method, path in GUARDED:
        for headers in wrong:
            assert await status(client, method, path, headers=headers) == 403, (path, headers)
    assert await status(client, "GET", "/moderate/", params={"token": "v1.x.1.y"}) == 403

    answers = []
    for name in ("alice", "mallory"):
        async with client.get("/moderate/", headers=basic(name, WRONG)) as response:
            headers = {k: v for k, v in response.headers.items() if k != "Date"}
            answers.append((response.status, headers, await response.read()))
    assert answers[0] == answers[1]


async def test_right_credentials_reach_every_route(client: Client) -> None:
    origin = {"Origin": str(client.make_url("/")).rstrip("/")}
    for method, path in GUARDED:
        for headers in (basic("alice", ALICE), {"Authorization": f"Bearer alice:{ALICE}"}):
            async with client.request(method, path, headers={**headers, **origin}) as response:
                if path.endswith("no-such-route"):
                    assert response.status == 404  # only a moderator learns it is missing
                else:
                    assert response.status == 200, (method, path)
                    assert (await response.json())["moderator"] == "alice"
    async with client.get("/moderate/", headers=basic("bob", BOB)) as response:
        assert (await response.json())["moderator"] == "bob"


async def test_open_routes_stay_open(client: Client) -> None:
    assert await status(client, "GET", "/healthz") == 200
    assert await status(client, "GET", "/moderatex") == 200


async def test_the_dashboard_token_opens_the_websocket(
    client: Client, moderators: Moderators
) -> None:
    async with client.get("/moderate", headers=basic("alice", ALICE)) as response:
        assert response.status == 200
        cookie = response.cookies[TOKEN_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    assert int(cookie["max-age"]) == 3600
    token = cookie.value
    assert ALICE not in token
    # From here on, each attempt says exactly what it carries.
    client.session.cookie_jar.clear()

    for kwargs in (
        {"headers": {"Cookie": f"{TOKEN_COOKIE}={token}"}},
        {"params": {"token": token}},
        {"headers": {"Authorization": f"Bearer {token}"}},
        {"headers": basic("alice", ALICE)},
    ):
        ws = await client.ws_connect("/api/moderate/ws", **kwargs)
        assert await ws.receive_str() == "alice"
        await ws.close()

    refusals = [
        ({}, 401),
        ({"params": {"token": token[:-2] + ("AA" if token[-2:] != "AA" else "BB")}}, 403),
        ({"params": {"token": moderators.issue_token(Moderator("alice"), ttl=-1)}}, 403),
        # Signed by another server's key.
        ({"params": {"token": Moderators({"alice": ALICE}).issue_token(Moderator("alice"))}}, 403),
        # A page on another site cannot use the moderator's cookie.
        (
            {"headers": {"Cookie": f"{TOKEN_COOKIE}={token}", "Origin": "https://evil.example"}},
            403,
        ),
    ]
    for kwargs, expected in refusals:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/api/moderate/ws", **kwargs)
        assert refused.value.status == expected, kwargs


async def test_cross_origin_requests_that_change_state_are_refused(client: Client) -> None:
    own = str(client.make_url("/")).rstrip("/")
    auth = basic("alice", ALICE)
    assert await status(client, "POST", "/api/moderate/bans", headers=auth) == 200  # curl
    assert (
        await status(client, "POST", "/api/moderate/bans", headers={**auth, "Origin": own}) == 200
    )
    for origin in ("https://evil.example", "null", own.replace("127.0.0.1", "localhost")):
        headers = {**auth, "Origin": origin}
        assert await status(client, "POST", "/api/moderate/bans", headers=headers) == 403, origin
    # Reading is harmless: the other origin's page cannot see the answer.
    headers = {**auth, "Origin": "https://evil.example"}
    assert await status(client, "GET", "/api/moderate/reports", headers=headers) == 200


async def test_refusals_are_logged_without_secrets_or_tokens(
    client: Client, moderators: Moderators, caplog: pytest.LogCaptureFixture
) -> None:
    token = moderators.issue_token(Moderator("alice"))
    caplog.set_level(logging.DEBUG, logger="moderation.auth")
    await status(client, "GET", "/moderate/", headers=basic("alice", WRONG))
    await status(client, "GET", "/moderate/", params={"token": token + "x"})
    await status(client, "GET", "/moderate/")
    assert len(caplog.records) == 3
    text = caplog.text
    for secret in (WRONG, ALICE, token):
        assert secret not in text


def test_configuration_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "moderators"
    path.write_text(f"# who may moderate\nalice:{ALICE}\n\n  bob:{BOB}  \n")
    path.chmod(0o600)
    moderators = Moderators.from_file(path)
    assert len(moderators) == 2
    assert moderators.verify("alice", ALICE) == Moderator("alice")
    assert moderators.verify("bob", BOB) == Moderator("bob")
    assert moderators.verify("bob", ALICE) is None
    assert moderators.verify("carol", ALICE) is None
    for shown in (repr(moderators), str(moderators), repr(moderators.verify("alice", ALICE))):
        assert ALICE not in shown and BOB not in shown


def test_configuration_from_the_environment() -> None:
    moderators = Moderators.from_env({ENV_VAR: f"alice:{ALICE}, bob:{BOB}\n"})
    assert moderators.verify("bob", BOB) == Moderator("bob")
    assert len(Moderators.from_env({})) == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice", "expected name:secret"),
        ("alice:short", "shorter than 16"),
        (f"al ice:{ALICE}", "a name is"),
        (f":{ALICE}", "a name is"),
        (f"alice:{ALICE}\nalice:{BOB}", "listed twice"),
        (f"alice:{ALICE} trailing", "whitespace"),
    ],
)
def test_bad_configuration_is_refused_without_echoing_secrets(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as error:
        Moderators.parse(text)
    assert ALICE not in str(error.value) and BOB not in str(error.value)


def test_world_readable_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "moderators"
    path.write_text(f"alice:{ALICE}\n")
    os.chmod(path, 0o644)
    Moderators.from_file(path)
    assert "chmod 600" in caplog.text


def test_tokens_expire_and_die_with_their_moderator(moderators: Moderators) -> None:
    token = moderators.issue_token(Moderator("bob"), ttl=60, now=1000.0)
    assert moderators.verify_token(token, now=1059.0) == Moderator("bob")
    assert moderators.verify_token(token, now=1060.0) is None
    key = b"k" * 32
    issuer = Moderators({"alice": ALICE, "bob": BOB}, token_key=key)
    token = issuer.issue_token(Moderator("bob"))
    assert Moderators({"alice": ALICE, "bob": BOB}, token_key=key).verify_token(token) == Moderator(
        "bob"
    )
    assert Moderators({"alice": ALICE}, token_key=key).verify_token(token) is None
    assert moderators.verify_token("") is None
    assert moderators.verify_token("v1.%%%.1.x") is None


async def test_failed_logins_lock_out_the_address_then_the_name(moderators: Moderators) -> None:
    audited: list[tuple[str, str, str]] = []
    throttle = LoginThrottle(free_failures=3, first_lockout=60)
    throttle.audit = lambda *entry: audited.append(entry)
    app = web.Application()
    install(app, moderators, trusted_proxy=True, throttle=throttle)
    app.router.add_get("/moderate/", whoami)

    async with TestClient(TestServer(app, host="127.0.0.1")) as client:

        async def attempt(address: str, name: str, secret: str) -> tuple[int, str | None]:
            headers = {**basic(name, secret), "X-Forwarded-For": address}
            async with client.get("/moderate/", headers=headers) as response:
                return response.status, response.headers.get("Retry-After")

        for _ in range(3):  # free
            assert await attempt("192.0.2.1", "mallory", WRONG) == (403, None)
        assert await attempt("192.0.2.1", "mallory", WRONG) == (403, None)
        # Locked out: even the right secret gets 429, so it leaks nothing.
        status, retry = await attempt("192.0.2.1", "alice", ALICE)
        assert status == 429 and retry is not None and 0 < int(retry) <= 60
        assert await attempt("192.0.2.2", "alice", ALICE) == (200, None)

        # Guessing one name from many addresses locks the name.
        for i in range(4):
            assert await attempt(f"198.51.100.{i}", "bob", WRONG) == (403, None)
        assert (await attempt("203.0.113.9", "bob", BOB))[0] == 429
        assert await attempt("203.0.113.9", "alice", ALICE) == (200, None)

    actions = [entry[0] for entry in audited]
    assert "login_failed" in actions and "login_locked" in actions
    assert ("login_locked", "name:bob") in [entry[:2] for entry in audited]
    # Only moderators' names are written down: "mallory" might have been a secret.
    assert not any("mallory" in " ".join(entry) for entry in audited)
