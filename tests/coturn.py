"""Debian's coturn, started by a test inside one host of a tests/netns.py network.

Never the system service: the configuration docs/operations.md recommends
(read from that page, so the documented one is the tested one: use-auth-secret,
TLS on 443, private ranges denied as peers, no CLI) with the test's own
certificate, secret, files and log.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from certificates import self_signed_certificate
from netns import Host, NetError

TURNSERVER = "/usr/bin/turnserver"
DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"
REALM = "relay.test"


def documented_config() -> list[str]:
    """The coturn configuration docs/operations.md recommends, line by line (no comments)."""
    text = DOC.read_text()
    start = text.index("**A safe coturn configuration**")
    block = text[text.index("```ini\n", start) + len("```ini\n") :]
    block = block[: block.index("```")]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


class Coturn:
    """turnserver on `host`, configured as docs/operations.md says: TURN on 3478, TLS on 443."""

    def __init__(self, host: Host, folder: Path, secret: str) -> None:
        if shutil.which(TURNSERVER) is None:
            raise NetError(f"{TURNSERVER} not found (apt-get install coturn; make test does)")
        self.host = host
        self.secret = secret
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, key = self_signed_certificate(folder, host.ip)
        self.log_path = folder / "turnserver.log"
        self.log_path.unlink(missing_ok=True)
        # The documented configuration, with this test's certificate, secret and realm.
        ours = {
            "cert": str(self.cert),
            "pkey": str(key),
            "static-auth-secret": secret,
            "realm": REALM,
        }
        lines = [
            f"{line.split('=')[0]}={ours[line.split('=')[0]]}"
            if line.split("=")[0] in ours
            else line
            for line in documented_config()
        ]
        lines += [
            f"listening-ip={host.ip}",
            f"relay-ip={host.ip}",
            f"userdb={folder / 'turndb'}",
            f"pidfile={folder / 'turnserver.pid'}",
            f"log-file={self.log_path}",
            "simple-log",
        ]
        config = folder / "turnserver.conf"
        config.write_text("\n".join(lines) + "\n")
        self.proc = host.popen(
            [TURNSERVER, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NetError(f"turnserver exited ({self.proc.returncode}):\n{self.log()}")
            listening = self.host.cmd("ss", "-Hltn", check=False)
            if ":443 " in listening and ":3478 " in listening:
                return
            time.sleep(0.1)
        raise NetError(f"turnserver did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def url(self, scheme: str = "turn", port: int = 3478, transport: str = "tcp") -> str:
        return f"{scheme}:{self.host.ip}:{port}?transport={transport}"
