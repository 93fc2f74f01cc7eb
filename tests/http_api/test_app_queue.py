"""The queue from a request's stream to its app, and the task that runs the app.

Under load every checkpoint waits a whole pass of the scheduler, so the
queue waits only when it must: ``put`` while the queue is full, ``receive``
while it is empty. These tests check both halves of that contract, and that
the app's task reports its end and its errors to the stream.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from http_api._server import _AppQueue, _run_app

REQUEST = {"type": "http.request", "body": b"", "more_body": False}
BODY = {"type": "http.request", "body": b"{}", "more_body": True}
DISCONNECT = {"type": "http.disconnect"}
SCOPE = {"type": "http", "method": "GET", "path": "/v1/download/status/x"}


async def test_put_with_room_no_checkpoint():
    queue = _AppQueue(2)

    with trio.testing.assert_no_checkpoints():
        await queue.put(REQUEST)

    assert await queue.receive() == REQUEST


async def start_blocked_put(nursery: trio.Nursery, queue: _AppQueue) -> trio.Event:
    """Start a put of ``REQUEST`` into the full ``queue``; return the event set when it returns."""
    put_done = trio.Event()

    async def put() -> None:
        await queue.put(REQUEST)
        put_done.set()

    nursery.start_soon(put)
    await trio.testing.wait_all_tasks_blocked()
    return put_done


async def test_put_full_queue_waits():
    queue = _AppQueue(1)
    await queue.put(BODY)

    async with trio.open_nursery() as nursery:
        put_done = await start_blocked_put(nursery, queue)
        assert not put_done.is_set()

        assert await queue.receive() == BODY
        await put_done.wait()

    assert await queue.receive() == REQUEST


async def test_disconnect_full_queue_no_wait():
    queue = _AppQueue(1)
    await queue.put(BODY)

    with trio.testing.assert_no_checkpoints():
        await queue.put(DISCONNECT)

    assert await queue.receive() == BODY
    assert await queue.receive() == DISCONNECT
    assert await queue.receive() == DISCONNECT


async def test_waiting_put_returns_at_close():
    queue = _AppQueue(1)
    await queue.put(BODY)

    async with trio.open_nursery() as nursery:
        put_done = await start_blocked_put(nursery, queue)
        queue.close()

    assert put_done.is_set()


async def test_put_after_close_dropped():
    queue = _AppQueue(1)
    queue.close()

    with trio.testing.assert_no_checkpoints():
        await queue.put(REQUEST)
        await queue.put(DISCONNECT)


async def test_receive_queued_lets_no_task_run():
    queue = _AppQueue(2)
    await queue.put(REQUEST)
    other_ran = trio.Event()

    async with trio.open_nursery() as nursery:
        # Runs at the next pass of the scheduler, which a checkpoint would start.
        nursery.start_soon(_set, other_ran)
        message = await queue.receive()

        assert not other_ran.is_set()

    assert message == REQUEST
    assert other_ran.is_set()


async def _set(event: trio.Event) -> None:
    event.set()


async def test_receive_empty_waits_for_put():
    queue = _AppQueue(2)
    received: list[dict] = []

    async def receive_one() -> None:
        received.append(await queue.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_one)
        await trio.testing.wait_all_tasks_blocked()
        assert received == []

        await queue.put(DISCONNECT)

    assert received == [DISCONNECT]


async def test_receive_cancelled_keeps_message():
    queue = _AppQueue(2)
    await queue.put(REQUEST)

    with trio.CancelScope() as scope:
        scope.cancel()
        await queue.receive()

    assert scope.cancelled_caught
    assert await queue.receive() == REQUEST


async def test_app_return_tells_stream():
    sent: list[object] = []

    async def app(scope, receive, send, sync_spawn, call_soon) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})

    async def send(message) -> None:
        sent.append(message)

    await _run_app(app, SCOPE, _AppQueue(1), send)

    assert sent[0] == {"type": "http.response.start", "status": 204, "headers": []}
    assert sent[-1] is None


async def test_app_error_logged_and_stream_told(caplog: pytest.LogCaptureFixture):
    sent: list[object] = []

    async def app(scope, receive, send, sync_spawn, call_soon) -> None:
        raise ValueError("broken handler")

    async def send(message) -> None:
        sent.append(message)

    with caplog.at_level(logging.ERROR, logger="http_api._server"):
        await _run_app(app, SCOPE, _AppQueue(1), send)

    assert sent == [None]
    assert "the app failed on GET /v1/download/status/x" in caplog.text
    assert "ValueError: broken handler" in caplog.text


async def test_app_cancelled_propagates():
    sent: list[object] = []

    async def app(scope, receive, send, sync_spawn, call_soon) -> None:
        await trio.sleep_forever()

    async def send(message) -> None:
        sent.append(message)

    with trio.CancelScope() as scope:
        scope.cancel()
        await _run_app(app, SCOPE, _AppQueue(1), send)

    assert scope.cancelled_caught
    assert sent == [None]
