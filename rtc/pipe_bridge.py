"""PipeBridge: the MediaBridge (rtc/bridge.py) that carries a cross-node pair over the pipe.

Each side of a pair across nodes offers the other its pipe address and one
stream id per kind; `connect` then sends the local peer's publishers to the
other node and attaches the streams coming back to the local peer's
subscribers, exactly where a local partner's publishers would go. So the
subscriber's continuity rewrite, keyframe gating (a keyframe is asked for on
attach, across the pipe) and moderation's frame taps are the same for a
partner on another node.
"""

from __future__ import annotations

import ipaddress
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

from rtc.peer import KINDS, Peer
from rtc.pipe import Address, PipeEndpoint, PipePublisher

logger = logging.getLogger(__name__)


@dataclass
class _Link:
    """One local peer's half of a pair across nodes."""

    out: dict[str, int] = field(default_factory=dict)  # kind -> stream id we send
    remote: Address | None = None
    incoming: dict[str, PipePublisher] = field(default_factory=dict)


class PipeBridge:
    """Media for pairs across nodes, through this node's `PipeEndpoint`."""

    def __init__(self, endpoint: PipeEndpoint, *, announce: str | None = None) -> None:
        self.endpoint = endpoint
        # The address other nodes send to: the endpoint's own unless it listens
        # on a wildcard address (then `announce` is required; see app.py).
        self._announce = announce
        # Weak: a peer that closes without a disconnect does not stay alive here.
        self._links: weakref.WeakKeyDictionary[Peer, _Link] = weakref.WeakKeyDictionary()

    def address(self) -> Address:
        host, port = self.endpoint.address
        return (self._announce or host, port)

    async def offer_streams(self, local_peer: Peer) -> dict[str, Any]:
        link = self._links.get(local_peer)
        if link is None:
            link = self._links[local_peer] = _Link()
        for kind in KINDS:
            if kind not in link.out:
                link.out[kind] = self.endpoint.allocate_stream_id()
        host, port = self.address()
        return {"pipe": [host, port], "streams": dict(link.out)}

    async def connect(self, local_peer: Peer, remote_description: dict[str, Any]) -> None:
        parsed = _parse(remote_description)
        if parsed is None:
            logger.warning("%r: the partner's node sent no usable pipe description", local_peer)
            return
        remote, streams = parsed
        link = self._links.get(local_peer)
        if link is None or link.remote is not None:
            # No offer made (or already connected): the Lobby's order was not kept.
            logger.warning("%r: pipe connect without a fresh offer; ignored", local_peer)
            return
        link.remote = remote
        for kind in KINDS:
            publisher = local_peer.publishers.get(kind)
            if publisher is not None and kind in link.out:
                self.endpoint.send_stream(publisher, remote, link.out[kind])
            subscriber = local_peer.subscribers.get(kind)
            stream_id = streams.get(kind)
            if subscriber is not None and stream_id is not None:
                incoming = self.endpoint.receive_stream(
                    stream_id, kind, remote, name=f"{local_peer.name}<-pipe"
                )
                link.incoming[kind] = incoming
                # Asks the other node for a keyframe at once, as a local attach does.
                subscriber.attach(incoming)

    async def disconnect(self, local_peer: Peer) -> None:
        link = self._links.pop(local_peer, None)
        if link is None:
            return
        if link.remote is not None:
            for stream_id in link.out.values():
                self.endpoint.stop_sending(stream_id)
        for kind, incoming in link.incoming.items():
            subscriber = local_peer.subscribers.get(kind)
            if subscriber is not None and subscriber.source is incoming:
                subscriber.detach()
            await incoming.close()

    async def close(self) -> None:
        await self.endpoint.close()


def _parse(description: dict[str, Any]) -> tuple[Address, dict[str, int]] | None:
    """The pipe address and stream ids another node sent, or None if they are not usable."""
    address, streams = parse_address(description.get("pipe")), description.get("streams")
    if address is None or not isinstance(streams, dict):
        return None
    ids = {
        kind: value
        for kind, value in streams.items()
        if kind in KINDS
        and isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value < 1 << 32
    }
    return address, ids


def parse_address(value: Any) -> Address | None:
    """A pipe address another node sent (`[ip, port]`), or None if it is not one."""
    if not (isinstance(value, list) and len(value) == 2):
        return None
    host, port = value
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return (host, port) if 0 < port < 65536 else None
