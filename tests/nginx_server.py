"""Debian's nginx as an ordinary process, running docs/nginx-cluster.conf in front of nodes.

Everything nginx writes (pid, logs, temp files) stays in a temp dir of its
own: `-p` sets the prefix, `-c` our main config, `-e` the error log it uses
before reading that config, so /var/log and /run are never touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from certificates import self_signed_certificate

from bench.target import free_port

ROOT = Path(__file__).resolve().parent.parent
# The documented example; the test fills in ports, addresses and paths, nothing else.
SITE_TEMPLATE = ROOT / "docs" / "nginx-cluster.conf"
NGINX = "/usr/sbin/nginx"
INSTALL_HINT = "install Debian's nginx: `make test` does, or `apt-get install -y nginx`"

# The values of the documented example that a test run replaces.
EXAMPLE_NODES = ("10.0.0.11:8080", "10.0.0.12:8080")
EXAMPLE_CERT = "/etc/letsencrypt/live/chat.example.org/fullchain.pem"
EXAMPLE_KEY = "/etc/letsencrypt/live/chat.example.org/privkey.pem"

MAIN_CONFIG = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/site.conf;
}}
"""


def fill_in(template: str, replacements: dict[str, str]) -> str:
    """Each placeholder must be in the example exactly once: a changed example fails loudly."""
    for old, new in replacements.items():
        count = template.count(old)
        if count != 1:
            raise AssertionError(f"{old!r} is {count} times in {SITE_TEMPLATE}, expected once")
        template = template.replace(old, new)
    return template


class NginxServer:
    """nginx on two free loopback ports (HTTP redirect, HTTPS proxy) in front of `upstreams`."""

    def __init__(self, upstreams: list[str], log_prefix: Path) -> None:
        if not Path(NGINX).exists() and shutil.which("nginx") is None:
            # Fail, never skip: a missing nginx would silently drop the documented example's test.
            raise RuntimeError(f"{NGINX} not found; {INSTALL_HINT}")
        binary = NGINX if Path(NGINX).exists() else str(shutil.which("nginx"))
        if len(upstreams) != len(EXAMPLE_NODES):
            raise ValueError(f"the example has {len(EXAMPLE_NODES)} nodes")
        self.http_port = free_port()
        self.https_port = free_port()
        self.origin = f"https://127.0.0.1:{self.https_port}"
        self.url = self.origin
        self.ws_url = f"wss://127.0.0.1:{self.https_port}/ws"
        self.log_prefix = log_prefix
        self._dir = tempfile.TemporaryDirectory(prefix="rr-nginx-")
        work = Path(self._dir.name)
        self.cert_path, key_path = self_signed_certificate(work)
        replacements = {
            "listen 80;": f"listen 127.0.0.1:{self.http_port};",
            "listen 443 ssl;": f"listen 127.0.0.1:{self.https_port} ssl;",
            EXAMPLE_CERT: str(self.cert_path),
            EXAMPLE_KEY: str(key_path),
        }
        for example, upstream in zip(EXAMPLE_NODES, upstreams, strict=True):
            replacements[f"server {example} "] = f"server {upstream} "
        (work / "site.conf").write_text(fill_in(SITE_TEMPLATE.read_text(), replacements))
        (work / "nginx.conf").write_text(MAIN_CONFIG.format(dir=work))
        self.error_log = work / "error.log"
        self.access_log = work / "access.log"
        self._proc = subprocess.Popen(
            [binary, "-p", f"{work}/", "-c", str(work / "nginx.conf"), "-e", str(self.error_log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._wait_for_port()

    def _wait_for_port(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nginx exited early ({self._proc.returncode}):\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.https_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.https_port}:\n{self.log()}")

    def log(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        # Keep nginx's logs with the nodes' logs, for a failure's post-mortem.
        self.log_prefix.parent.mkdir(parents=True, exist_ok=True)
        for path in (self.error_log, self.access_log):
            if path.exists():
                shutil.copy(path, f"{self.log_prefix}-nginx-{path.name}")
        self._dir.cleanup()
