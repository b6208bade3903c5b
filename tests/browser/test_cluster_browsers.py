"""Two people in real Chromium on two different nodes of one cluster.

Two `server.py --redis ...` nodes on one real redis-server (tests/conftest.py's
`nodes`); Alice opens node one's page on a desktop-sized window, Bob node
two's on a phone-sized one. Their pair crosses nodes: media goes through the
pipe between the nodes, chat through Redis.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from chatpage import PHONE, OpenPage

pytestmark = pytest.mark.browser


def cross_node_matches(server: Any) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("relay_matches_cross_node_total "):
                return float(line.split()[1])
    raise AssertionError("relay_matches_cross_node_total not in /metrics")


async def test_two_browsers_on_two_nodes_see_each_other_and_chat(
    nodes: Callable[..., Any], open_page: OpenPage, artifacts: Path
) -> None:
    one, two = nodes(), nodes()
    alice = await open_page("alice", one.http_url)
    bob = await open_page("bob", two.http_url, viewport=PHONE)
    await asyncio.gather(alice.start(("chess", "music")), bob.start(("chess",)))
    await asyncio.gather(
        alice.expect_status("matched", "you both like chess"),
        bob.expect_status("matched", "you both like chess"),
    )
    # The pair really is across the two nodes, not two people of one node.
    assert cross_node_matches(one) + cross_node_matches(two) == 1

    # Each sees the other's camera: frames decode, advance and are painted.
    await asyncio.gather(alice.expect_video_flowing(), bob.expect_video_flowing())
    await asyncio.gather(alice.expect_audio_flowing(), bob.expect_audio_flowing())

    await bob.send_chat("Hi from node two!")
    await alice.expect_chat_line("Hi from node two!")
    await alice.send_chat("Hello from node one")
    await bob.expect_chat_line("Hello from node one")

    await alice.screenshot(str(artifacts / "cluster-pair-desktop.png"))
    await bob.screenshot(str(artifacts / "cluster-pair-phone.png"))

    # Next from across the cluster: Bob is told, as on one node.
    await alice.press_escape_twice()
    await bob.expect_status("left", "stranger left")
