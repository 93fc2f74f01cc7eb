"""Request bodies that stop arriving: a 408 after BODY_TIMEOUT_MS, then the connection closes.

Each test writes HTTP/1.1 over a raw socket, sends part of a body or none
of it, and reads how the real server responds and when it closes the connection.
"""

from __future__ import annotations

import json
import socket
import time
import uuid

import pytest

from engine import SettingsError
from http_api import Settings
from http_api._body import UNREAD_BODY_WAIT_SECONDS

from .test_keep_alive import (
    SLOW_JOBS,
    WAIT_SECONDS,
    StartServer,
    connect,
    exchange,
    read_response,
)
from .test_protocol_errors import split_response

pytestmark = pytest.mark.e2e

BODY_TIMEOUT_MS = 500
START_BODY = b'{"file_id": 70000}'


def send_head(connection: socket.socket, method: str, target: str, content_type: str) -> None:
    """Send a request's head that declares a body of 100 bytes, and 10 bytes of that body."""
    connection.sendall(
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: 100\r\n\r\n".encode()
        + b'{"file_id"'
    )


def read_until_closed(connection: socket.socket) -> tuple[int, dict[str, str], bytes, float]:
    """Read one response and the close after it; return status, fields, body and seconds taken.

    Fails if the server keeps the connection open after the response.
    """
    started = time.monotonic()
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    elapsed = time.monotonic() - started
    status_line, fields, body = split_response(data)
    return int(status_line.split()[1]), fields, body, elapsed


@pytest.mark.parametrize(
    ("method", "target", "content_type"),
    [
        # Read by the layer in front of Quart.
        pytest.param("POST", "/v1/download/start", "application/json", id="start"),
        # Read by Quart's routes.
        pytest.param("POST", "/v1/download/initiate", "application/json", id="initiate"),
        pytest.param("POST", "/v1/download/check", "application/json", id="check"),
    ],
)
def test_stalled_body_gets_408(
    start_server: StartServer, method: str, target: str, content_type: str
) -> None:
    server = start_server(BODY_TIMEOUT_MS=str(BODY_TIMEOUT_MS), **SLOW_JOBS)
    with connect(server) as connection:
        send_head(connection, method, target, content_type)
        status, fields, body, elapsed = read_until_closed(connection)

    assert status == 408
    assert fields["connection"] == "close"
    assert fields["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["code"] == "body_timeout"
    assert problem["detail"] == (
        "the request body timed out after 0.5 seconds: send all of it within that time"
    )
    assert BODY_TIMEOUT_MS / 1000 * 0.9 <= elapsed < WAIT_SECONDS


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        # Rejected for its content type before the body is read.
        pytest.param("POST", "/v1/download/start", 415, id="error"),
        # A GET route responds without reading the body.
        pytest.param("GET", "/health", 200, id="get-route"),
        # The status route reads a body only to reject one over the size limit.
        pytest.param("GET", "status", 200, id="status-read"),
        pytest.param("GET", "unknown-status", 404, id="status-read-error"),
    ],
)
def test_response_before_stalled_body_closes_connection(
    start_server: StartServer, method: str, target: str, expected: int
) -> None:
    # The response waits briefly for the rest of the body, then goes out
    # with Connection: close instead of waiting for the body timeout.
    server = start_server(BODY_TIMEOUT_MS="60000", **SLOW_JOBS)
    with connect(server) as connection:
        if target == "status":
            status, _, started = exchange(connection, "POST", "/v1/download/start", body=START_BODY)
            assert status == 202
            target = json.loads(started)["statusUrl"]
        elif target == "unknown-status":
            target = f"/v1/download/status/{uuid.uuid4()}"
        send_head(connection, method, target, "text/plain")
        status, fields, _, elapsed = read_until_closed(connection)

    assert status == expected
    assert fields["connection"] == "close"
    # Once, not again in the hook that runs after every route.
    assert UNREAD_BODY_WAIT_SECONDS * 0.9 <= elapsed < UNREAD_BODY_WAIT_SECONDS * 1.9


def test_slow_body_within_timeout_is_served(start_server: StartServer) -> None:
    server = start_server(BODY_TIMEOUT_MS="3000", **SLOW_JOBS)
    with connect(server) as connection:
        connection.sendall(
            b"POST /v1/download/start HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(START_BODY)
        )
        for start in range(0, len(START_BODY), 6):
            time.sleep(0.2)
            connection.sendall(START_BODY[start : start + 6])
        status, fields, body = read_response(connection)
        # The connection stays usable for the next request.
        health, _, _ = exchange(connection, "GET", "/health")

    assert status == 202, body
    assert "connection" not in fields
    assert health == 200


def test_body_timeout_setting_read() -> None:
    assert Settings().body_timeout == 30.0
    settings = Settings.from_environ({"BODY_TIMEOUT_MS": "1500"})
    assert settings.body_timeout_ms == 1500
    assert settings.body_timeout == 1.5


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "soon"])
def test_body_timeout_setting_invalid(value: str) -> None:
    with pytest.raises(SettingsError, match="BODY_TIMEOUT_MS"):
        Settings.from_environ({"BODY_TIMEOUT_MS": value})
