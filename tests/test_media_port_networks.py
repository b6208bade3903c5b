"""The media port and ICE over TCP from the networks users are really in.

Each test builds its own small internet with tests/netns.py (namespaces, veth,
nftables), runs the real server.py and real headless aiortc visitors in it and
checks that a pair sees the other's stamped frames. Needs root (CI has it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import (
    BROWSER,
    HTTP_PORT,
    Host,
    Net,
    assert_no_address_leaks,
    relay_url,
    start_relay,
    visit,
    visit_pair,
)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "networks"
MEDIA_PORT = 50000
MEDIA_TCP_PORT = 3478


@pytest.fixture
def net() -> Iterator[Net]:
    with Net() as made:
        yield made


@pytest.fixture
def log(request: pytest.FixtureRequest) -> Path:
    return ARTIFACTS / f"{request.node.name}.log"


def only_these_ports_in(server: Host, udp: tuple[int, ...], tcp: tuple[int, ...]) -> None:
    """The operator's firewall: nothing comes in but replies and the listed ports."""
    udp_ports = ", ".join(str(p) for p in udp)
    tcp_ports = ", ".join(str(p) for p in tcp)
    server.cmd(
        "nft",
        "-f",
        "-",
        stdin=(
            "table inet firewall {\n"
            "  chain input { type filter hook input priority 0; policy drop;\n"
            '    iifname "lo" accept\n'
            "    ct state established,related accept\n"
            f"    tcp dport {{ {tcp_ports} }} accept\n"
            + (f"    udp dport {{ {udp_ports} }} accept\n" if udp else "")
            + "  }\n"
            "}\n"
        ),
    )


def test_a_visitor_whose_udp_is_dropped_connects_over_ice_tcp(net: Net, log: Path) -> None:
    server = net.host("server")
    alice = net.nat("office", block_udp=True).host("alice")
    bob = net.nat("home").host("bob")
    start_relay(
        server, log, "--media-port", str(MEDIA_PORT), "--media-tcp-port", str(MEDIA_TCP_PORT)
    )

    # Both offer UDP and TCP, as browsers do; only TCP gets out of alice's office.
    a, b = visit_pair(relay_url(server), alice, bob, ice_tcp=("also", "also"))

    assert a["counters"] == sorted(a["counters"]) and b["counters"] == sorted(b["counters"])
    assert a["pair"]["remote"] == {"type": "host", "address": server.ip, "port": MEDIA_TCP_PORT}
    # UDP ranks first wherever it gets through.
    assert b["pair"]["remote"] == {"type": "host", "address": server.ip, "port": MEDIA_PORT}
    assert_no_address_leaks([a, b], [alice, bob])


def test_a_firewall_open_only_on_the_media_ports_lets_everyone_through(net: Net, log: Path) -> None:
    server = net.host("server")
    only_these_ports_in(server, udp=(MEDIA_PORT,), tcp=(HTTP_PORT, MEDIA_TCP_PORT))
    alice = net.nat("home-a").host("alice")
    bob = net.nat("office", block_udp=True).host("bob")
    start_relay(
        server, log, "--media-port", str(MEDIA_PORT), "--media-tcp-port", str(MEDIA_TCP_PORT)
    )

    a, b = visit_pair(relay_url(server), alice, bob, ice_tcp=("also", "also"))

    assert a["pair"]["remote"]["port"] == MEDIA_PORT
    assert b["pair"]["remote"]["port"] == MEDIA_TCP_PORT
    assert_no_address_leaks([a, b], [alice, bob])


def test_without_the_media_port_that_firewall_stops_media(net: Net, log: Path) -> None:
    """The control for the test above: a socket per connection needs ports the firewall shuts."""
    server = net.host("server")
    only_these_ports_in(server, udp=(MEDIA_PORT,), tcp=(HTTP_PORT,))
    alice = net.nat("home-a").host("alice")
    bob = net.nat("home-b").host("bob")
    start_relay(server, log)

    with pytest.raises(AssertionError, match="did not see each other"):
        visit_pair(relay_url(server), alice, bob, timeout=5.0)


@pytest.mark.timeout(180)
def test_chromium_whose_udp_is_dropped_connects_over_ice_tcp(net: Net, log: Path) -> None:
    """Real Chromium in an office that drops all UDP, paired with Chromium at home."""
    server = net.host("server")
    alice = net.nat("office", block_udp=True).host("alice")
    bob = net.nat("home").host("bob")
    start_relay(
        server, log, "--media-port", str(MEDIA_PORT), "--media-tcp-port", str(MEDIA_TCP_PORT)
    )
    page = f"http://{server.public_ip}:{HTTP_PORT}/"
    browser = [str(BROWSER), "--url", page, "--frames", "15", "--timeout", "40"]
    a, b = visit([(alice, browser), (bob, browser)])

    # Alice's Chromium reached the server's passive TCP candidate; Bob's stayed on UDP.
    assert a["pair"]["local"]["protocol"] == "tcp", a["pair"]
    assert a["pair"]["remote"]["port"] == MEDIA_TCP_PORT, a["pair"]
    assert b["pair"]["local"]["protocol"] == "udp", b["pair"]
    assert b["pair"]["remote"]["port"] == MEDIA_PORT, b["pair"]
    assert not a["errors"] and not b["errors"]
    assert_no_address_leaks([a, b], [alice, bob])


def test_the_media_ports_behind_a_1_to_1_nat_are_offered_at_the_public_address(
    net: Net, log: Path
) -> None:
    cloud = net.one_to_one_nat("cloud")
    server = cloud.host("server")
    alice = net.nat("home").host("alice")
    bob = net.nat("office", block_udp=True).host("bob")
    start_relay(
        server,
        log,
        "--announce-ip",
        cloud.public_ip,
        "--media-port",
        str(MEDIA_PORT),
        "--media-tcp-port",
        str(MEDIA_TCP_PORT),
    )

    a, b = visit_pair(relay_url(server), alice, bob, ice_tcp=("also", "also"))

    assert a["pair"]["remote"] == {"type": "host", "address": cloud.public_ip, "port": MEDIA_PORT}
    assert b["pair"]["remote"] == {
        "type": "host",
        "address": cloud.public_ip,
        "port": MEDIA_TCP_PORT,
    }
    for report in (a, b):
        answer = next(m["sdp"] for m in report["messages"] if m["type"] == "answer")
        assert server.ip not in answer
    assert_no_address_leaks([a, b], [alice, bob])
