"""A real PostgreSQL server (Debian's postgresql) on a free loopback port, in a temp dir.

Never the system service: initdb makes a throwaway cluster and `postgres` runs it in
the foreground as this test's child process. PostgreSQL refuses to run as root, so
under root both run as Debian's `postgres` system user (created by the package; the
temp dir is handed to it); otherwise as the current user. Durability is switched off
(fsync, synchronous_commit): the data dies with the test anyway.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from bench.target import free_port

INSTALL_HINT = "install Debian's postgresql: `make test` does, or `apt-get install -y postgresql`"


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major)
    if not found:
        # Fail, never skip: a missing server would silently drop the PostgreSQL tests.
        raise RuntimeError(
            f"PostgreSQL's {name} not found under /usr/lib/postgresql; {INSTALL_HINT}"
        )
    return found[-1]


def _major(path: str) -> int:
    version = Path(path).parent.parent.name
    return int(version) if version.isdigit() else 0


class PostgresServer:
    """postgres in a temp dir, trusting local connections as user `postgres`; stop() ends it."""

    def __init__(self) -> None:
        self.port = free_port()
        self._user = "postgres" if os.getuid() == 0 else None
        self._dir = tempfile.mkdtemp(prefix="rr-postgres-")
        self.data = Path(self._dir) / "data"
        self.log_path = Path(self._dir) / "postgres.log"
        self._names = itertools.count(1)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self._dir, entry.pw_uid, entry.pw_gid)
        try:
            subprocess.run(
                [
                    _binary("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                user=self._user,
                cwd=self._dir,
                check=True,
                capture_output=True,
            )
        except subprocess.CalledProcessError as exc:
            self._remove()
            raise RuntimeError(
                f"initdb failed:\n{exc.stdout.decode()}{exc.stderr.decode()}"
            ) from exc
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self._proc = subprocess.Popen(
            [
                _binary("postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self._dir}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ],
            user=self._user,
            cwd=self._dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.admin_url = self.url("postgres")
        self._wait_ready()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"postgres exited early:\n{self.log()}")
            try:
                psycopg.connect(self.admin_url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections:\n{self.log()}")

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._proc.poll() is None:
            # SIGINT: PostgreSQL's fast shutdown (ends sessions, no waiting on clients).
            self._proc.send_signal(2)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        self._remove()

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self._dir)
