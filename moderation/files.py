"""Recordings and evidence written by another node, served through this node's dashboard.

A report's evidence is written by the reporter's node, a recording by the moderator's
node, each into its own `--recordings-dir`; the queue (PostgreSQL) is shared, so a
moderator on any node sees every report and must be able to play its evidence. When a
file is not here, this node asks every node which one holds it (`file_stat`) and reads
it from that node in chunks of CHUNK bytes (`file_read`), through the moderation
channel (moderation/channel.py: signed with the cluster secret, so only a node of the
cluster can read a file; bounded per call). Nothing is buffered whole: one chunk per
download is in memory, and at most MAX_STREAMS downloads from other nodes run at once
per node. Splitting an evidence file into one person's tracks (`?part=`) needs the
whole file, which is copied to a temporary file (at most MAX_PART_SOURCE bytes), split,
and deleted.

A shared `--recordings-dir` (one network folder for every node) also works: every
node then finds every file locally and nothing travels through the channel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moderation.channel import ChannelError, ModerationChannel
from moderation.service import Moderation

# 256 KiB per request: about 350 KB of base64 in one Redis message, well inside a
# pub/sub client's output buffer, and a 30 s evidence file in a dozen round trips.
CHUNK = 256 * 1024
MAX_STREAMS = 8
# An evidence file of --evidence-seconds is a few MB; past this, split it where it is.
MAX_PART_SOURCE = 128 * 1024 * 1024

GONE = (
    "the node that holds this evidence is not in the cluster: no node has {name} "
    "(the node that wrote it stopped, or the file expired)"
)


@dataclass(frozen=True)
class RemoteFile:
    """A recording on another node: where it is and how long it is."""

    name: str
    node: str
    size: int


class RemoteFiles:
    """Finds and reads recordings held by other nodes; answers their requests for ours."""

    def __init__(self, moderation: Moderation) -> None:
        self.moderation = moderation
        self.channel: ModerationChannel = moderation.channel
        self._streams = asyncio.Semaphore(MAX_STREAMS)
        self.channel.handle("file_stat", self._stat_here)
        self.channel.handle("file_read", self._read_here)
        self.channel.handle("recordings", self._list_here)

    # -- asked by this node's routes -------------------------------------------

    async def recordings(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Every node's recordings (each with its `node`), newest first, and who did not answer."""
        answers, missed = await self.channel.call_all("recordings", {})
        rows = [row for answer in answers.values() for row in answer["recordings"]]
        rows.sort(key=lambda r: r["modified"], reverse=True)
        return rows, missed

    async def find(self, name: str, node: str | None = None) -> RemoteFile:
        """The node holding recording `name` (the one named, or found by asking every node).

        ChannelError 404 when no node has it, saying the writer is gone; 503 when a node
        that did not answer may hold it.
        """
        if node:
            answer = await self.channel.call(node, "file_stat", {"name": name})
            if not answer.get("found"):
                raise ChannelError(404, f"node {node} has no recording {name}")
            return RemoteFile(name, node, int(answer["size"]))
        answers, missed = await self.channel.call_all("file_stat", {"name": name})
        for holder, answer in sorted(answers.items()):
            if answer.get("found"):
                return RemoteFile(name, holder, int(answer["size"]))
        if missed:
            silent = "; ".join(missed.values())
            raise ChannelError(503, f"no node that answered has {name}, and {silent}")
        raise ChannelError(404, GONE.format(name=name))

    async def chunks(
        self, file: RemoteFile, start: int = 0, end: int | None = None
    ) -> AsyncGenerator[bytes]:
        """Bytes start..end (exclusive; default: to the size found) of `file`, chunk by chunk.

        Raises ChannelError when the holder goes away or the file shrinks mid-way.
        """
        end = file.size if end is None else end
        async with self._streams:
            offset = start
            while offset < end:
                size = min(CHUNK, end - offset)
                answer = await self.channel.call(
                    file.node, "file_read", {"name": file.name, "offset": offset, "size": size}
                )
                data = base64.b64decode(answer["data"])
                if not data:
                    raise ChannelError(502, f"{file.name} on node {file.node} ended early")
                offset += len(data)
                yield data

    @contextlib.asynccontextmanager
    async def local_copy(self, file: RemoteFile) -> AsyncIterator[Path]:
        """The whole file in a temporary file here (deleted after), for splitting it."""
        if file.size > MAX_PART_SOURCE:
            raise ChannelError(
                413,
                f"{file.name} is {file.size} bytes, too large to split across nodes "
                f"(at most {MAX_PART_SOURCE}); download it whole",
            )
        fd, name = tempfile.mkstemp(suffix=".webm", prefix="relay-evidence-")
        try:
            with os.fdopen(fd, "wb") as out:
                async for data in self.chunks(file):
                    await asyncio.to_thread(out.write, data)
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    # -- answered for any node ---------------------------------------------------

    async def _list_here(self, args: dict[str, Any]) -> dict[str, Any]:
        rows = await asyncio.to_thread(self.moderation.recordings)
        node = self.moderation.lobby.node
        return {"recordings": [row | {"node": node} for row in rows]}

    async def _stat_here(self, args: dict[str, Any]) -> dict[str, Any]:
        path = self.moderation.recording_path(str(args.get("name", "")))
        if path is None:
            return {"found": False}
        try:
            return {"found": True, "size": (await asyncio.to_thread(os.stat, path)).st_size}
        except OSError:
            return {"found": False}

    async def _read_here(self, args: dict[str, Any]) -> dict[str, Any]:
        name = str(args.get("name", ""))
        offset, size = int(args.get("offset", 0)), int(args.get("size", 0))
        if offset < 0 or not 0 < size <= CHUNK:
            raise ChannelError(400, f"file_read: offset >= 0 and 1..{CHUNK} bytes")
        path = self.moderation.recording_path(name)
        if path is None:
            raise ChannelError(404, f"node {self.moderation.lobby.node} has no recording {name}")
        data = await asyncio.to_thread(_read, path, offset, size)
        return {"data": base64.b64encode(data).decode()}


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as source:
        source.seek(offset)
        return source.read(size)
