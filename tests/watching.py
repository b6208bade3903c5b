"""A moderator's watching connection, as the dashboard makes it (rtc/watcher.py's other end).

A real aiortc peer offering one receive-only audio and video m-line per watched
person; it decodes the video it gets and keeps what every frame's stamp says.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from rtc.stamp import Stamp, read_stamp


class WatchingClient:
    """`async with WatchingClient(people) as watch:` offer with `await watch.offer()`,
    post it to `/api/moderate/watch`, then `await watch.accept(answer_sdp)`."""

    def __init__(self, people: int = 1) -> None:
        # max-bundle: aiortc's "balanced" policy breaks a second video m-line (see rtc/watcher.py).
        self.pc = RTCPeerConnection(RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self._people = people
        # Video frames decoded, stamped or not, and the stamps read, in arrival order.
        self.frames = 0
        self.stamps: list[Stamp] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    async def __aenter__(self) -> WatchingClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()

    async def offer(self) -> str:
        for _ in range(self._people):
            self.pc.addTransceiver("audio", direction="recvonly")
            self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    def count(self, tag: int | None = None, sent_after: float = 0.0) -> int:
        """Stamped frames of `tag` (any, without) sent after `sent_after` (wall clock)."""
        return sum(
            (tag is None or s.tag == tag) and s.send_time_ms / 1000 > sent_after
            for s in self.stamps
        )

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            frame = await track.recv()
            self.frames += 1
            stamp = read_stamp(frame.to_ndarray(format="rgb24"))
            if stamp is not None:
                self.stamps.append(stamp)
