"""Serving the app on Hypercorn's trio worker until SIGINT or SIGTERM."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h11
import hypercorn.logging
import hypercorn.protocol
import hypercorn.protocol.h2
import hypercorn.protocol.h11
import hypercorn.trio.run
import hypercorn.typing
import hyperframe.exceptions
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import (
    Body,
    EndBody,
    Event as StreamEvent,
    Request,
    Response,
    StreamClosed,
)
from hypercorn.protocol.h2 import H2Protocol, StreamBuffer
from hypercorn.protocol.h11 import H2ProtocolAssumedError, H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio import serve as hypercorn_serve
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import (
    AppWrapper,
    ASGIReceiveEvent,
    ASGISendEvent,
    H11SendableEvent,
    HTTPResponseStartEvent,
    LifespanState,
    ResponseSummary,
    Scope,
    WWWScope,
)
from priority.priority import DuplicateStreamError
from quart import Quart

from engine import JobClient, SupervisorClosed, manage_garbage_collection

from ._app import create_app
from ._context import CLIENT_KEY, STATUS_LAYER_KEY
from ._openapi import build_document
from ._problems import PROBLEM_MEDIA_TYPE, Problem
from ._render import encode_json
from ._request_id import is_valid_request_id, picked_request_id
from ._settings import Settings
from ._status_layer import StatusLayer
from ._websocket import WEBSOCKET_PROBLEM

logger = logging.getLogger("http_api")

# Minimum time that open connections get to finish once the drain has ended,
# also after a second signal or when the grace period is spent (seconds).
GRACEFUL_TIMEOUT_SECONDS = 3.0
# Connections the kernel queues before the server accepts them. With
# Hypercorn's default of 100, a load test opening 500 connections per second
# on 127.0.0.1 had some of them reset. Linux caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024

# Hypercorn's default access-log format, then the request id, which the
# app's log lines about the request also name (see _AccessLogger).
_REQUEST_ID_ATOM = "{x-request-id}o"
ACCESS_LOG_FORMAT = f"{Config.access_log_format} %({_REQUEST_ID_ATOM})s"

# Streams in progress that a client may reset on one HTTP/2 connection before
# the server ends the connection. Opening streams and resetting them at once
# ("rapid reset", CVE-2023-44487) starts a handler per stream, past the
# limit of 100 concurrent streams. A client that cancels this many requests
# on one connection can open another.
MAX_CLIENT_RESETS = 100

# Maximum length of the parser message quoted in a rejected request's problem document.
MAX_REASON_CHARACTERS = 200

# The form in which h11 messages quote the client's bytes: bytearray(b'...').
_BYTEARRAY_REPR = re.compile(r"""bytearray\((b(['"]).*?(?<!\\)\2)\)""")

# Characters that an access-log field must not write raw: ASCII control
# characters, and the quote and backslash that delimit and escape fields.
_ESCAPED_CHARACTERS = re.compile(r'[\x00-\x1f\x7f"\\]')


def _escape(match: re.Match[str]) -> str:
    character = match.group()
    if character in '"\\':
        return "\\" + character
    return f"\\x{ord(character):02x}"


class _LoggedResponse(ResponseSummary):
    """A response as the access log gets it: with the body bytes written to the connection."""

    body_bytes: int


class _AccessLogger(hypercorn.logging.Logger):
    r"""Hypercorn's logger, with Apache's request line and sizes, and fields that forge nothing.

    The request line (``%(r)s`` and ``%(R)s``) has the target as the client
    sent it, query included, where Hypercorn logs the percent-decoded path
    without the query. Control characters, double quotes and backslashes in
    every field are escaped (``\x0a``, ``\"``, ``\\``), so no request can
    start a line or close a quoted field. The size fields (``%(b)s`` and
    ``%(B)s``) are the body bytes that ``_HTTPStream`` counted, where
    Hypercorn logs the Content-Length: ``-`` and ``0`` for none. A request
    without a response ends with the id that the app picked, or else its
    own valid ``X-Request-ID``.
    """

    def atoms(
        self, request: WWWScope, response: ResponseSummary | None, request_time: float
    ) -> Mapping[str, str]:
        atoms = super().atoms(request, response, request_time)
        # The atoms are a dict subclass that returns "-" for a missing key, so
        # the values are replaced in place rather than copied to a new dict.
        assert isinstance(atoms, dict)
        if response is not None and "body_bytes" in response:
            body_bytes = cast(_LoggedResponse, response)["body_bytes"]
            atoms["b"] = str(body_bytes) if body_bytes else "-"
            atoms["B"] = str(body_bytes)
        if _REQUEST_ID_ATOM not in atoms:
            offered = atoms["{x-request-id}i"]
            picked = picked_request_id(request)
            if picked is not None:
                atoms[_REQUEST_ID_ATOM] = picked
            elif is_valid_request_id(offered):
                atoms[_REQUEST_ID_ATOM] = offered
        target = request.get("raw_path") or request["path"].encode("latin-1")
        if request["query_string"]:
            target += b"?" + request["query_string"]
        atoms["r"] = atoms["R"] = f"{atoms['m']} {target.decode('latin-1')} {atoms['H']}"
        for key, value in list(atoms.items()):
            if isinstance(value, str) and _ESCAPED_CHARACTERS.search(value):
                atoms[key] = _ESCAPED_CHARACTERS.sub(_escape, value)
        return atoms


class _IdleTimer:
    """The keep-alive deadline of one connection, watched by one task for the connection's life.

    Hypercorn calls ``restart`` when a connection becomes idle (at its start
    and after each response) and ``stop`` when a request arrives. Its own
    timer starts a task with ``nursery.start`` on every ``restart`` and
    cancels it on every ``stop``, several task switches per request. Worse,
    a response sent from inside Quart-Trio's request nursery reaches
    ``restart`` while Quart-Trio cancels that nursery, and ``nursery.start``
    then cancels the new task at once: idle connections were never closed.

    Here ``restart`` and ``stop`` only move ``deadline`` (trio time, infinite
    while a request is in progress) and the deadline of ``scope``. The
    watching task (``_ConnectionServer._idle_timeout``) waits in ``scope``.
    Neither call is a checkpoint. ``restart`` starts the watching task the
    first time, in the connection's own nursery.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self.deadline = math.inf
        self.scope = trio.CancelScope()
        self.ended = False
        self._watching = False

    @property
    def idle(self) -> bool:
        return self.deadline < math.inf

    async def restart(self, task_group: TaskGroup, watch: Callable[[], Awaitable[None]]) -> None:
        """Start the idle time: the connection closes ``timeout`` seconds from now."""
        self._move(trio.current_time() + self._timeout)
        if not self._watching:
            self._watching = True
            task_group.spawn(watch)

    async def stop(self) -> None:
        """Remove the deadline until the next ``restart``, because a request arrived."""
        self._move(math.inf)

    def end(self) -> None:
        """Stop the watching task without closing anything, because the connection has ended."""
        self.ended = True
        self.scope.cancel()

    def _move(self, deadline: float) -> None:
        self.deadline = deadline
        self.scope.deadline = deadline


class _ClosingConnection(h11.Connection):
    """h11's server connection, ignoring whatever a client sends after its last request.

    A request with ``Connection: close`` (or an HTTP/1.0 request) is the
    client's last, and a client should not assume that the server processes
    requests pipelined after it (RFC 7230, section 6.6). h11 raises on such
    bytes instead, and Hypercorn then sends an empty 400 in place of the
    response to the request. Here the bytes are dropped: later reads are
    not buffered, and bytes that came in the same read as the request stay
    unparsed until the server closes the connection after its response.

    A request with both ``Content-Length`` and ``Transfer-Encoding`` is
    rejected with 400, and the connection closes. h11 frames its body by
    ``Transfer-Encoding``, but a proxy in front may have framed it by
    ``Content-Length``, and the two would then split the bytes into
    different requests (request smuggling). RFC 9112, section 6.1, lets a
    server reject such a request, and requires it to close the connection
    after responding to it otherwise.

    Empty lines at the start of a read, before a request line, are ignored,
    as RFC 9112, section 2.2, recommends. NOTE: empty lines that arrive in
    the same read as the end of the previous request still get 400, because
    h11 buffers them and has no public way to drop buffered bytes.

    Two more checks that h11 leaves to the server: a request whose line and
    header fields pass ``max_head_bytes`` gets 431 even when it arrived in
    one read (h11 only limits a head that is still incomplete), and a
    request of an HTTP major version other than 1 gets 505. The HTTP/2
    preface (``PRI * HTTP/2.0``) passes, so that Hypercorn can switch to
    HTTP/2 as usual.
    """

    # Whether next_event rejected a HEAD request after h11 had parsed it. The
    # error response to a HEAD must have no body.
    rejected_head = False
    # What was wrong with the rejected request, in the parser's words.
    rejection_reason = ""
    # Whether the rejected request was a WebSocket handshake.
    rejected_websocket = False
    # The rejected request, if h11 had parsed it before next_event rejected it.
    rejected_request: h11.Request | None = None
    # Whether the last request asked for an h2c upgrade that it may not have
    # (see ``_is_valid_h2c_upgrade``), so that it is served over HTTP/1.1.
    ignores_upgrade = False
    # Whether the connection has ended, so that next_event reports it closed.
    ended = False

    def __init__(self, max_head_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_head_bytes = max_head_bytes

    def receive_data(self, data: bytes) -> None:
        if data and self.their_state is h11.MUST_CLOSE:
            return
        if data and self.their_state is h11.IDLE and not self.trailing_data[0]:
            # RFC 9112, section 2.2, recommends that a server ignore empty lines
            # before a request line, which h11 rejects. A read of line ends only
            # is dropped whole, because empty data would mean the end of the stream.
            data = data.lstrip(b"\r\n")
            if not data:
                return
        super().receive_data(data)

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        if self.ended:
            return h11.ConnectionClosed()
        if self.their_state is h11.MUST_CLOSE and self.trailing_data[0]:
            return h11.NEED_DATA
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as error:
            # h11 raises it from a frame whose locals refer to the exception, so
            # its traceback would make a cycle that keeps the connection alive
            # until a full collection. The client's error needs no traceback.
            error.__traceback__ = None
            self.rejection_reason = str(error)
            raise
        if isinstance(event, h11.Request):
            rejection, self.ignores_upgrade = _check_request(event, self.max_head_bytes)
            if rejection is not None:
                self.rejected_request = event
                self.rejected_head = event.method == b"HEAD"
                self.rejected_websocket = isinstance(rejection, _WebSocketUpgrade)
                self.rejection_reason = str(rejection)
                raise rejection
        return event


def _check_request(
    request: h11.Request, max_head_bytes: int
) -> tuple[h11.RemoteProtocolError | None, bool]:
    """Return the error to reject ``request`` with, and whether to ignore its ``Upgrade: h2c``.

    The error is None for a request that may go on. Runs for every request,
    so it makes one pass over the header fields, whose names h11 has already
    lower-cased.
    """
    has_length = has_encoding = False
    upgrade = connection = b""
    settings: list[bytes] = []
    size = len(request.method) + len(request.target)
    for name, value in request.headers:
        size += len(name) + len(value)
        if name == b"content-length":
            has_length = True
        elif name == b"transfer-encoding":
            has_encoding = True
        elif name == b"upgrade":
            upgrade = value
        elif name == b"connection":
            connection += b"," + value
        elif name == b"http2-settings":
            settings.append(value)
    rejection = _request_error(
        request, max_head_bytes, size, has_length and has_encoding, upgrade, connection
    )
    ignores_upgrade = (
        rejection is None
        and upgrade.strip().lower() == b"h2c"
        and not _is_valid_h2c_upgrade(connection, settings)
    )
    return rejection, ignores_upgrade


def _request_error(
    request: h11.Request,
    max_head_bytes: int,
    size: int,
    both_framings: bool,
    upgrade: bytes,
    connection: bytes,
) -> h11.RemoteProtocolError | None:
    """Return the error to reject ``request`` with, or None if it may go on.

    ``size`` counts the bytes of the method, target, header names and
    values, a little less than the head on the wire. ``both_framings`` is
    whether it has both Content-Length and Transfer-Encoding. ``upgrade``
    and ``connection`` are those fields' values.
    """
    if upgrade and _is_websocket_upgrade(request.method, upgrade, connection):
        return _WebSocketUpgrade("WebSocket upgrade requested", error_status_hint=400)
    if size > max_head_bytes:
        return h11.RemoteProtocolError("request head too large", error_status_hint=431)
    if both_framings:
        return h11.RemoteProtocolError(
            "request has both Content-Length and Transfer-Encoding", error_status_hint=400
        )
    if _is_http2_preface(request):
        return None
    if not request.http_version.startswith(b"1."):
        return h11.RemoteProtocolError("HTTP version not supported", error_status_hint=505)
    if not _is_valid_target(request.method, request.target):
        return h11.RemoteProtocolError(
            "request target must be a path starting with '/'", error_status_hint=400
        )
    return None


def _is_valid_target(method: bytes, target: bytes) -> bool:
    """Return whether ``target`` has one of the forms of RFC 9112, section 3.2, for ``method``.

    h11 takes any target, and Quart served ``GET health`` like ``GET /health``.
    A path (origin form) and a URL (absolute form, as sent to proxies) pass,
    and so do ``*`` for OPTIONS and any target of a CONNECT, which the
    server rejects on its own.
    """
    if target.startswith(b"/") or method == b"CONNECT":
        return True
    if target == b"*":
        return method == b"OPTIONS"
    return target.lower().startswith((b"http://", b"https://"))


class _WebSocketUpgrade(h11.RemoteProtocolError):
    """The rejection of a WebSocket handshake: the ``websocket_not_supported`` problem."""


def _is_websocket_upgrade(method: bytes, upgrade: bytes, connection: bytes) -> bool:
    """Return whether Hypercorn would take the request for a WebSocket handshake.

    Such a request is rejected before it reaches Hypercorn. Hypercorn
    responds to an invalid handshake with an empty 400 and leaves the
    connection open, and bytes pipelined after a valid one made it log
    tracebacks.
    """
    tokens = {token.strip().lower() for token in connection.split(b",")}
    return method == b"GET" and upgrade.strip().lower() == b"websocket" and b"upgrade" in tokens


def _is_valid_h2c_upgrade(connection: bytes, settings: list[bytes]) -> bool:
    """Return whether a request for ``Upgrade: h2c`` may switch to HTTP/2.

    ``connection`` is the request's ``Connection`` values, and ``settings``
    its ``HTTP2-Settings`` lines.

    Hypercorn switched to HTTP/2 on the ``Upgrade`` value alone, after its
    101 response, and an invalid ``HTTP2-Settings`` then ended the connection
    with a traceback in the log and no response to the request. RFC 7540,
    section 3.2.1, which defined the upgrade (RFC 9113 deprecates it),
    requires exactly one ``HTTP2-Settings`` field, listed in ``Connection``.
    A request without it, without ``upgrade`` in ``Connection``, or whose
    settings do not decode, is served over HTTP/1.1, as RFC 9110, section
    7.8, allows.
    """
    tokens = {token.strip().lower() for token in connection.split(b",")}
    if len(settings) != 1 or not {b"upgrade", b"http2-settings"} <= tokens:
        return False
    try:
        probe = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        probe.initiate_upgrade_connection(settings[0])
    except (ValueError, h2.exceptions.H2Error, hyperframe.exceptions.HyperframeError):
        return False
    return True


def _is_http2_preface(request: h11.Request) -> bool:
    return request.method == b"PRI" and request.target == b"*" and request.http_version == b"2.0"


# Problems for the requests that h11 rejects before they reach the app, by
# the status h11 suggests.
_PROTOCOL_PROBLEMS = {
    400: Problem(
        400,
        "malformed_request",
        "Malformed request",
        "The request is not valid HTTP/1.1: check the request line, the header "
        "fields and the framing of the body.",
    ),
    431: Problem(
        431,
        "headers_too_large",
        "Request header fields too large",
        "The request line and header fields are longer than the server accepts.",
    ),
    501: Problem(
        501,
        "transfer_encoding_not_supported",
        "Transfer-Encoding not supported",
        "The only Transfer-Encoding the server accepts is chunked.",
    ),
    505: Problem(
        505,
        "http_version_not_supported",
        "HTTP version not supported",
        "The server speaks HTTP/1.0, HTTP/1.1 and HTTP/2.",
    ),
}


class _H11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1 protocol on a ``_ClosingConnection``: problem+json errors, fewer writes.

    Hypercorn responds to a request that h11 rejects (a malformed request line,
    header fields that are too long, an unknown Transfer-Encoding) with an
    empty body. Here the response carries the problem document that every
    other error of the service has, with the parser's reason in its detail
    and a new request id, which the log line of the rejection also names.

    The switch to HTTP/2 after its preface marks the connection idle (see
    ``_check_protocol``).

    Hypercorn writes a response's head, its body and the end of a
    Content-Length body (no bytes, but still a checkpoint) in three calls.
    Here the head waits for the first body bytes or the end of the message,
    so a small response is one ``send_all``. That cut the server's CPU per
    request by about a fifth for a start and a status read, measured with
    ``python -m bench._cost`` on a 2-core VM.
    """

    connection: _ClosingConnection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Replaces the connection that Hypercorn's constructor made, before any use.
        self.connection = _ClosingConnection(self.config.h11_max_incomplete_size)
        self._unsent_head = b""

    async def handle(self, event: Event) -> None:
        if isinstance(event, Closed):
            # Bytes pipelined after a request pause the reading task until its
            # response ends. A write that fails ends the connection without
            # that, and the paused task kept the connection open until the
            # server stopped. Woken, it reads the connection as closed and returns.
            self.connection.ended = True
            await super().handle(event)
            await self.can_read.set()
            return
        await super().handle(event)

    async def stream_send(self, event: StreamEvent) -> None:
        # Events other than a response's own (a close, raw tunnel data) send
        # the held head first, so that bytes never go out of order.
        if not isinstance(event, Response | Body | EndBody) and self._unsent_head:
            await self._write(b"")
        if isinstance(event, Response) and event.status_code >= 200 and self._stopping():
            # The server is stopping: h11 closes the connection after this
            # response, and the header keeps the client from reusing it.
            if not any(
                name.lower() == b"connection" and b"close" in value.lower()
                for name, value in event.headers
            ):
                headers = [*event.headers, (b"connection", b"close")]
                event = dataclasses.replace(event, headers=headers)
        await super().stream_send(event)

    def _stopping(self) -> bool:
        return isinstance(self.config, _ServerConfig) and self.config.stop.signalled

    async def _send_h11_event(self, event: H11SendableEvent) -> None:
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        if isinstance(event, h11.Response):
            # A final response's head (not a 1xx) waits for the body's first write.
            self._unsent_head = data
            return
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        """Send the held head, if any, and ``data`` in one call; send nothing if both are empty."""
        data, self._unsent_head = self._unsent_head + data, b""
        if data:
            await self.send(RawData(data=data))

    async def _check_protocol(self, event: h11.Request) -> None:
        if self.connection.ignores_upgrade:
            # Served over HTTP/1.1: Hypercorn checks only the Upgrade value.
            return
        try:
            await super()._check_protocol(event)
        except H2ProtocolAssumedError:
            # The HTTP/2 preface is not a request, but Hypercorn has already
            # reported it as one in progress, and HTTP/2 only reports the
            # connection idle again when a stream closes. A client that sent
            # the preface and no request would hold the connection forever.
            await self.send(Updated(idle=True))
            raise

    def _rejected_scope(self) -> dict[str, Any]:
        """Return the scope that the access log gets for the request being rejected.

        A request whose body was malformed has a stream, which then logs no
        line of its own. A request that h11 parsed before ``next_event``
        rejected it has its line and fields. A request line that h11 could
        not parse is logged as ``- - -``.
        """
        if isinstance(self.stream, _HTTPStream) and self.stream.claim_access_log():
            return dict(self.stream.scope)
        request = self.connection.rejected_request
        if request is None:
            return _access_scope(self.client, "-", "-", b"-", [])
        return _access_scope(
            self.client,
            request.http_version.decode("latin-1"),
            request.method.decode("latin-1"),
            request.target,
            list(request.headers),
        )

    async def _send_error_response(self, status_code: int) -> None:
        problem = _PROTOCOL_PROBLEMS.get(status_code) or Problem(
            status_code,
            "malformed_request",
            "Malformed request",
            f"The server cannot process this request (status {status_code}).",
        )
        # h11's messages may quote the client's bytes, so the reason is cut short.
        reason = _BYTEARRAY_REPR.sub(r"\1", self.connection.rejection_reason)
        reason = reason[:MAX_REASON_CHARACTERS]
        if self.connection.rejected_websocket:
            document = WEBSOCKET_PROBLEM.document()
        else:
            document = problem.document()
            if reason:
                document["detail"] += f" The parser reported: {reason}."
        scope = self._rejected_scope()
        # The id that the app picked, or else the client's valid X-Request-ID,
        # or else a new one. The log line carries it too.
        request_id = picked_request_id(scope) or _offered_request_id(scope["headers"])
        document["requestId"] = request_id
        logger.info(
            "rejected a request from %s with %d: %s (request id %s)",
            self.client,
            status_code,
            reason or "no reason given",
            request_id,
        )
        body = encode_json(document)
        headers = [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),
            *self.config.response_headers("h11"),
        ]
        await _log_rejection(
            self.config,
            scope,
            status_code,
            headers,
            0 if self.connection.rejected_head else len(body),
        )
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        # h11 raises on a body in the response to a HEAD. Only a request that
        # next_event rejected after h11 parsed it can be a HEAD here.
        if not self.connection.rejected_head:
            await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


def _access_scope(
    client: tuple[str, int] | None,
    http_version: str,
    method: str,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
) -> dict[str, Any]:
    """Return a scope with the fields that the access log reads, for a request the app never saw."""
    path, _, query = target.partition(b"?")
    return {
        "type": "http",
        "http_version": http_version,
        "method": method,
        "scheme": "http",
        "path": path.decode("latin-1"),
        "raw_path": path,
        "query_string": query,
        "headers": headers,
        "client": client,
        "server": None,
    }


def _offered_request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """Return the first ``X-Request-ID`` in ``headers`` if it is valid, else a new id."""
    for name, value in headers:
        if name == b"x-request-id":
            offered = value.decode("latin-1")
            if is_valid_request_id(offered):
                return offered
            break
    return str(uuid.uuid4())


async def _log_rejection(
    config: Config,
    scope: dict[str, Any],
    status: int,
    response_headers: list[tuple[bytes, bytes]],
    body_bytes: int,
) -> None:
    """Write the access-log line of a request that the server rejected before the app responded.

    Not a checkpoint.
    """
    response: _LoggedResponse = {
        "status": status,
        "headers": response_headers,
        "body_bytes": body_bytes,
    }
    await config.log.access(cast(WWWScope, scope), response, 0.0)


class _AppQueue:
    """The messages of one request, from its stream to its app's task.

    Hypercorn passes them through a memory channel whose ``send`` and
    ``receive`` are checkpoints even when they need not wait, and under load
    each checkpoint waits a whole pass of the scheduler. So the reading task
    waited one for every request, a start's task one for each of its two
    body messages, and every request's task one for the ``http.disconnect``
    queued after its response. ``put`` and ``receive`` wait only while the
    queue is full or empty. A full queue still blocks the reading task until
    the app catches up, so a body that the app does not read stops being read
    from the socket. ``receive`` is a cancellation point either way.

    Two cases must not wait at all, because nothing would end the wait:

    - ``http.disconnect`` is a state, not one more message. It never waits
      for room, and ``receive`` returns it once the queue is empty, as often
      as it is called. An app that responded without reading a body has left
      the queue full, and the stream's close, which puts the disconnect, is
      shielded from cancellation.
    - After ``close`` (the app has returned), ``put`` drops its message and a
      ``put`` waiting for room returns.
    """

    def __init__(self, size: int) -> None:
        self._send, self._receive = trio.open_memory_channel[ASGIReceiveEvent](size)
        self._disconnected = False

    async def put(self, message: ASGIReceiveEvent) -> None:
        if message["type"] == "http.disconnect":
            self._disconnected = True
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            if not self._disconnected:
                with contextlib.suppress(trio.BrokenResourceError):
                    await self._send.send(message)
        except trio.BrokenResourceError:
            pass

    async def receive(self) -> ASGIReceiveEvent:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            return self._receive.receive_nowait()
        except trio.WouldBlock:
            if self._disconnected:
                return {"type": "http.disconnect"}
            return await self._receive.receive()

    def close(self) -> None:
        """Drop every message from now on, because the app has returned."""
        self._receive.close()


async def _run_app(
    app: AppWrapper,
    scope: Scope,
    queue: _AppQueue,
    send: Callable[[ASGISendEvent | None], Awaitable[None]],
) -> None:
    """Run ``app`` for one request, then tell the stream with ``send(None)`` that it returned.

    An error other than cancellation is logged with its traceback, and the
    stream then responds with 500 if no response had started.
    """
    try:
        await app(scope, queue.receive, send, trio.to_thread.run_sync, trio.from_thread.run)
    except trio.Cancelled:
        raise
    except Exception:
        logger.exception("the app failed on %s %s", scope.get("method"), scope.get("path"))
    except BaseExceptionGroup as group:
        _, errors = group.split(trio.Cancelled)
        if errors is None:
            raise
        logger.exception("the app failed on %s %s", scope.get("method"), scope.get("path"))
    finally:
        queue.close()
        await send(None)


class _AppTasks:
    """A connection's task group, giving each request's app an ``_AppQueue``."""

    def __init__(self, task_group: hypercorn.typing.TaskGroup) -> None:
        self._task_group = task_group

    def spawn(self, func: Callable[..., Awaitable[object]], *args: Any) -> None:
        self._task_group.spawn(func, *args)

    async def spawn_app(
        self,
        app: AppWrapper,
        config: Config,
        scope: Scope,
        send: Callable[[ASGISendEvent | None], Awaitable[None]],
    ) -> Callable[[ASGIReceiveEvent], Awaitable[None]]:
        """Start ``app`` for one request; return the function that queues its messages."""
        queue = _AppQueue(config.max_app_queue_size)
        self._task_group.spawn(_run_app, app, scope, queue, send)
        return queue.put


class _BodyCounter:
    """A stream's ``send`` that counts the bytes of the ``Body`` events it passes on.

    A write counts as it starts. A client that closes the connection as soon
    as it has the bytes can end the stream, and so write the access-log
    line, before the write returns. A write that fails still counts, so a
    response cut short may be logged with up to one write more than the
    connection took. Over HTTP/2 a write returns once the bytes are
    buffered, so HTTP/2 lines use the bytes that flow control let out
    instead (``_HTTPStream.count_sent``). The counter refers to the
    protocol, not back to the stream, because a reference cycle would leave
    each finished stream to the garbage collector's rare full collections.
    """

    def __init__(self, send: Callable[[StreamEvent], Awaitable[None]]) -> None:
        self.send = send
        self.body_bytes = 0

    async def __call__(self, event: StreamEvent) -> None:
        if isinstance(event, Body):
            self.body_bytes += len(event.data)
        await self.send(event)


class _HTTPStream(HTTPStream):
    """Hypercorn's HTTP stream, writing exactly one access-log line per request.

    Hypercorn logs a request when its response ends, and also when the
    stream closes before that, without the response (``- -``). A client that
    closes the connection as soon as it has a response's bytes often closes
    the stream before the app's end-of-body message, so such requests were
    logged twice, or only as ``- -`` when the app's task was then cancelled.
    Here the request is logged once: at the response's end, or when the
    stream closes after the response has started, or when the app returns
    after the stream closed before that. A request the app still responded
    to, such as a start whose client half-closed the connection, so gets
    its status. The status is the app's: a client that closed the
    connection early may not have received it, and the size is the
    response body's bytes written to the connection before the line (a
    download cut short is logged with what it sent), not its Content-Length.
    The line is written before the response's last write, which may fail.
    """

    _logged = False
    # Body bytes that HTTP/2 flow control let out (``_H2Protocol._send_data``).
    _sent_bytes = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.send = self._counted = _BodyCounter(self.send)
        self.task_group = _AppTasks(self.task_group)  # type: ignore[assignment]

    async def handle(self, event: StreamEvent) -> None:
        if not isinstance(event, StreamClosed) or self.closed:
            await super().handle(event)
            return
        self.closed = True
        if self._response_started():
            await self._log_access(self.response)
        if self.app_put is not None:
            await self.app_put({"type": "http.disconnect"})

    async def app_send(self, message: ASGISendEvent | None) -> None:
        if message is None and self.closed:
            # The app has returned, after its stream closed early.
            await self._log_access(self.response if self._response_started() else None)
        await super().app_send(message)

    def _response_started(self) -> bool:
        return self.state in (ASGIHTTPState.RESPONSE, ASGIHTTPState.TRAILERS, ASGIHTTPState.CLOSED)

    async def _send_closed(self) -> None:
        self.state = ASGIHTTPState.CLOSED
        if self._is_http2():
            # The end of the body returns once flow control has let out every
            # byte (or the stream has closed), so the line has the true count.
            await self.send(EndBody(stream_id=self.stream_id))
            await self._log_access(self.response)
        else:
            await self._log_access(self.response)
            await self.send(EndBody(stream_id=self.stream_id))
        await self.send(StreamClosed(stream_id=self.stream_id))

    def _is_http2(self) -> bool:
        return self.scope.get("http_version") == "2"

    def count_sent(self, size: int) -> None:
        """Add ``size`` body bytes that HTTP/2 flow control let out; not a checkpoint."""
        self._sent_bytes += size

    def claim_access_log(self) -> bool:
        """Return True, once, to the first caller that writes the request's line."""
        if self._logged:
            return False
        self._logged = True
        return True

    async def _log_access(self, response: HTTPResponseStartEvent | None) -> None:
        # Not a checkpoint: Hypercorn's logger writes without awaiting.
        if self.claim_access_log():
            summary: _LoggedResponse | None = None
            if response is not None:
                summary = {
                    "status": response["status"],
                    "headers": response.get("headers", []),
                    "body_bytes": (
                        self._sent_bytes if self._is_http2() else self._counted.body_bytes
                    ),
                }
            # The logger also takes None, for no response, as Hypercorn's own streams pass it.
            await self.config.log.access(
                self.scope, cast(ResponseSummary, summary), time.time() - self.start_time
            )


# The problem of a CONNECT that is no WebSocket handshake.
_CONNECT_PROBLEM = Problem(
    405,
    "method_not_allowed",
    "Method not allowed",
    "CONNECT is not allowed: the service is not a proxy.",
)

# The problem of an HTTP/2 request whose :path is no path, URL or OPTIONS *.
_TARGET_PROBLEM = Problem(
    400,
    "malformed_request",
    "Malformed request",
    "The request target must be a path starting with '/'.",
)


class _ProblemStream:
    """An HTTP/2 stream that responds to its request with one problem document.

    Handling the request sends four events, each a checkpoint. Other events
    are ignored, so a client may still send data on the stream.
    """

    idle = False

    def __init__(
        self,
        send: Callable[[StreamEvent], Awaitable[None]],
        stream_id: int,
        problem: Problem,
        config: Config,
        client: tuple[str, int] | None,
    ) -> None:
        self.send = send
        self.stream_id = stream_id
        self.problem = problem
        self.config = config
        self.client = client

    async def handle(self, event: StreamEvent) -> None:
        if not isinstance(event, Request):
            return
        request_id = _offered_request_id(event.headers)
        logger.info(
            "rejected an HTTP/2 %s request with %d (request id %s)",
            event.method,
            self.problem.status,
            request_id,
        )
        headers, body = self.problem.encode(request_id)
        headers.append(("X-Request-ID", request_id))
        encoded = [(name.lower().encode(), value.encode("latin-1")) for name, value in headers]
        scope = _access_scope(
            self.client, event.http_version, event.method, event.raw_path, event.headers
        )
        await _log_rejection(self.config, scope, self.problem.status, encoded, len(body))
        await self.send(
            Response(stream_id=self.stream_id, headers=encoded, status_code=self.problem.status)
        )
        await self.send(Body(stream_id=self.stream_id, data=body))
        await self.send(EndBody(stream_id=self.stream_id))
        await self.send(StreamClosed(stream_id=self.stream_id))


class _H2Protocol(H2Protocol):
    """Hypercorn's HTTP/2 protocol, responding itself to CONNECT and to a :path that is no path.

    Hypercorn takes every CONNECT for a WebSocket handshake (RFC 8441). It
    sent an empty 400 for an invalid handshake, and a CONNECT without
    ``:path`` raised ``UnboundLocalError``, which ended the connection and
    logged a traceback. The service is neither a WebSocket server nor a
    proxy, so a CONNECT with ``:protocol`` gets the ``websocket_not_supported``
    problem, and any other CONNECT a 405 problem. A request whose ``:path``
    is no path, URL or ``*`` for OPTIONS gets a 400 problem, as over HTTP/1.1.

    Hypercorn also looked up the stream of each DATA frame without checking
    that it was still open. Data for a stream whose response had ended,
    such as a CONNECT's or a GET's whose client kept sending, raised
    ``KeyError``, which ended the connection with every other stream on it.
    Here such data is acknowledged, so the connection's flow-control window
    stays open, and otherwise dropped.

    A client that resets more than ``MAX_CLIENT_RESETS`` streams in progress
    on one connection gets GOAWAY ENHANCE_YOUR_CALM, and the connection ends.

    The server's idle timer calls ``send_goaway`` before it closes the
    connection.

    Hypercorn's send task wrote a response's last bytes, then a checkpoint,
    then the end of the stream. Taking the last bytes wakes the app's task,
    whose end of the stream closes the connection during a stop, so the
    client never received the end of the stream. Here ``_send_data`` sends
    the last bytes with the end of the stream, with no checkpoint between.

    During a stop, the end of the last stream sends GOAWAY, and h2 then
    rejects every frame. The client's WINDOW_UPDATE for the last bytes often
    arrives after that, and h2 responded with GOAWAY PROTOCOL_ERROR. Such
    late bytes are now dropped (``handle``), and the client closes the
    connection after GOAWAY, or the keep-alive timeout closes it.
    """

    async def _send_data(self, stream_id: int) -> None:
        try:
            buffer = self.stream_buffers[stream_id]
            window = self.connection.local_flow_control_window(stream_id)
            chunk_size = max(0, min(window, self.connection.max_outbound_frame_size))
            data = await buffer.pop(chunk_size)  # not a checkpoint
            if buffer.complete:
                self.connection.send_data(stream_id, data, end_stream=True)
                self._count_sent(stream_id, len(data))
                del self.stream_buffers[stream_id]
                self.priority.remove_stream(stream_id)
                await self._flush()
            elif data:
                self.connection.send_data(stream_id, data)
                self._count_sent(stream_id, len(data))
                await self._flush()
            else:
                self.priority.block(stream_id)
        except (h2.exceptions.StreamClosedError, KeyError, h2.exceptions.ProtocolError):
            # As in Hypercorn: the stream or the connection closed while data waited.
            await self.stream_buffers[stream_id].close()
            del self.stream_buffers[stream_id]
            self.priority.remove_stream(stream_id)

    # Streams in progress that the client has reset on this connection.
    _client_resets = 0

    async def stream_send(self, event: StreamEvent) -> None:
        if not isinstance(event, StreamClosed):
            await super().stream_send(event)
            return
        # A stream's end comes from the app's task, which Quart-Trio may be
        # cancelling. During a stop the end sends GOAWAY, and its write first
        # takes the connection's send lock, a checkpoint, so a cancel there
        # left GOAWAY unsent. Hypercorn shields the write itself, so the
        # shield adds no new wait.
        with trio.CancelScope(shield=True):
            await super().stream_send(event)

    async def handle(self, event: Event) -> None:
        if (
            isinstance(event, RawData)
            and self.connection.state_machine.state is h2.connection.ConnectionState.CLOSED
        ):
            # The server has sent GOAWAY, so h2 rejects every further frame,
            # and would send GOAWAY PROTOCOL_ERROR for a late WINDOW_UPDATE.
            return
        await super().handle(event)
        if isinstance(event, Closed):
            # The task that sends DATA frames stops when the connection closes,
            # and an app's end of body waits for its stream's buffer to drain.
            # Its task would wait forever, and hold the connection's memory and
            # the server's stop. A closed buffer ends the wait.
            for buffer in self.stream_buffers.values():
                await buffer.close()

    def _count_sent(self, stream_id: int, size: int) -> None:
        """Add ``size`` body bytes sent on ``stream_id`` to its access-log count."""
        stream = self.streams.get(stream_id)
        if isinstance(stream, _HTTPStream):
            stream.count_sent(size)

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # One event at a time: a stream opened by an earlier event of the same
        # batch must be known when its data comes.
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
                continue
            if isinstance(event, h2.events.RequestReceived) and self.context.terminated.is_set():
                # Hypercorn reset such a stream with NO_ERROR. REFUSED_STREAM
                # means that nothing was processed, so the client may retry
                # elsewhere (RFC 9113, section 8.7).
                self.connection.reset_stream(
                    event.stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM
                )
                self.connection.update_settings(
                    {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0}
                )
                await self._flush()
                continue
            if isinstance(event, h2.events.StreamReset) and event.stream_id in self.streams:
                self._client_resets += 1
                if self._client_resets > MAX_CLIENT_RESETS:
                    await self._end_for_resets()
                    return
            await super()._handle_events([event])

    async def _end_for_resets(self) -> None:
        """End the connection with GOAWAY ENHANCE_YOUR_CALM; its streams are cancelled."""
        logger.warning(
            "closed an HTTP/2 connection from %s whose client reset more than %d streams "
            "in progress",
            self.client,
            MAX_CLIENT_RESETS,
        )
        self.connection.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        await self._flush()
        await self.send(Closed())

    async def send_goaway(self) -> None:
        """Send GOAWAY, as RFC 9113, section 6.8, expects before a server closes a connection.

        One checkpoint, the write. A connection that has already sent GOAWAY
        sends another, which RFC 9113 allows. Sends nothing if h2 raises.
        """
        try:
            self.connection.close_connection()
        except h2.exceptions.ProtocolError:
            return
        await self._flush()

    async def _create_stream(self, request: h2.events.RequestReceived) -> None:
        method = path = b""
        websocket = False
        headers: list[tuple[bytes, bytes]] = []
        for name, value in request.headers:
            if name == b":method":
                method = value
            elif name == b":protocol":
                websocket = True
            elif name == b":path":
                path = value
            elif not name.startswith(b":"):
                headers.append((name, value))
        if method.upper() == b"CONNECT":
            problem = WEBSOCKET_PROBLEM if websocket else _CONNECT_PROBLEM
        elif not _is_valid_target(method, path):
            # As over HTTP/1.1: Quart served ":path: health" like "/health".
            problem = _TARGET_PROBLEM
        else:
            await super()._create_stream(request)
            return
        stream_id = request.stream_id
        # The bookkeeping of Hypercorn's own _create_stream, for any stream.
        self.streams[stream_id] = _ProblemStream(  # type: ignore[assignment]
            self.stream_send, stream_id, problem, self.config, self.client
        )
        self.stream_buffers[stream_id] = StreamBuffer(self.context.event_class)
        try:
            self.priority.insert_stream(stream_id)
        except DuplicateStreamError:
            # A PRIORITY frame came before the HEADERS frame.
            pass
        else:
            self.priority.block(stream_id)
        await self.streams[stream_id].handle(
            Request(
                stream_id=stream_id,
                headers=headers,
                http_version="2",
                method=method.decode("latin-1"),
                raw_path=path or b"-",
                state=self.connection_state,
            )
        )


class _ConnectionServer(TCPServer):
    """Hypercorn's connection handler: a cheaper idle timer, a sure close, one race kept inside.

    The idle timer is ``_IdleTimer``: an idle connection closes after
    ``keep_alive_timeout``, or at once when the server stops. Closing the
    socket is shielded from cancellation (see ``_close``). A finished
    connection leaves no reference cycle behind (see ``run``).

    In Hypercorn 0.18 the task that reads a connection can send a 400 (for
    bytes after a request that closes the connection) while the app's task
    shuts down the sending side. trio then raises ``BusyResourceError`` in
    the reading task, and Hypercorn lets it escape into the nursery of
    every connection, which stops the whole server. Here it ends only that
    connection, which the client has already broken. ``_ClosingConnection``
    now drops such bytes, and the catch stays for any other error that
    Hypercorn responds to while the app's task closes the connection. Any
    other unexpected error also ends only its connection, and is logged
    with its traceback.
    """

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        stream: trio.SSLStream[trio.SocketStream],
    ) -> None:
        super().__init__(app, config, context, state, stream)
        self.idle_task: _IdleTimer = _IdleTimer(  # type: ignore[assignment]
            config.keep_alive_timeout
        )

    async def _idle_timeout(self) -> None:
        """Close the connection when its idle deadline passes or, while idle, when the server stops.

        A connection still busy is closed at the cut of a second stop signal
        (``_Stop.hurry``). Runs from the connection's first ``restart`` until
        it closes the connection or ``end`` cancels it.
        """
        timer = self.idle_task
        # The connection can end before this task first runs, so check each round.
        while not timer.ended:
            with trio.CancelScope(deadline=timer.deadline) as timer.scope:
                await self.context.terminated.wait()
                if timer.idle:
                    break
                # Once the server stops, Hypercorn closes a busy connection
                # after its response instead of reading another request, and
                # the connection's end then cancels this wait. A second stop
                # signal closes it a few seconds later even when busy.
                if not isinstance(self.config, _ServerConfig):
                    await trio.sleep_forever()
                await self.config.stop.wait_for_cut()
                logger.info("closed a connection that was still busy after the second stop signal")
                break
            if not timer.ended and trio.current_time() >= timer.deadline:
                break
            # A request arrived just as the deadline passed: keep watching.
        if timer.ended:
            return
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def _initiate_server_close(self) -> None:
        protocol = getattr(self.protocol, "protocol", None)
        if isinstance(protocol, _H2Protocol):
            await protocol.send_goaway()
        await super()._initiate_server_close()

    async def _close(self) -> None:
        """Close the connection's socket, without a checkpoint for a plain TCP stream.

        Hypercorn ends the sending side and closes the socket with a
        checkpoint each, from the task that ends the connection. After a
        "Connection: close" request that is the task of a Quart route, inside
        the request nursery that Quart-Trio cancels as the response ends, so
        the close was cancelled and the connection stayed open. Both socket
        calls are synchronous, so here they run at once and cannot be
        cancelled. A task blocked on the socket gets ``ClosedResourceError``.
        """
        if not isinstance(self.stream, trio.SocketStream):
            with trio.CancelScope(shield=True):
                await super()._close()
            return
        socket = self.stream.socket
        with contextlib.suppress(OSError):
            socket.shutdown(trio.socket.SHUT_WR)
        socket.close()

    async def protocol_send(self, event: Event) -> None:
        """Write ``RawData`` with one checkpoint, the write's own, and pass other events on.

        Hypercorn takes the send lock with ``async with``, a checkpoint of its
        own before every write, and under load each checkpoint waits a whole
        pass of the scheduler. The lock only orders the streams of an HTTP/2
        connection, so it is taken without a checkpoint when free. As in
        Hypercorn, the write is shielded: a cancelled task's response goes out
        whole, and a broken connection is reported to the protocol as closed.
        """
        if not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        try:
            self.send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self.send_lock.acquire()
        try:
            with trio.CancelScope(shield=True):
                await self.stream.send_all(event.data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.send_lock.release()
            await self.protocol.handle(Closed())
        else:
            self.send_lock.release()

    async def _read_data(self) -> None:
        """Feed what the client sends to the protocol until the connection ends.

        Hypercorn wraps every read in ``fail_after(read_timeout)``, a cancel
        scope per read even when no read timeout is set, and the server sets
        none: the idle timer and the body timeout bound a connection's
        silences.
        """
        try:
            while True:
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                await self.protocol.handle(RawData(bytes(data)))
                if not data:
                    break
            await self.protocol.handle(Closed())
        finally:
            # Every connection ends here: the client closed it, or the server did.
            self.idle_task.end()

    async def run(self) -> None:
        try:
            await super().run()
        except* trio.BusyResourceError as group:
            logger.info(
                "closed a connection after a client protocol error led to concurrent sends: %s",
                group.exceptions[0],
            )
        except* Exception as group:
            # A bug in handling one connection ends that connection only,
            # not the server and every other client with it.
            logger.error(
                "closed a connection after an unexpected error in its handling", exc_info=group
            )
        finally:
            # The protocol refers back to this handler through its send callback
            # (``protocol_send``). Dropping it lets reference counting free the
            # connection's objects now. As a cycle they would wait for a full
            # collection, which the server runs only when its heap doubles. The
            # attribute is missing if the connection failed before it was built.
            self.__dict__.pop("protocol", None)


@dataclasses.dataclass(eq=False)
class _Stop:
    """How far the server's stop has come, shared by the signal handler and the shutdown trigger."""

    # Set when no job is left in flight; the shutdown trigger then stops Hypercorn.
    drained: trio.Event = dataclasses.field(default_factory=trio.Event)
    # Whether a stop signal has arrived. From then on every HTTP/1.1 response
    # closes its connection, with "Connection: close".
    signalled: bool = False
    # Trio time at which the grace period of the first signal ends: the time
    # that responses in progress, such as downloads, may go on for. -inf
    # before the first signal and after a second one.
    grace_ends_at: float = -math.inf
    # Set by a second signal, with the trio time at which connections still
    # busy are closed.
    cut: trio.Event = dataclasses.field(default_factory=trio.Event)
    cut_at: float = math.inf

    def graceful_timeout(self) -> float:
        """Return the seconds open connections get from now, at least GRACEFUL_TIMEOUT_SECONDS."""
        return max(GRACEFUL_TIMEOUT_SECONDS, self.grace_ends_at - trio.current_time())

    def hurry(self) -> None:
        """Leave responses in progress GRACEFUL_TIMEOUT_SECONDS from now; not a checkpoint.

        Before the shutdown trigger has returned, that is the timeout it
        hands to Hypercorn. Once it has, Hypercorn's timeout is already set,
        so each busy connection closes itself at ``cut_at``.
        """
        self.grace_ends_at = -math.inf
        self.cut_at = trio.current_time() + GRACEFUL_TIMEOUT_SECONDS
        self.cut.set()

    async def wait_for_cut(self) -> None:
        """Return at ``cut_at``, once a second signal has set it; never otherwise."""
        await self.cut.wait()
        await trio.sleep_until(self.cut_at)


class _ServerConfig(Config):
    """Hypercorn's configuration, plus the stop that every connection handler watches."""

    def __init__(self, stop: _Stop) -> None:
        super().__init__()
        self.stop = stop


async def _handle_stop_signals(
    signals: AsyncIterator[int], app: Quart, grace: float, stop: _Stop
) -> None:
    """Drain the supervisor on the first SIGINT or SIGTERM; cancel its jobs on the second.

    While the supervisor drains, the server still accepts connections: new
    starts get 503 and polls are answered, so clients can see their jobs end.
    Processing jobs, and then responses in progress, get ``grace`` seconds
    from the first signal. Later signals are logged and otherwise ignored,
    so they cannot kill the process halfway through its shutdown.
    """
    received = 0
    async with trio.open_nursery() as nursery:
        async for signum in signals:
            received += 1
            stop.signalled = True
            name = signal.Signals(signum).name
            client: JobClient | None = app.extensions.get(CLIENT_KEY)
            if client is None:
                logger.info("received %s before start-up finished, stopping", name)
                stop.drained.set()
            elif received == 1:
                logger.info("received %s, draining for up to %g s", name, grace)
                stop.grace_ends_at = trio.current_time() + grace
                nursery.start_soon(_drain, client, grace, stop.drained)
            elif received == 2:
                logger.warning("received %s again, cancelling unfinished jobs now", name)
                stop.hurry()
                nursery.start_soon(_drain, client, 0.0, stop.drained)
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
    stop = _Stop()
    config = _ServerConfig(stop)
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = "-" if settings.access_log else None
    config.logger_class = _AccessLogger
    config.access_log_format = ACCESS_LOG_FORMAT
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = GRACEFUL_TIMEOUT_SECONDS
    config.keep_alive_timeout = settings.keep_alive_timeout
    config.backlog = LISTEN_BACKLOG
    app = create_app(settings)
    await trio.to_thread.run_sync(build_document, app)

    # NOTE: Hypercorn builds each connection's handler, HTTP/1.1 protocol and
    # HTTP streams from these module attributes, the only way to replace them;
    # check them on upgrades.
    hypercorn.trio.run.TCPServer = _ConnectionServer  # type: ignore[attr-defined]
    hypercorn.protocol.H11Protocol = _H11Protocol  # type: ignore[attr-defined]
    hypercorn.protocol.H2Protocol = _H2Protocol  # type: ignore[attr-defined]
    hypercorn.protocol.h11.HTTPStream = _HTTPStream  # type: ignore[attr-defined]
    hypercorn.protocol.h2.HTTPStream = _HTTPStream  # type: ignore[attr-defined]
    status_layer: StatusLayer = app.extensions[STATUS_LAYER_KEY]

    async def stop_serving() -> None:
        # Release held long polls so they get a response before Hypercorn closes
        # what is still open after its graceful timeout. On a finished job they
        # would otherwise wait the full 30 s.
        await stop.drained.wait()
        status_layer.release()
        # Hypercorn reads the timeout once this trigger returns. Idle
        # connections close at once, so only responses in progress use it.
        config.graceful_timeout = stop.graceful_timeout()
        logger.info(
            "stopped accepting connections; responses in progress get up to %.1f s",
            config.graceful_timeout,
        )

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _handle_stop_signals, signals, app, settings.engine.shutdown_grace, stop
            )
            async with trio.open_nursery() as server:
                binds: list[str] = await server.start(
                    functools.partial(hypercorn_serve, app, config, shutdown_trigger=stop_serving)
                )
                await nursery.start(manage_garbage_collection)
                for bind in binds:
                    logger.info("serving on %s", bind)
                task_status.started(binds)
            # The server has stopped: stop listening for signals too.
            nursery.cancel_scope.cancel()
    logger.info("server stopped")
