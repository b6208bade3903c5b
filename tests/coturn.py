"""Debian's coturn, started by a test inside one host of a tests/netns.py network.

Never the system service: its own configuration (the safe one from
docs/operations.md: use-auth-secret, TLS on 443, private ranges denied as
peers, no CLI), its own files in a temporary folder, its own log.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from netns import Host, NetError

TURNSERVER = "/usr/bin/turnserver"
REALM = "relay.test"
# Peers a TURN server of a public service must never relay to (RFC 1918, loopback,
# link-local, CGNAT, unique-local and the rest of the non-public ranges).
DENIED_PEERS = (
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.168.0.0-192.168.255.255",
    "::1",
    "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
)


def self_signed(address: str, folder: Path) -> tuple[Path, Path]:
    """A certificate for `address` that is its own CA (give it to clients as SSL_CERT_FILE)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "turn.relay.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "turn-cert.pem", folder / "turn-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Coturn:
    """turnserver on `host`: TURN on 3478 (UDP and TCP), TURN over TLS on 443."""

    def __init__(self, host: Host, folder: Path, secret: str) -> None:
        if shutil.which(TURNSERVER) is None:
            raise NetError(f"{TURNSERVER} not found (apt-get install coturn; make test does)")
        self.host = host
        self.secret = secret
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, key = self_signed(host.ip, folder)
        self.log_path = folder / "turnserver.log"
        self.log_path.unlink(missing_ok=True)
        lines = [
            f"listening-ip={host.ip}",
            f"relay-ip={host.ip}",
            "listening-port=3478",
            "tls-listening-port=443",
            "use-auth-secret",
            f"static-auth-secret={secret}",
            f"realm={REALM}",
            f"cert={self.cert}",
            f"pkey={key}",
            "fingerprint",
            "no-cli",
            "no-multicast-peers",
            "no-tcp-relay",
            *(f"denied-peer-ip={r}" for r in DENIED_PEERS),
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
