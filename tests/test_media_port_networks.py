"""The media port and ICE over TCP from the networks users are really in.

Each test builds its own small internet with tests/netns.py (namespaces, veth,
nftables), runs the real server.py and real headless aiortc visitors in it and
checks that a pair sees the other's stamped frames. Needs root (CI has it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import (
    HTTP_PORT,
    ROOT,
    Host,
    Net,
    assert_no_address_leaks,
    relay_url,
    start_relay,
    visit_pair,
)
from netns import _env as netns_env

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


BROWSER = ROOT / "tests" / "netns_browser.py"


def _json_line(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    try:
        parsed = json.loads(line)
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"ready": False, "error": repr(line)}


@pytest.mark.timeout(180)
def test_chromium_whose_udp_is_dropped_connects_over_ice_tcp(net: Net, log: Path) -> None:
    """Real Chromium in an office that drops all UDP, paired with Chromium at home."""
    server = net.host("server")
    alice = net.nat("office", block_udp=True).host("alice")
    bob = net.nat("home").host("bob")
    start_relay(
        server, log, "--media-port", str(MEDIA_PORT), "--media-tcp-port", str(MEDIA_TCP_PORT)
    )
    url = f"http://{server.public_ip}:{HTTP_PORT}/"
    procs = [
        host.popen(
            [sys.executable, str(BROWSER), "--url", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=netns_env(),
        )
        for host in (alice, bob)
    ]
    ready = [_json_line(p) for p in procs]
    finals: list[dict[str, Any]] = []
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.stdin = None
    for proc in procs:
        finals.append(_json_line(proc) if ready[0].get("ready") else {})
        try:
            _out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
        if not all(r.get("ready") for r in ready):
            print(err.decode(errors="replace")[-3000:])
    assert all(r.get("ready") for r in ready), ready
    a, b = (r["pair"] for r in ready)
    # Alice's Chromium reached the server's passive TCP candidate; Bob's stayed on UDP.
    assert a["protocol"] == "tcp" and a["local"]["tcpType"] == "active", a
    assert a["remote"]["port"] == MEDIA_TCP_PORT, a
    assert b["protocol"] == "udp" and b["remote"]["port"] == MEDIA_PORT, b
    assert all(not r["errors"] for r in ready), ready
    assert all(f.get("frames_decoded", 0) >= 15 for f in finals), finals
