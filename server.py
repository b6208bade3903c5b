"""Roulette Relay server: configuration in, components built, app run."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from app import create_app, drain
from config import Settings, parse_settings
from rtc import aiortc_seam, host_addresses
from signalling import malloc

logger = logging.getLogger("server")


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(argv)
    try:
        # Here rather than at start-up: a wrong address is a usage error, not a traceback.
        host_addresses.choose(settings.ice, aiortc_seam.interface_addresses())
    except ValueError as exc:
        sys.exit(f"server.py: error: {exc}")
    if settings.nudity:
        # The optional extra: missing, the operator hears it now, not at the first sample.
        from moderation.nudity import NudityUnavailable, model_path

        try:
            model_path()
        except NudityUnavailable as exc:
            sys.exit(f"server.py: error: --nudity: {exc}")
    _setup_logging(settings)
    if settings.workers > 1:
        sys.exit(_supervise(settings))
    run_node(settings)


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aioice and aiortc are chatty at INFO about every ICE check.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def run_node(settings: Settings, *, worker: int | None = None) -> None:
    """One node: one process, one event loop, serving until SIGINT or (drained) SIGTERM."""
    # Before any thread mallocs: threads share one arena (see signalling/malloc.py).
    malloc.limit_arenas()
    app = create_app(settings)
    app.on_startup.append(_freeze_startup_objects)
    if settings.clustered:
        app.on_startup.append(_drain_on_sigterm)
    if worker is not None:
        app.on_startup.append(_stop_with_parent)
    name = "" if worker is None else f" (worker {worker})"
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        # Workers share the port; the kernel spreads new connections among them.
        reuse_port=True if worker is not None else None,
        print=lambda _: print(
            f"Roulette Relay listening on http://{settings.host}:{settings.port}{name}",
            flush=True,
        ),
        access_log=None,
    )


def _supervise(settings: Settings) -> int:
    """Start `settings.workers` nodes on one port, keep them running, pass signals on.

    A worker that dies while nobody asked it to stop (a crash, the OOM killer, kill -9)
    is started again in the same slot (same metrics and pipe port), so the machine keeps
    its capacity; its own users lost their connection, as on any dead node. A worker
    that keeps dying right after start is restarted with a growing pause, so a broken
    configuration does not spin a core.
    """
    context = multiprocessing.get_context("spawn")
    slots: list[_Slot] = [_Slot(context, settings, i) for i in range(settings.workers)]
    for slot in slots:
        slot.start()
    logger.info("started %d workers sharing port %d", len(slots), settings.port)
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for slot in slots:
            slot.signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    while not stopping:
        # Wakes when a worker exits, or at a due restart; a signal handler runs in between.
        timeout = min((s.restart_at - time.monotonic() for s in slots if s.dead), default=None)
        multiprocessing.connection.wait(
            [s.process.sentinel for s in slots if not s.dead],
            timeout=None if timeout is None else max(0.0, timeout),
        )
        if stopping:
            break
        for slot in slots:
            slot.reap_or_restart()
    for slot in slots:
        slot.process.join()
    codes = [slot.process.exitcode for slot in slots]
    return 0 if all(code == 0 for code in codes) else 1


# A worker that lived this long before dying is restarted at once; one that died sooner
# waits 1, 2, 4 ... up to _MAX_PAUSE seconds.
_STABLE_AFTER = 30.0
_MAX_PAUSE = 30.0


class _Slot:
    """One worker index: the process running it now, and when to restart it if it died."""

    def __init__(self, context: Any, settings: Settings, index: int) -> None:
        self._context = context
        self._settings = settings
        self.index = index
        self.process: multiprocessing.process.BaseProcess
        self.dead = False
        self.restart_at = 0.0
        self._started_at = 0.0
        self._pause = 0.0

    def start(self) -> None:
        self.process = self._context.Process(
            target=_worker, args=(self._settings, self.index), name=f"worker {self.index}"
        )
        self.process.start()
        self.dead = False
        self._started_at = time.monotonic()

    def signal(self, signum: int) -> None:
        if not self.dead and self.process.pid is not None and self.process.is_alive():
            os.kill(self.process.pid, signum)

    def reap_or_restart(self) -> None:
        now = time.monotonic()
        if not self.dead and not self.process.is_alive():
            self.process.join()
            lived = now - self._started_at
            self._pause = (
                0.0 if lived >= _STABLE_AFTER else min(max(1.0, 2 * self._pause), _MAX_PAUSE)
            )
            logger.error(
                "worker %d (pid %s) exited with code %s after %.1f s; restarting in %.0f s",
                self.index,
                self.process.pid,
                self.process.exitcode,
                lived,
                self._pause,
            )
            self.dead = True
            self.restart_at = now + self._pause
        if self.dead and now >= self.restart_at:
            self.start()
            logger.info("worker %d restarted (pid %s)", self.index, self.process.pid)


def _worker(settings: Settings, index: int) -> None:
    # Own process group: a Ctrl-C reaches the supervisor only, which passes it on once.
    os.setpgrp()
    settings = dataclasses.replace(
        settings,
        workers=1,
        node_id=f"{settings.node_id}-{index}" if settings.node_id else None,
        # Each worker has its own /metrics listener: metrics port + worker index.
        metrics_port=settings.metrics_port + index if settings.metrics_port else 0,
        # And its own pipe port, when one is fixed.
        pipe_port=settings.pipe_port + index if settings.pipe_port else 0,
        # And its own media ports: one UDP (and TCP) port per worker to open in a firewall.
        media_port=settings.media_port + index if settings.media_port else 0,
        media_tcp_port=settings.media_tcp_port + index if settings.media_tcp_port else 0,
    )
    _setup_logging(settings)
    run_node(settings, worker=index)


async def _drain_on_sigterm(app: web.Application) -> None:
    """SIGTERM drains the node (clients get 1012, partners elsewhere partner_left), then stops.

    Installed after run_app's own handlers, so it replaces its SIGTERM one; SIGINT
    still stops at once, as on a single node.
    """
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def drain_then_stop() -> None:
        logger.info("SIGTERM: draining this node")
        try:
            await drain(app)
        finally:
            os.kill(os.getpid(), signal.SIGINT)

    def on_sigterm() -> None:
        if not tasks:
            tasks.add(loop.create_task(drain_then_stop(), name="drain"))

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)


async def _stop_with_parent(app: web.Application) -> None:
    """A worker whose supervisor died (kill -9) drains instead of living on unsupervised."""
    parent = os.getppid()

    async def watch() -> None:
        # Nothing to await: a parent's death is only seen by polling getppid().
        while os.getppid() == parent:  # noqa: ASYNC110
            await asyncio.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    task = asyncio.get_running_loop().create_task(watch(), name="watch supervisor")
    app.on_cleanup.append(lambda _app: _cancel(task))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _freeze_startup_objects(app: web.Application) -> None:
    """Keep the objects built at start-up out of every later garbage collection.

    Modules, classes and functions (about 70 000 objects) never die, yet each
    full collection walked them all while media waited: at 10 pairs a full
    collection stalled the event loop 45-55 ms, and 12-26 ms with them frozen.
    Then what start-up freed (imports, moderation's warm-up sample) goes back to
    the kernel instead of staying in malloc's free lists.
    """
    gc.collect()
    gc.freeze()
    malloc.trim()


if __name__ == "__main__":
    main()
