"""A real redis-server on a free loopback port: the tests' and the cluster benchmark's."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.target import free_port

REDIS_SERVER = "redis-server"
INSTALL_HINT = (
    "install Debian's redis-server: `make test` does, or `apt-get install -y redis-server`"
)


class RedisServer:
    """redis-server without persistence, in a temp dir, stopped by stop()."""

    def __init__(self, port: int | None = None) -> None:
        """On `port` (a restart of a stopped one), or on a free port."""
        binary = shutil.which(REDIS_SERVER)
        if binary is None:
            # Fail, never skip: a missing server would silently drop the cluster tests.
            raise RuntimeError(f"{REDIS_SERVER} not found; {INSTALL_HINT}")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="rr-redis-")
        self.log_path = Path(self._dir.name) / "redis.log"
        # fmt: off
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", self._dir.name, "--logfile", str(self.log_path),
        ]
        # fmt: on
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_for_ping()

    def _wait_for_ping(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited early:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING:\n{self.log()}")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._dir.cleanup()
