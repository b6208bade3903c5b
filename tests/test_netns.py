"""The network harness itself: it cleans up after failures and after dead test runs."""

from __future__ import annotations

import subprocess
import sys

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


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(100)
    s.sendto(data, addr)
"""

UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.sendto(b"hi", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recv(100).decode())
except TimeoutError:
    print("no answer")
"""


def test_a_cloud_firewall_lets_in_only_its_ports() -> None:
    with Net() as net:
        cloud = net.one_to_one_nat("cloud", inbound=["tcp/443", "udp/5000-5001"])
        server = cloud.host("server")
        client = net.nat("home").host("client")
        for port in ("5001", "6000"):
            echo = server.popen([sys.executable, "-c", UDP_ECHO, port], stdout=subprocess.PIPE)
            assert echo.stdout is not None and echo.stdout.readline() == b"ready\n"

        def ask(port: str) -> str:
            return client.cmd(sys.executable, "-c", UDP_ASK, cloud.public_ip, port).strip()

        assert ask("5001") == "hi"  # through the 1:1 NAT, an allowed port
        assert ask("6000") == "no answer"  # the firewall drops the rest
