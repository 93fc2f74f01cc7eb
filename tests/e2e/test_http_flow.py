"""The polling API over real HTTP: start a job, poll it until done, download the file."""

from __future__ import annotations

import io
import itertools
import zipfile
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import trio

from .conftest import FAST_SETTINGS, POLL_SECONDS, ServerProcess, sha256_hex

pytestmark = pytest.mark.e2e

# Jobs here take at most 1.5 s, so the rest is slack for a loaded machine.
JOB_TIMEOUT_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 5.0


def open_client(server: ServerProcess) -> httpx.AsyncClient:
    # trust_env=False keeps proxy variables from routing 127.0.0.1 elsewhere.
    return httpx.AsyncClient(
        base_url=server.base_url, trust_env=False, timeout=REQUEST_TIMEOUT_SECONDS
    )


async def start_job(client: httpx.AsyncClient, file_id: int) -> str:
    response = await client.post("/v1/download/start", json={"file_id": file_id})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["jobId"]
    return job_id


async def poll_until_finished(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    """Poll the job's status until it is terminal and return every status document seen."""
    history: list[dict[str, Any]] = []
    with trio.fail_after(JOB_TIMEOUT_SECONDS):
        while True:
            response = await client.get(f"/v1/download/status/{job_id}")
            assert response.status_code == 200, response.text
            history.append(response.json())
            if history[-1]["status"] in ("done", "failed", "cancelled"):
                return history
            await trio.sleep(POLL_SECONDS)


async def test_download_end_to_end(start_server: Callable[..., ServerProcess]) -> None:
    # A delay of 1 s or more leaves room for several polls while the job
    # processes, even on a loaded machine.
    server = start_server(DOWNLOAD_DELAY_MIN_MS="1000", DOWNLOAD_DELAY_MAX_MS="1500")
    async with open_client(server) as client:
        job_id = await start_job(client, 70000)
        history = await poll_until_finished(client, job_id)
        final = history[-1]
        response = await client.get(final["resultUrl"])

    assert final["status"] == "done"
    assert final["progress"] == 100
    progress = [document["progress"] for document in history]
    for earlier, later in itertools.pairwise(progress):
        assert later >= earlier, f"progress decreased: {progress}"
    unfinished = [document for document in history if document["status"] != "done"]
    assert any(document["status"] == "processing" for document in unfinished), history
    assert any(0 < document["progress"] < 100 for document in unfinished), history
    for document in unfinished:
        assert document["progress"] < 100, f"100% before done: {document}"

    assert response.status_code == 200
    body = response.content
    assert sha256_hex(body) == final["result"]["sha256"]
    assert int(response.headers["Content-Length"]) == len(body)
    assert len(body) == final["result"]["size"]
    assert response.headers["Content-Type"] == final["result"]["mediaType"]

    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        members = archive.infolist()
    assert len(members) == 1
    assert members[0].file_size >= int(FAST_SETTINGS["DOWNLOAD_SIZE_MIN_BYTES"])
    assert members[0].file_size <= int(FAST_SETTINGS["DOWNLOAD_SIZE_MAX_BYTES"])


async def test_same_file_id_same_bytes(server: ServerProcess) -> None:
    async with open_client(server) as client:
        first_job = await start_job(client, 70000)
        second_job = await start_job(client, 70000)
        first_final = (await poll_until_finished(client, first_job))[-1]
        second_final = (await poll_until_finished(client, second_job))[-1]
        first = await client.get(f"/v1/download/{first_job}")
        second = await client.get(f"/v1/download/{second_job}")

    assert first_job != second_job
    assert first_final["status"] == "done"
    assert second_final["status"] == "done"
    assert first.status_code == 200
    assert second.status_code == 200
    assert first.content == second.content
    assert first_final["result"]["sha256"] == second_final["result"]["sha256"]


async def _chunks(*parts: bytes) -> Any:
    for part in parts:
        yield part


async def test_start_with_chunked_body(server: ServerProcess) -> None:
    # httpx sends an async iterator as a chunked body, which the server reads in parts.
    async with open_client(server) as client:
        response = await client.post(
            "/v1/download/start",
            content=_chunks(b'{"file', b'_id": 7', b"0001}"),
            headers={"Content-Type": "application/json"},
        )
        assert response.request.headers["Transfer-Encoding"] == "chunked"
        assert response.status_code == 202, response.text
        status = await client.get(response.headers["Location"])

    assert status.json()["fileId"] == 70001


async def test_chunked_start_body_over_limit_is_413(server: ServerProcess) -> None:
    # 17 chunks of 4 KiB: over the 64 KiB limit only after the sixteenth.
    async with open_client(server) as client:
        response = await client.post(
            "/v1/download/start",
            content=_chunks(*[b" " * 4096] * 17),
            headers={"Content-Type": "application/json"},
        )
        health = await client.get("/health")

    assert response.status_code == 413
    assert response.json()["code"] == "request_entity_too_large"
    assert health.status_code == 200
