"""Who is where: node identity, the node registry, and the bus that reaches a session on any node."""

from .bus import LocalBus, RedisBus, SessionBus
from .node import SessionRef, new_node_id
from .registry import NodeRegistry

__all__ = ["LocalBus", "NodeRegistry", "RedisBus", "SessionBus", "SessionRef", "new_node_id"]
