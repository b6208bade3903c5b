"""The relay under test: `server.py` in its own process, as an operator runs it."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sys
from pathlib import Path
from typing import IO, Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


# Test and benchmark ports come from below the kernel's ephemeral range: a port the
# kernel picks for bind(0) or an outgoing connection (aioice's sockets, clients)
# can never take one of ours between our check and the server's bind, and a port
# next to ours (worker i's metrics listener is --metrics-port + i) stays ours.
# Ports are also never handed out twice in one process: the kernel once gave one
# port to two bind(0) calls in a row, and a server got it for HTTP and metrics.
_LOWEST = 10_000
_HANDED_OUT: set[tuple[int, int]] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(kind: int, host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _unused_ports(kind: int, host: str, span: int) -> int:
    high = max(_ephemeral_low(), _LOWEST + 1_000) - span
    for _ in range(500):
        first = random.randrange(_LOWEST, high)
        ports = range(first, first + span)
        if any((kind, port) in _HANDED_OUT for port in ports):
            continue
        if all(_bindable(kind, host, port) for port in ports):
            _HANDED_OUT.update((kind, port) for port in ports)
            return first
    raise RuntimeError(f"no {span} free consecutive ports below the ephemeral range")


def free_port(span: int = 1) -> int:
    """A TCP port free on 127.0.0.1 (the first of `span` consecutive ones)."""
    return _unused_ports(socket.SOCK_STREAM, "127.0.0.1", span)


def free_udp_port(span: int = 1) -> int:
    """A UDP port free on every address (for --media-port; the first of `span`)."""
    return _unused_ports(socket.SOCK_DGRAM, "0.0.0.0", span)


class ServiceProcess:
    """A relay (ours or Janus) in its own process, logging to a file, stopped with SIGINT."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def _spawn(
        self, *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> asyncio.subprocess.Process:
        self._log = open(self.log_path, "wb")  # noqa: SIM115, ASYNC230 - closed in _terminate()
        self._proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        return self._proc

    async def _terminate(self, grace: float) -> int | None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._log is not None:
            self._log.close()
        return None if proc is None else proc.returncode


class RelayServer(ServiceProcess):
    """One `server.py --relay MODE` on a free loopback port (``env`` added to its environment)."""

    def __init__(
        self,
        mode: str,
        log_path: Path,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(log_path)
        self.mode = mode
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.metrics_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self._args = extra_args
        self._env = env

    async def start(self) -> None:
        proc = await self._spawn(
            sys.executable,
            str(ROOT / "server.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            "--relay",
            self.mode,
            "--log-level",
            "WARNING",
            # Every load client comes from this one address.
            "--ip-max-sessions",
            "0",
            "--ip-max-peers",
            "0",
            "--ip-max-new-sessions",
            "0",
            *self._args,
            cwd=ROOT,
            env=self._env,
        )
        async with aiohttp.ClientSession() as http, asyncio.timeout(START_TIMEOUT):
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"server exited early; see {self.log_path}")
                try:
                    async with http.get(self.http_url + "/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def scrape(self) -> dict[str, float]:
        """`GET /metrics` (on the metrics listener) as ``{'name{label="value"}': value}``."""
        async with aiohttp.ClientSession() as http, http.get(self.metrics_url) as r:
            text = await r.text()
        samples: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    async def memory(self, top: int = 25, *, collect: bool = False) -> dict[str, Any]:
        """`GET /debug/memory` (on the metrics listener): see signalling/memory_report.py."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                self.metrics_url.replace("/metrics", "/debug/memory"),
                params={"top": str(top), "collect": "1" if collect else "0"},
            ) as r,
        ):
            r.raise_for_status()
            body: dict[str, Any] = await r.json()
            return body

    async def memory_baseline(self) -> None:
        """Keep a tracemalloc snapshot in the server; later `memory()` answers diff against it."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.metrics_url.replace("/metrics", "/debug/memory/baseline")) as r,
        ):
            r.raise_for_status()

    async def stop(self) -> int | None:
        return await self._terminate(20)
