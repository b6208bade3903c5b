"""The relay reached from the networks users are really in, built in network namespaces.

Each test builds its own small internet (tests/netns.py), runs the real
server.py, real headless aiortc visitors and real TURN servers in it, and checks
that a pair sees the other's stamped frames and that no signalling message
carried another visitor's address. Needs root (CI has it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import Net, assert_no_address_leaks, relay_url, start_relay, visit_pair

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
    start_relay(server, log)

    a, b = visit_pair(relay_url(server), alice, bob)

    assert a["counters"] == sorted(a["counters"]) and b["counters"] == sorted(b["counters"])
    # Straight to the server's host candidate, each from behind its own NAT.
    assert a["pair"]["remote"]["address"] == server.ip
    assert b["pair"]["remote"]["address"] == server.ip
    assert_no_address_leaks([a, b], [alice, bob])
