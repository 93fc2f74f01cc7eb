"""Raw exchanges with a real server: HTTP/1.1 bytes on a socket, and one HTTP/2 request."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events

from .conftest import ServerProcess

# Bound on each socket operation (seconds).
WAIT_SECONDS = 5.0


def exchange_raw(server: ServerProcess, data: bytes) -> bytes:
    """Send ``data`` on a new connection and return everything until the server closes it."""
    address = urlsplit(server.base_url)
    assert address.hostname is not None and address.port is not None
    received = b""
    with socket.create_connection((address.hostname, address.port), timeout=WAIT_SECONDS) as conn:
        conn.sendall(data)
        while chunk := conn.recv(65536):
            received += chunk
    return received


def split_response(received: bytes) -> tuple[str, dict[str, str], bytes]:
    """Split one response into its status line, header fields (names in lower case) and body."""
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {
        name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
    }
    return status_line, fields, body


def http2_exchange(
    server: ServerProcess, headers: list[tuple[str, str]]
) -> tuple[dict[str, str], bytes]:
    """Send one HTTP/2 request with ``headers`` (prior knowledge); return its response.

    Returns the response's header fields, pseudo-headers included, and its
    body. Fails if the connection ends before the response does.
    """
    address = urlsplit(server.base_url)
    assert address.hostname is not None and address.port is not None
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    stream_id = connection.get_next_available_stream_id()
    connection.send_headers(stream_id, headers)
    fields: dict[str, str] = {}
    body = b""
    with socket.create_connection((address.hostname, address.port), timeout=WAIT_SECONDS) as sock:
        sock.sendall(connection.data_to_send())
        while True:
            data = sock.recv(65536)
            assert data, f"connection closed before the response ended; got {fields}, {body!r}"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    fields = {name.decode(): value.decode() for name, value in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    connection.acknowledge_received_data(len(event.data), stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    return fields, body
            sock.sendall(connection.data_to_send())
