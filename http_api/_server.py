"""Serving the app on Hypercorn's trio worker until SIGINT or SIGTERM."""

from __future__ import annotations

import functools
import logging
import re
import signal
from collections.abc import AsyncIterator, Mapping

import hypercorn.logging
import hypercorn.trio.run
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import ResponseSummary, WWWScope
from quart import Quart

from engine import JobClient, SupervisorClosed, tune_garbage_collector

from ._app import create_app
from ._context import CLIENT_KEY, STATUS_LAYER_KEY
from ._settings import Settings
from ._status_layer import StatusLayer

logger = logging.getLogger("http_api")

# How long open connections get to finish after a stop signal (seconds).
GRACEFUL_TIMEOUT_SECONDS = 3.0
# Connections the kernel queues before the server accepts them. With
# Hypercorn's default of 100, a load test opening 500 connections per second
# on 127.0.0.1 had some of them reset. Linux caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024

# NOTE: with Hypercorn 0.18 and quart-trio 0.12, a connection stays open after
# a response to a "Connection: close" request, and idle keep-alive connections
# are not closed after keep_alive_timeout (seen on 127.0.0.1; Hypercorn issue
# 330 reports the first). Clients that read to EOF instead of Content-Length
# wait until they give up; the server holds one socket per such client.


# ASCII control characters, which an access-log field must not write raw.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _escape_control(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


class _AccessLogger(hypercorn.logging.Logger):
    """Hypercorn's logger, with control characters in access-log fields escaped.

    Hypercorn logs the percent-decoded path, so ``%0A`` in a request target
    would otherwise start a forged line in the access log.
    """

    def atoms(
        self, request: WWWScope, response: ResponseSummary | None, request_time: float
    ) -> Mapping[str, str]:
        atoms = super().atoms(request, response, request_time)
        # The atoms are a dict subclass that returns "-" for a missing key, so
        # the values are replaced in place rather than copied to a new dict.
        assert isinstance(atoms, dict)
        for key, value in list(atoms.items()):
            if isinstance(value, str) and _CONTROL_CHARACTERS.search(value):
                atoms[key] = _CONTROL_CHARACTERS.sub(_escape_control, value)
        return atoms


class _ConnectionServer(TCPServer):
    """Hypercorn's connection handler, with one race kept inside the connection.

    In Hypercorn 0.18 the task that reads a connection can send a 400 (for
    bytes after a request that closes the connection) while the app's task
    shuts down the sending side. trio then raises ``BusyResourceError`` in
    the reading task, and Hypercorn lets it escape into the nursery of
    every connection, which stops the whole server. Here it ends only that
    connection, which the client has already broken.
    """

    async def run(self) -> None:
        try:
            await super().run()
        except* trio.BusyResourceError as group:
            logger.info(
                "closed a connection after a client protocol error led to concurrent sends: %s",
                group.exceptions[0],
            )


async def _handle_stop_signals(
    signals: AsyncIterator[int], app: Quart, grace: float, drained: trio.Event
) -> None:
    """Drain the supervisor on the first SIGINT or SIGTERM; cancel its jobs on the second.

    While the supervisor drains, the server still accepts connections: new
    starts get 503 and polls are answered, so clients can see their jobs end.
    Processing jobs get ``grace`` seconds. ``drained`` is set when no job is
    left in flight, which tells Hypercorn to stop. Later signals are logged
    and otherwise ignored, so they cannot kill the process halfway through
    its shutdown.
    """
    received = 0
    async with trio.open_nursery() as nursery:
        async for signum in signals:
            received += 1
            name = signal.Signals(signum).name
            client: JobClient | None = app.extensions.get(CLIENT_KEY)
            if client is None:
                logger.info("received %s before start-up finished, stopping", name)
                drained.set()
            elif received == 1:
                logger.info("received %s, draining for up to %g s", name, grace)
                nursery.start_soon(_drain, client, grace, drained)
            elif received == 2:
                logger.warning("received %s again, cancelling unfinished jobs now", name)
                nursery.start_soon(_drain, client, 0.0, drained)
            else:
                logger.warning("received %s, already stopping", name)


async def _drain(client: JobClient, grace: float, drained: trio.Event) -> None:
    try:
        await client.drain(grace)
    except SupervisorClosed:
        pass
    drained.set()


async def serve(
    settings: Settings, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the API until SIGINT or SIGTERM, then stop cleanly.

    Hands back the bound addresses (``http://host:port``) once the socket
    listens and the supervisor runs, so ``--port 0`` can be used. On a stop
    signal the supervisor drains (see ``_handle_stop_signals``), then the
    server stops accepting connections, unfinished jobs are cancelled and
    logged, and this function returns.
    """
    config = Config()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = "-" if settings.access_log else None
    config.logger_class = _AccessLogger
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = GRACEFUL_TIMEOUT_SECONDS
    config.backlog = LISTEN_BACKLOG
    app = create_app(settings)

    # NOTE: Hypercorn builds each connection's handler from this module
    # attribute, which is the only way to replace it; check it on upgrades.
    hypercorn.trio.run.TCPServer = _ConnectionServer  # type: ignore[attr-defined]
    drained = trio.Event()
    status_layer: StatusLayer = app.extensions[STATUS_LAYER_KEY]

    async def stop_serving() -> None:
        # Release held long polls so they get a response before Hypercorn closes
        # what is still open after its graceful timeout. On a finished job they
        # would otherwise wait the full 30 s.
        await drained.wait()
        status_layer.release()

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _handle_stop_signals, signals, app, settings.engine.shutdown_grace, drained
            )
            async with trio.open_nursery() as server:
                binds: list[str] = await server.start(
                    functools.partial(hypercorn_serve, app, config, shutdown_trigger=stop_serving)
                )
                tune_garbage_collector()
                for bind in binds:
                    logger.info("serving on %s", bind)
                task_status.started(binds)
            # The server has stopped: stop listening for signals too.
            nursery.cancel_scope.cancel()
    logger.info("server stopped")
