"""The load workers of a run: subprocesses running bench.worker, called like async functions."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
# A worker's logs come back as one JSON line of several megabytes.
LINE_LIMIT = 1 << 30
# Generous: connecting ten peers on a loaded 2-core machine takes seconds.
CALL_TIMEOUT = 120.0


class WorkerError(RuntimeError):
    """A command failed inside a worker, or the worker died."""


class WorkerPool:
    """``count`` worker processes; :meth:`call` runs one command in one of them."""

    def __init__(self, count: int, media_path: Path, log_dir: Path) -> None:
        self.count = count
        self._media_path = media_path
        self._log_dir = log_dir
        self._procs: list[asyncio.subprocess.Process] = []
        self._logs: list[IO[bytes]] = []
        self._readers: list[asyncio.Task[None]] = []
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ready: list[asyncio.Future[None]] = []
        self._ids = itertools.count(1)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def log_path(self, index: int) -> Path:
        return self._log_dir / f"worker-{index}.log"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for index in range(self.count):
            log = open(self.log_path(index), "wb")  # noqa: SIM115, ASYNC230 - closed in close()
            self._logs.append(log)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.worker",
                str(self._media_path),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=LINE_LIMIT,
            )
            self._procs.append(proc)
            ready: asyncio.Future[None] = loop.create_future()
            self._ready.append(ready)
            self._readers.append(asyncio.create_task(self._read(index, proc, ready)))
        async with asyncio.timeout(CALL_TIMEOUT):
            await asyncio.gather(*self._ready)

    async def _read(
        self, index: int, proc: asyncio.subprocess.Process, ready: asyncio.Future[None]
    ) -> None:
        assert proc.stdout is not None
        try:
            while line := await proc.stdout.readline():
                reply = json.loads(line)
                future = self._pending.pop(reply.get("id"), None) if reply.get("id") else None
                if future is not None and not future.done():
                    future.set_result(reply)
                elif reply.get("result") == "ready" and not ready.done():
                    ready.set_result(None)
        finally:
            error = WorkerError(f"worker {index} exited; see {self.log_path(index)}")
            if not ready.done():
                ready.set_exception(error)
            for future in list(self._pending.values()):
                if not future.done():
                    future.set_exception(error)

    async def call(self, index: int, op: str, **args: Any) -> Any:
        proc = self._procs[index]
        assert proc.stdin is not None
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        proc.stdin.write((json.dumps({"id": request_id, "op": op, "args": args}) + "\n").encode())
        await proc.stdin.drain()
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                reply = await future
        finally:
            self._pending.pop(request_id, None)
        if not reply.get("ok"):
            raise WorkerError(f"worker {index}: {op} failed: {reply.get('error')}")
        return reply.get("result")

    async def call_all(self, op: str, **args: Any) -> list[Any]:
        return list(await asyncio.gather(*(self.call(i, op, **args) for i in range(self.count))))

    async def collect(self) -> tuple[dict[str, Any], list[tuple[float, float]]]:
        """Close every client, then gather their logs and the workers' event-loop lags.

        Lags are ``(monotonic time, ms)`` samples from every worker.
        """
        await self.call_all("close_all")
        clients: dict[str, Any] = {}
        lags: list[tuple[float, float]] = []
        for result in await self.call_all("logs"):
            clients.update(result["clients"])
            lags += [(float(t), float(ms)) for t, ms in result["lag_ms"]]
        return clients, lags

    async def close(self) -> None:
        for proc in self._procs:
            if proc.stdin is not None and proc.returncode is None:
                with contextlib.suppress(ConnectionError):
                    proc.stdin.write(b'{"op": "exit"}\n')
                    await proc.stdin.drain()
        for proc in self._procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for log in self._logs:
            log.close()
