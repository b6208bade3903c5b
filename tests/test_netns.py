"""The network harness itself: it cleans up after failures and after dead test runs."""

from __future__ import annotations

import subprocess

import pytest
from netns import PREFIX, Net, _namespaces, sweep_stale


def test_a_failing_test_leaves_no_namespace_and_no_process_behind() -> None:
    with pytest.raises(RuntimeError, match="the test failed"), Net() as net:
        host = net.nat("home").host("alice")
        sleeper = host.popen(["sleep", "600"])
        made = [n for n in _namespaces() if n.startswith(net.name)]
        assert len(made) == 3  # internet, home, alice
        raise RuntimeError("the test failed")
    assert not [n for n in _namespaces() if n.startswith(net.name)]
    assert sleeper.poll() is not None


def test_only_namespaces_of_dead_runs_are_swept() -> None:
    dead = f"{PREFIX}{2**22 + 12345}-0-server"  # above pid_max's default: never a live pid
    subprocess.run(["ip", "netns", "add", dead], check=True)
    with Net() as net:  # a new Net sweeps
        assert dead not in _namespaces()
        # A live run's namespaces (this one's) stay.
        assert sweep_stale() == []
        assert any(n.startswith(net.name) for n in _namespaces())
