"""Tests of ``POST /v1/download/start`` with valid requests.

Invalid bodies, content types and sizes are in ``test_start_validation.py``.
"""

from __future__ import annotations

import json
import uuid

import pytest

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

FILE_ID = 70_000


async def test_start_returns_202(autojump_clock, api):
    response = await api.client.post("/v1/download/start", json={"file_id": FILE_ID})

    assert response.status_code == 202


async def test_start_job_id_is_uuid4(autojump_clock, api):
    response = await api.client.post("/v1/download/start", json={"file_id": FILE_ID})
    job_id = (await response.get_json())["jobId"]

    parsed = uuid.UUID(job_id)
    assert parsed.version == 4
    assert str(parsed) == job_id


async def test_start_status_is_queued(autojump_clock, api):
    response = await api.client.post("/v1/download/start", json={"file_id": FILE_ID})
    body = await response.get_json()

    assert body["status"] == "queued"


async def test_start_links_status_and_result(autojump_clock, api):
    response = await api.client.post("/v1/download/start", json={"file_id": FILE_ID})
    body = await response.get_json()
    job_id = body["jobId"]

    assert body["statusUrl"] == f"/v1/download/status/{job_id}"
    assert body["resultUrl"] == f"/v1/download/{job_id}"


async def test_start_location_is_status_url(autojump_clock, api):
    response = await api.client.post("/v1/download/start", json={"file_id": FILE_ID})
    body = await response.get_json()

    assert response.headers["Location"] == body["statusUrl"]


async def test_start_retry_after_is_2(autojump_clock, api):
    response = await api.client.post("/v1/download/start", json={"file_id": FILE_ID})

    assert response.headers["Retry-After"] == "2"


async def test_start_then_status_finds_job(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    response = await api.client.get(f"/v1/download/status/{job_id}")
    body = await response.get_json()

    assert response.status_code == 200
    assert body["jobId"] == job_id
    assert body["fileId"] == FILE_ID
    # The supervisor may have given the job a processing slot already.
    assert body["status"] in ("queued", "processing")


async def test_start_twice_gives_two_jobs(autojump_clock, api):
    first = await api.start(FILE_ID)
    second = await api.start(FILE_ID)

    assert first != second


@pytest.mark.parametrize("file_id", [10_000, 100_000_000], ids=["minimum", "maximum"])
async def test_start_accepts_range_bounds(autojump_clock, api, file_id):
    response = await api.client.post("/v1/download/start", json={"file_id": file_id})

    assert response.status_code == 202


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "application/json; charset=UTF8",
        "application/vnd.api+json",
    ],
)
async def test_start_accepts_json_media_types(autojump_clock, api, content_type):
    response = await api.client.post(
        "/v1/download/start",
        data=json.dumps({"file_id": FILE_ID}),
        headers={"Content-Type": content_type},
    )

    assert response.status_code == 202


async def test_start_ignores_unknown_members(autojump_clock, api):
    response = await api.client.post(
        "/v1/download/start", json={"file_id": FILE_ID, "priority": "high"}
    )

    assert response.status_code == 202


async def test_start_accepts_body_at_size_limit(autojump_clock, api):
    # 64 KiB is the largest body allowed. The app ignores the padding member.
    limit = 64 * 1024
    prefix = b'{"file_id": 70000, "padding": "'
    suffix = b'"}'
    body = prefix + b"a" * (limit - len(prefix) - len(suffix)) + suffix
    assert len(body) == limit

    response = await api.client.post(
        "/v1/download/start", data=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 202
