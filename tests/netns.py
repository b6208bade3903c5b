"""Throw-away networks for tests: network namespaces, veth pairs and nftables.

Every address lives only inside the namespaces a `Net` makes, so a test can
build the networks users are really in (a home NAT, an office firewall that
drops all UDP, a cloud server behind a 1:1 NAT) and run the real server, real
clients and real TURN servers in them::

    with Net() as net:
        server = net.host("server")                      # on the "internet"
        home = net.nat("home")                           # a masquerading router
        alice = home.host("alice")                       # 10.x.y.2 behind it
        office = net.nat("office", block_udp=True)       # drops every UDP packet
        proc = server.popen([sys.executable, "server.py", ...])

The "internet" is one namespace holding a bridge; public hosts and the WAN
side of every router sit on it with addresses from 198.51.100.0/24 (TEST-NET-2,
never routed anywhere real). Behind router number k, host i gets 10.k.i.2 on a
link of its own (router side 10.k.i.1).

Namespaces are named ``rrnet-<pid>-<n>-<role>``: several test runs share the
machine, so names are unique per process, and `sweep_stale()` (run by every
new Net) removes only namespaces whose creating process has died. `close()`
ends every process started in the net's namespaces and deletes them, also when
the test failed. Needs root (CI runs as root) and Debian's iproute2 and
nftables (`make test` installs them).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

PREFIX = "rrnet-"
PUBLIC_NET = "198.51.100"
_nets = itertools.count()


class NetError(RuntimeError):
    """A namespace command failed; the message has the command and its output."""


def _run(
    args: Sequence[str],
    *,
    check: bool = True,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    proc = subprocess.run(
        list(args), capture_output=True, text=True, input=stdin, timeout=30, env=env
    )
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def missing_tools() -> str | None:
    """Why network tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespace tests need root (CI runs them as root)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install iproute2 nftables; make test does)"
    return None


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()]


def _kill_inside(ns: str) -> None:
    """End every process still running in namespace `ns` (only ever one of ours)."""
    pids = [int(p) for p in _run(["ip", "netns", "pids", ns], check=False).split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _delete(ns: str) -> None:
    _kill_inside(ns)
    _run(["ip", "netns", "delete", ns], check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces of ours left behind by test processes that no longer run."""
    removed = []
    for ns in _namespaces():
        if not ns.startswith(PREFIX):
            continue
        pid = ns[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _delete(ns)
            removed.append(ns)
    return removed


class Host:
    """One machine: a namespace with an address, a default route, and processes."""

    def __init__(self, net: Net, ns: str, ip: str, public_ip: str) -> None:
        self.net = net
        self.ns = ns
        self.ip = ip
        """Its own interface address."""
        self.public_ip = public_ip
        """The address the internet sees it as (its router's, behind a NAT)."""

    def __repr__(self) -> str:
        return f"<Host {self.ns} {self.ip} (public {self.public_ip})>"

    def cmd(
        self,
        *args: str,
        check: bool = True,
        stdin: str | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """Run a short command inside this host and return its output."""
        return _run(["ip", "netns", "exec", self.ns, *args], check=check, stdin=stdin, env=env)

    def popen(
        self,
        args: Sequence[str],
        *,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        stdin: int | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process inside this host; `Net.close()` ends it."""
        # `ip netns exec` execs the command, so the Popen's pid is the command's.
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *args],
            stdout=stdout,
            stderr=stderr,
            stdin=stdin,
            env=env,
            cwd=cwd,
        )
        self.net.processes.append(proc)
        return proc


class Router(Host):
    """A router between the internet and private hosts, with nftables rules."""

    def __init__(self, net: Net, ns: str, public_ip: str, index: int) -> None:
        super().__init__(net, ns, public_ip, public_ip)
        self.index = index
        self.hosts: list[Host] = []

    def host(self, role: str) -> Host:
        """A new machine on a link of its own behind this router (10.<router>.<i>.2)."""
        i = len(self.hosts)
        ns = self.net._namespace(role)
        inside, outside = f"10.{self.index}.{i}.2", f"10.{self.index}.{i}.1"
        self.net._link(self.ns, f"lan{i}", ns, "eth0")
        _ip(self.ns, "addr", "add", f"{outside}/24", "dev", f"lan{i}")
        _ip(ns, "addr", "add", f"{inside}/24", "dev", "eth0")
        _ip(ns, "route", "add", "default", "via", outside)
        host = Host(self.net, ns, inside, self._public_for(inside))
        self.hosts.append(host)
        return host

    def _public_for(self, private_ip: str) -> str:
        return self.public_ip

    def rules(self, ruleset: str) -> None:
        """Load an nftables ruleset (text) into this router."""
        self.cmd("nft", "-f", "-", stdin=ruleset)


class Nat(Router):
    """A home or office router: masquerade (NAPT), optionally a firewall for its hosts.

    `block_udp` drops every UDP packet its hosts send (many corporate and
    public networks); `tcp_ports` (e.g. ``(443,)``) lets through only TCP to
    those ports, nothing else (the strictest guest networks).
    """

    def __init__(
        self,
        net: Net,
        ns: str,
        public_ip: str,
        index: int,
        *,
        block_udp: bool,
        tcp_ports: Sequence[int] | None,
    ) -> None:
        super().__init__(net, ns, public_ip, index)
        forward = []
        if block_udp or tcp_ports is not None:
            forward.append('iifname "lan*" meta l4proto udp drop')
        if tcp_ports is not None:
            ports = ", ".join(str(p) for p in tcp_ports)
            forward.append('iifname "lan*" meta l4proto != tcp drop')
            forward.append(f'iifname "lan*" tcp dport != {{ {ports} }} drop')
        self.rules(
            "table inet rr {\n"
            "  chain forward { type filter hook forward priority 0; policy accept;\n"
            + "".join(f"    {rule}\n" for rule in forward)
            + "  }\n"
            "  chain post { type nat hook postrouting priority 100;\n"
            '    oifname "wan" masquerade\n'
            "  }\n"
            "}\n"
        )


class OneToOneNat(Router):
    """A cloud provider's 1:1 NAT: its public address forwards everything to one host.

    The host keeps a private address and never sees the public one on an
    interface (AWS, GCP, Azure public IPs work this way). With `inbound`
    (e.g. ``["tcp/443", "udp/50000-50015"]``) it is also the cloud's firewall
    (a security group): new connections from the internet reach the host on
    those ports only; like a security group it is stateful, so replies to
    what the host sent first still come in.
    """

    def __init__(
        self, net: Net, ns: str, public_ip: str, index: int, inbound: Sequence[str] | None
    ) -> None:
        super().__init__(net, ns, public_ip, index)
        self._inbound = inbound

    def host(self, role: str) -> Host:
        if self.hosts:
            raise NetError("a 1:1 NAT has exactly one host behind it")
        host = super().host(role)
        forward = ""
        if self._inbound is not None:
            allowed = []
            for rule in self._inbound:
                proto, _, ports = rule.partition("/")
                if proto not in ("tcp", "udp") or not ports:
                    raise NetError(f"inbound rule {rule!r}: expected tcp/PORT or udp/LOW-HIGH")
                allowed.append(f'    iifname "wan" {proto} dport {ports} accept\n')
            forward = (
                "  chain forward { type filter hook forward priority 0; policy accept;\n"
                '    iifname "wan" ct state established,related accept\n'
                + "".join(allowed)
                + '    iifname "wan" drop\n'
                "  }\n"
            )
        self.rules(
            "table ip rr {\n"
            "  chain pre { type nat hook prerouting priority -100;\n"
            f'    iifname "wan" ip daddr {self.public_ip} dnat to {host.ip}\n'
            "  }\n"
            "  chain post { type nat hook postrouting priority 100;\n"
            f'    oifname "wan" ip saddr {host.ip} snat to {self.public_ip}\n'
            "  }\n" + forward + "}\n"
        )
        return host


def _ip(ns: str, *args: str) -> None:
    _run(["ip", "-n", ns, *args])


class Net:
    """A network of namespaces; use as a context manager (or call close())."""

    def __init__(self) -> None:
        reason = missing_tools()
        if reason is not None:
            raise NetError(reason)
        sweep_stale()
        self.name = f"{PREFIX}{os.getpid()}-{next(_nets)}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []
        self._roles: set[str] = set()
        self._public = itertools.count(10)
        self._routers = itertools.count(1)
        self._ports = itertools.count()
        try:
            self.internet = self._namespace("internet")
            _ip(self.internet, "link", "add", "br0", "type", "bridge")
            _ip(self.internet, "addr", "add", f"{PUBLIC_NET}.1/24", "dev", "br0")
            _ip(self.internet, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Net:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- building --------------------------------------------------------

    def host(self, role: str) -> Host:
        """A machine with a public address of its own (a server, a TURN server)."""
        ns = self._namespace(role)
        ip = self._attach(ns, "eth0")
        _ip(ns, "route", "add", "default", "via", f"{PUBLIC_NET}.1")
        return Host(self, ns, ip, ip)

    def nat(
        self, role: str, *, block_udp: bool = False, tcp_ports: Sequence[int] | None = None
    ) -> Nat:
        """A masquerading router on the internet; add machines with `.host()`."""
        ns = self._namespace(role)
        ip = self._attach(ns, "wan")
        _forwarding(ns)
        return Nat(self, ns, ip, next(self._routers), block_udp=block_udp, tcp_ports=tcp_ports)

    def one_to_one_nat(self, role: str, *, inbound: Sequence[str] | None = None) -> OneToOneNat:
        """A 1:1 NAT on the internet (and, with `inbound`, a firewall); `.host()` goes behind it."""
        ns = self._namespace(role)
        ip = self._attach(ns, "wan")
        _forwarding(ns)
        return OneToOneNat(self, ns, ip, next(self._routers), inbound)

    def _namespace(self, role: str) -> str:
        if role in self._roles:
            raise NetError(f"{role!r} is already a host of this net")
        self._roles.add(role)
        ns = f"{self.name}-{role}"
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        _ip(ns, "link", "set", "lo", "up")
        return ns

    def _link(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        """A veth pair from `ns_a` to `ns_b`, both ends up (never named in the root namespace)."""
        _ip(ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
        _ip(ns_a, "link", "set", name_a, "up")
        _ip(ns_b, "link", "set", name_b, "up")

    def _attach(self, ns: str, name: str) -> str:
        """Plug `ns` into the internet bridge; returns its new public address."""
        port = f"p{next(self._ports)}"
        self._link(self.internet, port, ns, name)
        _ip(self.internet, "link", "set", port, "master", "br0")
        ip = f"{PUBLIC_NET}.{next(self._public)}"
        _ip(ns, "addr", "add", f"{ip}/24", "dev", name)
        return ip

    # -- teardown --------------------------------------------------------

    def close(self) -> None:
        """End every process started here and delete every namespace; idempotent."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.processes:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        for ns in reversed(self._namespaces):
            _delete(ns)
        self._namespaces.clear()


def _forwarding(ns: str) -> None:
    _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])


# -- the relay and its visitors inside a net -----------------------------------

ROOT = Path(__file__).resolve().parent.parent
HTTP_PORT = 443
VISITOR = ROOT / "tests" / "netns_visitor.py"
BROWSER = ROOT / "tests" / "netns_browser.py"


def start_relay(host: Host, log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`server.py` on `host` (all addresses, port 443) as an operator runs it; waits until it serves."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    data = log_path.with_suffix(".data")
    with open(log_path, "wb") as log:
        proc = host.popen(
            [
                _python(),
                str(ROOT / "server.py"),
                "--host",
                "0.0.0.0",
                "--port",
                str(HTTP_PORT),
                "--metrics-port",
                "0",
                "--db",
                str(data / "moderation.sqlite3"),
                "--recordings-dir",
                str(data / "recordings"),
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=_env(),
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if "listening on" in text:
            return proc
        if proc.poll() is not None:
            raise NetError(f"server exited ({proc.returncode}):\n{text}")
        time.sleep(0.05)
    raise NetError(f"server did not come up:\n{log_path.read_text(errors='replace')}")


def relay_url(server: Host) -> str:
    return f"ws://{server.public_ip}:{HTTP_PORT}/ws"


def visit_pair(
    url: str,
    a: Host,
    b: Host,
    *,
    env: dict[str, str] | None = None,
    frames: int = 10,
    timeout: float = 30.0,
    ice_tcp: tuple[str, str] = ("no", "no"),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two headless visitors (tags 1 and 2) on `a` and `b` paired by the relay at `url`.

    Returns what each observed (see tests/netns_visitor.py) once both received
    `frames` of the other's stamped frames, or raises with both reports.
    `ice_tcp` is each visitor's ICE-TCP choice (rtc.client.ICE_TCP_CHOICES).
    """
    common = ["--url", url, "--frames", str(frames), "--timeout", str(timeout)]
    first, second = visit(
        [
            (a, [str(VISITOR), *common, "--tag", "1", "--partner", "2", "--ice-tcp", ice_tcp[0]]),
            (b, [str(VISITOR), *common, "--tag", "2", "--partner", "1", "--ice-tcp", ice_tcp[1]]),
        ],
        env=env,
    )
    return first, second


def visit_with_browser(
    server: Host, browser: Host, other: Host, *, env: dict[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Real Chromium on `browser` and a headless visitor on `other`, paired by the relay."""
    page = f"http://{server.public_ip}:{HTTP_PORT}/"
    first, second = visit(
        [
            (browser, [str(BROWSER), "--url", page, "--timeout", "40"]),
            (other, [str(VISITOR), "--url", relay_url(server), "--tag", "2", "--timeout", "40"]),
        ],
        env=env,
    )
    return first, second


def visit(
    visitors: Sequence[tuple[Host, list[str]]], *, env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Run visitor scripts (netns_visitor.py, netns_browser.py) at once; their final reports.

    Each prints a status line when it sees its partner; once all have (or
    failed), their stdin is closed and each prints its report.
    """
    procs = [
        host.popen(
            [_python(), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**_env(), **(env or {})},
        )
        for host, args in visitors
    ]
    first = [_line(p) for p in procs]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.stdin = None  # communicate() would flush it
    reports: list[dict[str, Any]] = []
    for proc, status in zip(procs, first, strict=True):
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        last = out.decode().strip().splitlines()
        report = json.loads(last[-1]) if last and last[-1].startswith("{") else {}
        report.update(status)
        report["stderr"] = err.decode(errors="replace")[-4000:]
        reports.append(report)
    if not all(r.get("ready") for r in reports):
        raise AssertionError(
            "the visitors did not see each other:\n"
            + "\n".join(
                f"visitor {i + 1}: {r.get('error')} pair={r.get('pair')} "
                f"summary={r.get('summary')}\n{r.get('stderr')}"
                for i, r in enumerate(reports)
            )
        )
    return reports


def _line(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    try:
        parsed = json.loads(line)
    except ValueError:
        return {"ready": False, "error": f"no status line (got {line!r})"}
    return parsed if isinstance(parsed, dict) else {"ready": False, "error": line}


def assert_no_address_leaks(reports: Sequence[dict[str, Any]], clients: Sequence[Host]) -> None:
    """No visitor received (in any signalling message) another visitor's address."""
    for i, report in enumerate(reports):
        text = json.dumps(report["messages"])
        for j, other in enumerate(clients):
            if i == j:
                continue
            for address in {other.ip, other.public_ip}:
                assert address not in text, (
                    f"visitor {i + 1} was told visitor {j + 1}'s address {address}: {text}"
                )


def _python() -> str:
    return sys.executable


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env
