"""Byte ranges over real HTTP: partial and resumed downloads, HEAD, 416, and a slow client."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from typing import Any

import h11
import httpx
import pytest
import trio

from .conftest import POLL_SECONDS, ServerProcess, sha256_hex

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]

FILE_ID = 70_000
# Jobs here take at most 0.6 s, so the rest is slack for a loaded machine.
JOB_TIMEOUT_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 5.0
# How long the server may take to close the file of a dropped download.
FILE_CLOSE_TIMEOUT_SECONDS = 5.0

# The slow client reads a 30 MB result at about 12 MB/s, so the transfer
# takes about 2.5 s. Its receive buffer is fixed at 64 KiB, so the socket
# buffers hold only a small part of the file and the server has to wait for
# the client during most of the transfer.
LARGE_RESULT_BYTES = 30_000_000
SLOW_CLIENT_BYTES_PER_SECOND = 12_000_000
SLOW_READ_BYTES = 16 * 1024
SLOW_CLIENT_RECEIVE_BUFFER_BYTES = 64 * 1024
# The whole slow download, with slack for a loaded machine.
SLOW_DOWNLOAD_TIMEOUT_SECONDS = 20.0


def open_client(server: ServerProcess) -> httpx.AsyncClient:
    # trust_env=False keeps proxy variables from routing 127.0.0.1 elsewhere.
    return httpx.AsyncClient(
        base_url=server.base_url, trust_env=False, timeout=REQUEST_TIMEOUT_SECONDS
    )


async def finished_job(client: httpx.AsyncClient) -> dict[str, Any]:
    """Start a job for FILE_ID, poll it until it is done, and return its status document."""
    response = await client.post("/v1/download/start", json={"file_id": FILE_ID})
    assert response.status_code == 202, response.text
    job_id = response.json()["jobId"]
    with trio.fail_after(JOB_TIMEOUT_SECONDS):
        while True:
            status = await client.get(f"/v1/download/status/{job_id}")
            assert status.status_code == 200, status.text
            document: dict[str, Any] = status.json()
            if document["status"] != "queued" and document["status"] != "processing":
                assert document["status"] == "done", document
                return document
            await trio.sleep(POLL_SECONDS)


async def test_range_request_real_server(server: ServerProcess) -> None:
    async with open_client(server) as client:
        job = await finished_job(client)
        whole = await client.get(job["resultUrl"])
        part = await client.get(job["resultUrl"], headers={"Range": "bytes=100-1099"})

    size = job["result"]["size"]
    assert whole.status_code == 200
    assert len(whole.content) == size
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 100-1099/{size}"
    assert part.headers["Content-Length"] == "1000"
    assert part.content == whole.content[100:1100]


async def read_first_part(
    server: ServerProcess,
    path: str,
    limit: int,
    before_drop: Callable[[], None] = lambda: None,
) -> tuple[bytes, str]:
    """GET ``path`` on a new connection and drop the connection after ``limit`` body bytes.

    Returns the body bytes received, at least ``limit`` unless the body is
    shorter, and the ETag. ``before_drop`` runs just before the connection
    closes. This uses h11 directly because a streamed httpx response that is
    closed midway leaves an unfinished httpcore generator behind, which the
    ResourceWarning filter turns into a test failure.
    """
    port = int(server.base_url.rsplit(":", 1)[1])
    connection = h11.Connection(h11.CLIENT)
    body = bytearray()
    etag = ""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = h11.Request(method="GET", target=path, headers=[("Host", f"127.0.0.1:{port}")])
        await stream.send_all(connection.send(request))
        await stream.send_all(connection.send(h11.EndOfMessage()))
        while len(body) < limit:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(64 * 1024))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
                etag = dict(event.headers)[b"etag"].decode()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        before_drop()
    return bytes(body), etag


def open_result_files(server: ServerProcess) -> list[str]:
    """Return the paths under the server's RESULTS_DIR that the server process has open."""
    results_dir = os.path.realpath(server.settings["RESULTS_DIR"])
    fd_dir = f"/proc/{server.process.pid}/fd"
    paths = []
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except FileNotFoundError:  # closed since listdir
            continue
        if target.startswith(results_dir + os.sep):
            paths.append(target)
    return paths


async def test_resumed_download_matches_sha256(server: ServerProcess) -> None:
    async with open_client(server) as client:
        job = await finished_job(client)
        size = job["result"]["size"]

        first_part, etag = await read_first_part(server, job["resultUrl"], size // 2)
        resumed = await client.get(
            job["resultUrl"],
            headers={"Range": f"bytes={len(first_part)}-", "If-Range": etag},
        )

    assert 0 < len(first_part) < size, "the first attempt was meant to stop midway"
    assert resumed.status_code == 206
    assert resumed.headers["Content-Range"] == f"bytes {len(first_part)}-{size - 1}/{size}"
    assert sha256_hex(first_part + resumed.content) == job["result"]["sha256"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
async def test_dropped_download_closes_file(start_server: StartServer) -> None:
    # The client reads 1 MiB of 30 MB, so the server is still sending when
    # the client drops the connection, which open_while_sending confirms.
    size_setting = str(LARGE_RESULT_BYTES)
    server = start_server(
        DOWNLOAD_SIZE_MIN_BYTES=size_setting, DOWNLOAD_SIZE_MAX_BYTES=size_setting
    )
    open_while_sending: list[str] = []

    def record_open_files() -> None:
        open_while_sending.extend(open_result_files(server))

    async with open_client(server) as client:
        job = await finished_job(client)
        await read_first_part(server, job["resultUrl"], 1024 * 1024, record_open_files)

    # The server notices the closed connection on its next write.
    with trio.move_on_after(FILE_CLOSE_TIMEOUT_SECONDS):
        while True:
            if not open_result_files(server):
                break
            await trio.sleep(POLL_SECONDS)
    assert len(open_while_sending) == 1
    assert open_result_files(server) == []
    assert "Traceback" not in server.log


async def test_head_real_server(server: ServerProcess) -> None:
    async with open_client(server) as client:
        job = await finished_job(client)
        response = await client.head(job["resultUrl"])

    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["Content-Length"] == str(job["result"]["size"])
    assert response.headers["Content-Type"] == "application/zip"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"] == f'"{job["result"]["sha256"]}"'
    assert response.headers["Cache-Control"] == "private, no-store"
    assert "Last-Modified" in response.headers


async def test_range_not_satisfiable_real_server(server: ServerProcess) -> None:
    async with open_client(server) as client:
        job = await finished_job(client)
        size = job["result"]["size"]
        response = await client.get(job["resultUrl"], headers={"Range": f"bytes={size}-"})

    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{size}"
    assert response.json()["code"] == "range_not_satisfiable"


async def test_range_unfinished_job_409(start_server: StartServer) -> None:
    # A 5 s delay keeps the job processing while the range request arrives.
    server = start_server(DOWNLOAD_DELAY_MIN_MS="5000", DOWNLOAD_DELAY_MAX_MS="5000")
    async with open_client(server) as client:
        started = await client.post("/v1/download/start", json={"file_id": FILE_ID})
        result_url = started.json()["resultUrl"]
        response = await client.get(result_url, headers={"Range": "bytes=0-9"})
        cancelled = await client.delete(result_url)

    assert response.status_code == 409
    assert "Content-Range" not in response.headers
    assert response.json()["code"] == "result_not_ready"
    assert cancelled.status_code == 200


async def test_large_result_slow_client(start_server: StartServer) -> None:
    size_setting = str(LARGE_RESULT_BYTES)
    server = start_server(
        DOWNLOAD_SIZE_MIN_BYTES=size_setting, DOWNLOAD_SIZE_MAX_BYTES=size_setting
    )
    # A fixed SO_RCVBUF also turns off Linux's receive buffer autotuning.
    small_buffer = (socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_CLIENT_RECEIVE_BUFFER_BYTES)
    slow_transport = httpx.AsyncHTTPTransport(socket_options=[small_buffer])
    digest = hashlib.sha256()
    received = 0
    open_at_half: list[str] = []
    async with open_client(server) as client:
        job = await finished_job(client)
        size = job["result"]["size"]
        async with (
            httpx.AsyncClient(
                base_url=server.base_url,
                transport=slow_transport,
                trust_env=False,
                timeout=REQUEST_TIMEOUT_SECONDS,
            ) as slow_client,
            slow_client.stream("GET", job["resultUrl"]) as response,
        ):
            assert response.status_code == 200
            started_at = trio.current_time()
            with trio.fail_after(SLOW_DOWNLOAD_TIMEOUT_SECONDS):
                async for chunk in response.aiter_raw(SLOW_READ_BYTES):
                    if received < size // 2 <= received + len(chunk):
                        open_at_half = open_result_files(server)
                    digest.update(chunk)
                    received += len(chunk)
                    # Sleep until the steady pace allows the next read.
                    await trio.sleep_until(started_at + received / SLOW_CLIENT_BYTES_PER_SECOND)
            elapsed = trio.current_time() - started_at

    assert size > LARGE_RESULT_BYTES
    assert received == size
    assert digest.hexdigest() == job["result"]["sha256"]
    # The pace alone takes 2.5 s, so a shorter transfer means the client did not read slowly.
    assert elapsed >= LARGE_RESULT_BYTES / SLOW_CLIENT_BYTES_PER_SECOND
    # The server still had the file open, so it was still sending, halfway through.
    assert len(open_at_half) == 1
