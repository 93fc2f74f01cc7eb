"""Requests that h11 rejects before they reach the app get problem+json responses too."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import httpx
import pytest

from .conftest import ServerProcess
from .wire import WAIT_SECONDS, exchange_raw, http2_exchange, split_response

# A stop with no request left in progress takes well under a second. A task
# left waiting delays it by the whole grace period, 20 s by default.
STOP_WITHOUT_WAITING_SECONDS = 10

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        pytest.param(b"GARBAGE\r\n\r\n", 400, "malformed_request", id="request-line"),
        pytest.param(b"GET /health HTTP/1.1\r\n\r\n", 400, "malformed_request", id="no-host"),
        pytest.param(
            b"GET health HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed_request", id="no-slash"
        ),
        pytest.param(
            b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed_request", id="asterisk-get"
        ),
        pytest.param(
            b"GET /health HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
            400,
            "malformed_request",
            id="header-line",
        ),
        pytest.param(
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
            431,
            "headers_too_large",
            id="headers-too-large",
        ),
        pytest.param(
            # Small enough for one read, which h11 does not limit by itself.
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
            431,
            "headers_too_large",
            id="headers-too-large-in-one-read",
        ),
        pytest.param(
            b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
            505,
            "http_version_not_supported",
            id="http-version-9",
        ),
        pytest.param(
            b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
            505,
            "http_version_not_supported",
            id="http-2-request-line",
        ),
        pytest.param(
            b"POST /v1/download/start HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            "transfer_encoding_not_supported",
            id="transfer-encoding",
        ),
        pytest.param(
            # Both framings, and a request pipelined after the body: only the
            # 400 comes back, and the connection closes.
            b"POST /v1/download/check HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b'12\r\n{"file_id": 70000}\r\n0\r\n\r\n'
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "malformed_request",
            id="content-length-and-transfer-encoding",
        ),
    ],
)
def test_rejected_request_gets_problem(
    server: ServerProcess, data: bytes, status: int, code: str
) -> None:
    status_line, fields, body = split_response(exchange_raw(server, data))

    assert status_line.startswith(f"HTTP/1.1 {status}")
    assert fields["content-type"] == "application/problem+json"
    assert int(fields["content-length"]) == len(body)
    assert fields["connection"] == "close"
    document = json.loads(body)
    assert body == json.dumps(document, separators=(",", ":")).encode() + b"\n"
    assert document["status"] == status
    assert document["code"] == code
    assert document["type"] == f"tag:download-jobs,2026:problem:{code}"
    assert document["title"]
    assert "The parser reported: " in document["detail"]
    assert document["requestId"] == fields["x-request-id"]
    server.wait_for_log(re.escape(f"(request id {document['requestId']})"))
    # The server goes on serving other clients.
    assert httpx.get(f"{server.base_url}/health", trust_env=False, timeout=5).status_code == 200


@pytest.mark.parametrize("target", ["/health", "/no-such-path"])
def test_head_with_both_framings_gets_bodyless_400(server: ServerProcess, target: str) -> None:
    # The response to a HEAD has no body, so the problem document is left out.
    received = exchange_raw(
        server,
        f"HEAD {target} HTTP/1.1\r\nHost: x\r\n".encode()
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    )

    status_line, fields, body = split_response(received)

    assert b"\r\n\r\n" in received
    assert status_line.startswith("HTTP/1.1 400")
    assert body == b""
    assert fields["content-type"] == "application/problem+json"
    assert fields["connection"] == "close"
    # The server goes on serving other clients.
    assert httpx.get(f"{server.base_url}/health", trust_env=False, timeout=5).status_code == 200


def test_head_with_too_large_head_gets_bodyless_431(server: ServerProcess) -> None:
    received = exchange_raw(
        server, b"HEAD /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    )

    status_line, fields, body = split_response(received)

    assert status_line.startswith("HTTP/1.1 431")
    assert body == b""
    assert fields["content-type"] == "application/problem+json"


def test_http2_with_prior_knowledge_is_served(server: ServerProcess) -> None:
    # The version check lets the HTTP/2 preface through to Hypercorn.
    with httpx.Client(http1=False, http2=True, trust_env=False, timeout=5) as client:
        response = client.get(f"{server.base_url}/health")

    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"


def test_http2_download_matches_checksum(server: ServerProcess) -> None:
    # A result of many DATA frames, whose last one also ends the stream.
    with httpx.Client(
        base_url=server.base_url, http1=False, http2=True, trust_env=False, timeout=5
    ) as client:
        job = client.post("/v1/download/start", json={"file_id": 70000}).json()
        status = client.get(job["statusUrl"]).json()
        # FAST_SETTINGS jobs take at most 0.6 s.
        for _ in range(50):
            if status["status"] == "done":
                break
            time.sleep(0.1)
            status = client.get(job["statusUrl"]).json()
        result = client.get(job["resultUrl"])

    assert result.http_version == "HTTP/2"
    assert result.status_code == 200
    assert len(result.content) == status["result"]["size"]
    assert hashlib.sha256(result.content).hexdigest() == status["result"]["sha256"]


WEBSOCKET_HANDSHAKE = (
    "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n"
    "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(WEBSOCKET_HANDSHAKE.format(target="/health"), id="health"),
        pytest.param(WEBSOCKET_HANDSHAKE.format(target="/v1/download/start"), id="start"),
        pytest.param(WEBSOCKET_HANDSHAKE.format(target="/no-such-path"), id="unknown-path"),
        pytest.param(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            id="no-key",
        ),
        pytest.param(
            WEBSOCKET_HANDSHAKE.format(target="/health")
            + "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            id="pipelined-request",
        ),
    ],
)
def test_websocket_handshake_gets_problem(server: ServerProcess, data: str) -> None:
    # The service has no WebSocket endpoints. Hypercorn sent an empty 400 for
    # an invalid handshake and left the connection open, and Quart failed a
    # valid one with an empty 500 and tracebacks.
    received = exchange_raw(server, data.encode())

    status_line, fields, body = split_response(received)
    document = json.loads(body)

    assert status_line.startswith("HTTP/1.1 400")
    assert fields["content-type"] == "application/problem+json"
    assert fields["connection"] == "close"
    assert document["code"] == "websocket_not_supported"
    assert document["requestId"] == fields["x-request-id"]
    assert httpx.get(f"{server.base_url}/health", trust_env=False, timeout=5).status_code == 200
    # A rejection logs one line. Once it is in, anything the handshake logged is too.
    _, _, later = split_response(exchange_raw(server, b"GET /health HTTP/1.1\r\n\r\n"))
    server.wait_for_log(re.escape(json.loads(later)["requestId"]))
    assert "Traceback" not in server.log


def test_upgrade_without_connection_token_is_plain_request(server: ServerProcess) -> None:
    # Without "Connection: Upgrade" the request is no handshake, and is served as usual.
    received = exchange_raw(
        server,
        b"GET /health HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n",
    )

    status_line, _, body = split_response(received)

    assert status_line.startswith("HTTP/1.1 200")
    assert json.loads(body)["status"] == "healthy"


def test_rejection_names_the_fault(server: ServerProcess) -> None:
    received = exchange_raw(server, b"GET /health HTTP/1.1\r\n\r\n")

    _, _, body = split_response(received)

    assert "Host" in json.loads(body)["detail"]


@pytest.mark.parametrize(
    ("extra", "status", "code"),
    [
        pytest.param(
            [(":protocol", "websocket"), (":scheme", "http"), (":path", "/health")],
            400,
            "websocket_not_supported",
            id="websocket-without-version",
        ),
        pytest.param(
            [
                (":protocol", "websocket"),
                (":scheme", "http"),
                (":path", "/health"),
                ("sec-websocket-version", "13"),
            ],
            400,
            "websocket_not_supported",
            id="websocket",
        ),
        pytest.param([], 405, "method_not_allowed", id="plain-connect"),
    ],
)
def test_http2_connect_gets_problem(
    server: ServerProcess, extra: list[tuple[str, str]], status: int, code: str
) -> None:
    # Hypercorn sent an empty 400 for the first, and failed on the second with
    # a traceback that ended the connection.
    headers = [(":method", "CONNECT"), (":authority", "x"), *extra]
    fields, body = http2_exchange(server, headers)
    document = json.loads(body)

    assert fields[":status"] == str(status)
    assert fields["content-type"] == "application/problem+json"
    assert document["code"] == code
    assert document["requestId"] == fields["x-request-id"]
    server.wait_for_log(re.escape(f"(request id {document['requestId']})"))
    assert "Traceback" not in server.log


@pytest.mark.parametrize("path", ["health", "*"])
def test_http2_target_without_slash_gets_problem(server: ServerProcess, path: str) -> None:
    # Served like "/health" before, where HTTP/1.1 got 400.
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)]
    fields, body = http2_exchange(server, headers)
    document = json.loads(body)

    assert fields[":status"] == "400"
    assert fields["content-type"] == "application/problem+json"
    assert document["code"] == "malformed_request"


def test_http2_data_after_response_leaves_connection_serving(server: ServerProcess) -> None:
    # The client keeps sending on a CONNECT stream that already has its
    # response. Hypercorn failed on such data and dropped the connection,
    # with every other stream on it.
    address = urlsplit(server.base_url)
    assert address.hostname is not None and address.port is not None
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    connection.send_headers(1, [(":method", "CONNECT"), (":authority", "x")])
    connection.send_data(1, b"tunnel bytes")
    connection.send_headers(
        3,
        [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", "/health")],
        end_stream=True,
    )
    statuses: dict[int, str] = {}
    ended: set[int] = set()
    with socket.create_connection((address.hostname, address.port), timeout=WAIT_SECONDS) as sock:
        sock.sendall(connection.data_to_send())
        while 3 not in ended:
            data = sock.recv(65536)
            assert data, f"connection closed; statuses so far {statuses}"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = dict(event.headers)[b":status"].decode()
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
            sock.sendall(connection.data_to_send())

    assert statuses == {1: "405", 3: "200"}
    # The rejection logs one line; once it is in, anything else logged is too.
    server.wait_for_log(r"rejected an HTTP/2 CONNECT request with 405")
    assert "Traceback" not in server.log


def h2c_upgrade(settings: str | None, connection: str = "Upgrade, HTTP2-Settings") -> bytes:
    """Return a ``GET /health`` that requests a switch to HTTP/2 (h2c), then a close."""
    lines = [
        "GET /health HTTP/1.1",
        "Host: x",
        f"Connection: {connection}",
        "Upgrade: h2c",
    ]
    if settings is not None:
        lines.append(f"HTTP2-Settings: {settings}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_h2c_upgrade_switches_to_http2(server: ServerProcess) -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    settings = client.initiate_upgrade_connection().decode()
    address = urlsplit(server.base_url)
    assert address.hostname is not None and address.port is not None
    body = b""
    with socket.create_connection((address.hostname, address.port), timeout=WAIT_SECONDS) as sock:
        sock.sendall(h2c_upgrade(settings))
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {received!r}"
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        sock.sendall(client.data_to_send())
        events = client.receive_data(rest)
        while not any(isinstance(event, h2.events.StreamEnded) for event in events):
            sock.sendall(client.data_to_send())
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the response on stream 1 ended"
            events += client.receive_data(chunk)
    for event in events:
        if isinstance(event, h2.events.ResponseReceived):
            status = dict(event.headers)[b":status"]
        elif isinstance(event, h2.events.DataReceived):
            body += event.data

    assert head.startswith(b"HTTP/1.1 101")
    assert status == b"200"
    assert json.loads(body)["status"] == "healthy"


@pytest.mark.parametrize(
    ("settings", "connection"),
    [
        pytest.param("AAA", "Upgrade, HTTP2-Settings", id="bad-base64"),
        pytest.param("YWJjZGU=", "Upgrade, HTTP2-Settings", id="bad-frame"),
        pytest.param("AAT_____", "Upgrade, HTTP2-Settings", id="bad-value"),
        pytest.param(None, "Upgrade, HTTP2-Settings", id="no-settings"),
        pytest.param("", "Upgrade", id="settings-not-in-connection"),
    ],
)
def test_invalid_h2c_upgrade_served_over_http1(
    server: ServerProcess, settings: str | None, connection: str
) -> None:
    # Hypercorn sent 101, then closed the connection with a traceback in the log.
    request = h2c_upgrade(settings, connection)
    received = exchange_raw(server, request.replace(b"Host: x", b"Host: x\r\nConnection: close"))

    status_line, _, body = split_response(received)
    _, _, later = split_response(exchange_raw(server, b"GET /health HTTP/1.1\r\n\r\n"))
    server.wait_for_log(re.escape(json.loads(later)["requestId"]))

    assert status_line.startswith("HTTP/1.1 200")
    assert json.loads(body)["status"] == "healthy"
    assert "Traceback" not in server.log


def reset_streams(
    server: ServerProcess, count: int, path: str = "/health"
) -> tuple[list[h2.events.Event], str]:
    """Open ``count`` GET ``path`` streams and reset each at once, then send one more GET.

    Returns the connection's events until the last stream ends or the
    server ends the connection, and the status of the last stream, if any.
    """
    address = urlsplit(server.base_url)
    assert address.hostname is not None and address.port is not None
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    request = [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)]
    for _ in range(count):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, request, end_stream=True)
        client.reset_stream(stream_id)
    last = client.get_next_available_stream_id()
    client.send_headers(last, request, end_stream=True)
    events: list[h2.events.Event] = []
    status = ""
    with socket.create_connection((address.hostname, address.port), timeout=WAIT_SECONDS) as sock:
        sock.sendall(client.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                return events, status
            for event in client.receive_data(data):
                events.append(event)
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == last:
                    status = dict(event.headers)[b":status"].decode()
                if isinstance(event, h2.events.ConnectionTerminated):
                    return events, status
                if isinstance(event, h2.events.StreamEnded) and event.stream_id == last:
                    return events, status
            sock.sendall(client.data_to_send())


def test_rapid_reset_ends_connection(server: ServerProcess) -> None:
    # Each reset stream had started a handler, past the limit of 100
    # concurrent streams (CVE-2023-44487).
    events, status = reset_streams(server, 150)

    goaway = [event for event in events if isinstance(event, h2.events.ConnectionTerminated)]
    assert [event.error_code for event in goaway] == [h2.errors.ErrorCodes.ENHANCE_YOUR_CALM]
    assert status == ""
    server.wait_for_log(r"reset more than 100 streams in progress")
    assert httpx.get(f"{server.base_url}/health", trust_env=False, timeout=5).status_code == 200
    assert "Traceback" not in server.log


def test_rapid_reset_of_status_reads_leaves_no_task(server: ServerProcess) -> None:
    # Status reads that responded after the connection closed waited forever
    # for their stream's buffer to drain, so the stop waited its whole grace.
    started = httpx.post(
        f"{server.base_url}/v1/download/start", json={"file_id": 70000}, trust_env=False
    )
    status_path = started.json()["statusUrl"]
    for _ in range(5):
        events, _ = reset_streams(server, 150, status_path)
        assert isinstance(events[-1], h2.events.ConnectionTerminated)

    stopping = time.monotonic()
    status = server.stop()

    assert status == 0
    assert time.monotonic() - stopping < STOP_WITHOUT_WAITING_SECONDS


def test_some_resets_leave_connection_serving(server: ServerProcess) -> None:
    events, status = reset_streams(server, 50)

    assert not any(isinstance(event, h2.events.ConnectionTerminated) for event in events)
    assert status == "200"
