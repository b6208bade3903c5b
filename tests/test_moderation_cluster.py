"""Two real server processes (one redis-server, one PostgreSQL) share their moderation.

Bans and reports live in the one PostgreSQL database and every node hashes identities
with the key kept there, so what a moderator does through one node holds on the other.
The dashboard of either node lists everyone on both, and its kicks and bans reach the
node holding the person (moderation/channel.py).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from crowd import UNLIMITED, crowd

from rtc.client import ChatClient, SignallingError
from rtc.stamp import read_stamp
from tests.visits import connected, matched

TIMEOUT = 20.0
# The kicked socket's close code (signalling/session.py CLOSE_KICKED).
CLOSE_KICKED = 4003
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


async def raw_api(server: Any, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.request(method, server.http_url + "/api/moderate" + path, **kwargs) as response,
    ):
        return response.status, await response.text()


async def until_true(check: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def cross_pair(one: Any, two: Any, clients: list) -> tuple[ChatClient, ChatClient]:
    """A on node one, B on node two, paired with each other, media flowing both ways."""
    a = await connected(one, clients, 1, "browser-a-abcdef")
    b = await connected(two, clients, 2, "browser-b-abcdef")
    assert a.hello["node"] != b.hello["node"]
    await matched(a, b)
    return a, b


async def listed(server: Any, **query: str) -> dict[str, Any]:
    page: dict[str, Any] = await api(server, "GET", "/sessions", params=query)
    return page


async def test_each_node_lists_everyone_with_their_node_and_kicks_across(
    nodes, clients, moderated_args
) -> None:
    one, two = nodes(*moderated_args), nodes(*moderated_args)
    a, b = await cross_pair(one, two, clients)
    node_a, node_b = a.hello["node"], b.hello["node"]

    for server in (one, two):
        page = await listed(server)
        rows = {row["id"]: row for row in page["sessions"]}
        assert set(rows) == {a.id, b.id}, page
        assert rows[a.id]["node"] == node_a and rows[b.id]["node"] == node_b
        assert rows[b.id]["partner"] == a.id and rows[b.id]["partnerNode"] == node_a
        assert page["total"] == 2 and page["missing"] == []
        assert {n["node"]: n["online"] for n in page["nodes"]} == {node_a: 1, node_b: 1}

    # The watch view's chat of the person on node two, read through node one.
    await a.chat("hello across")
    await b.wait_for("chat", timeout=TIMEOUT)
    chat = await api(one, "GET", f"/sessions/{b.id}/chat", params={"node": node_b})
    assert chat["partner"] == a.id and [c["text"] for c in chat["chat"]] == ["hello across"]

    # Node one's dashboard kicks the person held by node two.
    started = time.monotonic()
    kicked = await api(
        one, "POST", f"/sessions/{b.id}/kick", json={"message": "be nice", "node": node_b}
    )
    assert kicked == {"kicked": b.id, "node": node_b}
    error = await b.wait_for("error", timeout=TIMEOUT, predicate=lambda m: m["code"] == "kicked")
    told = time.monotonic() - started
    assert error["message"] == "be nice"
    left = await a.wait_for("partner_left", timeout=TIMEOUT)
    print(f"kick across nodes: kicked person told after {told * 1000:.0f} ms")
    assert left["reason"] == "disconnect", left

    async def closed() -> bool:
        return b.close_code == CLOSE_KICKED

    await until_true(closed, "the kicked WebSocket closing with 4003")
    audit = (await api(two, "GET", "/audit"))["audit"]
    assert any(e["action"] == "kick" and e["target"] == f"session:{b.id}" for e in audit)

    async def gone_from_the_list() -> bool:
        return [row["id"] for row in (await listed(one))["sessions"]] == [a.id]

    await until_true(gone_from_the_list, "the kicked person leaving node one's list")
    # Without `node` the kick finds the session on whichever node holds it.
    c = await connected(two, clients, 3, "browser-c-abcdef")
    await api(one, "POST", f"/sessions/{c.id}/kick", json={"message": "found you"})
    await c.wait_for("error", timeout=TIMEOUT, predicate=lambda m: m["code"] == "kicked")
    status, text = await raw_api(one, "POST", "/sessions/nobody/kick", json={})
    assert status == 404 and "no such session" in text


@pytest.mark.parametrize("scope", ["identity", "identity+address", "address"])
async def test_a_ban_on_one_node_ends_the_visit_on_the_other(
    nodes, clients, moderated_args, scope
) -> None:
    one, two = nodes(*moderated_args), nodes(*moderated_args)
    a, b = await cross_pair(one, two, clients)
    started = time.monotonic()
    made = await api(
        one,
        "POST",
        "/bans",
        json={
            "sessionId": b.id,
            "node": b.hello["node"],
            "scope": scope,
            "reason": "spam",
            "duration": "1h",
        },
    )
    error = await b.wait_for("error", timeout=TIMEOUT, predicate=lambda m: m["code"] == "banned")
    print(f"ban across nodes ({scope}): told after {(time.monotonic() - started) * 1000:.0f} ms")
    assert error["reason"] == "spam" and error["until"] == pytest.approx(made["expiresAt"])
    assert made["missed"] == [], made
    assert (made["identity"] == "browser-b-abcdef") == (scope != "address")
    assert (made["ip"] is not None) == (scope != "identity")
    if scope == "identity":
        assert made["ended"] == 1
        assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "disconnect"
    else:
        # Both test clients come from 127.0.0.1: an address ban reaches A on node one too.
        assert made["ended"] == 2
        await a.wait_for("error", timeout=TIMEOUT, predicate=lambda m: m["code"] == "banned")
    # And the next visit is refused on both nodes.
    for server in (one, two):
        message = await refused(server, "browser-b-abcdef")
        assert message["code"] == "banned", message


async def test_a_ban_by_identity_without_a_session_ends_visits_on_every_node(
    nodes, clients, moderated_args
) -> None:
    one, two = nodes(*moderated_args), nodes(*moderated_args)
    here = await connected(one, clients, 1, "browser-x-abcdef")
    there = await connected(two, clients, 2, "browser-x-abcdef")
    other = await connected(two, clients, 3, "browser-y-abcdef")
    made = await api(
        two, "POST", "/bans", json={"identity": "browser-x-abcdef", "reason": "spam", "seconds": 60}
    )
    assert made["ended"] == 2, made
    for client in (here, there):
        await client.wait_for("error", timeout=TIMEOUT, predicate=lambda m: m["code"] == "banned")

    async def only_the_other_left() -> bool:
        return [row["id"] for row in (await listed(one))["sessions"]] == [other.id]

    await until_true(only_the_other_left, "the banned visits leaving the list")
    assert not [m for m in other.messages if m.get("type") == "error"]


async def test_a_visit_held_for_a_resume_on_another_node_can_be_ended(
    nodes, clients, moderated_args
) -> None:
    one, two = nodes(*moderated_args), nodes(*moderated_args)
    a, b = await cross_pair(one, two, clients)
    await b.drop_socket()  # B's network went: node two holds the visit for a resume

    async def away() -> bool:
        rows = {r["id"]: r for r in (await listed(one))["sessions"]}
        return b.id in rows and rows[b.id]["away"] is True

    await until_true(away, "B listed as away by node one")
    await api(one, "POST", f"/sessions/{b.id}/kick", json={"node": b.hello["node"]})
    assert (await a.wait_for("partner_left", timeout=TIMEOUT))["reason"] == "disconnect"
    # The held visit is over: B's resume token takes nothing back.
    with pytest.raises(SignallingError) as refused:
        await b.resume()
    assert refused.value.message["code"] == "resume_failed", refused.value.message
    assert b.id not in [r["id"] for r in (await listed(one))["sessions"]]


async def test_the_queue_on_one_node_knows_who_is_online_on_the_other(
    nodes, clients, moderated_args
) -> None:
    one, two = nodes(*moderated_args), nodes(*moderated_args)
    await connected(one, clients, 1, "browser-a-abcdef")  # idle, at the same address
    c = await connected(two, clients, 2, "browser-c-abcdef")
    d = await connected(two, clients, 3, "browser-d-abcdef")
    await c.start()
    await d.start()
    await c.wait_for("matched", timeout=TIMEOUT)
    await c.send({"type": "report", "reason": "rude", "moveOn": False})
    reported = await c.wait_for("reported", timeout=TIMEOUT)
    # Read through node one: D is online on node two, and the three visitors (one on
    # node one, two on node two) share D's address.
    [item] = (await api(one, "GET", "/queue"))["queue"]
    assert item["id"] == reported["reportId"]
    assert item["online"] is True and item["sharingAddress"] == 3, item
    await d.close()

    async def offline() -> bool:
        [item] = (await api(one, "GET", "/queue"))["queue"]
        return item["online"] is False and item["sharingAddress"] == 2

    await until_true(offline, "the reported person shown offline once they left node two")


async def test_a_node_that_is_gone_or_stalled_is_explained_not_waited_for(
    nodes, clients, moderated_args
) -> None:
    one, two = nodes(*moderated_args), nodes(*moderated_args)
    a = await connected(one, clients, 1, "browser-a-abcdef")
    b = await connected(two, clients, 2, "browser-b-abcdef")
    node_b = b.hello["node"]

    two.send_signal(signal.SIGSTOP)  # stalled: alive in the registry for 3 s, silent
    try:
        # All at once: node two stays in the registry (3 s TTL) while they wait.
        started = time.monotonic()
        (status, text), page, made = await asyncio.gather(
            raw_api(one, "POST", f"/sessions/{b.id}/kick", json={"node": node_b}),
            listed(one),
            api(
                one,
                "POST",
                "/bans",
                json={"identity": "nobody-here-abc", "reason": "x", "seconds": 9},
            ),
        )
        print(f"answers with node two stalled came after {time.monotonic() - started:.1f} s")
        assert status == 504 and f"node {node_b} did not answer" in text, (status, text)
        assert [row["id"] for row in page["sessions"]] == [a.id]
        assert [m["node"] for m in page["missing"]] == [node_b], page
        assert [m["node"] for m in made["missed"]] == [node_b], made
    finally:
        two.send_signal(signal.SIGCONT)

    two.stop()
    status, text = await raw_api(one, "POST", f"/sessions/{b.id}/kick", json={"node": node_b})
    assert status == 410 and "not in the cluster any more" in text, (status, text)
    status, text = await raw_api(
        one, "POST", "/bans", json={"sessionId": b.id, "node": node_b, "reason": "x", "seconds": 9}
    )
    assert status == 410, (status, text)
    page = await listed(one)
    assert [row["id"] for row in page["sessions"]] == [a.id] and page["missing"] == []


PEOPLE = 1000


async def test_a_thousand_people_on_two_nodes_are_paged_and_searched_on_the_server(
    nodes, clients, moderated_args
) -> None:
    one, two = nodes(*moderated_args, *UNLIMITED), nodes(*moderated_args, *UNLIMITED)
    async with crowd(one, two, PEOPLE - 4) as holder:
        # Four text-only visitors who like origami, two per node: they pair up.
        for i, server in enumerate((one, one, two, two)):
            client = ChatClient(server.ws_url, tag=i + 1)
            clients.append(client)
            await client.connect_signalling()
            await client.start(["origami"], mode="text")
            holder[client.id] = client.hello["node"]
        for client in clients:
            await client.wait_for("matched", timeout=TIMEOUT)
        node_one, node_two = sorted({holder[c.id] for c in clients})

        timings = []
        for _ in range(20):
            started = time.monotonic()
            first = await listed(one)
            timings.append((time.monotonic() - started) * 1000)
        timings.sort()
        print(
            f"a page of 60 of {PEOPLE} on two nodes, 20 fetches: median {timings[10]:.0f} ms, "
            f"max {timings[-1]:.0f} ms"
        )
        assert first["total"] == PEOPLE and len(first["sessions"]) == first["limit"] == 60
        assert sorted(n["online"] for n in first["nodes"]) == [PEOPLE // 2, PEOPLE // 2]
        assert sum(n["paired"] for n in first["nodes"]) == 4

        # Every page through node two: each person once, each with the node that holds them.
        seen: dict[str, str] = {}
        for offset in range(0, PEOPLE, 300):
            page = await listed(two, offset=str(offset), limit="300")
            assert page["total"] == PEOPLE
            seen |= {row["id"]: row["node"] for row in page["sessions"]}
        assert seen == holder

        someone = next(i for i, node in holder.items() if node == node_two)
        found = await listed(one, q=someone)
        assert [(r["id"], r["node"]) for r in found["sessions"]] == [(someone, node_two)]
        origami = await listed(one, q="ORIGAMI")
        assert sorted(r["id"] for r in origami["sessions"]) == sorted(c.id for c in clients)
        assert {r["state"] for r in origami["sessions"]} == {"paired"}
        assert (await listed(one, state="paired"))["total"] == 4
        on_two = await listed(one, node=node_two, limit="0")
        assert on_two["total"] == PEOPLE // 2 and on_two["sessions"] == []
        both = await listed(one, q=f"origami {node_one}")
        assert {r["node"] for r in both["sessions"]} == {node_one} and both["total"] == 2

        status, text = await raw_api(one, "GET", "/sessions", params={"limit": "5000"})
        assert status == 400 and "limit" in text


# -- evidence written by another node -------------------------------------------------


def stamp_tags(path: Path, track: str) -> list[int]:
    """The stamp tags (which client sent it) of every decodable frame of `track`."""
    with av.open(str(path)) as container:
        stream = next(s for s in container.streams if s.metadata.get("title") == track)
        stamps = [read_stamp(f.to_ndarray(format="rgb24")) for f in container.decode(stream)]
    return [s.tag for s in stamps if s is not None]


async def test_evidence_written_by_one_node_plays_through_the_other(
    nodes, clients, moderated_args, tmp_path: Path
) -> None:
    # Each node its own recordings folder: node two must fetch node one's file from it.
    one = nodes(*moderated_args, "--recordings-dir", str(tmp_path / "rec1"))
    two = nodes(*moderated_args, "--recordings-dir", str(tmp_path / "rec2"))
    a, b = await cross_pair(one, two, clients)
    await a.wait_frames(tag=2, count=30, timeout=TIMEOUT)
    await b.wait_frames(tag=1, count=30, timeout=TIMEOUT)
    await a.send({"type": "report", "reason": "nudity", "moveOn": False})
    reported = await a.wait_for("reported", timeout=TIMEOUT)

    report = next(
        r for r in (await api(two, "GET", "/reports"))["reports"] if r["id"] == reported["reportId"]
    )
    name = report["evidence"]
    assert not (tmp_path / "rec2").joinpath(name).exists()
    listed = {r["name"]: r for r in (await api(two, "GET", "/recordings"))["recordings"]}
    assert listed[name]["node"] == a.hello["node"]

    started = time.monotonic()
    whole = await raw_bytes(two, f"/recordings/{name}?download=1")
    took = time.monotonic() - started
    print(f"evidence through the other node: {len(whole)} bytes in {took * 1000:.0f} ms")
    assert whole == (tmp_path / "rec1" / name).read_bytes()
    copy = tmp_path / "through-two.webm"
    copy.write_bytes(whole)
    assert 2 in stamp_tags(copy, "video") and set(stamp_tags(copy, "video")) == {2}
    assert set(stamp_tags(copy, "reporter_video")) == {1}
    # Seeking (a byte range) and one person's part, as the evidence player asks for them.
    tail = await raw_bytes(two, f"/recordings/{name}", headers={"Range": "bytes=100-"}, status=206)
    assert tail == whole[100:]
    part = tmp_path / "reporter-through-two.webm"
    part.write_bytes(await raw_bytes(two, f"/recordings/{name}?part=reporter"))
    assert set(stamp_tags(part, "video")) == {1}

    # The pair handshake carried b's address hash to a's node: the report can ban the
    # address, and the ban then refuses that address (all of 127.0.0.1 here) everywhere.
    assert report["hasAddress"] is True
    made = await api(
        two,
        "POST",
        f"/reports/{reported['reportId']}/ban",
        json={"duration": "1h", "scope": "address", "reason": "nudity"},
    )
    assert made["address"] and made["person"] is None and made["ended"] == 2, made
    for client in (a, b):
        await client.wait_for("error", timeout=TIMEOUT, predicate=lambda m: m["code"] == "banned")
        # The hash went node to node only: no page ever received it.
        assert made["address"] not in json.dumps(client.messages)
    for server in (one, two):
        message = await refused(server, "a-new-browser-abcdef")
        assert message["type"] == "error" and message["code"] == "banned", message

    # The writing node gone, the moderator is told so (not a bare 404).
    one.stop()
    status, text = await raw_api(two, "GET", f"/recordings/{name}")
    assert status == 404 and "not in the cluster" in text, (status, text)


async def raw_bytes(server: Any, path: str, *, status: int = 200, **kwargs: Any) -> bytes:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.get(server.http_url + "/api/moderate" + path, **kwargs) as response,
    ):
        assert response.status == status, await response.text()
        return await response.read()


async def test_a_kick_naming_the_node_a_resume_moved_the_person_from_still_reaches_them(
    nodes, clients, moderated_args
) -> None:
    # A dashboard row drawn before the move names node one; the person is on node two now.
    one, two = nodes(*moderated_args), nodes(*moderated_args)
    a = await connected(one, clients, 1, "browser-a-abcdef")
    old_node = a.hello["node"]
    await a.drop_socket()
    a.url = two.ws_url
    resumed = await a.resume()
    assert resumed["id"] == a.id
    new_node = (await listed(two))["node"]
    assert new_node != old_node

    status, text = await raw_api(
        one, "POST", f"/sessions/{a.id}/kick", json={"message": "moved?", "node": old_node}
    )
    assert status == 200, text
    assert json.loads(text) == {"kicked": a.id, "node": new_node}
    error = await a.wait_for("error", timeout=TIMEOUT, predicate=lambda m: m["code"] == "kicked")
    assert error["message"] == "moved?"
    # Nobody anywhere: still a plain 404.
    status, text = await raw_api(one, "POST", "/sessions/nobody/kick", json={"node": old_node})
    assert status == 404 and "no such session" in text, text


async def test_failed_logins_are_counted_across_nodes(nodes, moderated_args) -> None:
    # Four free failures per address and name in the whole cluster: guesses spread over
    # two nodes (two on one, three on the other) lock out as they would on one node.
    args = [*moderated_args, "--login-throttle-after", "4"]
    one, two = nodes(*args), nodes(*args)
    wrong = {"Authorization": aiohttp.encode_basic_auth("alice", "not-the-secret")}
    for server in (one, two, one, two):
        status, _ = await raw_api(server, "GET", "/bans", headers=wrong)
        assert status == 403
    status, _ = await raw_api(two, "GET", "/bans", headers=wrong)
    assert status == 403  # the fifth: counted, and it earns the lock-out
    # Locked on both nodes, right credentials included (the lock-out tells nothing).
    for server in (one, two):
        status, text = await raw_api(server, "GET", "/bans")
        assert status == 429 and "too many failed logins" in text, (status, text)
    audit = (await api_after_lockout(one))["audit"]
    assert any(e["action"] == "login_locked" for e in audit), audit


async def api_after_lockout(server: Any) -> Any:
    """An API answer once the 2 s lock-out is over."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        status, text = await raw_api(server, "GET", "/audit")
        if status == 200:
            return json.loads(text)
        assert status == 429 and asyncio.get_running_loop().time() < deadline, (status, text)
        await asyncio.sleep(0.25)
