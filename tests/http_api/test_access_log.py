"""The access log: control characters that a request target decodes to are escaped, and
each request gets one line, also when the client closes the connection during the
response's last write."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypercorn.config import Config
from hypercorn.protocol.events import EndBody, Event, StreamClosed
from hypercorn.protocol.http_stream import ASGIHTTPState

from http_api._request_id import request_id_of
from http_api._server import ACCESS_LOG_FORMAT, _AccessLogger, _HTTPStream


def status_scope(path: str) -> Any:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("latin-1"),
        "query_string": b"",
        "headers": [(b"user-agent", b"test")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


@pytest.fixture
def logger(log_file: Path) -> Iterator[_AccessLogger]:
    config = Config()
    config.accesslog = str(log_file)
    access_logger = _AccessLogger(config)
    yield access_logger
    # Hypercorn installs the handler on the shared "hypercorn.access" logger.
    assert access_logger.access_logger is not None
    for handler in access_logger.access_logger.handlers:
        handler.close()
    access_logger.access_logger.handlers.clear()


async def test_decoded_line_break_escaped(logger, log_file):
    # What Hypercorn puts in the scope for /v1/download/status/x%0AFORGED%00
    await logger.access(status_scope("/v1/download/status/x\nFORGED\x00"), None, 0.01)
    written = log_file.read_text()

    assert written.count("\n") == 1
    assert "/v1/download/status/x\\x0aFORGED\\x00" in written
    assert "\x00" not in written


async def test_plain_path_unchanged(logger, log_file):
    await logger.access(status_scope("/v1/download/status/x"), None, 0.01)

    assert '"GET /v1/download/status/x 1.1"' in log_file.read_text()


@pytest.fixture
def stream_config(log_file: Path) -> Iterator[Config]:
    config = Config()
    config.accesslog = str(log_file)
    config.logger_class = _AccessLogger
    yield config
    assert config.log.access_logger is not None
    for handler in config.log.access_logger.handlers:
        handler.close()
    config.log.access_logger.handlers.clear()


class StreamRecord:
    """What an ``_HTTPStream`` sent to its protocol and put to its app."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.app_received: list[str] = []


def responding_stream(
    config: Config,
    record: StreamRecord,
    close_at_end: bool,
    state: ASGIHTTPState = ASGIHTTPState.RESPONSE,
) -> _HTTPStream:
    """Return a stream of ``GET /health`` in ``state``, by default with a 200 response started.

    With ``close_at_end``, the client closes the stream during the
    response's last write, as the reading task reports it.
    """

    async def send(event: Event) -> None:
        record.events.append(type(event).__name__)
        if close_at_end and isinstance(event, EndBody):
            await stream.handle(StreamClosed(stream_id=1))

    async def app_put(message: Any) -> None:
        record.app_received.append(message["type"])

    stream = _HTTPStream(None, config, None, None, False, None, None, send, 1)  # type: ignore[arg-type]
    stream.scope = status_scope("/health")
    stream.response = {"type": "http.response.start", "status": 200, "headers": []}
    stream.start_time = time.time()
    stream.state = state
    stream.app_put = app_put
    return stream


async def test_stream_logged_once_when_closed_in_last_write(stream_config, log_file):
    record = StreamRecord()
    stream = responding_stream(stream_config, record, close_at_end=True)

    await stream._send_closed()
    lines = log_file.read_text().splitlines()

    assert record.events == ["EndBody", "StreamClosed"]
    assert record.app_received == ["http.disconnect"]
    assert len(lines) == 1
    assert '"GET /health 1.1" 200' in lines[0]


async def test_stream_logged_once_when_closed_before_end(stream_config, log_file):
    # The client has every byte and closes before the app's end-of-body message.
    record = StreamRecord()
    stream = responding_stream(stream_config, record, close_at_end=False)

    await stream.handle(StreamClosed(stream_id=1))
    await stream._send_closed()
    lines = log_file.read_text().splitlines()

    assert record.app_received == ["http.disconnect"]
    assert len(lines) == 1
    assert '"GET /health 1.1" 200' in lines[0]


async def test_stream_closed_before_response_logs_at_app_end(stream_config, log_file):
    record = StreamRecord()
    stream = responding_stream(stream_config, record, False, ASGIHTTPState.REQUEST)

    await stream.handle(StreamClosed(stream_id=1))
    logged_before_end = log_file.exists() and log_file.read_text() != ""
    await stream.app_send(None)
    lines = log_file.read_text().splitlines()

    assert record.app_received == ["http.disconnect"]
    assert not logged_before_end
    assert len(lines) == 1
    assert '"GET /health 1.1" - -' in lines[0]


async def test_response_after_early_close_logs_its_status(stream_config, log_file):
    # A client that half-closed after its request: the app still responds.
    record = StreamRecord()
    stream = responding_stream(stream_config, record, False, ASGIHTTPState.REQUEST)

    await stream.handle(StreamClosed(stream_id=1))
    await stream.app_send({"type": "http.response.start", "status": 202, "headers": []})
    await stream.app_send({"type": "http.response.body", "body": b"{}", "more_body": False})
    await stream.app_send(None)
    lines = log_file.read_text().splitlines()

    assert len(lines) == 1
    assert '"GET /health 1.1" 202' in lines[0]


async def test_line_ends_with_request_id(log_file):
    config = Config()
    config.accesslog = str(log_file)
    config.access_log_format = ACCESS_LOG_FORMAT
    access_logger = _AccessLogger(config)
    response = {"status": 200, "headers": [(b"x-request-id", b"abc-123")]}
    try:
        await access_logger.access(status_scope("/health"), response, 0.01)  # type: ignore[arg-type]
    finally:
        assert access_logger.access_logger is not None
        for handler in access_logger.access_logger.handlers:
            handler.close()
        access_logger.access_logger.handlers.clear()

    assert log_file.read_text().rstrip("\n").endswith('" 200 - "-" "test" abc-123')


async def test_line_without_response_ends_with_picked_id(log_file):
    config = Config()
    config.accesslog = str(log_file)
    config.access_log_format = ACCESS_LOG_FORMAT
    access_logger = _AccessLogger(config)
    scope = status_scope("/health")
    # What the app's layers do with each request they see.
    request_id = request_id_of(scope)
    try:
        await access_logger.access(scope, None, 0.01)  # type: ignore[arg-type]
    finally:
        assert access_logger.access_logger is not None
        for handler in access_logger.access_logger.handlers:
            handler.close()
        access_logger.access_logger.handlers.clear()

    assert log_file.read_text().rstrip("\n").endswith(f'" - - "-" "test" {request_id}')
