"""Tests of ``GET /v1/download/{jobId}`` and ``HEAD`` on it: the finished file.

Requests go through ``api.fetch_result``, which pauses the autojump clock
while the app reads the file in worker threads and returns the headers as
the app sent them.
"""

from __future__ import annotations

import hashlib
import io
import uuid
import zipfile

import pytest

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

FILE_ID = 70_000
PROBLEM_MEDIA_TYPE = "application/problem+json"


async def test_result_done_is_zip(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    status = await api.wait_until_finished(job_id)

    response = await api.fetch_result(job_id)

    assert status["status"] == "done"
    assert response.status == 200
    assert response.media_type == "application/zip"


async def test_result_content_length_matches_body(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    status = await api.wait_until_finished(job_id)

    response = await api.fetch_result(job_id)

    assert status["status"] == "done"
    assert int(response.headers["Content-Length"]) == len(response.body)
    assert len(response.body) == status["result"]["size"]


async def test_result_content_disposition_names_file(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    status = await api.wait_until_finished(job_id)

    response = await api.fetch_result(job_id)

    assert status["status"] == "done"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{FILE_ID}.zip"'


async def test_result_etag_is_sha256(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    status = await api.wait_until_finished(job_id)

    response = await api.fetch_result(job_id)

    assert status["status"] == "done"
    assert response.headers["ETag"] == f'"{status["result"]["sha256"]}"'


async def test_result_sha256_matches_status(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    status = await api.wait_until_finished(job_id)

    response = await api.fetch_result(job_id)

    assert status["status"] == "done"
    assert hashlib.sha256(response.body).hexdigest() == status["result"]["sha256"]


async def test_result_is_valid_zip(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    status = await api.wait_until_finished(job_id)

    response = await api.fetch_result(job_id)

    assert status["status"] == "done"
    with zipfile.ZipFile(io.BytesIO(response.body)) as archive:
        assert archive.testzip() is None


async def test_result_same_file_id_same_bytes(autojump_clock, api):
    first_id = await api.start(FILE_ID)
    second_id = await api.start(FILE_ID)
    first_status = await api.wait_until_finished(first_id)
    second_status = await api.status(second_id)

    first = await api.fetch_result(first_id)
    second = await api.fetch_result(second_id)

    assert first_status["status"] == "done"
    assert second_status["status"] == "done"
    assert first.body == second.body


async def test_head_result_has_length_no_body(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    status = await api.wait_until_finished(job_id)

    response = await api.fetch_result(job_id, method="HEAD")

    assert status["status"] == "done"
    assert response.status == 200
    assert int(response.headers["Content-Length"]) == status["result"]["size"]
    assert response.body == b""


async def test_result_processing_is_409(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    response = await api.fetch_result(job_id)
    problem = response.json()

    assert response.status == 409
    assert response.media_type == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "result_not_ready"
    assert problem["job"]["status"] == "processing"
    assert response.headers["Retry-After"] == "2"


async def test_result_queued_is_409(autojump_clock, single_slot_api):
    await single_slot_api.start(FILE_ID)
    queued_id = await single_slot_api.start(FILE_ID + 1)

    response = await single_slot_api.fetch_result(queued_id)
    problem = response.json()

    assert response.status == 409
    assert problem["job"]["status"] == "queued"
    assert response.headers["Retry-After"] == "2"


async def test_result_cancelled_is_410(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    cancel = await api.client.delete(f"/v1/download/{job_id}")
    assert cancel.status_code == 200

    response = await api.fetch_result(job_id)
    problem = response.json()

    assert response.status == 410
    assert response.media_type == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "result_unavailable"
    assert problem["job"]["status"] == "cancelled"


async def test_result_failed_is_410(autojump_clock, sevens_api):
    missing_file_id = 70_001  # not divisible by 7
    job_id = await sevens_api.start(missing_file_id)
    status = await sevens_api.wait_until_finished(job_id)

    response = await sevens_api.fetch_result(job_id)
    problem = response.json()

    assert status["status"] == "failed"
    assert status["error"]["code"] == "not_found"
    assert response.status == 410
    assert problem["code"] == "result_unavailable"
    assert problem["job"]["status"] == "failed"


async def test_result_deleted_file_is_410(autojump_clock, api, tmp_path):
    job_id = await api.start(FILE_ID)
    status = await api.wait_until_finished(job_id)
    archives = list(tmp_path.glob("*.zip"))
    assert len(archives) == 1
    archives[0].unlink()

    response = await api.fetch_result(job_id)
    problem = response.json()

    assert status["status"] == "done"
    assert response.status == 410
    assert problem["code"] == "result_unavailable"


async def test_result_unknown_job_is_404(autojump_clock, api):
    response = await api.fetch_result(str(uuid.uuid4()))
    problem = response.json()

    assert response.status == 404
    assert response.media_type == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "job_not_found"


async def test_result_malformed_id_is_400(autojump_clock, api):
    response = await api.fetch_result("abc")
    problem = response.json()

    assert response.status == 400
    assert problem["code"] == "invalid_job_id"
