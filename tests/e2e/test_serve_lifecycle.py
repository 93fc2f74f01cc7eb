"""``download-jobs serve`` start-up checks and shutdown on SIGTERM and SIGINT."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from http_api._server import LISTEN_BACKLOG

from .conftest import ServerProcess, run_command, stderr_lines

SOMAXCONN = int(Path("/proc/sys/net/core/somaxconn").read_text())

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]

# Jobs that stay in flight for the whole test.
SLOW_SETTINGS = {
    "DOWNLOAD_DELAY_MIN_MS": "60000",
    "DOWNLOAD_DELAY_MAX_MS": "60000",
    # Two jobs process and the rest wait queued, so both cancel paths run.
    "MAX_CONCURRENT_JOBS": "2",
    # No grace period: processing jobs are cancelled as soon as the signal
    # arrives. The drain with a grace period has tests of its own.
    "SHUTDOWN_GRACE_MS": "0",
}
# Upper bound on shutdown (s). The server closes idle keep-alive connections
# as soon as it stops, so the process exits in well under a second. The
# bound leaves room for a slow machine.
SHUTDOWN_SECONDS = 6.0
# A bad setting stops the process before it binds. Importing the server stack
# takes about a second of this.
SETTINGS_ERROR_SECONDS = 5.0


async def start_jobs(server: ServerProcess, count: int) -> dict[str, str]:
    """Start ``count`` jobs and return each job id with the status the server reports."""
    statuses: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=server.base_url, trust_env=False, timeout=5.0) as client:
        for offset in range(count):
            response = await client.post("/v1/download/start", json={"file_id": 70000 + offset})
            assert response.status_code == 202, response.text
            statuses[response.json()["jobId"]] = ""
        for job_id in statuses:
            response = await client.get(f"/v1/download/status/{job_id}")
            assert response.status_code == 200, response.text
            statuses[job_id] = response.json()["status"]
    return statuses


async def stop_and_time(server: ServerProcess, signum: int) -> tuple[int, float]:
    began = time.monotonic()
    exit_status = await trio.to_thread.run_sync(server.stop, signum)
    return exit_status, time.monotonic() - began


def test_serve_tunes_garbage_collector(start_server: StartServer) -> None:
    server = start_server()
    tuned = re.search(r"garbage collector tuned: (\d+) start-up objects frozen", server.log)
    stopped = server.stop(signal.SIGTERM)

    assert tuned is not None, server.log
    assert int(tuned.group(1)) > 10_000
    assert server.log.index("garbage collector tuned") < server.log.index("serving on")
    assert stopped == 0, server.log


def test_serve_listen_backlog(start_server: StartServer) -> None:
    server = start_server()
    port = urlsplit(server.base_url).port
    # For a listening socket, ss reports the backlog in the Send-Q column.
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    stopped = server.stop(signal.SIGTERM)

    assert listing[0] == "LISTEN", listing
    assert int(listing[2]) == min(LISTEN_BACKLOG, SOMAXCONN), listing
    assert stopped == 0, server.log


# Bytes after a request that closes its connection. Hypercorn 0.18 sends a
# 400 for them while the app responds, and the two sends raced.
PIPELINED_AFTER_CLOSE = [
    b"GET /health HTTP/1.0\r\n\r\nGET /health HTTP/1.0\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nX",
]


def test_serve_survives_bytes_after_close(start_server: StartServer) -> None:
    server = start_server()
    address = urlsplit(server.base_url)
    for attempt in range(20):
        payload = PIPELINED_AFTER_CLOSE[attempt % len(PIPELINED_AFTER_CLOSE)]
        with socket.create_connection((address.hostname, address.port), timeout=5) as client:
            client.sendall(payload)
            while client.recv(65536):
                pass
    health = httpx.get(f"{server.base_url}/health", trust_env=False, timeout=5)
    running = server.process.poll() is None
    stopped = server.stop(signal.SIGTERM)

    assert running, server.log
    assert health.status_code == 200
    assert "Traceback" not in server.log
    assert stopped == 0, server.log


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_shutdown_cancels_jobs(start_server: StartServer, signum: int) -> None:
    server = start_server(**SLOW_SETTINGS)
    statuses = await start_jobs(server, 4)
    assert sorted(statuses.values()) == ["processing", "processing", "queued", "queued"]

    exit_status, seconds = await stop_and_time(server, signum)

    assert exit_status == 0, server.log
    assert seconds < SHUTDOWN_SECONDS
    log = server.log
    for job_id, status in statuses.items():
        line = rf"job {job_id}: {status} -> cancelled \(by shutdown\)"
        assert re.search(line, log), f"no line {line!r} in log:\n{log}"
    assert f"received {signal.Signals(signum).name}" in log
    assert log.rstrip().endswith("server stopped"), log


async def test_shutdown_with_open_connection(start_server: StartServer) -> None:
    server = start_server(**SLOW_SETTINGS)
    async with httpx.AsyncClient(base_url=server.base_url, trust_env=False, timeout=5.0) as client:
        response = await client.post("/v1/download/start", json={"file_id": 70000})
        assert response.status_code == 202, response.text
        job_id = response.json()["jobId"]

        # The client keeps its keep-alive connection open, as a poller does.
        exit_status, seconds = await stop_and_time(server, signal.SIGTERM)

    assert exit_status == 0, server.log
    assert seconds < SHUTDOWN_SECONDS
    assert f"job {job_id}: processing -> cancelled (by shutdown)" in server.log


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        pytest.param({"DOWNLOAD_DELAY_ENABLED": "maybe"}, "DOWNLOAD_DELAY_ENABLED", id="bool"),
        pytest.param({"DOWNLOAD_DELAY_MIN_MS": "abc"}, "DOWNLOAD_DELAY_MIN_MS", id="not-number"),
        pytest.param({"DOWNLOAD_DELAY_MIN_MS": "-5"}, "DOWNLOAD_DELAY_MIN_MS", id="negative"),
        pytest.param(
            {"DOWNLOAD_DELAY_MIN_MS": "5000", "DOWNLOAD_DELAY_MAX_MS": "100"},
            "DOWNLOAD_DELAY_MIN_MS",
            id="min-above-max",
        ),
        pytest.param(
            {"DOWNLOAD_SIZE_MIN_BYTES": "10", "DOWNLOAD_SIZE_MAX_BYTES": "5"},
            "DOWNLOAD_SIZE_MIN_BYTES",
            id="size-min-above-max",
        ),
        pytest.param({"DOWNLOAD_AVAILABILITY": "some"}, "DOWNLOAD_AVAILABILITY", id="mode"),
        pytest.param({"MAX_CONCURRENT_JOBS": "0"}, "MAX_CONCURRENT_JOBS", id="zero-slots"),
        pytest.param(
            {"DOWNLOAD_DELAY_MIN_MS": "--5"},
            "DOWNLOAD_DELAY_MIN_MS",
            id="double-sign",
        ),
    ],
)
def test_serve_rejects_bad_setting(settings: dict[str, str], variable: str) -> None:
    began = time.monotonic()
    result = run_command("serve", "--host", "127.0.0.1", "--port", "0", settings=settings)
    seconds = time.monotonic() - began

    assert result.returncode != 0
    assert seconds < SETTINGS_ERROR_SECONDS
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "invalid" in lines[0]


def test_serve_rejects_results_file(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "results"
    not_a_folder.write_text("a regular file\n")

    result = run_command(
        "serve", "--host", "127.0.0.1", "--port", "0", settings={"RESULTS_DIR": str(not_a_folder)}
    )

    assert result.returncode != 0
    lines = stderr_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "RESULTS_DIR" in lines[0]


def test_serve_port_in_use_is_one_line(server: ServerProcess) -> None:
    port = urlsplit(server.base_url).port
    assert port is not None

    # Without --host, the message names the default host.
    result = run_command("serve", "--port", str(port))

    assert result.returncode == 1
    last = stderr_lines(result.stderr)[-1]
    assert last == f"download-jobs: cannot listen on 127.0.0.1 port {port}: Address already in use"
    assert "Traceback" not in result.stderr
