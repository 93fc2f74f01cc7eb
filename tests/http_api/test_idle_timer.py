"""The per-connection idle timer, on trio's mock clock, without sockets.

The handler's one watching task is driven here through the calls Hypercorn
makes (``restart``, ``stop``) and the connection's end. Closing is recorded
instead of closing a socket.
"""

from __future__ import annotations

import trio
import trio.testing
from hypercorn.trio.worker_context import WorkerContext

from http_api._server import (
    GRACEFUL_TIMEOUT_SECONDS,
    _ConnectionServer,
    _IdleTimer,
    _ServerConfig,
    _Stop,
)

TIMEOUT = 5.0


class Spawner:
    """A stand-in for Hypercorn's task group, which starts tasks in a nursery."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def spawn(self, function, *args) -> None:
        self._nursery.start_soon(function, *args)


def connection_handler() -> tuple[_ConnectionServer, list[float]]:
    """Return a handler with only the idle timer's parts, and the trio times it closed at."""
    handler = object.__new__(_ConnectionServer)
    handler.idle_task = _IdleTimer(TIMEOUT)
    handler.context = WorkerContext(None)
    handler.config = _ServerConfig(_Stop())
    closed_at: list[float] = []

    async def record_close() -> None:
        closed_at.append(trio.current_time())

    handler._initiate_server_close = record_close  # type: ignore[method-assign]
    return handler, closed_at


async def test_idle_connection_closes_after_timeout(autojump_clock):
    handler, closed_at = connection_handler()
    async with trio.open_nursery() as nursery:
        await handler.idle_task.restart(Spawner(nursery), handler._idle_timeout)

    assert closed_at == [TIMEOUT]


async def test_request_in_progress_never_times_out(autojump_clock):
    handler, closed_at = connection_handler()
    async with trio.open_nursery() as nursery:
        await handler.idle_task.restart(Spawner(nursery), handler._idle_timeout)
        await trio.sleep(1.0)
        await handler.idle_task.stop()
        await trio.sleep(100.0)
        assert closed_at == []
        await handler.idle_task.restart(Spawner(nursery), handler._idle_timeout)

    # Counted from the response that ended the request, at 101 s.
    assert closed_at == [101.0 + TIMEOUT]


async def test_stop_closes_idle_connection_at_once(autojump_clock):
    handler, closed_at = connection_handler()
    async with trio.open_nursery() as nursery:
        await handler.idle_task.restart(Spawner(nursery), handler._idle_timeout)
        await trio.sleep(1.0)
        await handler.context.terminated.set()

    assert closed_at == [1.0]


async def test_stop_leaves_busy_connection_open(autojump_clock):
    handler, closed_at = connection_handler()
    async with trio.open_nursery() as nursery:
        await handler.idle_task.restart(Spawner(nursery), handler._idle_timeout)
        await handler.idle_task.stop()
        await handler.context.terminated.set()
        await trio.sleep(50.0)
        handler.idle_task.end()

    assert closed_at == []


async def test_second_signal_cuts_busy_connection(autojump_clock):
    handler, closed_at = connection_handler()
    assert isinstance(handler.config, _ServerConfig)
    async with trio.open_nursery() as nursery:
        await handler.idle_task.restart(Spawner(nursery), handler._idle_timeout)
        await handler.idle_task.stop()
        await handler.context.terminated.set()
        await trio.sleep(10.0)
        handler.config.stop.hurry()
        await trio.sleep(50.0)
        handler.idle_task.end()

    assert closed_at == [10.0 + GRACEFUL_TIMEOUT_SECONDS]


async def test_connection_ended_before_watcher_ran(autojump_clock):
    handler, closed_at = connection_handler()
    async with trio.open_nursery() as nursery:
        await handler.idle_task.restart(Spawner(nursery), handler._idle_timeout)
        # No checkpoint in between: the watching task has not started yet.
        handler.idle_task.end()

    assert closed_at == []
    assert trio.current_time() == 0.0
