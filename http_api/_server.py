"""Serving the app on Hypercorn's trio worker until SIGINT or SIGTERM."""

from __future__ import annotations

import functools
import logging
import signal

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from quart import Quart

from engine import JobClient, SupervisorClosed

from ._app import create_app
from ._context import CLIENT_KEY
from ._settings import Settings

logger = logging.getLogger("http_api")

# How long open connections get to finish after a stop signal (seconds).
GRACEFUL_TIMEOUT_SECONDS = 3.0


async def _drain_on_stop_signal(app: Quart, grace: float) -> None:
    """Wait for SIGINT or SIGTERM, then drain the supervisor before the server stops.

    While this runs, the server still accepts connections: new starts get
    503 and polls are answered, so clients can see their jobs end. Processing
    jobs get ``grace`` seconds; a second signal cancels them at once. When
    this returns, Hypercorn stops accepting connections and shuts down.
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("received %s, draining for up to %g s", signal.Signals(signum).name, grace)
            break

        client: JobClient = app.extensions[CLIENT_KEY]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, client, grace, nursery.cancel_scope)
            async for signum in signals:
                logger.warning(
                    "received %s again, cancelling unfinished jobs now",
                    signal.Signals(signum).name,
                )
                nursery.cancel_scope.cancel()
                break


async def _drain(client: JobClient, grace: float, done: trio.CancelScope) -> None:
    try:
        await client.drain(grace)
    except SupervisorClosed:
        pass
    done.cancel()


async def serve(
    settings: Settings, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the API until SIGINT or SIGTERM, then stop cleanly.

    Hands back the bound addresses (``http://host:port``) once the socket
    listens and the supervisor runs, so ``--port 0`` can be used. On a stop
    signal the supervisor drains (see ``_drain_on_stop_signal``), then the
    server stops accepting connections, unfinished jobs are cancelled and
    logged, and this function returns.
    """
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = "-" if settings.access_log else None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = GRACEFUL_TIMEOUT_SECONDS
    app = create_app(settings)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            functools.partial(
                hypercorn_serve,
                app,
                config,
                shutdown_trigger=functools.partial(
                    _drain_on_stop_signal, app, settings.engine.shutdown_grace
                ),
            )
        )
        for bind in binds:
            logger.info("serving on %s", bind)
        task_status.started(binds)
    logger.info("server stopped")
