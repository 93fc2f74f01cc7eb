"""The load generator's HTTP/1.1 client: keep-alive connections over trio sockets.

Each ``HttpConnection`` is one keep-alive TCP connection to 127.0.0.1 (it
takes a port, never a host). Requests are formatted directly. Responses are
parsed by one of two parsers:

- ``fast`` (the default): status line, headers, then a body framed by
  Content-Length, chunked encoding, or the end of the connection. It costs
  about 2 microseconds per response.
- ``h11``: the h11 state machine, which checks the whole protocol but costs
  about 40 microseconds per request and response. On a 2-core machine the
  load generator shares the CPU with the server it measures, and with h11 it
  saturated its core at about 12,000 requests/s against uvicorn, below what
  the server could serve. ``--http-parser h11`` runs a whole suite with it
  as a cross-check.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import h11
import trio

HOST = "127.0.0.1"
RECEIVE_BYTES = 65536
# A connection idle this long is replaced before its next request. Hypercorn
# and uvicorn close keep-alive connections after 5 s idle by default, so a
# request sent just as the server closes would fail. httpcore's default
# keep-alive expiry is 5 s for the same reason.
KEEPALIVE_EXPIRY_SECONDS = 4.0
MAX_HEAD_BYTES = 64 * 1024

Parser = Literal["fast", "h11"]
JSON_HEADERS = [("Content-Type", "application/json")]


class ProtocolError(Exception):
    """The server sent something the fast parser cannot read."""


@dataclasses.dataclass(slots=True)
class Response:
    """A complete response: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes
    # perf_counter() seconds when the request was sent and when the body ended.
    sent_at: float
    finished_at: float

    @property
    def latency(self) -> float:
        return self.finished_at - self.sent_at


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:``port``.

    It connects on the first request and again after the server closes.
    Requests on one connection must not overlap: use one per task.
    """

    def __init__(self, port: int, parser: Parser = "fast") -> None:
        self.port = port
        self.parser = parser
        self._host_line = f"Host: {HOST}:{port}\r\n"
        self._stream: trio.SocketStream | None = None
        self._buffer = b""
        self._h11 = h11.Connection(h11.CLIENT)
        self._last_used = 0.0
        self.connects = 0

    async def connect(self) -> None:
        """Open the TCP connection now instead of on the first request."""
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(HOST, self.port)
            self._buffer = b""
            self._h11 = h11.Connection(h11.CLIENT)
            self.connects += 1

    async def aclose(self) -> None:
        await self._abort()

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> Response:
        """Send one request and read the whole response.

        Raises ``OSError``, ``trio.BrokenResourceError``, ``ProtocolError`` or
        ``h11.ProtocolError`` when the exchange fails; the connection is then
        closed and the next request opens a new one.
        """
        if (
            self._stream is not None
            and time.monotonic() - self._last_used > KEEPALIVE_EXPIRY_SECONDS
        ):
            await self._abort()
        await self.connect()
        try:
            if self.parser == "h11":
                response = await self._exchange_h11(method, target, headers, body)
            else:
                response = await self._exchange_fast(method, target, headers, body)
        except BaseException:
            await self._abort()
            raise
        self._last_used = time.monotonic()
        return response

    # -- fast parser -------------------------------------------------------

    async def _exchange_fast(
        self, method: str, target: str, headers: list[tuple[str, str]] | None, body: bytes
    ) -> Response:
        stream = self._stream
        assert stream is not None
        lines = [f"{method} {target} HTTP/1.1\r\n", self._host_line]
        if headers:
            lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        sent_at = time.perf_counter()
        await stream.send_all("".join(lines).encode("latin-1") + body)

        head_end = self._buffer.find(b"\r\n\r\n")
        while head_end < 0:
            await self._fill()
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise ProtocolError("response head longer than 64 KiB")
            head_end = self._buffer.find(b"\r\n\r\n")
        head = self._buffer[:head_end].decode("latin-1").split("\r\n")
        self._buffer = self._buffer[head_end + 4 :]
        status_line = head[0]
        if not status_line.startswith("HTTP/1.") or len(status_line) < 12:
            raise ProtocolError(f"invalid status line {status_line!r}")
        status = int(status_line[9:12])
        response_headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            raise ProtocolError(f"unexpected informational response {status}")

        keep_alive = response_headers.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304):
            response_body = b""
        elif "chunked" in response_headers.get("transfer-encoding", "").lower():
            response_body = await self._read_chunked()
        elif "content-length" in response_headers:
            response_body = await self._read_exactly(int(response_headers["content-length"]))
        else:
            response_body = await self._read_to_end()
            keep_alive = False
        finished_at = time.perf_counter()
        if not keep_alive:
            await self._abort()
        return Response(status, response_headers, response_body, sent_at, finished_at)

    async def _fill(self) -> None:
        assert self._stream is not None
        data = await self._stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise trio.BrokenResourceError("server closed the connection mid-response")
        self._buffer += data

    async def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            await self._fill()
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    async def _read_line(self) -> bytes:
        end = self._buffer.find(b"\r\n")
        while end < 0:
            await self._fill()
            end = self._buffer.find(b"\r\n")
        line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
        return line

    async def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int((await self._read_line()).split(b";", 1)[0], 16)
            if size == 0:
                while await self._read_line():  # trailers end with an empty line
                    pass
                return b"".join(chunks)
            chunks.append(await self._read_exactly(size))
            await self._read_line()

    async def _read_to_end(self) -> bytes:
        assert self._stream is not None
        while data := await self._stream.receive_some(RECEIVE_BYTES):
            self._buffer += data
        data, self._buffer = self._buffer, b""
        return data

    # -- h11 parser --------------------------------------------------------

    async def _exchange_h11(
        self, method: str, target: str, headers: list[tuple[str, str]] | None, body: bytes
    ) -> Response:
        stream = self._stream
        assert stream is not None
        connection = self._h11
        request_headers = [("Host", self._host_line[6:-2]), *(headers or [])]
        if body or method in ("POST", "PUT"):
            request_headers.append(("Content-Length", str(len(body))))
        sent_at = time.perf_counter()
        data = connection.send(h11.Request(method=method, target=target, headers=request_headers))
        if body:
            data += connection.send(h11.Data(data=body))
        data += connection.send(h11.EndOfMessage())
        await stream.send_all(data)

        status = 0
        response_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(RECEIVE_BYTES))
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {name.decode(): value.decode() for name, value in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("server closed the connection mid-response")
        finished_at = time.perf_counter()

        if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
            connection.start_next_cycle()
        else:
            await self._abort()
        return Response(status, response_headers, b"".join(chunks), sent_at, finished_at)

    async def _abort(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            self._buffer = b""
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
