"""A real network change: the visitor's home router gets a new public address mid-call.

Built with tests/netns.py (namespaces, veth, nftables masquerade): the router's old
address is removed, which drops its NAT mappings, so the visitor's WebSocket (TCP)
and its media (UDP) die as they do when a phone moves to another network. The
visitor resumes its session and makes a new media connection from the new address
(tests/netns_roamer.py); the partner must keep the pair and see the video go on.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import PUBLIC_NET, ROOT, VISITOR, Net, _env, _line, _python, relay_url, start_relay

ROAMER = ROOT / "tests" / "netns_roamer.py"
ARTIFACTS = ROOT / "test-artifacts" / "networks"


@pytest.fixture
def net() -> Iterator[Net]:
    with Net() as made:
        yield made


def _report(proc: subprocess.Popen[bytes]) -> dict:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.stdin = None
    out, err = proc.communicate(timeout=30)
    lines = out.decode().strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    report["stderr"] = err.decode(errors="replace")[-3000:]
    return report


def test_a_phone_that_changes_network_keeps_its_partner(net: Net) -> None:
    server = net.host("server")
    home = net.nat("home")
    alice = home.host("alice")
    bob = net.nat("home-b").host("bob")
    log = ARTIFACTS / "test_a_phone_that_changes_network_keeps_its_partner.log"
    start_relay(server, log, "--resume-grace", "20", "--media-timeout", "5")
    url = relay_url(server)

    def run(host, script: Path, *args: str) -> subprocess.Popen[bytes]:
        return host.popen(
            [_python(), str(script), "--url", url, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=_env(),
        )

    roamer = run(alice, ROAMER, "--tag", "1", "--partner", "2")
    partner = run(bob, VISITOR, "--tag", "2", "--partner", "1", "--timeout", "40")
    assert _line(roamer).get("ready"), _report(roamer)
    assert _line(partner).get("ready"), _report(partner)

    # The router's public address changes: its NAT mappings (TCP and UDP) are gone.
    old, new = home.public_ip, f"{PUBLIC_NET}.222"
    home.cmd("ip", "addr", "del", f"{old}/24", "dev", "wan")
    home.cmd("ip", "addr", "add", f"{new}/24", "dev", "wan")
    home.cmd("ip", "route", "replace", "default", "via", f"{PUBLIC_NET}.1")
    assert roamer.stdin is not None
    roamer.stdin.write(b"changed\n")
    roamer.stdin.flush()

    moved = _line(roamer)
    print(f"network change: {moved}")
    assert moved.get("resumed") == "paired", (moved, _report(roamer))
    # The partner leaves first, so what it saw is only about the change.
    partner_report = _report(partner)
    roamer_report = _report(roamer)
    summary = partner_report["summary"]
    # The partner never lost the pair and A's frames kept their order across the change.
    types = [m["type"] for m in partner_report["messages"]]
    assert "partner_left" not in types and types.count("matched") == 1, types
    assert types.index("partner_reconnecting") < types.index("partner_back"), types
    print(f"the partner missed {summary['frames_missing']} of A's frames in the whole visit")
    assert summary["counter_regressions"] == 0
    assert roamer_report["summary"]["counter_regressions"] == 0
    log_text = log.read_text(errors="replace")
    assert "Traceback" not in log_text
    # The server saw the visitor come back from the new address.
    assert "resumed" in log_text
