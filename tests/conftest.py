"""Shared fixtures: the real server in its own process, on a free loopback port."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis import Redis

from app import create_app
from bench.target import free_port
from config import Settings
from rtc import packet_path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


class RelayServer:
    """`server.py` running as a user would run it, in a subprocess."""

    def __init__(self, log_path: Path, extra_args: list[str]) -> None:
        self.port = free_port()
        self.http_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        # /metrics has a listener of its own (the main port answers 404 without a token).
        # Worker i of --workers listens on metrics_port + i: four kept free.
        self.metrics_port = free_port(span=4)
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log_path = log_path
        self._args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None
        self._logs: list[Path] = []

    def start(self) -> None:
        """Start the server; after a stop() it comes back on the same port with a new log."""
        if self._proc is not None:
            self._logs.append(self.log_path)
            self.log_path = self.log_path.with_name(
                f"{self.log_path.stem}.run{len(self._logs) + 1}.log"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self._proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "server.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--metrics-port",
                str(self.metrics_port),
                *self._args,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.http_url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not come up:\n{self.log()}")

    def all_logs(self) -> str:
        """Every run's log, for checks that cover restarts."""
        return "".join(
            path.read_text(errors="replace")
            for path in [*self._logs, self.log_path]
            if path.exists()
        )

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 15) -> int | None:
        """Stop the server as an operator would (SIGINT) and return its exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._log.close()
        return proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, signum: int) -> None:
        assert self._proc is not None
        self._proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code once the process has ended (after a signal, say)."""
        assert self._proc is not None
        return self._proc.wait(timeout)


def _log_path(request: pytest.FixtureRequest) -> Path:
    name = (
        request.node.nodeid.replace("/", "_").replace("::", "-").replace("[", "-").replace("]", "")
    )
    return ARTIFACTS / "server-logs" / f"{name}.log"


@pytest.fixture
def relay_server_args() -> list[str]:
    """Extra command-line flags; override in a test module to configure the server."""
    return ["--media-timeout", "3", "--interest-timeout", "2", "--rematch-after", "2"]


@pytest.fixture
def relay_server(
    request: pytest.FixtureRequest, relay_server_args: list[str]
) -> Iterator[RelayServer]:
    server = RelayServer(_log_path(request), relay_server_args)
    server.start()
    try:
        yield server
    finally:
        code = server.stop()
        # A server that crashes or hangs on shutdown is a failure of its own.
        assert code in (0, None, -signal.SIGINT), f"server exited with {code}:\n{server.log()}"
        assert "Traceback" not in server.all_logs(), (
            f"server logged a traceback:\n{server.all_logs()}"
        )


@pytest.fixture
async def clients() -> AsyncIterator[list[object]]:
    """Collects ChatClients a test creates and closes them all at the end."""
    made: list[object] = []
    yield made
    await asyncio.gather(*(c.close() for c in made), return_exceptions=True)  # type: ignore[attr-defined]


class LocalServer:
    """The server app running in the test's own process, so a test can count its objects."""

    def __init__(self, app: web.Application, port: int) -> None:
        self.app = app
        self.port = port
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"


@pytest.fixture
async def local_server() -> AsyncIterator[Callable[[Settings], Awaitable[LocalServer]]]:
    """Starts `create_app(settings)` on a free loopback port in this process; stops it at the end."""
    runners: list[web.AppRunner] = []

    async def start(settings: Settings) -> LocalServer:
        app = create_app(settings)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return LocalServer(app, port)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


os.environ.setdefault("PYTHONUNBUFFERED", "1")


# --- packet path ------------------------------------------------------------------


@pytest.fixture(params=["python", "native"])
def packet_path_mode(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Runs a test once per packet path (rtc/packet_path.py): in this process, and in
    the servers it starts (they inherit RR_PACKET_PATH). `native` fails, never skips,
    where rtc/_fastpath.c was not built."""
    mode: str = request.param
    previous = packet_path.name()
    monkeypatch.setenv("RR_PACKET_PATH", mode)
    packet_path.select(mode)
    try:
        yield mode
    finally:
        packet_path.select(previous)


# --- Redis --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[object]:
    """One real redis-server for the session; each test keeps to its own key prefix."""
    from redis_server import RedisServer

    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


# --- Cluster nodes (tests/test_cluster.py) ------------------------------------------

_databases = itertools.cycle(range(1, 16))


@pytest.fixture
def redis_url(redis_server: Any) -> Iterator[str]:
    """A database of its own per test (pub/sub channels carry unique node ids)."""
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{next(_databases)}"
    client = Redis.from_url(url)
    client.flushdb()
    client.close()
    yield url


@pytest.fixture
def nodes(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Callable[..., RelayServer]]:
    """Starts cluster nodes; each is stopped at the end and must not have logged a traceback."""
    started: list[RelayServer] = []
    name = request.node.name.replace("[", "-").replace("]", "")

    def start(*extra: str, redis: str | None = None) -> RelayServer:
        log = ARTIFACTS / "server-logs" / f"test_cluster-{name}-node{len(started) + 1}.log"
        server = RelayServer(
            Path(log),
            [
                "--redis",
                redis or redis_url,
                "--cluster-secret",
                "test-cluster-secret-0123",
                "--media-timeout",
                "3",
                "--interest-timeout",
                "1",
                "--rematch-after",
                "1",
                *extra,
            ],
        )
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    for server in started:
        assert "Traceback" not in server.all_logs(), server.all_logs()


# --- PostgreSQL (the shared moderation store) ----------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One real PostgreSQL server for the session; each test gets a database of its own."""
    from postgres_server import PostgresServer

    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: Any) -> Iterator[str]:
    url: str = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """Opens (and reopens) one moderation store, on each backend in turn: the contract suite.

    Stores it opened and a test left open are closed at the end.
    """
    from moderation.store import ModerationStore

    opened: list[Any] = []
    if request.param == "sqlite":
        path = tmp_path / "moderation.sqlite3"

        def open_sqlite() -> Any:
            opened.append(ModerationStore(path))
            return opened[-1]

        request.addfinalizer(lambda: [store.close() for store in opened])
        return open_sqlite
    from moderation.store_pg import PostgresModerationStore

    url = request.getfixturevalue("postgres_url")

    def open_postgres() -> Any:
        opened.append(PostgresModerationStore(url))
        return opened[-1]

    # Runs before postgres_url's teardown drops the database (finalizers run in reverse).
    request.addfinalizer(lambda: [store.close() for store in opened])
    return open_postgres
