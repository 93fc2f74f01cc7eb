"""The connection handler and protocol over a real socket pair.

Two properties that the rest of the test suite cannot see:

- A finished connection leaves no cyclic garbage. The server turns off
  CPython's automatic full collections (see
  ``engine.manage_garbage_collection``), so a connection whose objects
  formed a cycle would stay in memory until the heap doubled.
- A response's head goes out in the same write as its first body bytes,
  so a small response costs one send call and one checkpoint.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import hypercorn.protocol
import hypercorn.protocol.h11
import pytest
import trio
import trio.lowlevel
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from http_api._server import _ConnectionServer, _H11Protocol, _HTTPStream

# Real seconds an exchange may take before the test fails.
TIMEOUT_SECONDS = 10


@pytest.fixture(autouse=True)
def product_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make Hypercorn build the product's HTTP/1.1 protocol, as ``serve`` does."""
    monkeypatch.setattr(hypercorn.protocol, "H11Protocol", _H11Protocol)


class RecordingStream:
    """A socket stream that records the data of every ``send_all`` call."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        await self._stream.send_all(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


async def hello(scope, receive, send) -> None:
    headers = [(b"content-length", b"5")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello"})


async def not_modified(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 304, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def two_chunks(scope, receive, send) -> None:
    headers = [(b"content-length", b"10")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello", "more_body": True})
    await send({"type": "http.response.body", "body": b"world"})


async def exchange(
    app, ending: bytes, request: bytes = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
) -> tuple[weakref.ref[_ConnectionServer], list[bytes]]:
    """Serve ``request`` with ``app`` until the client has read ``ending``, then close the client.

    Returns a weak reference to the handler, and the handler's writes.
    """
    server_socket, client_socket = trio.socket.socketpair()
    client = trio.SocketStream(client_socket)
    stream = RecordingStream(trio.SocketStream(server_socket))
    handler = _ConnectionServer(
        ASGIWrapper(app), Config(), WorkerContext(None), ConnectionState({}), stream
    )
    received = b""
    with trio.fail_after(TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handler.run)
            await client.send_all(request)
            while not received.endswith(ending):
                received += await client.receive_some()
            await client.aclose()
    return weakref.ref(handler), stream.writes


async def test_closed_connection_freed_without_collector():
    gc.disable()
    try:
        handler, _ = await exchange(hello, b"hello")

        assert handler() is None
    finally:
        gc.enable()


async def test_malformed_request_freed_without_collector():
    gc.disable()
    try:
        handler, writes = await exchange(hello, b"}\n", b"GET / HTTP/1.1 extra\r\n\r\n")

        assert writes[0].startswith(b"HTTP/1.1 400")
        assert handler() is None
    finally:
        gc.enable()


async def test_response_head_and_body_one_write():
    _, writes = await exchange(hello, b"hello")

    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200")
    assert writes[0].endswith(b"\r\n\r\nhello")


async def test_bodiless_response_one_write():
    _, writes = await exchange(not_modified, b"\r\n\r\n")

    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 304")


async def test_later_body_chunks_own_writes():
    _, writes = await exchange(two_chunks, b"world")

    assert len(writes) == 2
    assert writes[0].endswith(b"\r\n\r\nhello")
    assert writes[1] == b"world"


async def long_body(scope, receive, send) -> None:
    chunk = b"x" * 65536
    headers = [(b"content-length", str(len(chunk) * 100).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for _ in range(100):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        # A file read between chunks, where the app notices the client leaving.
        await trio.lowlevel.checkpoint()
    await send({"type": "http.response.body", "body": b""})


async def long_body_until_disconnect(scope, receive, send) -> None:
    """Send ``long_body`` and stop when the client leaves, as Quart-Trio does."""
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await long_body(scope, receive, send)
        nursery.cancel_scope.cancel()


async def test_broken_write_after_pipelined_request_ends_connection(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(hypercorn.protocol.h11, "HTTPStream", _HTTPStream)
    # The second request pauses the reading task until the first response
    # ends, which the client's close cuts short.
    server_socket, client_socket = trio.socket.socketpair()
    client = trio.SocketStream(client_socket)
    handler = _ConnectionServer(
        ASGIWrapper(long_body_until_disconnect),
        Config(),
        WorkerContext(None),
        ConnectionState({}),
        trio.SocketStream(server_socket),
    )
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with trio.fail_after(TIMEOUT_SECONDS):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handler.run)
            await client.send_all(request + request)
            first = await client.receive_some()
            await client.aclose()

    assert first.startswith(b"HTTP/1.1 200")
    assert server_socket.fileno() == -1
