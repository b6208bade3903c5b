"""Moderation requests: a moderator's request reaches the node that holds a session.

The dashboard may be served by any node (or any worker), but a session lives in one
process: listing everyone, kicking, ending a ban's live visits or releasing a held
video must run where the session is. `call(node, op, args)` runs the handler
registered for `op` on `node` and returns its answer; `call_all` asks every live node.

LocalChannel serves one process. RedisChannel gives each node a pub/sub channel for
requests and answers (request id, reply to the asking node's channel) and one shared
channel for notices ("sessions changed", so every node's dashboards refresh).

Why its own channel rather than the SessionBus: the bus carries one-way messages to a
session, held and retried for seconds through a Redis outage; a moderator's request is
a question with an answer, and one that cannot be answered soon must fail at once with
the reason (the moderator is waiting, and a kick retried 10 s later surprises
everyone). So nothing here is retried or queued: every call is bounded by
CALL_TIMEOUT, at most MAX_PENDING calls wait at once per node, at most MAX_SERVING
handlers run at once per node, and each failure is a ChannelError with an HTTP status
and a sentence a moderator can act on.

Every message is signed with the cluster secret (HMAC-SHA256, with the time it was
sent): a message from anyone who can publish on Redis but does not hold the secret, or
one replayed more than a minute later, is dropped and logged, never served (cluster/signing.py). So
a kick, a ban's enforcement or a read of an evidence file (moderation/files.py) comes
only from a node of this cluster.

Watching and recording someone on another node (moderation/remote.py) are streams
with a lifetime and leases; their opening, renewals and endings are requests here too
(feed_open, feed_renew, feed_close, feed_ended), so moderation has one path between nodes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from redis.asyncio import Redis

from cluster.registry import NodeRegistry
from cluster.signing import Signer
from cluster.subscription import Subscription

logger = logging.getLogger(__name__)

# (arguments) -> answer; raises ChannelError for an answer that is a refusal.
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# A notice name from another node ("sessions").
NoticeHandler = Callable[[str], None]

# A request travels Redis twice and its handler takes milliseconds; a node that has not
# answered in 2 s is stalled or gone, and the moderator is told so rather than kept waiting.
CALL_TIMEOUT = 2.0
MAX_PENDING = 256
MAX_SERVING = 64


class ChannelError(Exception):
    """A request that could not be done, with the HTTP status a route should answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ModerationChannel(Protocol):
    """Runs a moderation request on the node that holds what it is about."""

    node: str

    def handle(self, op: str, handler: Handler) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def call(self, node: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """The answer of `op` on `node`; ChannelError when refused, gone or silent."""
        ...

    async def call_all(
        self, op: str, args: dict[str, Any]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Every live node's answer, and for each node that gave none, why."""
        ...

    def notify(self, name: str) -> None:
        """Tell the other nodes `name` changed here (never blocks; may be dropped)."""
        ...

    def on_notice(self, handler: NoticeHandler) -> None: ...


class _Handlers:
    def __init__(self, node: str) -> None:
        self.node = node
        self._handlers: dict[str, Handler] = {}
        self._notice: NoticeHandler = lambda name: None

    def handle(self, op: str, handler: Handler) -> None:
        self._handlers[op] = handler

    def on_notice(self, handler: NoticeHandler) -> None:
        self._notice = handler

    async def run(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers.get(op)
        if handler is None:
            raise ChannelError(501, f"node {self.node} does not know the request {op!r}")
        return await handler(args)


class LocalChannel(_Handlers):
    """One node: every session is here."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def call(self, node: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if node != self.node:
            raise ChannelError(
                404, f"no node {node} here: this server runs alone (node {self.node})"
            )
        return await self.run(op, args)

    async def call_all(
        self, op: str, args: dict[str, Any]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        return {self.node: await self.run(op, args)}, {}

    def notify(self, name: str) -> None:
        pass


class RedisChannel(_Handlers):
    """Requests and answers over one Redis pub/sub channel per node."""

    def __init__(
        self,
        redis: Redis,
        node: str,
        registry: NodeRegistry,
        *,
        key_prefix: str = "rr",
        timeout: float = CALL_TIMEOUT,
        secret: bytes | None = None,
    ) -> None:
        super().__init__(node)
        self._signer = Signer(secret, "moderation message")
        self._redis = redis
        self._registry = registry
        self._prefix = "{" + key_prefix + "}:moderation:"
        self._notices = self._prefix + "notices"
        self._timeout = timeout
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._notifying: set[str] = set()
        self._reader: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None

    def channel(self, node: str) -> str:
        return self._prefix + node

    async def start(self) -> None:
        # Subscribed before start returns: a request sent once this node beats is heard.
        self._subscription = Subscription(
            self._redis, [self.channel(self.node), self._notices], "moderation channel"
        )
        await self._subscription.open()
        self._reader = asyncio.create_task(self._read(), name="moderation channel")

    async def close(self) -> None:
        tasks = [t for t in (self._reader, *self._serving) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._reader = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelError(503, f"node {self.node} is stopping"))
        self._pending.clear()
        if self._subscription is not None:
            await self._subscription.close()

    # -- asking ----------------------------------------------------------------

    async def call(self, node: str, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if node == self.node:
            return await self.run(op, args)
        if len(self._pending) >= MAX_PENDING:
            raise ChannelError(503, "too many moderation requests waiting for other nodes")
        request_id = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            payload = self._signer.seal(
                {"id": request_id, "from": self.node, "op": op, "args": args}
            )
            try:
                heard = await self._redis.publish(self.channel(node), payload)
            except Exception as exc:
                raise ChannelError(503, f"cannot reach the other nodes (Redis: {exc})") from None
            if not heard:
                raise ChannelError(410, await self._why_not_heard(node))
            try:
                return await asyncio.wait_for(future, self._timeout)
            except TimeoutError:
                raise ChannelError(
                    504,
                    f"node {node} did not answer within {self._timeout:g} s "
                    "(stalled or stopping); nothing was done there",
                ) from None
        finally:
            self._pending.pop(request_id, None)

    async def _why_not_heard(self, node: str) -> str:
        try:
            alive = node in await self._registry.alive([node])
        except Exception:
            alive = False
        if alive:
            return f"node {node} is not listening right now (restarting?); try again"
        return (
            f"node {node} is not in the cluster any more: everyone on it was disconnected "
            "when it stopped"
        )

    async def call_all(
        self, op: str, args: dict[str, Any]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        try:
            nodes = await self._registry.live_nodes()
        except Exception as exc:
            # Redis cannot say who else is there: this node's own answer still counts.
            nodes = set()
            others_unknown = f"the other nodes cannot be listed (Redis: {exc})"
        else:
            others_unknown = ""
        nodes.add(self.node)
        order = sorted(nodes)
        results = await asyncio.gather(
            *(self.call(n, op, args) for n in order), return_exceptions=True
        )
        answers: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        for node, result in zip(order, results, strict=True):
            if isinstance(result, ChannelError):
                errors[node] = result.message
            elif isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                logger.error("moderation request %s on %s failed", op, node, exc_info=result)
                errors[node] = f"node {node} failed: {result}"
            else:
                answers[node] = result
        if others_unknown:
            errors["*"] = others_unknown
        return answers, errors

    def notify(self, name: str) -> None:
        if name in self._notifying:
            return  # one in flight already says it
        self._notifying.add(name)
        task = asyncio.create_task(self._publish_notice(name), name=f"notice {name}")
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _publish_notice(self, name: str) -> None:
        try:
            await self._redis.publish(
                self._notices, self._signer.seal({"from": self.node, "n": name})
            )
        except Exception as exc:
            logger.debug("could not publish the %s notice (%s)", name, exc)
        finally:
            self._notifying.discard(name)

    # -- answering -------------------------------------------------------------

    async def _read(self) -> None:
        assert self._subscription is not None
        async for message in self._subscription.messages():
            try:
                data = self._signer.open(message["data"])
                if data is None:
                    continue
                channel = message.get("channel")
                if isinstance(channel, bytes):
                    channel = channel.decode()
                if channel == self._notices:
                    if data.get("from") != self.node:
                        self._notice(str(data["n"]))
                elif "re" in data:
                    self._answered(data)
                else:
                    self._serve(data)
            except Exception:
                logger.exception("bad moderation channel message %r", message.get("data"))

    def _answered(self, data: dict[str, Any]) -> None:
        future = self._pending.get(str(data["re"]))
        if future is None or future.done():
            return  # it timed out already
        if data.get("ok"):
            future.set_result(dict(data["answer"]))
        else:
            future.set_exception(ChannelError(int(data["status"]), str(data["error"])))

    def _serve(self, data: dict[str, Any]) -> None:
        request_id, asker = str(data["id"]), str(data["from"])
        op, args = str(data["op"]), dict(data.get("args") or {})
        if len(self._serving) >= MAX_SERVING:
            reply = {"re": request_id, "ok": False, "status": 503}
            reply["error"] = f"node {self.node} is busy with other moderation requests"
            self._spawn_reply(asker, reply)
            return
        task = asyncio.create_task(self._answer(asker, request_id, op, args), name=f"serve {op}")
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _answer(self, asker: str, request_id: str, op: str, args: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"re": request_id}
        try:
            reply |= {"ok": True, "answer": await self.run(op, args)}
        except ChannelError as exc:
            reply |= {"ok": False, "status": exc.status, "error": exc.message}
        except Exception as exc:
            logger.exception("moderation request %s from %s failed", op, asker)
            reply |= {"ok": False, "status": 500, "error": f"node {self.node} failed: {exc}"}
        await self._reply(asker, reply)

    def _spawn_reply(self, asker: str, reply: dict[str, Any]) -> None:
        task = asyncio.create_task(self._reply(asker, reply), name="moderation reply")
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _reply(self, asker: str, reply: dict[str, Any]) -> None:
        try:
            await self._redis.publish(self.channel(asker), self._signer.seal(reply))
        except Exception as exc:
            logger.warning("could not answer a moderation request from %s (%s)", asker, exc)
