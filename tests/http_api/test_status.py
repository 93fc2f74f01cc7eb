"""Tests of ``GET /v1/download/status/{jobId}``."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta

import pytest
import trio

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

FILE_ID = 70_000
PROBLEM_MEDIA_TYPE = "application/problem+json"
POLL_INTERVAL_SECONDS = 2
# Polling every 2 s covers the longest simulated delay (120 s) in 60 polls.
# The 10 extra polls are a margin.
MAX_POLLS = 70
# ISO 8601 in UTC with milliseconds, as the API renders createdAt and updatedAt.
UTC_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


async def test_status_snapshot_fields(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    response = await api.client.get(f"/v1/download/status/{job_id}")
    body = await response.get_json()

    assert response.status_code == 200
    assert body["jobId"] == job_id
    assert body["fileId"] == FILE_ID
    assert body["status"] in ("queued", "processing")
    assert body["progress"] == 0
    assert "createdAt" in body
    assert "updatedAt" in body


@pytest.mark.parametrize("member", ["createdAt", "updatedAt"])
async def test_status_times_are_utc_iso8601(autojump_clock, api, member):
    job_id = await api.start(FILE_ID)

    body = await api.status(job_id)
    moment = datetime.fromisoformat(body[member])

    assert UTC_TIMESTAMP.fullmatch(body[member])
    assert moment.utcoffset() == timedelta(0)


async def test_status_cache_control_no_cache(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    response = await api.client.get(f"/v1/download/status/{job_id}")

    assert response.headers["Cache-Control"] == "no-cache"


async def test_status_processing_has_retry_after(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    response = await api.client.get(f"/v1/download/status/{job_id}")
    body = await response.get_json()

    assert body["status"] == "processing"
    assert response.headers["Retry-After"] == "2"


async def test_status_queued_has_retry_after(autojump_clock, single_slot_api):
    await single_slot_api.start(FILE_ID)
    queued_id = await single_slot_api.start(FILE_ID + 1)

    response = await single_slot_api.client.get(f"/v1/download/status/{queued_id}")
    body = await response.get_json()

    assert body["status"] == "queued"
    assert response.headers["Retry-After"] == "2"


async def test_status_done_has_no_retry_after(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    await api.wait_until_finished(job_id)

    response = await api.client.get(f"/v1/download/status/{job_id}")
    body = await response.get_json()

    assert body["status"] == "done"
    assert "Retry-After" not in response.headers


async def test_status_cancelled_has_no_retry_after(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    cancel = await api.client.delete(f"/v1/download/{job_id}")
    assert cancel.status_code == 200

    response = await api.client.get(f"/v1/download/status/{job_id}")
    body = await response.get_json()

    assert body["status"] == "cancelled"
    assert "Retry-After" not in response.headers


async def test_status_failed_has_error(autojump_clock, sevens_api):
    missing_file_id = 70_001  # not divisible by 7
    job_id = await sevens_api.start(missing_file_id)
    await sevens_api.wait_until_finished(job_id)

    response = await sevens_api.client.get(f"/v1/download/status/{job_id}")
    body = await response.get_json()

    assert body["status"] == "failed"
    assert body["error"]["code"] == "not_found"
    assert body["error"]["message"]
    assert "result" not in body
    assert "Retry-After" not in response.headers


async def test_status_done_has_result(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    body = await api.wait_until_finished(job_id)
    result = body["result"]

    assert body["status"] == "done"
    assert body["resultUrl"] == f"/v1/download/{job_id}"
    assert result["mediaType"] == "application/zip"
    assert result["fileName"] == f"{FILE_ID}.zip"
    assert re.fullmatch(r"[0-9a-f]{64}", result["sha256"])
    assert isinstance(result["size"], int)
    assert result["size"] > 0


async def test_status_running_has_no_result(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    body = await api.status(job_id)

    assert body["status"] == "processing"
    assert "result" not in body
    assert "resultUrl" not in body


async def test_status_progress_never_decreases(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    running: list[int] = []
    for _ in range(MAX_POLLS):
        body = await api.status(job_id)
        if body["status"] != "processing":
            break
        running.append(body["progress"])
        await trio.sleep(POLL_INTERVAL_SECONDS)

    assert body["status"] == "done"
    assert running == sorted(running)
    assert max(running) < 100
    assert body["progress"] == 100
    # More than one step was seen, so the order check above compared something.
    assert len(set(running)) > 1


async def test_status_uppercase_id_finds_job(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    response = await api.client.get(f"/v1/download/status/{job_id.upper()}")
    body = await response.get_json()

    assert response.status_code == 200
    assert body["jobId"] == job_id


async def test_status_unknown_job_is_404(autojump_clock, api):
    response = await api.client.get(f"/v1/download/status/{uuid.uuid4()}")
    problem = await response.get_json(force=True)

    assert response.status_code == 404
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "job_not_found"


MALFORMED_IDS = [
    pytest.param("abc", id="short-word"),
    pytest.param("a" * 5000, id="5000-chars"),
    pytest.param("3f2b8c1e-0d4a-4c6e-9b1a-2d5e7f8a9c0bX", id="uuid-plus-char"),
    pytest.param("x3f2b8c1e-0d4a-4c6e-9b1a-2d5e7f8a9c0b", id="char-plus-uuid"),
    pytest.param("3f2b8c1e0d4a4c6e9b1a2d5e7f8a9c0b", id="uuid-without-hyphens"),
]


@pytest.mark.parametrize("job_id", MALFORMED_IDS)
async def test_status_malformed_id_is_400(autojump_clock, api, job_id):
    response = await api.client.get(f"/v1/download/status/{job_id}")
    problem = await response.get_json(force=True)

    assert response.status_code == 400
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "invalid_job_id"
    assert problem["field"] == "jobId"
