"""Tests of ``DELETE /v1/download/{jobId}``: cancelling a job."""

from __future__ import annotations

import uuid

import pytest
import trio
import trio.testing

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

FILE_ID = 70_000
PROBLEM_MEDIA_TYPE = "application/problem+json"


async def test_cancel_queued_job(autojump_clock, single_slot_api):
    await single_slot_api.start(FILE_ID)
    queued_id = await single_slot_api.start(FILE_ID + 1)
    before = await single_slot_api.status(queued_id)

    response = await single_slot_api.client.delete(f"/v1/download/{queued_id}")
    body = await response.get_json()

    assert before["status"] == "queued"
    assert response.status_code == 200
    assert body["jobId"] == queued_id
    assert body["status"] == "cancelled"


async def test_cancel_processing_job(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    before = await api.status(job_id)

    response = await api.client.delete(f"/v1/download/{job_id}")
    body = await response.get_json()

    assert before["status"] == "processing"
    assert response.status_code == 200
    assert body["jobId"] == job_id
    assert body["status"] == "cancelled"


async def test_cancel_twice_same_response(autojump_clock, api):
    job_id = await api.start(FILE_ID)

    first = await api.client.delete(f"/v1/download/{job_id}")
    second = await api.client.delete(f"/v1/download/{job_id}")

    assert first.status_code == 200
    assert second.status_code == 200
    assert await second.get_json() == await first.get_json()


async def test_cancel_done_job_is_409(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    before = await api.wait_until_finished(job_id)

    response = await api.client.delete(f"/v1/download/{job_id}")
    problem = await response.get_json(force=True)
    after = await api.status(job_id)

    assert before["status"] == "done"
    assert response.status_code == 409
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "job_already_finished"
    assert problem["job"]["status"] == "done"
    assert after["status"] == "done"


async def test_cancel_failed_job_is_409(autojump_clock, sevens_api):
    missing_file_id = 70_001  # not divisible by 7
    job_id = await sevens_api.start(missing_file_id)
    before = await sevens_api.wait_until_finished(job_id)

    response = await sevens_api.client.delete(f"/v1/download/{job_id}")
    problem = await response.get_json(force=True)

    assert before["status"] == "failed"
    assert response.status_code == 409
    assert problem["job"]["status"] == "failed"


async def test_cancel_unknown_job_is_404(autojump_clock, api):
    response = await api.client.delete(f"/v1/download/{uuid.uuid4()}")
    problem = await response.get_json(force=True)

    assert response.status_code == 404
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "job_not_found"


async def test_cancel_malformed_id_is_400(autojump_clock, api):
    response = await api.client.delete("/v1/download/abc")
    problem = await response.get_json(force=True)

    assert response.status_code == 400
    assert problem["code"] == "invalid_job_id"


async def test_cancelled_queued_job_never_starts(autojump_clock, single_slot_api):
    running_id = await single_slot_api.start(FILE_ID)
    queued_id = await single_slot_api.start(FILE_ID + 1)
    cancel = await single_slot_api.client.delete(f"/v1/download/{queued_id}")
    assert cancel.status_code == 200

    # Long enough for the running job to end and free the only slot.
    running = await single_slot_api.wait_until_finished(running_id)
    cancelled = await single_slot_api.status(queued_id)

    assert running["status"] == "done"
    assert cancelled["status"] == "cancelled"
    assert cancelled["progress"] == 0


async def test_cancelled_processing_job_stays_cancelled(autojump_clock, api):
    job_id = await api.start(FILE_ID)
    await trio.sleep(5)
    cancel = await api.client.delete(f"/v1/download/{job_id}")
    at_cancel = await cancel.get_json()

    later = await api.wait_until_finished(job_id)

    assert at_cancel["status"] == "cancelled"
    assert later["status"] == "cancelled"
    # A cancelled job keeps the progress it had reached.
    assert later["progress"] == at_cancel["progress"]
    assert later["progress"] > 0


async def test_cancel_frees_slot_for_queued_job(autojump_clock, single_slot_api):
    running_id = await single_slot_api.start(FILE_ID)
    queued_id = await single_slot_api.start(FILE_ID + 1)

    cancel = await single_slot_api.client.delete(f"/v1/download/{running_id}")
    assert cancel.status_code == 200
    # The slot frees up once the cancelled actor has unwound and reported.
    await trio.testing.wait_all_tasks_blocked()
    after_cancel = await single_slot_api.status(queued_id)
    finished = await single_slot_api.wait_until_finished(queued_id)

    assert after_cancel["status"] == "processing"
    assert finished["status"] == "done"
