"""Schemathesis against a real ``download-jobs serve`` on 127.0.0.1, driven by ``/openapi.json``.

The test runs Schemathesis' ``st run`` command (version 4) in a subprocess
with ``--checks all`` over every operation. It goes through all four phases:
examples, coverage (boundary values, missing headers, undocumented
methods), fuzzing (positive and negative data) and stateful. The stateful
phase follows the OpenAPI links of the 202 responses: it starts a job, then
polls, downloads and cancels it. The checks include no 5xx, documented status codes, media types,
headers and bodies, invalid data rejected, valid data accepted, and 405
with ``Allow`` for undocumented methods. ``--max-examples`` bounds the cases
per operation and phase, which keeps the run under a minute.

Why the command and not the pytest integration: with pytest 9.2,
``schemathesis.pytest.from_fixture`` (Schemathesis 4.32.5) fails with
``AttributeError: 'Function' object has no attribute '_nodeid'``, and a
schema loaded at import time cannot reach a server that a fixture starts.

The server runs with ``DOWNLOAD_AVAILABILITY=multiple-of-7``, so jobs also
fail, small archives so bulk jobs of 1,000 files stay cheap, and
``RATE_LIMIT_ENABLED=false``, because the generated requests exceed any
per-client budget.

This module is also the run's hooks file (``hooks`` in the configuration).
The hooks and the configuration handle known differences between what the
document can state and what the server does, each as narrowly as possible:

- The server rejects integral floats such as ``70000.0`` where it expects an
  integer (strict validation in ``_body.py``), but JSON Schema counts them
  as integers. ``filter_body`` drops bodies with such a value.
- Valid requests can get documented 4xx answers that depend on the job's
  state, not on the input: 410 for the result of a failed or cancelled job,
  412 for an ``If-Match`` that names another ETag, 416 for a range past the
  end of the file, and 422 for an ``Idempotency-Key`` reused with another
  body. ``positive_data_acceptance`` accepts these besides its defaults.
- ``GET /v1/download/status/{job_id}?wait=N`` with a matching
  ``If-None-Match`` (``*`` matches every ETag) holds the request for up to
  30 s by design. ``map_query`` caps ``wait`` at ``MAX_WAIT_SECONDS``.
- Link inference is off: it guessed job ids from other responses' fields,
  such as ``"start": "/v1/download/start"`` of ``GET /``, which are no job ids.
- Every request carries ``Connection: close``. On a kept-alive connection,
  a response sent before the app read the request body stalls the next
  request. ``test_unread_body_keeps_connection_usable`` reproduces it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import schemathesis

if TYPE_CHECKING:
    # Not imported at run time: Schemathesis loads this file as a plain module.
    from .conftest import ServerProcess

pytestmark = pytest.mark.e2e

# The console script installed next to the interpreter that runs the tests.
SCHEMATHESIS = Path(sys.executable).parent / "st"

# Cases per operation and phase. The run took 11-22 s with three seeds on the
# 2-core development machine.
MAX_EXAMPLES = 100
SEED = 20261204
REQUEST_TIMEOUT_SECONDS = 10
RUN_TIMEOUT_SECONDS = 180
MAX_WAIT_SECONDS = 0.5
# A health check takes milliseconds, so no response in 2 s means the connection stalled.
STALL_SECONDS = 2.0

SERVER_SETTINGS = {
    "DOWNLOAD_DELAY_MIN_MS": "100",
    "DOWNLOAD_DELAY_MAX_MS": "300",
    "DOWNLOAD_SIZE_MIN_BYTES": "1000",
    "DOWNLOAD_SIZE_MAX_BYTES": "4000",
    "DOWNLOAD_AVAILABILITY": "multiple-of-7",
    "RATE_LIMIT_ENABLED": "false",
    "CORS_ORIGINS": "*",
    # Jobs still running when the server stops are cancelled at once.
    "SHUTDOWN_GRACE_MS": "0",
}

CONFIG_TEMPLATE = """\
hooks = "{hooks}"
request-timeout = {request_timeout}

[checks.positive_data_acceptance]
expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "410", "412", "416", "422", "429", "5xx",
]

[phases.stateful.inference]
algorithms = []
"""

# Members that the request models type as integers.
INTEGER_MEMBERS = ("file_id", "timeout_ms")


def has_integral_float(body: Any) -> bool:
    """Return whether a body has a float such as 70000.0 where an integer is expected."""
    if not isinstance(body, dict):
        return False
    values = [body.get(name) for name in INTEGER_MEMBERS]
    if isinstance(body.get("file_ids"), list):
        values.extend(body["file_ids"])
    return any(isinstance(value, float) and value.is_integer() for value in values)


@schemathesis.hook
def filter_body(context: schemathesis.HookContext, body: Any) -> bool:
    return not has_integral_float(body)


@schemathesis.hook
def map_query(context: schemathesis.HookContext, query: Any) -> Any:
    if not isinstance(query, dict):
        return query
    wait = query.get("wait")
    is_number = isinstance(wait, int | float) and not isinstance(wait, bool)
    if is_number and wait > MAX_WAIT_SECONDS:
        query["wait"] = MAX_WAIT_SECONDS
    return query


def test_schemathesis_finds_no_failure(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server(**SERVER_SETTINGS)
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        CONFIG_TEMPLATE.format(hooks=Path(__file__), request_timeout=REQUEST_TIMEOUT_SECONDS)
    )
    environment = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        and not name.startswith("SCHEMATHESIS_")
    }
    environment["NO_PROXY"] = "127.0.0.1"

    started = time.monotonic()
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{server.base_url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--generation-database",
            "none",
            "--header",
            "Connection: close",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    elapsed = time.monotonic() - started

    assert run.returncode == 0, f"st run failed after {elapsed:.0f} s:\n{run.stdout}\n{run.stderr}"
    assert "Tested: 10" in run.stdout, run.stdout


def read_response_head(connection: socket.socket) -> bytes:
    """Read one response with a Content-Length or no body, and return its status line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return b"<closed>"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in lines
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        body += connection.recv(65536)
    return lines[0]


def test_unread_body_keeps_connection_usable(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(**SERVER_SETTINGS)
    port = int(server.base_url.rsplit(":", 1)[1])
    body = b'{"file_id": 70000}'
    head = (
        b"PATCH /v1/download/check HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )

    with socket.create_connection(("127.0.0.1", port), timeout=STALL_SECONDS) as connection:
        # Headers and body in two writes, as HTTP clients such as requests send them.
        connection.sendall(head)
        time.sleep(0.05)
        connection.sendall(body)
        first = read_response_head(connection)
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            second = read_response_head(connection)
        except TimeoutError:
            second = b"<no response>"

    assert first.startswith(b"HTTP/1.1 405")
    assert second.startswith(b"HTTP/1.1 200") or second == b"<closed>", second
