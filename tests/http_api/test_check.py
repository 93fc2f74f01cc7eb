"""Tests of ``POST /v1/download/check``: whether a file exists, without starting a job."""

from __future__ import annotations

import pytest

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

FILE_ID = 70_000  # divisible by 7, so it exists under every availability mode
MISSING_FILE_ID = 70_001  # not divisible by 7
PROBLEM_MEDIA_TYPE = "application/problem+json"


async def test_check_existing_file(autojump_clock, api):
    response = await api.client.post("/v1/download/check", json={"file_id": FILE_ID})
    body = await response.get_json()

    assert response.status_code == 200
    assert body["file_id"] == FILE_ID
    assert body["available"] is True
    assert body["s3Key"] == f"downloads/{FILE_ID}.zip"
    assert isinstance(body["size"], int)


async def test_check_size_matches_archive(autojump_clock, api):
    response = await api.client.post("/v1/download/check", json={"file_id": FILE_ID})
    checked = await response.get_json()
    job_id = await api.start(FILE_ID)
    status = await api.wait_until_finished(job_id)
    result = await api.fetch_result(job_id)

    assert status["status"] == "done"
    assert checked["size"] == status["result"]["size"]
    assert checked["size"] == len(result.body)


async def test_check_missing_file(autojump_clock, sevens_api):
    response = await sevens_api.client.post("/v1/download/check", json={"file_id": MISSING_FILE_ID})
    body = await response.get_json()

    assert response.status_code == 200
    assert body["file_id"] == MISSING_FILE_ID
    assert body["available"] is False
    assert body["s3Key"] is None
    assert body["size"] is None


@pytest.mark.parametrize("file_id", [9_999, 100_000_001], ids=["below", "above"])
async def test_check_out_of_range_is_400(autojump_clock, api, file_id):
    response = await api.client.post("/v1/download/check", json={"file_id": file_id})
    problem = await response.get_json(force=True)

    assert response.status_code == 400
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["field"] == "file_id"


async def test_check_wrong_content_type_is_415(autojump_clock, api):
    response = await api.client.post(
        "/v1/download/check", data=b'{"file_id": 70000}', headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 415


async def test_get_check_is_405(autojump_clock, api):
    # "check" is not a UUID, so the request must not be read as a job lookup.
    response = await api.client.get("/v1/download/check")
    problem = await response.get_json(force=True)
    allowed = {method.strip() for method in response.headers["Allow"].split(",")}

    assert response.status_code == 405
    assert "POST" in allowed
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "method_not_allowed"
