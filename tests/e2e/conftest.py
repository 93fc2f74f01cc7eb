"""Fixtures that run the real ``download-jobs`` console script on 127.0.0.1.

``start_server`` launches ``download-jobs serve --port 0`` as a subprocess and
waits for its "serving on http://127.0.0.1:PORT" log line. A background thread
keeps reading the server's stderr, so the pipe never fills and every test can
read the log so far. ``stand_in_server`` runs a scripted HTTP server in a
thread, for client failures that the real service never produces.

Every wait here is bounded, and all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# The console script installed next to the interpreter that runs the tests.
DOWNLOAD_JOBS = Path(sys.executable).parent / "download-jobs"

# Startup includes importing Quart and Hypercorn, which takes about a second.
STARTUP_TIMEOUT_SECONDS = 10.0
# The server gives open connections 3 s to finish after a stop signal, so 10 s leaves slack.
STOP_TIMEOUT_SECONDS = 10.0
# `download-jobs get` polls every 2 s, the Retry-After the server sends.
COMMAND_TIMEOUT_SECONDS = 20.0
LOG_WAIT_SECONDS = 5.0
POLL_SECONDS = 0.05

# Settings for a server whose jobs finish within a second.
FAST_SETTINGS = {
    "DOWNLOAD_DELAY_MIN_MS": "200",
    "DOWNLOAD_DELAY_MAX_MS": "600",
    "DOWNLOAD_SIZE_MIN_BYTES": "100000",
    "DOWNLOAD_SIZE_MAX_BYTES": "300000",
}

# Variables the product reads. Inherited values are removed, so only the
# settings a test passes reach the server.
_PRODUCT_VARIABLES = frozenset(
    {
        "ACCESS_LOG",
        "KEEP_ALIVE_TIMEOUT_MS",
        "MAX_CONCURRENT_JOBS",
        "PROGRESS_STEP_PERCENT",
        "RESULTS_DIR",
    }
)
_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})

_SERVING_LINE = re.compile(r"serving on (http://127\.0\.0\.1:\d+)\s*$")


def child_environment(**settings: str) -> dict[str, str]:
    """Return this process's environment without product and proxy variables, plus ``settings``.

    httpx in ``download-jobs get`` honours proxy variables, so they are removed
    and NO_PROXY is set to keep every request on 127.0.0.1.
    """
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("DOWNLOAD_")
        and name not in _PRODUCT_VARIABLES
        and name.lower() not in _PROXY_VARIABLES
    }
    environment["NO_PROXY"] = "127.0.0.1,localhost"
    environment.update(settings)
    return environment


def run_command(
    *arguments: str, cwd: Path | None = None, settings: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``download-jobs ARGUMENTS`` to completion, bounded by COMMAND_TIMEOUT_SECONDS.

    ``settings`` are environment variables for the product, on top of ``child_environment``.
    """
    return subprocess.run(
        [str(DOWNLOAD_JOBS), *arguments],
        cwd=cwd,
        env=child_environment(**(settings or {})),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_SECONDS,
        check=False,
    )


def stderr_lines(text: str) -> list[str]:
    """Split captured stderr into its non-empty lines."""
    return [line for line in text.splitlines() if line.strip()]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ServerProcess:
    """A running ``download-jobs serve`` subprocess and the stderr it has written so far."""

    def __init__(self, settings: dict[str, str]) -> None:
        self.settings = settings
        self.process = subprocess.Popen(
            [str(DOWNLOAD_JOBS), "serve", "--host", "127.0.0.1", "--port", "0"],
            env=child_environment(**settings),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.base_url = ""
        self._lines: list[str] = []
        self._output_lines: list[str] = []
        self._lines_lock = threading.Lock()
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self._output_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._output_reader.start()

    @property
    def log(self) -> str:
        """The server's stderr so far, complete once ``stop`` has returned."""
        with self._lines_lock:
            return "".join(self._lines)

    @property
    def output(self) -> str:
        """The server's stdout so far (the access log), complete once ``stop`` has returned."""
        with self._lines_lock:
            return "".join(self._output_lines)

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lines_lock:
                self._output_lines.append(line)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lines_lock:
                self._lines.append(line)
            match = _SERVING_LINE.search(line)
            if match and not self._listening.is_set():
                self.base_url = match.group(1)
                self._listening.set()

    def wait_until_listening(self) -> None:
        """Block until the "serving on" line appears. Fail the test if the process exits first."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self._listening.wait(POLL_SECONDS):
            if self.process.poll() is not None:
                self._reader.join(LOG_WAIT_SECONDS)
                pytest.fail(
                    f"server exited with status {self.process.returncode} before listening; "
                    f"log:\n{self.log}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"server printed no 'serving on' line within {STARTUP_TIMEOUT_SECONDS} s; "
                    f"log:\n{self.log}"
                )

    def wait_for_log(self, pattern: str, output: bool = False) -> re.Match[str]:
        """Return the first match of ``pattern`` in the log, waiting up to LOG_WAIT_SECONDS.

        With ``output``, search stdout instead of stderr.
        """
        deadline = time.monotonic() + LOG_WAIT_SECONDS
        while True:
            match = re.search(pattern, self.output if output else self.log, re.MULTILINE)
            if match is not None:
                return match
            if time.monotonic() > deadline:
                pytest.fail(f"no log line matched {pattern!r} within {LOG_WAIT_SECONDS} s")
            time.sleep(POLL_SECONDS)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` unless the process has exited, wait for it, and return its status.

        A process that outlives STOP_TIMEOUT_SECONDS is killed and the test fails.
        """
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT_SECONDS)
            pytest.fail(f"server did not exit within {STOP_TIMEOUT_SECONDS} s of {signum!r}")
        finally:
            self._reader.join(LOG_WAIT_SECONDS)
            self._output_reader.join(LOG_WAIT_SECONDS)
            assert self.process.stderr is not None and self.process.stdout is not None
            self.process.stderr.close()
            self.process.stdout.close()
        return self.process.returncode


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Return a function that starts a server with FAST_SETTINGS updated by its keyword arguments.

    Each server writes results to its own folder under ``tmp_path``. At
    teardown every server still running gets SIGTERM and must exit with status 0.
    """
    servers: list[ServerProcess] = []

    def start(**overrides: str) -> ServerProcess:
        settings = {
            **FAST_SETTINGS,
            "RESULTS_DIR": str(tmp_path / f"results-{len(servers)}"),
            **overrides,
        }
        server = ServerProcess(settings)
        servers.append(server)
        server.wait_until_listening()
        return server

    yield start

    exit_statuses = [server.stop() for server in servers]
    for server, status in zip(servers, exit_statuses, strict=True):
        assert status == 0, f"server exited with status {status}; log:\n{server.log}"


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A server with FAST_SETTINGS."""
    return start_server()


@pytest.fixture
def unused_port() -> int:
    """Return a port on 127.0.0.1 that nothing listens on.

    A socket binds the port and closes, so another process could take it in between.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


STAND_IN_JOB_ID = "3f2b8c1e-0d4a-4c6e-9b1a-2d5e7f8a9c0b"


@dataclasses.dataclass(frozen=True)
class StandInScript:
    """Responses of the stand-in server, whose one job is done at the first poll."""

    # Bytes sent by GET /v1/download/{jobId}.
    payload: bytes
    # The status document's result.sha256 and result.size. None sends the payload's own.
    reported_sha256: str | None = None
    reported_size: int | None = None
    # Raw body of the status response. None sends a valid "done" document.
    status_body: bytes | None = None
    # Close the connection after this many payload bytes, with the full Content-Length declared.
    cut_after_bytes: int | None = None
    # Seconds the first start request waits for its response.
    first_start_delay_seconds: float = 0.0
    # Every request received: method, path and Idempotency-Key (None without one).
    received: list[tuple[str, str, str | None]] = dataclasses.field(default_factory=list)


def _stand_in_handler(script: StandInScript) -> type[BaseHTTPRequestHandler]:
    start_document = {
        "jobId": STAND_IN_JOB_ID,
        "status": "queued",
        "statusUrl": f"/v1/download/status/{STAND_IN_JOB_ID}",
        "resultUrl": f"/v1/download/{STAND_IN_JOB_ID}",
    }
    status_document = {
        "jobId": STAND_IN_JOB_ID,
        "fileId": 70000,
        "status": "done",
        "progress": 100,
        "statusUrl": f"/v1/download/status/{STAND_IN_JOB_ID}",
        "resultUrl": f"/v1/download/{STAND_IN_JOB_ID}",
        "result": {
            "size": (len(script.payload) if script.reported_size is None else script.reported_size),
            "mediaType": "application/zip",
            "fileName": "70000.zip",
            "sha256": script.reported_sha256 or sha256_hex(script.payload),
        },
    }

    class StandInHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # silence the line per request that http.server writes to stderr

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _record(self) -> None:
            script.received.append((self.command, self.path, self.headers.get("Idempotency-Key")))

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self._record()
            if len(script.received) == 1:
                time.sleep(script.first_start_delay_seconds)
            self._send(202, json.dumps(start_document).encode(), "application/json")

        def do_DELETE(self) -> None:
            self._record()
            cancelled = {**status_document, "status": "cancelled", "result": None}
            self._send(200, json.dumps(cancelled).encode(), "application/json")

        def do_GET(self) -> None:
            self._record()
            if self.path == start_document["statusUrl"]:
                body = script.status_body or json.dumps(status_document).encode()
                self._send(200, body, "application/json")
            elif self.path == start_document["resultUrl"]:
                self._send_payload()
            else:
                self._send(404, b"{}", "application/json")

        def _send_payload(self) -> None:
            if script.cut_after_bytes is None:
                self._send(200, script.payload, "application/zip")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(script.payload)))
            self.end_headers()
            self.wfile.write(script.payload[: script.cut_after_bytes])
            self.close_connection = True

    return StandInHandler


@pytest.fixture
def stand_in_server() -> Iterator[Callable[[StandInScript], str]]:
    """Return a function that serves a ``StandInScript`` on 127.0.0.1 and returns its base URL."""
    servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(script: StandInScript) -> str:
        http_server = ThreadingHTTPServer(("127.0.0.1", 0), _stand_in_handler(script))
        thread = threading.Thread(target=http_server.serve_forever, daemon=True)
        thread.start()
        servers.append((http_server, thread))
        return f"http://127.0.0.1:{http_server.server_port}"

    yield start

    for http_server, thread in servers:
        http_server.shutdown()
        http_server.server_close()
        thread.join(LOG_WAIT_SECONDS)
