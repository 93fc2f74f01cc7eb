"""Tests of bulk downloads over HTTP: ``POST /v1/download/initiate``, the bulk status document
and the bulk result."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from quart.typing import TestClientProtocol as QuartTestClient

from engine import EngineSettings
from http_api import Settings, create_app

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

INITIATE_PATH = "/v1/download/initiate"
PROBLEM_MEDIA_TYPE = "application/problem+json"
# 70000, 70007 and 70014 are multiples of 7, but 70001 is not, so it is missing
# under DOWNLOAD_AVAILABILITY=multiple-of-7.
PRESENT_IDS = [70_000, 70_007, 70_014]
MISSING_ID = 70_001
MAX_BULK_FILE_IDS = 1000
# Small archives and a fixed seed, as in the shared fixtures of conftest.py.
SMALL_ARCHIVES: dict[str, Any] = {
    "download_size_min_bytes": 1000,
    "download_size_max_bytes": 4000,
    "download_random_seed": 1,
}
# Longer than the default deadline (300 s), so every bulk job has ended.
PAST_DEADLINE_SECONDS = 310


@asynccontextmanager
async def open_client(tmp_path: Path, **engine_overrides: Any) -> AsyncIterator[QuartTestClient]:
    """Run an app with small archives plus ``engine_overrides`` and yield its test client."""
    engine = EngineSettings(
        results_dir=tmp_path / "results", **{**SMALL_ARCHIVES, **engine_overrides}
    )
    app = create_app(Settings(engine=engine))
    async with app.test_app() as test_app:
        yield test_app.test_client()


def fixed_delay(seconds: int) -> dict[str, Any]:
    """Return engine overrides that make every simulated download take exactly ``seconds``."""
    return {"download_delay_min_ms": seconds * 1000, "download_delay_max_ms": seconds * 1000}


async def initiate(client: QuartTestClient, file_ids: list[int]) -> dict[str, Any]:
    """Start a bulk job and return the 202 body. Fail the test on any other status."""
    response = await client.post(INITIATE_PATH, json={"file_ids": file_ids})
    assert response.status_code == 202, await response.get_data(as_text=True)
    body: dict[str, Any] = await response.get_json()
    return body


async def status_of(client: QuartTestClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/download/status/{job_id}")
    assert response.status_code == 200, await response.get_data(as_text=True)
    document: dict[str, Any] = await response.get_json()
    return document


async def finish(client: QuartTestClient, job_id: str) -> dict[str, Any]:
    """Sleep past the default deadline and return the job's status document."""
    await trio.sleep(PAST_DEADLINE_SECONDS)
    return await status_of(client, job_id)


def members_of(archive_bytes: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


# -- the 202 response ---------------------------------------------------------


async def test_initiate_returns_202(autojump_clock, api):
    response = await api.client.post(INITIATE_PATH, json={"file_ids": PRESENT_IDS})
    body = await response.get_json()
    finished = await finish(api.client, body["jobId"])

    assert response.status_code == 202
    assert body["status"] == "queued"
    assert body["totalFileIds"] == len(PRESENT_IDS)
    assert body["duplicateFileIds"] == []
    assert body["statusUrl"] == f"/v1/download/status/{body['jobId']}"
    assert body["resultUrl"] == f"/v1/download/{body['jobId']}"
    assert finished["status"] == "done"


async def test_initiate_sets_location(autojump_clock, api):
    response = await api.client.post(INITIATE_PATH, json={"file_ids": PRESENT_IDS})
    body = await response.get_json()
    finished = await finish(api.client, body["jobId"])

    assert response.headers["Location"] == body["statusUrl"]
    assert int(response.headers["Retry-After"]) >= 1
    assert finished["status"] == "done"


async def test_initiate_collapses_duplicates(autojump_clock, api):
    file_ids = [70_014, 70_000, 70_014, 70_007, 70_000, 70_014]
    body = await initiate(api.client, file_ids)
    document = await status_of(api.client, body["jobId"])
    finished = await finish(api.client, body["jobId"])

    assert body["totalFileIds"] == 3
    assert body["duplicateFileIds"] == [70_000, 70_014]
    assert document["fileIds"] == [70_014, 70_000, 70_007]
    assert document["totalFileIds"] == 3
    assert finished["status"] == "done"


async def test_initiate_accepts_thousand_ids(autojump_clock, api):
    file_ids = list(range(70_000, 70_000 + MAX_BULK_FILE_IDS))
    body = await initiate(api.client, file_ids)
    cancel = await api.client.delete(f"/v1/download/{body['jobId']}")

    assert body["totalFileIds"] == MAX_BULK_FILE_IDS
    assert cancel.status_code == 200
    assert (await cancel.get_json())["status"] == "cancelled"


INVALID_BODIES = [
    pytest.param({"file_ids": []}, "file_ids", "at least one", id="empty"),
    pytest.param(
        {"file_ids": list(range(70_000, 70_000 + MAX_BULK_FILE_IDS + 1))},
        "file_ids",
        "at most 1000",
        id="1001-ids",
    ),
    pytest.param({"file_ids": [70_000, 9_999]}, "file_ids.1", "10000", id="below-min"),
    pytest.param({"file_ids": [70_000, 100_000_001]}, "file_ids.1", "100000000", id="above-max"),
    pytest.param({"file_ids": [70_000, "70007"]}, "file_ids.1", "integer", id="string-id"),
    pytest.param({"file_ids": [70_000, 70_007.5]}, "file_ids.1", "integer", id="float-id"),
    pytest.param({"file_ids": [70_000, True]}, "file_ids.1", "integer", id="boolean-id"),
    pytest.param({"file_ids": [70_000, None]}, "file_ids.1", "file_ids", id="null-id"),
    pytest.param({"file_ids": "70000"}, "file_ids", "array", id="string"),
    pytest.param({"file_ids": 70_000}, "file_ids", "array", id="number"),
    pytest.param({"file_ids": {"0": 70_000}}, "file_ids", "array", id="object"),
    pytest.param({}, "file_ids", "required", id="missing"),
    pytest.param({"file_id": 70_000}, "file_ids", "required", id="single-file-body"),
]


@pytest.mark.parametrize(("body", "field", "fragment"), INVALID_BODIES)
async def test_initiate_invalid_body(autojump_clock, api, body, field, fragment):
    response = await api.client.post(INITIATE_PATH, json=body)
    problem = await response.get_json()
    metrics_response = await api.client.get("/metrics")
    metrics = await metrics_response.get_data(as_text=True)

    assert response.status_code == 400
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "invalid_body"
    assert problem["field"] == field
    assert "file_ids" in problem["detail"]
    assert fragment in problem["detail"]
    assert "\ndownload_jobs_submitted_total 0.0\n" in metrics


async def test_initiate_repeated_key_returns_same_job(autojump_clock, api):
    headers = {"Idempotency-Key": "bulk-1"}
    first = await api.client.post(INITIATE_PATH, json={"file_ids": PRESENT_IDS}, headers=headers)
    again = await api.client.post(INITIATE_PATH, json={"file_ids": PRESENT_IDS}, headers=headers)
    created = await first.get_json()
    repeated = await again.get_json()
    finished = await finish(api.client, created["jobId"])

    assert first.status_code == 202
    assert again.status_code == 200
    assert repeated["jobId"] == created["jobId"]
    assert repeated["fileIds"] == PRESENT_IDS
    assert again.headers["Location"] == created["statusUrl"]
    assert finished["status"] == "done"


@pytest.mark.parametrize(
    ("path", "first_body", "second_body"),
    [
        pytest.param(
            INITIATE_PATH,
            {"file_ids": PRESENT_IDS},
            {"file_ids": PRESENT_IDS[:1]},
            id="other-files",
        ),
        pytest.param(
            INITIATE_PATH,
            {"file_ids": PRESENT_IDS},
            {"file_ids": PRESENT_IDS, "timeout_ms": 60_000},
            id="other-timeout",
        ),
        pytest.param(
            "/v1/download/start",
            {"file_id": PRESENT_IDS[0]},
            {"file_ids": PRESENT_IDS[:1]},
            id="key-of-a-start",
        ),
    ],
)
async def test_initiate_reused_key_is_422(autojump_clock, api, path, first_body, second_body):
    headers = {"Idempotency-Key": "bulk-2"}
    first = await api.client.post(path, json=first_body, headers=headers)
    second = await api.client.post(INITIATE_PATH, json=second_body, headers=headers)
    problem = await second.get_json()

    assert first.status_code == 202
    assert second.status_code == 422
    assert problem["code"] == "idempotency_key_reused"


async def test_initiate_invalid_key_is_400(autojump_clock, api):
    response = await api.client.post(
        INITIATE_PATH, json={"file_ids": PRESENT_IDS}, headers={"Idempotency-Key": "has space"}
    )
    problem = await response.get_json()

    assert response.status_code == 400
    assert problem["code"] == "invalid_idempotency_key"
    assert problem["field"] == "Idempotency-Key"


async def test_initiate_timeout_over_limit(autojump_clock, api):
    response = await api.client.post(
        INITIATE_PATH, json={"file_ids": PRESENT_IDS, "timeout_ms": 300_001}
    )
    problem = await response.get_json()

    assert response.status_code == 400
    assert problem["field"] == "timeout_ms"


async def test_initiate_timeout_sets_deadline(autojump_clock, api):
    response = await api.client.post(
        INITIATE_PATH, json={"file_ids": PRESENT_IDS, "timeout_ms": 5_000}
    )
    body = await response.get_json()
    document = await status_of(api.client, body["jobId"])
    finished = await finish(api.client, body["jobId"])

    created = datetime.fromisoformat(document["createdAt"])
    deadline = datetime.fromisoformat(document["deadlineAt"])
    assert response.status_code == 202
    assert deadline - created == timedelta(seconds=5)
    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "timeout"


# -- the status document ------------------------------------------------------


async def test_bulk_status_shape(autojump_clock, api):
    body = await initiate(api.client, PRESENT_IDS)
    document = await status_of(api.client, body["jobId"])
    finished = await finish(api.client, body["jobId"])

    assert "fileId" not in document
    assert document["jobId"] == body["jobId"]
    assert document["fileIds"] == PRESENT_IDS
    assert document["totalFileIds"] == len(PRESENT_IDS)
    assert [entry["fileId"] for entry in document["files"]] == PRESENT_IDS
    assert {entry["status"] for entry in document["files"]} <= {"queued", "processing"}
    assert document["missingFileIds"] == []
    assert finished["status"] == "done"


async def test_bulk_done_lists_missing(autojump_clock, sevens_api):
    body = await initiate(sevens_api.client, [*PRESENT_IDS, MISSING_ID])
    finished = await finish(sevens_api.client, body["jobId"])

    assert finished["status"] == "done"
    assert finished["progress"] == 100
    assert finished["missingFileIds"] == [MISSING_ID]
    assert finished["files"] == [
        {"fileId": 70_000, "status": "done"},
        {"fileId": 70_007, "status": "done"},
        {"fileId": 70_014, "status": "done"},
        {"fileId": MISSING_ID, "status": "missing"},
    ]
    assert finished["resultUrl"] == body["resultUrl"]


async def test_bulk_failure_fails_job(autojump_clock, tmp_path):
    async with open_client(tmp_path, download_failure_rate=1.0, job_max_attempts=1) as client:
        body = await initiate(client, PRESENT_IDS)
        finished = await finish(client, body["jobId"])
        result = await client.get(body["resultUrl"])

    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "transient_failure"
    assert "failed" in {entry["status"] for entry in finished["files"]}
    assert result.status_code == 410


async def test_bulk_cancel(autojump_clock, api):
    body = await initiate(api.client, PRESENT_IDS)
    await trio.sleep(1)
    response = await api.client.delete(f"/v1/download/{body['jobId']}")
    cancelled = await response.get_json()
    later = await finish(api.client, body["jobId"])
    result = await api.client.get(body["resultUrl"])

    assert response.status_code == 200
    assert cancelled["status"] == "cancelled"
    assert later["status"] == "cancelled"
    assert result.status_code == 410


# -- the result ---------------------------------------------------------------


async def test_bulk_result_is_zip(autojump_clock, sevens_api):
    body = await initiate(sevens_api.client, [*PRESENT_IDS, MISSING_ID])
    finished = await finish(sevens_api.client, body["jobId"])
    result = await sevens_api.fetch_result(body["jobId"])

    assert finished["status"] == "done"
    assert result.status == 200
    assert result.media_type == "application/zip"
    assert f'filename="download-{body["jobId"]}.zip"' in result.headers["Content-Disposition"]
    assert len(result.body) == finished["result"]["size"]
    assert hashlib.sha256(result.body).hexdigest() == finished["result"]["sha256"]
    with zipfile.ZipFile(io.BytesIO(result.body)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == ["70000.zip", "70007.zip", "70014.zip", "manifest.json"]


async def test_bulk_members_match_single_results(autojump_clock, sevens_api):
    bulk = await initiate(sevens_api.client, [*PRESENT_IDS, MISSING_ID])
    singles = {file_id: await sevens_api.start(file_id) for file_id in PRESENT_IDS}
    finished = await finish(sevens_api.client, bulk["jobId"])
    bulk_result = await sevens_api.fetch_result(bulk["jobId"])
    members = members_of(bulk_result.body)

    assert finished["status"] == "done"
    for file_id, job_id in singles.items():
        single = await sevens_api.fetch_result(job_id)
        assert single.status == 200
        assert members[f"{file_id}.zip"] == single.body


async def test_bulk_manifest(autojump_clock, sevens_api):
    body = await initiate(sevens_api.client, [*PRESENT_IDS, MISSING_ID])
    finished = await finish(sevens_api.client, body["jobId"])
    result = await sevens_api.fetch_result(body["jobId"])
    members = members_of(result.body)
    manifest = json.loads(members["manifest.json"])

    assert finished["status"] == "done"
    assert manifest["jobId"] == body["jobId"]
    assert manifest["missingFileIds"] == [MISSING_ID]
    assert [entry["fileId"] for entry in manifest["files"]] == PRESENT_IDS
    for entry in manifest["files"]:
        member = members[entry["name"]]
        assert entry["sha256"] == hashlib.sha256(member).hexdigest()
        assert entry["size"] == len(member)


# -- long polls on bulk jobs --------------------------------------------------


async def test_bulk_long_poll_waits_past_file_end(autojump_clock, tmp_path):
    # One 10 s file at a time, in 50% steps: the first file ends at 10 s,
    # which is progress and ends no wait, so the 15 s wait runs its course.
    async with open_client(
        tmp_path, bulk_max_concurrent_files=1, progress_step_percent=50, **fixed_delay(10)
    ) as client:
        body = await initiate(client, PRESENT_IDS[:2])
        await trio.testing.wait_all_tasks_blocked()
        before = await client.get(body["statusUrl"])
        started = trio.current_time()
        response = await client.get(
            f"{body['statusUrl']}?wait=15", headers={"If-None-Match": before.headers["ETag"]}
        )
        elapsed = trio.current_time() - started
        document = await response.get_json()
        finished = await finish(client, body["jobId"])

    assert response.status_code == 200
    assert elapsed == pytest.approx(15, abs=1e-9)
    assert document["progress"] == 50
    assert sorted(entry["status"] for entry in document["files"]) == ["done", "processing"]
    assert finished["status"] == "done"


async def test_bulk_long_poll_returns_when_job_ends(autojump_clock, tmp_path):
    # Two 10 s files, one at a time: the job is done at 20 s.
    async with open_client(tmp_path, bulk_max_concurrent_files=1, **fixed_delay(10)) as client:
        body = await initiate(client, PRESENT_IDS[:2])
        await trio.testing.wait_all_tasks_blocked()
        before = await client.get(body["statusUrl"])
        started = trio.current_time()
        response = await client.get(
            f"{body['statusUrl']}?wait=30", headers={"If-None-Match": before.headers["ETag"]}
        )
        elapsed = trio.current_time() - started
        document = await response.get_json()

    assert response.status_code == 200
    assert elapsed == pytest.approx(20, abs=1e-9)
    assert document["status"] == "done"
    assert sorted(entry["status"] for entry in document["files"]) == ["done", "done"]


async def test_bulk_long_poll_timeout_sees_progress(autojump_clock, tmp_path):
    # Two 120 s files at once: progress is 25% after 30 s and no file has ended.
    async with open_client(tmp_path, **fixed_delay(120)) as client:
        body = await initiate(client, PRESENT_IDS[:2])
        await trio.testing.wait_all_tasks_blocked()
        before = await client.get(body["statusUrl"])
        response = await client.get(
            f"{body['statusUrl']}?wait=30", headers={"If-None-Match": before.headers["ETag"]}
        )
        after = await status_of(client, body["jobId"])
        await client.delete(f"/v1/download/{body['jobId']}")

    assert after["progress"] == 25
    assert response.status_code == 200
