"""A load worker: one process hosting load clients, driven by bench.relay over stdin/stdout.

Load clients are aiortc peers and cost CPU; spreading them over a few
processes keeps any one event loop from falling behind (which would show up as
latency that is not the server's). The benchmark process sends one JSON
command per line on stdin and reads one JSON reply per line on stdout::

    {"id": 3, "op": "next", "name": "relay-7"}   ->   {"id": 3, "ok": true, "result": null}

Commands (see :class:`Worker` for each): ``relay_users``, ``start``, ``next``,
``wait``, ``direct_pairs``, ``janus_pairs``, ``close_all``, ``logs``, ``exit``.
Logs stay in the worker until ``logs`` asks for them, so nothing crosses the
pipe while a window is measured.

Run as ``python -m bench.worker MEDIA_PICKLE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bench.load import LoadPeer, RelayUser, connect_direct
from bench.media import LoadMedia

logger = logging.getLogger("bench.worker")

# Connecting many peers at once makes ICE checks time out on a busy machine.
CONNECT_CONCURRENCY = 4
# The worker's own event-loop lag is sampled this often (seconds).
LAG_INTERVAL = 0.05


class Worker:
    """The load clients of one process, by name."""

    def __init__(self, media: LoadMedia) -> None:
        self.media = media
        self.users: dict[str, RelayUser] = {}
        self.peers: dict[str, LoadPeer] = {}
        self.janus: dict[str, Any] = {}
        self.logs: dict[str, dict[str, Any]] = {}
        # (monotonic time, how late the loop woke up in ms), sampled all along.
        self.lags_ms: list[tuple[float, float]] = []
        self._http: aiohttp.ClientSession | None = None
        self._limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def watch_lag(self) -> None:
        """Sample how late the event loop wakes up: a starved worker shows here."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_INTERVAL
            await asyncio.sleep(LAG_INTERVAL)
            self.lags_ms.append((time.monotonic(), (loop.time() - due) * 1000))

    # -- commands ----------------------------------------------------------

    async def relay_users(
        self,
        names: list[str],
        tags: list[int],
        url: str | None = None,
        urls: list[str] | None = None,
    ) -> None:
        """Connect one relay visitor per name (WebSocket, offer, media up); none starts yet.

        Every visitor to ``url``, or each to its own of ``urls`` (cluster nodes).
        """
        http = await self.http()
        where = urls if urls is not None else [url or ""] * len(names)

        async def one(name: str, tag: int, to: str) -> None:
            user = RelayUser(to, self.media, tag=tag)
            self.users[name] = user
            async with self._limit:
                await user.connect(http)

        await asyncio.gather(*(one(*a) for a in zip(names, tags, where, strict=True)))

    async def start(self, name: str) -> None:
        await self.users[name].start()

    async def next(self, name: str) -> None:
        await self.users[name].next()

    async def wait(self, name: str, type: str, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
        return await self.users[name].wait_for(type, timeout)

    async def direct_pairs(self, pairs: list[list[Any]]) -> None:
        """Connect ``[name_a, tag_a, name_b, tag_b]`` pairs straight to each other."""

        async def one(name_a: str, tag_a: int, name_b: str, tag_b: int) -> None:
            a = self.peers[name_a] = LoadPeer(self.media, tag=tag_a)
            b = self.peers[name_b] = LoadPeer(self.media, tag=tag_b)
            async with self._limit:
                await connect_direct(a, b)

        await asyncio.gather(*(one(*pair) for pair in pairs))

    async def janus_pairs(self, url: str, pairs: list[list[Any]]) -> None:
        """Join ``[room, name_a, tag_a, name_b, tag_b]`` pairs to Janus VideoRoom rooms."""
        from bench.janus import JanusUser  # only Janus runs need it

        http = await self.http()

        async def one(room: int, name_a: str, tag_a: int, name_b: str, tag_b: int) -> None:
            a = self.janus[name_a] = JanusUser(url, self.media, tag=tag_a, room=room)
            b = self.janus[name_b] = JanusUser(url, self.media, tag=tag_b, room=room)
            async with self._limit:
                await a.publish(http, create_room=True)
                await b.publish(http, create_room=False)
                await a.subscribe(b.feed_id)
                await b.subscribe(a.feed_id)

        await asyncio.gather(*(one(*pair) for pair in pairs))

    async def close_all(self) -> None:
        """Close every client; their logs are kept for ``logs``."""
        for name, user in self.users.items():
            self.logs[name] = _log(user.peer, user.events)
        for name, peer in self.peers.items():
            self.logs[name] = _log(peer, [])
        for name, janus_user in self.janus.items():
            self.logs[name] = janus_user.log()
        closing: list[Awaitable[None]] = [u.close() for u in self.users.values()]
        closing += [p.close() for p in self.peers.values()]
        closing += [j.close() for j in self.janus.values()]
        await asyncio.gather(*closing, return_exceptions=True)
        self.users.clear()
        self.peers.clear()
        self.janus.clear()

    async def logs_and_lag(self) -> dict[str, Any]:
        logs, self.logs = self.logs, {}
        lags, self.lags_ms = self.lags_ms, []
        return {"clients": logs, "lag_ms": lags}

    async def close(self) -> None:
        await self.close_all()
        if self._http is not None:
            await self._http.close()


def _log(peer: LoadPeer, events: list[tuple[float, str]]) -> dict[str, Any]:
    return {
        "tag": peer.tag,
        "sent": peer.sent.frames,
        "keyframes_on_request": peer.sent.keyframes_on_request,
        "audio_sent": peer.sent.audio_packets,
        "received": peer.received.video,
        "audio_received": peer.received.audio_frames,
        "events": events,
    }


async def serve(worker: Worker, reader: asyncio.StreamReader) -> None:
    commands: dict[str, Callable[..., Awaitable[Any]]] = {
        "relay_users": worker.relay_users,
        "start": worker.start,
        "next": worker.next,
        "wait": worker.wait,
        "direct_pairs": worker.direct_pairs,
        "janus_pairs": worker.janus_pairs,
        "close_all": worker.close_all,
        "logs": worker.logs_and_lag,
    }
    pending: set[asyncio.Task[None]] = set()

    async def run(request: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": request.get("id")}
        try:
            args = request.get("args", {})
            reply["result"] = await commands[request["op"]](**args)
            reply["ok"] = True
        except Exception as exc:
            logger.exception("command %s failed", request.get("op"))
            reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        request = json.loads(line)
        if request.get("op") == "exit":
            break
        task = asyncio.create_task(run(request))
        pending.add(task)
        task.add_done_callback(pending.discard)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def amain(media: LoadMedia) -> None:
    worker = Worker(media)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    lag = asyncio.create_task(worker.watch_lag())
    try:
        sys.stdout.write(json.dumps({"id": None, "ok": True, "result": "ready"}) + "\n")
        sys.stdout.flush()
        await serve(worker, reader)
    finally:
        lag.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lag
        await worker.close()


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s worker {time.monotonic():.0f} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with open(sys.argv[1], "rb") as file:
        media = pickle.load(file)  # written by bench.relay a moment ago
    asyncio.run(amain(media))


if __name__ == "__main__":
    main()
