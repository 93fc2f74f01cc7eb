"""The access log of a real server: each line's size is the body bytes the server wrote,
and requests rejected before the app are logged too."""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from .conftest import ServerProcess
from .wire import exchange_raw, http2_exchange, split_response

pytestmark = pytest.mark.e2e

JOB_TIMEOUT_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 5.0
# Large enough that the kernel's socket buffers on 127.0.0.1 cannot take the
# whole file before the client's reset reaches the server.
LARGE_FILE_BYTES = 40_000_000


def open_client(server: ServerProcess) -> httpx.Client:
    # trust_env=False keeps proxy variables from routing 127.0.0.1 elsewhere.
    return httpx.Client(base_url=server.base_url, trust_env=False, timeout=REQUEST_TIMEOUT_SECONDS)


def finished_job(client: httpx.Client) -> tuple[str, dict[str, object]]:
    """Start a job for file 70000 and return its id and status document once it is done."""
    job_id: str = client.post("/v1/download/start", json={"file_id": 70000}).json()["jobId"]
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        document: dict[str, object] = client.get(f"/v1/download/status/{job_id}").json()
        if document["status"] == "done":
            return job_id, document
        time.sleep(0.05)
    pytest.fail(f"job {job_id} was not done within {JOB_TIMEOUT_SECONDS} s")


def complete_response(received: bytes) -> bool:
    """Return whether ``received`` contains a whole response with a Content-Length body."""
    head, separator, body = received.partition(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length: (\d+)", head.lower())
    return bool(separator) and length is not None and len(body) >= int(length.group(1))


def logged_size(server: ServerProcess, request_line: str) -> str:
    """Return the size field of the access-log line for ``request_line``, waiting for it."""
    pattern = rf'"{re.escape(request_line)} 1\.1" \d{{3}} (\S+) '
    return server.wait_for_log(pattern, output=True).group(1)


def test_sizes_are_body_bytes(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(ACCESS_LOG="true")
    with open_client(server) as client:
        job_id, status = finished_job(client)
        download = client.get(f"/v1/download/{job_id}")
        head = client.head(f"/v1/download/{job_id}")

    assert status["status"] == "done"
    assert download.status_code == 200
    assert head.status_code == 200
    assert logged_size(server, f"GET /v1/download/{job_id}") == str(len(download.content))
    # A HEAD response declares the file's length but sends no body.
    assert head.headers["content-length"] == str(len(download.content))
    assert logged_size(server, f"HEAD /v1/download/{job_id}") == "-"


def test_download_cut_short_logs_bytes_written(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(
        ACCESS_LOG="true",
        DOWNLOAD_SIZE_MIN_BYTES=str(LARGE_FILE_BYTES),
        DOWNLOAD_SIZE_MAX_BYTES=str(LARGE_FILE_BYTES),
    )
    with open_client(server) as client:
        job_id, status = finished_job(client)
    host, port = server.base_url.removeprefix("http://").split(":")

    with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT_SECONDS) as sock:
        sock.sendall(f"GET /v1/download/{job_id} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        received = b""
        while len(received) < 100_000:
            chunk = sock.recv(65536)
            assert chunk, "the server closed the connection before sending 100,000 bytes"
            received += chunk
        # Linger 0: the close resets the connection, so the server's next write fails.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    assert status["status"] == "done"
    assert received.startswith(b"HTTP/1.1 200 ")
    declared = re.search(rb"\r\ncontent-length: (\d+)\r\n", received.lower())
    assert declared is not None
    assert int(declared.group(1)) >= LARGE_FILE_BYTES
    size = logged_size(server, f"GET /v1/download/{job_id}")
    assert size.isdigit(), size
    assert 0 < int(size) < int(declared.group(1))


@pytest.mark.parametrize(
    ("data", "request_line", "status"),
    [
        pytest.param(b"GARBAGE\r\n\r\n", "- - -", 400, id="request-line"),
        pytest.param(
            b"GET /v1/download/status/x?wait=1 HTTP/1.1\r\nHost: x\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "GET /v1/download/status/x?wait=1 1.1",
            400,
            id="websocket",
        ),
        pytest.param(
            b"GET /health HTTP/3.0\r\nHost: x\r\n\r\n", "GET /health 3.0", 505, id="version"
        ),
    ],
)
def test_rejection_before_app_logged(
    start_server: Callable[..., ServerProcess], data: bytes, request_line: str, status: int
) -> None:
    server = start_server(ACCESS_LOG="true")

    status_line, fields, body = split_response(exchange_raw(server, data))
    request_id = json.loads(body)["requestId"]
    line = server.wait_for_log(rf"^.*{re.escape(request_id)}$", output=True).group()

    assert status_line.startswith(f"HTTP/1.1 {status}")
    assert f'"{request_line}" {status} {len(body)} ' in line
    assert fields["x-request-id"] == request_id


def test_http2_connect_logged(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(ACCESS_LOG="true")
    headers = [(":method", "CONNECT"), (":authority", "x"), ("user-agent", "probe")]

    fields, body = http2_exchange(server, headers)
    request_id = json.loads(body)["requestId"]
    line = server.wait_for_log(rf"^.*{re.escape(request_id)}$", output=True).group()

    assert fields[":status"] == "405"
    assert f'"CONNECT - 2" 405 {len(body)} "-" "probe" {request_id}' in line


def test_fresh_connections_log_sizes(start_server: Callable[..., ServerProcess]) -> None:
    # Each client closes as soon as it has the response, which often ended
    # the stream, and wrote its line, before the server's write returned.
    server = start_server(ACCESS_LOG="true")
    host, port = server.base_url.removeprefix("http://").split(":")
    bodies = {}
    for number in range(30):
        request_id = f"fresh-{number}"
        with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT_SECONDS) as sock:
            sock.sendall(
                f"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_id}\r\n\r\n".encode()
            )
            received = b""
            while not complete_response(received):
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {received!r}"
                received += chunk
        bodies[request_id] = split_response(received)[2]

    for request_id, body in bodies.items():
        line = server.wait_for_log(rf"^.* {re.escape(request_id)}$", output=True).group()
        assert f'"GET /health 1.1" 200 {len(body)} ' in line


def test_malformed_body_logged_once(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(ACCESS_LOG="true")
    request = (
        b"POST /v1/download/start?from=test HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"X-Request-ID: chunk-1\r\n\r\nzz\r\n"
    )

    status_line, _, body = split_response(exchange_raw(server, request))
    _, _, later = split_response(exchange_raw(server, b"GET /health HTTP/1.1\r\n\r\n"))
    server.wait_for_log(re.escape(json.loads(later)["requestId"]), output=True)
    lines = [line for line in server.output.splitlines() if "/v1/download/start" in line]

    assert status_line.startswith("HTTP/1.1 400")
    assert json.loads(body)["requestId"] == "chunk-1"
    assert len(lines) == 1, lines
    assert f'"POST /v1/download/start?from=test 1.1" 400 {len(body)} ' in lines[0]
    assert lines[0].endswith(" chunk-1")


def test_fields_cannot_forge_entries(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(ACCESS_LOG="true")

    exchange_raw(
        server,
        b'GET /x%0a%22fake%22 HTTP/1.1\r\nHost: x\r\nUser-Agent: ua" 200 999 "x\r\n'
        b"X-Request-ID: quote-test\r\nConnection: close\r\n\r\n",
    )
    line = server.wait_for_log(r"^.* quote-test$", output=True).group()

    assert '"GET /x%0a%22fake%22 1.1" 404 ' in line
    assert '"ua\\" 200 999 \\"x"' in line


def test_http2_sizes_are_bytes_sent(start_server: Callable[..., ServerProcess]) -> None:
    # The client never opens its flow-control window, so it gets 65,535
    # bytes and gives up. The line gave the whole file's size.
    server = start_server(ACCESS_LOG="true")
    with open_client(server) as client:
        job_id, status = finished_job(client)
    path = f"/v1/download/{job_id}"
    host, port = server.base_url.removeprefix("http://").split(":")
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    request = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)]
    connection.send_headers(1, [*request, ("x-request-id", "h2-stalled")], end_stream=True)
    received = 0
    with socket.create_connection((host, int(port)), timeout=REQUEST_TIMEOUT_SECONDS) as sock:
        sock.sendall(connection.data_to_send())
        while received < 65_535:
            data = sock.recv(65536)
            assert data, f"connection closed after {received} bytes"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)
    stalled = server.wait_for_log(r"^.* h2-stalled$", output=True).group()
    # A complete download over HTTP/2 (prior knowledge) logs the whole size.
    with httpx.Client(base_url=server.base_url, trust_env=False, http1=False, http2=True) as client:
        complete = client.get(path, headers={"X-Request-ID": "h2-complete"})
    whole = server.wait_for_log(r"^.* h2-complete$", output=True).group()

    assert status["status"] == "done"
    assert status["result"]["size"] > 65_535
    assert f'"GET {path} 2" 200 65535 ' in stalled
    assert complete.http_version == "HTTP/2"
    assert f'"GET {path} 2" 200 {len(complete.content)} ' in whole
