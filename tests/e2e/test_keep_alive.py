"""When the server closes connections: idle too long, idle when it stops, or asked to.

Each test sends HTTP/1.1 over a raw socket, so it observes exactly when
the server closes the connection.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from engine import SettingsError
from http_api import Settings
from http_api._server import GRACEFUL_TIMEOUT_SECONDS

from .conftest import ServerProcess

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]

# Short enough to keep the tests quick, long enough that a loaded machine
# still sends the next request of a test in time.
KEEP_ALIVE_MS = 1000
# Bound on every wait for the server to act (s).
WAIT_SECONDS = 8.0
# Jobs that stay processing during a test and are cancelled at once when it stops the server.
SLOW_JOBS = {
    "DOWNLOAD_DELAY_MIN_MS": "60000",
    "DOWNLOAD_DELAY_MAX_MS": "60000",
    "SHUTDOWN_GRACE_MS": "0",
}


def connect(server: ServerProcess) -> socket.socket:
    address = urlsplit(server.base_url)
    assert address.hostname is not None and address.port is not None
    connection = socket.create_connection((address.hostname, address.port), timeout=WAIT_SECONDS)
    return connection


def exchange(
    connection: socket.socket, method: str, target: str, headers: str = "", body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """Send one request and read its response, which has a Content-Length.

    Returns the status, the header fields (names in lower case) and the body.
    """
    request = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
    if body:
        request += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    connection.sendall(request.encode() + b"\r\n" + body)
    return read_response(connection)


def read_response(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response, which has a Content-Length; return it as ``exchange`` does."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, f"the server closed the connection mid-response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {
        name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
    }
    length = int(fields.get("content-length", "0"))
    while len(rest) < length:
        chunk = connection.recv(65536)
        assert chunk, "the server closed the connection mid-body"
        rest += chunk
    return int(status_line.split()[1]), fields, rest[:length]


def seconds_until_closed(connection: socket.socket) -> float:
    """Return how long the server takes to close ``connection``; fail if it sends anything."""
    started = time.monotonic()
    data = connection.recv(65536)
    assert data == b"", f"expected the server to close the connection, got {data!r}"
    return time.monotonic() - started


def start_job(connection: socket.socket) -> str:
    status, _, body = exchange(connection, "POST", "/v1/download/start", body=b'{"file_id": 70000}')
    assert status == 202, body
    path: str = json.loads(body)["statusUrl"]
    return path


@pytest.mark.parametrize(
    "last_request",
    [
        pytest.param(None, id="no-request"),
        pytest.param(("GET", "/health"), id="route"),
        pytest.param(("GET", "status"), id="status-read"),
    ],
)
def test_idle_connection_closed_after_timeout(
    start_server: StartServer, last_request: tuple[str, str] | None
) -> None:
    server = start_server(KEEP_ALIVE_TIMEOUT_MS=str(KEEP_ALIVE_MS), **SLOW_JOBS)
    with connect(server) as connection:
        if last_request is not None:
            status_path = start_job(connection)
            method, target = last_request
            status, _, _ = exchange(
                connection, method, status_path if target == "status" else target
            )
            assert status == 200
        idle = seconds_until_closed(connection)

    # The server waits at least the timeout, measured from its last response.
    assert idle >= KEEP_ALIVE_MS / 1000 * 0.9
    assert idle < WAIT_SECONDS


def test_idle_http2_connection_closed_after_timeout(start_server: StartServer) -> None:
    # A client that opens HTTP/2 and never sends a request. Before the fix,
    # the server kept such a connection open for good.
    server = start_server(KEEP_ALIVE_TIMEOUT_MS=str(KEEP_ALIVE_MS), **SLOW_JOBS)
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    events: list[h2.events.Event] = []
    with connect(server) as connection:
        connection.sendall(client.data_to_send())
        started = time.monotonic()
        # The server's own SETTINGS and acknowledgement come first, GOAWAY last.
        while data := connection.recv(65536):
            events += client.receive_data(data)
        idle = time.monotonic() - started

    assert idle >= KEEP_ALIVE_MS / 1000 * 0.9
    assert idle < WAIT_SECONDS
    assert isinstance(events[-1], h2.events.ConnectionTerminated)
    assert events[-1].error_code == h2.errors.ErrorCodes.NO_ERROR


def test_polls_within_timeout_keep_connection(start_server: StartServer) -> None:
    server = start_server(KEEP_ALIVE_TIMEOUT_MS=str(KEEP_ALIVE_MS), **SLOW_JOBS)
    with connect(server) as connection:
        status_path = start_job(connection)
        for _ in range(4):
            time.sleep(KEEP_ALIVE_MS / 1000 / 4)
            status, _, _ = exchange(connection, "GET", status_path)
            assert status == 200
        assert seconds_until_closed(connection) < WAIT_SECONDS


def test_long_poll_outlasts_the_timeout(start_server: StartServer) -> None:
    # A held request is not idle: the connection stays open until its response.
    server = start_server(KEEP_ALIVE_TIMEOUT_MS="300", **SLOW_JOBS)
    with connect(server) as connection:
        status_path = start_job(connection)
        status, headers, _ = exchange(connection, "GET", status_path)
        assert status == 200
        started = time.monotonic()
        status, _, _ = exchange(
            connection, "GET", f"{status_path}?wait=1.5", f"If-None-Match: {headers['etag']}\r\n"
        )
        waited = time.monotonic() - started

        assert status == 304
        assert waited >= 1.4
        assert seconds_until_closed(connection) < WAIT_SECONDS


def test_stop_closes_idle_connections_at_once(start_server: StartServer) -> None:
    server = start_server(**SLOW_JOBS)
    with connect(server) as connection:
        # A Quart route responds to the start. Before the server's own idle
        # timer, a response from a route kept the connection open for good.
        start_job(connection)

        server.process.send_signal(signal.SIGTERM)
        closed_after = seconds_until_closed(connection)

    assert server.stop() == 0, server.log
    # Without the idle close, the connection would stay open until Hypercorn
    # gives up on open connections, GRACEFUL_TIMEOUT_SECONDS after the stop.
    assert closed_after < GRACEFUL_TIMEOUT_SECONDS


@pytest.mark.parametrize(
    ("request_line", "headers"),
    [
        pytest.param("GET /health HTTP/1.1", "Connection: close\r\n", id="route"),
        pytest.param("GET /nope HTTP/1.1", "Connection: close\r\n", id="not-found"),
        pytest.param("GET {status} HTTP/1.1", "Connection: close\r\n", id="status-read"),
        pytest.param("GET /health HTTP/1.0", "", id="http-1.0-route"),
        pytest.param("GET {status} HTTP/1.0", "", id="http-1.0-status-read"),
    ],
)
def test_close_after_response_when_asked(
    start_server: StartServer, request_line: str, headers: str
) -> None:
    server = start_server(**SLOW_JOBS)
    with connect(server) as setup:
        status_path = start_job(setup)
    with connect(server) as connection:
        target_line = request_line.format(status=status_path)
        connection.sendall(f"{target_line}\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        response = b""
        started = time.monotonic()
        while chunk := connection.recv(65536):
            response += chunk
        closed_after = time.monotonic() - started

    assert response.startswith((b"HTTP/1.1 200", b"HTTP/1.1 404")), response
    # Well before the keep-alive timeout (5 s), which would close it too.
    assert closed_after < 2.0


def send_writes(server: ServerProcess, writes: list[str]) -> tuple[list[bytes], bytes]:
    """Send ``writes`` 0.1 s apart on one connection and read until the server closes it.

    Returns the status codes of the responses and every byte received.
    """
    with connect(server) as connection:
        for data in writes:
            connection.sendall(data.encode())
            time.sleep(0.1)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    # A response body ends in a newline, so the next status line can follow it directly.
    statuses: list[bytes] = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
    return statuses, received


HEALTH = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HEALTH_THEN_CLOSE = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize(
    ("writes", "expected_responses"),
    [
        pytest.param([HEALTH_THEN_CLOSE + HEALTH], 1, id="same-write"),
        pytest.param([HEALTH_THEN_CLOSE, HEALTH], 1, id="later-write"),
        pytest.param([HEALTH + HEALTH_THEN_CLOSE + HEALTH], 2, id="after-keep-alive"),
        pytest.param(["GET /health HTTP/1.0\r\n\r\n" + HEALTH], 1, id="http-1.0"),
    ],
)
def test_bytes_after_last_request_ignored(
    server: ServerProcess, writes: list[str], expected_responses: int
) -> None:
    # The server ignores what a client sends after its last request, and
    # still responds to that request.
    statuses, received = send_writes(server, writes)

    assert statuses == [b"200"] * expected_responses, received


@pytest.mark.parametrize(
    ("writes", "expected_responses"),
    [
        pytest.param(["\r\n" + HEALTH_THEN_CLOSE], 1, id="before-first-request"),
        pytest.param(["\r\n", "\r\n\n" + HEALTH_THEN_CLOSE], 1, id="own-writes"),
        pytest.param([HEALTH, "\r\n" + HEALTH_THEN_CLOSE], 2, id="between-requests"),
    ],
)
def test_empty_lines_before_request_ignored(
    server: ServerProcess, writes: list[str], expected_responses: int
) -> None:
    # RFC 9112, section 2.2: a server should ignore empty lines before a request line.
    statuses, received = send_writes(server, writes)

    assert statuses == [b"200"] * expected_responses, received


def test_keep_alive_setting_read() -> None:
    assert Settings().keep_alive_timeout == 5.0
    settings = Settings.from_environ({"KEEP_ALIVE_TIMEOUT_MS": "75000"})
    assert settings.keep_alive_timeout_ms == 75_000
    assert settings.keep_alive_timeout == 75.0


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "soon"])
def test_keep_alive_setting_invalid(value: str) -> None:
    with pytest.raises(SettingsError, match="KEEP_ALIVE_TIMEOUT_MS"):
        Settings.from_environ({"KEEP_ALIVE_TIMEOUT_MS": value})
