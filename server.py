"""Roulette Relay server: configuration in, components built, app run."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from config import parse_settings
from signalling.web import create_app


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aioice and aiortc are chatty at INFO about every ICE check.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    app = create_app(settings)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=lambda _: print(
            f"Roulette Relay listening on http://{settings.host}:{settings.port}", flush=True
        ),
        access_log=None,
    )


if __name__ == "__main__":
    main()
