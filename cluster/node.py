"""Node identity, and a reference to a session that may live on another node."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class SessionRef:
    """A session wherever it lives: its id and the node (process) that holds its socket.

    A partner is one of these, never a Session object, so a local pair and a pair
    across nodes are the same thing to the Lobby; only the bus tells them apart.
    """

    id: str
    node: str


def new_node_id() -> str:
    """A node id unique across restarts: host, pid and a random tail (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
