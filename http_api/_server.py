"""Serving the app on Hypercorn's trio worker until SIGINT or SIGTERM."""

from __future__ import annotations

import functools
import logging
import signal

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from ._app import create_app
from ._settings import Settings

logger = logging.getLogger("http_api")

# How long open connections get to finish after a stop signal (seconds).
GRACEFUL_TIMEOUT_SECONDS = 3.0


async def _wait_for_stop_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("received %s, shutting down", signal.Signals(signum).name)
            return


async def serve(
    settings: Settings, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the API until SIGINT or SIGTERM, then stop cleanly.

    Hands back the bound addresses (``http://host:port``) once the socket
    listens and the supervisor runs, so ``--port 0`` can be used. On a stop
    signal the server stops accepting connections, unfinished jobs are
    cancelled and logged, and this function returns.
    """
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = "-" if settings.access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = GRACEFUL_TIMEOUT_SECONDS
    app = create_app(settings)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            functools.partial(hypercorn_serve, app, config, shutdown_trigger=_wait_for_stop_signal)
        )
        for bind in binds:
            logger.info("serving on %s", bind)
        task_status.started(binds)
    logger.info("server stopped")
