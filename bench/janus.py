"""Janus (a C SFU, Debian's `janus` package) relaying the same load, as an anchor.

:class:`JanusServer` writes a minimal configuration to a temporary folder
(VideoRoom plugin, its WebSocket API on 127.0.0.1, no STUN or TURN) and runs
Janus with it. Media takes the same path as with our server: aioice never
offers a loopback candidate, so ICE pairs the machine's own interface
addresses, which the kernel delivers locally; nothing leaves the machine. :class:`JanusUser` is one load client in a VideoRoom:
it publishes the standard load on one peer connection and subscribes to its
partner's feed on another (Janus never mixes the two), with the same
:class:`bench.load.LoadPeer` as against our relay, so both are measured with
the same clients. Each pair gets a room of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from bench.load import LoadPeer
from bench.media import LoadMedia
from bench.target import ServiceProcess

# Where Debian installs the modules.
JANUS_LIB = Path("/usr/lib/x86_64-linux-gnu/janus")
START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 20.0
KEEPALIVE = 20.0  # Janus drops sessions silent for 60 s


def janus_binary() -> str | None:
    """Path of the `janus` executable, or None when the package is not installed."""
    return shutil.which("janus")


def _lib_dir() -> Path:
    if JANUS_LIB.is_dir():
        return JANUS_LIB
    # Other architectures: /usr/lib/<triplet>/janus.
    found = sorted(Path("/usr/lib").glob("*/janus/plugins"))
    if not found:
        raise RuntimeError("Janus modules not found under /usr/lib/*/janus")
    return found[0].parent


def write_config(folder: Path, ws_port: int) -> Path:
    """Janus's configuration: VideoRoom plus its WebSocket API on loopback, nothing else."""
    lib = _lib_dir()
    plugins = [p.name for p in (lib / "plugins").glob("*.so") if "videoroom" not in p.name]
    transports = [p.name for p in (lib / "transports").glob("*.so") if "websockets" not in p.name]
    (folder / "janus.jcfg").write_text(
        f"""general: {{
    configs_folder = "{folder}"
    plugins_folder = "{lib / "plugins"}"
    transports_folder = "{lib / "transports"}"
    events_folder = "{lib / "events"}"
    loggers_folder = "{lib / "loggers"}"
    debug_level = 3
    session_timeout = 60
}}
media: {{
    ipv6 = false
    rtp_port_range = "20000-40000"
}}
nat: {{
    nice_debug = false
    ignore_mdns = true
}}
plugins: {{
    disable = "{",".join(sorted(plugins))}"
}}
transports: {{
    disable = "{",".join(sorted(transports))}"
}}
events: {{
    broadcast = false
}}
loggers: {{
    disable = "libjanus_jsonlog.so"
}}
"""
    )
    (folder / "janus.transport.websockets.jcfg").write_text(
        f"""general: {{
    json = "compact"
    ws = true
    ws_port = {ws_port}
    ws_ip = "127.0.0.1"
    wss = false
}}
admin: {{
    admin_ws = false
    admin_wss = false
}}
"""
    )
    (folder / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    return folder / "janus.jcfg"


class JanusServer(ServiceProcess):
    """Janus on loopback, configured from a temporary folder."""

    def __init__(self, log_path: Path) -> None:
        super().__init__(log_path)
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self._folder = Path(tempfile.mkdtemp(prefix="bench-janus-"))

    async def start(self) -> None:
        binary = janus_binary()
        if binary is None:
            raise RuntimeError("Janus is not installed (apt-get install janus)")
        config = write_config(self._folder, self.port)
        proc = await self._spawn(binary, "-C", str(config), "-F", str(self._folder), "-o")
        async with aiohttp.ClientSession() as http, asyncio.timeout(START_TIMEOUT):
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"Janus exited early; see {self.log_path}")
                try:
                    ws = await http.ws_connect(self.ws_url, protocols=("janus-protocol",))
                    await ws.close()
                    return
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)

    async def stop(self) -> int | None:
        code = await self._terminate(15)
        shutil.rmtree(self._folder, ignore_errors=True)
        return code


class JanusError(RuntimeError):
    pass


class JanusSession:
    """One Janus API session over its WebSocket: requests by transaction, events routed back."""

    def __init__(self) -> None:
        self.id = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._transactions = (f"t{n}" for n in itertools.count())
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None

    async def open(self, http: aiohttp.ClientSession, url: str) -> None:
        self._ws = await http.ws_connect(url, protocols=("janus-protocol",))
        self._reader = asyncio.create_task(self._read())
        reply = await self.send({"janus": "create"})
        self.id = int(reply["data"]["id"])
        self._keepalive = asyncio.create_task(self._keep_alive())

    async def attach(self) -> int:
        reply = await self.send({"janus": "attach", "plugin": "janus.plugin.videoroom"})
        return int(reply["data"]["id"])

    async def send(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send a request; the reply is the first answer that is not an `ack`."""
        assert self._ws is not None
        transaction = next(self._transactions)
        message = {**message, "transaction": transaction}
        if self.id:
            message["session_id"] = self.id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        await self._ws.send_str(json.dumps(message))
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reply = await future
        finally:
            self._waiting.pop(transaction, None)
        if reply.get("janus") == "error":
            raise JanusError(str(reply.get("error")))
        return reply

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A plugin request; returns the plugin's reply (its `data` and any `jsep`)."""
        request: dict[str, Any] = {"janus": "message", "handle_id": handle, "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        reply = await self.send(request)
        data = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{data.get('error_code')}: {data['error']}")
        return {"data": data, "jsep": reply.get("jsep")}

    async def _read(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            message = json.loads(frame.data)
            if message.get("janus") == "ack":
                continue
            future = self._waiting.get(str(message.get("transaction")))
            if future is not None and not future.done():
                future.set_result(message)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            with contextlib.suppress(Exception):
                await self.send({"janus": "keepalive"})

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self.send({"janus": "destroy"})
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


class JanusUser:
    """A load client in a VideoRoom: publishes on one connection, subscribes on another."""

    def __init__(self, url: str, media: LoadMedia, *, tag: int, room: int) -> None:
        self.url = url
        self.tag = tag
        self.room = room
        self.feed_id = 0
        self.publisher = LoadPeer(media, tag=tag, receive=False)
        self.subscriber = LoadPeer(media, tag=tag, send=False)
        self._session = JanusSession()

    async def publish(self, http: aiohttp.ClientSession, *, create_room: bool) -> None:
        session = self._session
        await session.open(http, self.url)
        handle = await session.attach()
        if create_room:
            await session.message(
                handle,
                {
                    "request": "create",
                    "room": self.room,
                    "publishers": 2,
                    "audiocodec": "opus",
                    "videocodec": "vp8",
                    "notify_joining": False,
                },
            )
        joined = await session.message(
            handle, {"request": "join", "ptype": "publisher", "room": self.room}
        )
        self.feed_id = int(joined["data"]["id"])
        offer = await self.publisher.offer()
        reply = await session.message(
            handle, {"request": "publish"}, jsep={"type": "offer", "sdp": offer}
        )
        if reply["jsep"] is None:
            raise JanusError(f"no answer to the publish offer: {reply['data']}")
        await self.publisher.accept(str(reply["jsep"]["sdp"]))
        await self.publisher.wait_connected()

    async def subscribe(self, feed_id: int) -> None:
        session = self._session
        handle = await session.attach()
        attached = await session.message(
            handle,
            {
                "request": "join",
                "ptype": "subscriber",
                "room": self.room,
                "streams": [{"feed": feed_id}],
            },
        )
        if attached["jsep"] is None:
            raise JanusError(f"no offer for the subscription: {attached['data']}")
        answer = await self.subscriber.answer(str(attached["jsep"]["sdp"]))
        await session.message(handle, {"request": "start"}, jsep={"type": "answer", "sdp": answer})
        await self.subscriber.wait_connected()

    def log(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "sent": self.publisher.sent.frames,
            "keyframes_on_request": self.publisher.sent.keyframes_on_request,
            "audio_sent": self.publisher.sent.audio_packets,
            "received": self.subscriber.received.video,
            "audio_received": self.subscriber.received.audio_frames,
            "events": [],
        }

    async def close(self) -> None:
        await self._session.close()
        await asyncio.gather(self.publisher.close(), self.subscriber.close())
