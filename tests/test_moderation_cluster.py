"""Two real server processes (one redis-server, one PostgreSQL) share their moderation.

Bans and reports live in the one PostgreSQL database and every node hashes identities
with the key kept there, so what a moderator does through one node holds on the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtc.client import ChatClient

TIMEOUT = 20.0
SECRET = "s3cret-token-for-tests-0123456789"
AUTH = {"Authorization": aiohttp.encode_basic_auth("alice", SECRET)}


@pytest.fixture
def moderated_args(tmp_path: Path, postgres_url: str) -> list[str]:
    moderators = tmp_path / "moderators"
    moderators.write_text(f"alice:{SECRET}\n")
    moderators.chmod(0o600)
    return ["--moderators-file", str(moderators), "--db", postgres_url]


async def api(server: Any, method: str, path: str, **kwargs: Any) -> Any:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.request(method, server.http_url + "/api/moderate" + path, **kwargs) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def connected(server: Any, clients: list, tag: int, client_id: str) -> ChatClient:
    client = ChatClient(f"{server.ws_url}?clientId={client_id}", tag=tag)
    clients.append(client)
    await client.connect()
    return client


async def refused(server: Any, client_id: str) -> dict[str, Any]:
    """What a visitor with this browser id is told on connecting to `server`."""
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{server.ws_url}?clientId={client_id}") as ws,
    ):
        message: dict[str, Any] = await ws.receive_json(timeout=TIMEOUT)
        return message


async def test_a_ban_made_on_one_node_refuses_the_visitor_on_the_other(
    nodes, clients, moderated_args
) -> None:
    one, two = nodes(*moderated_args), nodes(*moderated_args)
    user = await connected(one, clients, 1, "browser-one-abcdef")
    ban = await api(
        one, "POST", "/bans", json={"sessionId": user.id, "reason": "spam", "seconds": 3600}
    )
    await user.wait_for("error", timeout=TIMEOUT, predicate=lambda m: m["code"] == "banned")

    message = await refused(two, "browser-one-abcdef")
    assert message["type"] == "error" and message["code"] == "banned", message
    assert message["reason"] == "spam" and message["until"] == pytest.approx(ban["expiresAt"])
    # Both nodes list the one ban, and lifting it on node 2 lets the visitor in on node 2.
    assert [b["id"] for b in (await api(two, "GET", "/bans"))["bans"]] == [ban["id"]]
    await api(two, "POST", f"/bans/{ban['id']}/lift")
    back = await connected(two, clients, 2, "browser-one-abcdef")
    assert back.hello["node"]


async def test_a_ban_from_a_report_holds_on_every_node(nodes, clients, moderated_args) -> None:
    # The report keeps the reported person as a keyed hash: the ban matches on the
    # other node only because both nodes hash with the key kept in PostgreSQL.
    one, two = nodes(*moderated_args), nodes(*moderated_args)
    a = await connected(one, clients, 1, "browser-a-abcdef")
    b = await connected(one, clients, 2, "browser-b-abcdef")
    await a.start()
    await b.start()
    await a.wait_for("matched", timeout=TIMEOUT)
    await b.wait_for("matched", timeout=TIMEOUT)
    await a.send({"type": "report", "reason": "rude"})
    reported = await a.wait_for("reported", timeout=TIMEOUT)
    await b.wait_for("partner_left", timeout=TIMEOUT)

    # Seen in the queue through node 2, banned through node 2, for the identity only.
    reports = (await api(two, "GET", "/reports"))["reports"]
    assert [r["id"] for r in reports] == [reported["reportId"]]
    await api(
        two,
        "POST",
        f"/reports/{reported['reportId']}/ban",
        json={"duration": "24h", "reason": "rude"},
    )
    for node in (one, two):
        message = await refused(node, "browser-b-abcdef")
        assert message["type"] == "error" and message["code"] == "banned", message


async def test_a_moderator_logged_in_on_one_node_is_logged_in_on_the_other(
    nodes, moderated_args
) -> None:
    # Behind a load balancer the dashboard's next request may reach any node: the token
    # key comes from the cluster secret, not from a random per-process value.
    one, two = nodes(*moderated_args), nodes(*moderated_args)
    async with aiohttp.ClientSession() as http:
        async with http.get(one.http_url + "/moderate", headers=AUTH) as response:
            assert response.status == 200
            token = response.cookies["moderator_token"].value
        for node in (one, two):
            async with http.get(
                node.http_url + "/api/moderate/bans", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                assert response.status == 200, await response.text()
        # A token signed with another key is still refused.
        forged = token[: token.rindex(".") + 1] + "AAAA"
        async with http.get(
            two.http_url + "/api/moderate/bans", headers={"Authorization": f"Bearer {forged}"}
        ) as response:
            assert response.status == 403
