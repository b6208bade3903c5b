"""The relay reached from the networks users are really in, built in network namespaces.

Each test builds its own small internet (tests/netns.py), runs the real
server.py, real headless aiortc visitors and real TURN servers in it, and checks
that a pair sees the other's stamped frames and that no signalling message
carried another visitor's address. Needs root (CI has it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from coturn import Coturn
from netns import (
    ROOT,
    Net,
    assert_no_address_leaks,
    relay_url,
    start_relay,
    visit_pair,
    visit_with_browser,
)
from netns import _env as probe_env

PROBE = ROOT / "tests" / "netns_turn_probe.py"

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "networks"


@pytest.fixture
def net() -> Iterator[Net]:
    with Net() as made:
        yield made


@pytest.fixture
def log(request: pytest.FixtureRequest) -> Path:
    return ARTIFACTS / f"{request.node.name}.log"


def test_visitors_behind_home_nats_see_each_other(net: Net, log: Path) -> None:
    server = net.host("server")
    alice = net.nat("home-a").host("alice")
    bob = net.nat("home-b").host("bob")
    # A docker bridge on the server: nobody outside can reach it, so it is not offered.
    server.cmd("ip", "link", "add", "docker0", "type", "veth", "peer", "name", "veth0")
    server.cmd("ip", "addr", "add", "172.17.0.1/16", "dev", "docker0")
    server.cmd("ip", "link", "set", "docker0", "up")
    server.cmd("ip", "link", "set", "veth0", "up")
    start_relay(server, log)

    a, b = visit_pair(relay_url(server), alice, bob)

    assert a["counters"] == sorted(a["counters"]) and b["counters"] == sorted(b["counters"])
    # Straight to the server's host candidate, each from behind its own NAT; the
    # answer offered the address of the default route only.
    assert set(_server_candidates(a)) == {server.ip}
    assert a["pair"]["remote"]["address"] == server.ip
    assert b["pair"]["remote"]["address"] == server.ip
    assert_no_address_leaks([a, b], [alice, bob])


SECRET = "test-turn-secret-for-this-run"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path


def _relayed(report: dict) -> bool:
    return report["pair"]["local"]["type"] == "relay"


def _answers(report: dict) -> list[str]:
    return [m["sdp"] for m in report["messages"] if m["type"] == "answer"]


def test_visitors_without_udp_get_through_coturn_over_tcp_with_their_own_credentials(
    net: Net, log: Path, folder: Path
) -> None:
    server = net.host("server")
    turn_host = net.host("turn")
    office = net.nat("office", block_udp=True)
    alice, bob, carol = office.host("alice"), office.host("bob"), office.host("carol")
    coturn = Coturn(turn_host, folder, SECRET)
    # Short-lived on purpose: carol's credentials expire while she waits.
    start_relay(server, log, "--turn", coturn.url(), "--turn-secret", SECRET, "--turn-ttl", "5")
    late = carol.popen(
        [sys.executable, str(PROBE), "--url", relay_url(server), "--wait", "6"],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=probe_env(),
    )

    a, b = visit_pair(relay_url(server), alice, bob)

    # All UDP is dropped at the office: media went through coturn (over TCP).
    assert _relayed(a) and _relayed(b), (a["pair"], b["pair"])
    # Each visitor got credentials of its own: "<expiry>:<opaque id>", no session id in them.
    users = []
    for report in (a, b):
        (turn,) = report["messages"][0]["iceServers"]
        expiry, _, who = turn["username"].partition(":")
        assert int(expiry) > time.time() - 60 and who and who not in report["summary"]["id"]
        users.append(turn["username"])
    assert users[0] != users[1]
    # The server answered with its own addresses only: it made no TURN allocation of its own.
    for report in (a, b):
        assert all("typ relay" not in sdp for sdp in _answers(report))
    assert_no_address_leaks([a, b], [alice, bob])
    # Carol's credentials, six seconds later, are refused: a copied credential expires.
    out, _ = late.communicate(timeout=30)
    result = json.loads(out)
    assert result["allocated"] is False and "401" in result["error"], result
    assert "Cannot find credentials" in coturn.log() or "401" in coturn.log()
    # While a visitor arriving now gets credentials coturn accepts, and may relay
    # to the server, but not to anyone's private address (the documented config).
    for peer, refused in ((server.ip, False), (alice.ip, True)):
        fresh = json.loads(
            carol.cmd(
                sys.executable,
                str(PROBE),
                "--url",
                relay_url(server),
                "--peer",
                peer,
                env=probe_env(),
            )
        )
        assert fresh["allocated"] is True, fresh
        assert (fresh["peer_error"] is not None) == refused, fresh
        if refused:
            assert "403" in fresh["peer_error"], fresh


def test_visitors_allowed_only_tcp_443_get_through_coturn_over_tls(
    net: Net, log: Path, folder: Path
) -> None:
    server = net.host("server")
    turn_host = net.host("turn")
    guest = net.nat("guest-wifi", tcp_ports=(443,))
    alice, bob = guest.host("alice"), guest.host("bob")
    coturn = Coturn(turn_host, folder, SECRET)
    start_relay(server, log, "--turn", coturn.url("turns", 443), "--turn-secret", SECRET)

    # The visitors trust the TURN server's self-signed certificate, as browsers
    # trust a real one.
    a, b = visit_pair(relay_url(server), alice, bob, env={"SSL_CERT_FILE": str(coturn.cert)})

    assert _relayed(a) and _relayed(b), (a["pair"], b["pair"])
    for report in (a, b):
        assert report["messages"][0]["iceServers"][0]["urls"].startswith("turns:")
        assert all("typ relay" not in sdp for sdp in _answers(report))
    assert_no_address_leaks([a, b], [alice, bob])


def _server_candidates(report: dict) -> list[str]:
    return [
        line.split()[4]
        for sdp in _answers(report)
        for line in sdp.splitlines()
        if line.startswith("a=candidate:")
    ]


def test_a_server_behind_a_1_to_1_nat_announces_its_public_address(net: Net, log: Path) -> None:
    cloud = net.one_to_one_nat("cloud")
    server = cloud.host("server")
    alice = net.nat("home-a").host("alice")
    bob = net.nat("home-b").host("bob")
    # No --stun: the announced address is all the server needs.
    start_relay(server, log, "--announce-ip", cloud.public_ip)

    a, b = visit_pair(relay_url(server), alice, bob)

    for report in (a, b):
        # Only the public address is offered; the private one would be useless out there.
        assert set(_server_candidates(report)) == {cloud.public_ip}
        assert report["pair"]["remote"]["address"] == cloud.public_ip
    assert_no_address_leaks([a, b], [alice, bob])


def test_chromium_without_udp_gets_through_coturn_and_decodes_its_partner(
    net: Net, log: Path, folder: Path
) -> None:
    server = net.host("server")
    turn_host = net.host("turn")
    office = net.nat("office", block_udp=True)
    browser, bob = office.host("browser"), net.nat("home").host("bob")
    coturn = Coturn(turn_host, folder, SECRET)
    start_relay(server, log, "--turn", coturn.url(), "--turn-secret", SECRET)

    page, headless = visit_with_browser(server, browser, bob)

    # Chromium decoded bob's video, relayed through coturn over TCP (its UDP is dropped).
    assert page["stats"]["video"]["framesDecoded"] >= 10
    assert page["pair"]["local"]["type"] == "relay", page["pair"]
    assert page["pair"]["local"]["relayProtocol"] == "tcp", page["pair"]
    # And bob decoded the browser's camera.
    assert headless["summary"]["frames_received"] >= 10
    (turn,) = page["messages"][0]["iceServers"]
    assert turn["username"].count(":") == 1 and turn["credential"]
    assert not page["errors"], page["errors"]
    assert_no_address_leaks([page, headless], [browser, bob])
