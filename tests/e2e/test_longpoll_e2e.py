"""Conditional polls and long polls against the real server over a socket on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from .conftest import POLL_SECONDS, ServerProcess

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ServerProcess]

# Jobs of 2-4 s that report progress in 50% steps.
HALFWAY_SETTINGS = {
    "DOWNLOAD_DELAY_MIN_MS": "2000",
    "DOWNLOAD_DELAY_MAX_MS": "4000",
    "PROGRESS_STEP_PERCENT": "50",
}
FILE_ID = 70000
LONG_POLL_WAIT_SECONDS = 10
# Above the long-poll wait, so the client never gives up before the server responds.
REQUEST_TIMEOUT_SECONDS = LONG_POLL_WAIT_SECONDS + 5.0
# A 4 s job plus slack for a loaded machine.
JOB_TIMEOUT_SECONDS = 15.0
# How late a long poll may return, on a loaded machine (seconds).
WAKE_SLACK_SECONDS = 1.0


def open_client(server: ServerProcess) -> httpx.AsyncClient:
    # trust_env=False keeps proxy variables from routing 127.0.0.1 elsewhere.
    return httpx.AsyncClient(
        base_url=server.base_url, trust_env=False, timeout=REQUEST_TIMEOUT_SECONDS
    )


async def start_job(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/download/start", json={"file_id": FILE_ID})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["jobId"]
    return job_id


async def poll_until_finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """Poll the job's status until it is terminal and return that status document."""
    with trio.fail_after(JOB_TIMEOUT_SECONDS):
        while True:
            response = await client.get(f"/v1/download/status/{job_id}")
            assert response.status_code == 200, response.text
            document: dict[str, Any] = response.json()
            if document["status"] in ("done", "failed", "cancelled"):
                return document
            await trio.sleep(POLL_SECONDS)


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_long_poll_reports_progress_when_wait_ends(start_server: StartServer) -> None:
    # 4 s jobs in 25% steps: progress passes 25% at 1 s, which ends no wait,
    # and reads 50% when the 2 s wait is up.
    server = start_server(
        DOWNLOAD_DELAY_MIN_MS="4000", DOWNLOAD_DELAY_MAX_MS="4000", PROGRESS_STEP_PERCENT="25"
    )
    async with open_client(server) as client:
        job_id = await start_job(client)
        first = await client.get(f"/v1/download/status/{job_id}")
        started = time.monotonic()
        response = await client.get(
            f"/v1/download/status/{job_id}",
            params={"wait": "2"},
            headers={"If-None-Match": first.headers["ETag"]},
        )
        elapsed = time.monotonic() - started
        finished = await poll_until_finished(client, job_id)

    halfway = response.json()
    assert first.json()["progress"] == 0
    assert response.status_code == 200
    assert response.headers["ETag"] != first.headers["ETag"]
    assert halfway["status"] == "processing"
    assert halfway["progress"] == 50
    assert elapsed >= 2.0
    assert elapsed < 2.0 + WAKE_SLACK_SECONDS
    assert finished["status"] == "done"


async def test_long_poll_returns_when_job_ends(start_server: StartServer) -> None:
    server = start_server(**HALFWAY_SETTINGS)
    async with open_client(server) as client:
        job_id = await start_job(client)
        first = await client.get(f"/v1/download/status/{job_id}")
        response = await client.get(
            f"/v1/download/status/{job_id}",
            params={"wait": str(LONG_POLL_WAIT_SECONDS)},
            headers={"If-None-Match": first.headers["ETag"]},
        )
        answered_at = datetime.now(UTC)

    done = response.json()
    finished_at = parse_time(done["updatedAt"])
    assert first.json()["status"] == "processing"
    assert response.status_code == 200
    assert done["status"] == "done"
    assert done["progress"] == 100
    assert (answered_at - finished_at).total_seconds() < WAKE_SLACK_SECONDS


async def test_long_poll_returns_on_done(start_server: StartServer) -> None:
    server = start_server(**HALFWAY_SETTINGS)
    async with open_client(server) as client:
        job_id = await start_job(client)
        etag = ""
        with trio.fail_after(JOB_TIMEOUT_SECONDS):
            while True:
                response = await client.get(
                    f"/v1/download/status/{job_id}",
                    params={"wait": str(LONG_POLL_WAIT_SECONDS)},
                    headers={"If-None-Match": etag} if etag else {},
                )
                assert response.status_code == 200, response.text
                etag = response.headers["ETag"]
                if response.json()["status"] in ("done", "failed", "cancelled"):
                    break

    assert response.json()["status"] == "done"
    assert response.json()["progress"] == 100


async def test_disconnected_long_poll_keeps_job(start_server: StartServer) -> None:
    server = start_server(**HALFWAY_SETTINGS)
    address = urlsplit(server.base_url)
    assert address.hostname == "127.0.0.1"
    assert address.port is not None
    async with open_client(server) as client:
        job_id = await start_job(client)
        first = await client.get(f"/v1/download/status/{job_id}")

        stream = await trio.open_tcp_stream("127.0.0.1", address.port)
        request = (
            f"GET /v1/download/status/{job_id}?wait={LONG_POLL_WAIT_SECONDS} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{address.port}\r\n"
            f"If-None-Match: {first.headers['ETag']}\r\n"
            "\r\n"
        )
        await stream.send_all(request.encode("ascii"))
        await trio.sleep(0.3)  # the server is now waiting on the job
        await stream.aclose()

        after = await client.get(f"/v1/download/status/{job_id}")
        finished = await poll_until_finished(client, job_id)

    assert first.json()["status"] == "processing"
    assert after.status_code == 200
    assert after.json()["status"] == "processing"
    assert finished["status"] == "done"
    assert "Traceback" not in server.log


async def test_conditional_poll_gets_304(start_server: StartServer) -> None:
    server = start_server(**HALFWAY_SETTINGS)
    async with open_client(server) as client:
        job_id = await start_job(client)
        finished = await poll_until_finished(client, job_id)
        current = await client.get(f"/v1/download/status/{job_id}")
        conditional = await client.get(
            f"/v1/download/status/{job_id}", headers={"If-None-Match": current.headers["ETag"]}
        )

    assert finished["status"] == "done"
    assert conditional.status_code == 304
    assert conditional.content == b""
    assert "content-type" not in conditional.headers
    assert "content-length" not in conditional.headers
    assert conditional.headers["ETag"] == current.headers["ETag"]


async def test_long_poll_times_out_with_304(start_server: StartServer) -> None:
    server = start_server(**HALFWAY_SETTINGS)
    async with open_client(server) as client:
        job_id = await start_job(client)
        finished = await poll_until_finished(client, job_id)
        current = await client.get(f"/v1/download/status/{job_id}")
        started = time.monotonic()
        response = await client.get(
            f"/v1/download/status/{job_id}",
            params={"wait": "1"},
            headers={"If-None-Match": current.headers["ETag"]},
        )
        elapsed = time.monotonic() - started

    assert finished["status"] == "done"
    assert response.status_code == 304
    assert elapsed >= 1.0
    assert elapsed < 1.0 + WAKE_SLACK_SECONDS
