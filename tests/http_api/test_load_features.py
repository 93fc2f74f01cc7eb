"""HTTP tests of the engine's load features: overload, deadlines, expiry, idempotency, metrics.

Each test starts its own app with the engine settings it needs, through
Quart's test client on the autojump clock. ``JobClient.stats()`` shows
what a request created. Tests send few requests, well inside the per-client
rate limits that the app applies by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import quart.typing
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.datastructures import Headers

from engine import EngineSettings, JobClient
from http_api import Settings, create_app
from http_api._context import CLIENT_KEY

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

PROBLEM_MEDIA_TYPE = "application/problem+json"
START_PATH = "/v1/download/start"
FILE_ID = 70_000
# Small archives and a fixed seed, as in conftest.py. Delays stay at 10-120 s.
SMALL_ARCHIVES: dict[str, Any] = {
    "download_size_min_bytes": 1000,
    "download_size_max_bytes": 4000,
    "download_random_seed": 1,
}
# Fixed 10-second downloads, so every job ends at a known time.
FIXED_DELAY = {"download_delay_min_ms": 10_000, "download_delay_max_ms": 10_000}
# A little past the fixed delay, so a status read never races the job's end.
PAST_FIXED_DELAY = 10.5
TTL_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Service:
    """A running app: its HTTP test client and the client of its job supervisor."""

    http: quart.typing.TestClientProtocol
    jobs: JobClient

    async def start(self, file_id: int = FILE_ID, **body: Any) -> str:
        """Start a job and return its id. Fail the test unless the response is 202."""
        response = await self.http.post(START_PATH, json={"file_id": file_id, **body})
        assert response.status_code == 202, await response.get_data(as_text=True)
        job_id: str = (await response.get_json())["jobId"]
        return job_id

    async def status(self, job_id: str) -> dict[str, Any]:
        """Return the status document of ``job_id``. Fail the test unless the response is 200."""
        response = await self.http.get(f"/v1/download/status/{job_id}")
        assert response.status_code == 200, await response.get_data(as_text=True)
        document: dict[str, Any] = await response.get_json()
        return document

    async def metrics(self) -> str:
        response = await self.http.get("/metrics")
        assert response.status_code == 200
        return await response.get_data(as_text=True)


@asynccontextmanager
async def open_service(tmp_path: Path, **engine_overrides: Any) -> AsyncIterator[Service]:
    """Run an app with small archives plus ``engine_overrides`` for the ``async with`` block."""
    engine = EngineSettings(
        results_dir=tmp_path / "results", **{**SMALL_ARCHIVES, **engine_overrides}
    )
    app = create_app(Settings(engine=engine))
    async with app.test_app() as test_app:
        yield Service(test_app.test_client(), app.extensions[CLIENT_KEY])


def sample_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """Return the value of sample ``name`` with exactly ``labels`` in a Prometheus text page."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return float(sample.value)
    return None


# -- overload ---------------------------------------------------------------


async def test_full_queue_answers_503(autojump_clock, tmp_path):
    async with open_service(tmp_path, max_concurrent_jobs=1, max_queued_jobs=2) as service:
        job_ids = [await service.start(FILE_ID + offset) for offset in range(3)]
        response = await service.http.post(START_PATH, json={"file_id": FILE_ID + 3})
        problem = await response.get_json(force=True)

    assert len(job_ids) == 3
    assert response.status_code == 503
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "overloaded"
    assert problem["detail"] == "the queue is full (2 waiting, MAX_QUEUED_JOBS is 2)"
    assert 1 <= int(response.headers["Retry-After"]) <= 60


async def test_full_queue_creates_nothing(autojump_clock, tmp_path):
    async with open_service(tmp_path, max_concurrent_jobs=1, max_queued_jobs=2) as service:
        job_ids = [await service.start(FILE_ID + offset) for offset in range(3)]
        before = await service.jobs.stats()
        listed_before = await service.jobs.list_jobs()
        response = await service.http.post(START_PATH, json={"file_id": FILE_ID + 3})
        after = await service.jobs.stats()
        listed_after = await service.jobs.list_jobs()

    assert len(job_ids) == 3
    assert response.status_code == 503
    assert after == before
    assert listed_after == listed_before


async def test_retry_after_follows_completion_rate(autojump_clock, tmp_path):
    # One slot and fixed 5-second downloads: a slot frees every 5 s. At
    # 62.5 s the window contains 12 completions over 57.5 s, an estimate of
    # 4.8 s, which the header rounds up to 5.
    async with open_service(
        tmp_path,
        max_concurrent_jobs=1,
        max_queued_jobs=20,
        download_delay_min_ms=5_000,
        download_delay_max_ms=5_000,
    ) as service:
        job_ids = [await service.start(FILE_ID + offset) for offset in range(21)]
        await trio.sleep(62.5)
        stats = await service.jobs.stats()
        while True:
            response = await service.http.post(START_PATH, json={"file_id": FILE_ID})
            if response.status_code != 202:
                break

    assert len(job_ids) == 21
    assert stats.by_status["done"] == 12
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"


async def test_table_of_jobs_in_flight_answers_503(autojump_clock, tmp_path):
    async with open_service(tmp_path, max_concurrent_jobs=2, max_retained_jobs=2) as service:
        job_ids = [await service.start(FILE_ID + offset) for offset in range(2)]
        response = await service.http.post(START_PATH, json={"file_id": FILE_ID + 2})
        problem = await response.get_json(force=True)
        stats = await service.jobs.stats()

    assert len(job_ids) == 2
    assert response.status_code == 503
    assert problem["code"] == "overloaded"
    assert problem["detail"] == "the job table is full: 2 jobs are in flight"
    assert "Retry-After" in response.headers
    assert stats.jobs == 2


# -- deadlines --------------------------------------------------------------


async def test_timeout_ms_shortens_deadline(autojump_clock, tmp_path):
    # Simulated downloads take at least 10 s, so a 5-second deadline ends the job.
    async with open_service(tmp_path) as service:
        job_id = await service.start(timeout_ms=5000)
        await trio.sleep_until(4.95)
        before = await service.status(job_id)
        await trio.sleep_until(5.05)
        after = await service.status(job_id)

    assert before["status"] == "processing"
    assert after["status"] == "failed"
    assert after["error"]["code"] == "timeout"


async def test_timeout_ms_ends_queued_job(autojump_clock, tmp_path):
    # One slot, taken by a 10-120 s download: the second job is still queued
    # when its 5-second deadline passes.
    async with open_service(tmp_path, max_concurrent_jobs=1) as service:
        running = await service.start(FILE_ID)
        queued = await service.start(FILE_ID + 1, timeout_ms=5000)
        before = await service.status(queued)
        await trio.sleep_until(5.05)
        after = await service.status(queued)
        still_running = await service.status(running)

    assert before["status"] == "queued"
    assert after["status"] == "failed"
    assert after["error"]["code"] == "timeout"
    assert still_running["status"] == "processing"


@pytest.mark.parametrize(
    "timeout_ms",
    [300_001, 0, -1, "5000", 5000.5, True],
    ids=["above-job-timeout", "zero", "negative", "string", "fraction", "boolean"],
)
async def test_invalid_timeout_ms_answers_400(autojump_clock, tmp_path, timeout_ms):
    async with open_service(tmp_path, job_timeout_ms=300_000) as service:
        response = await service.http.post(
            START_PATH, json={"file_id": FILE_ID, "timeout_ms": timeout_ms}
        )
        problem = await response.get_json(force=True)
        stats = await service.jobs.stats()

    assert response.status_code == 400
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["field"] == "timeout_ms"
    assert "timeout_ms" in problem["detail"]
    assert stats.jobs == 0


# -- expiry -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/download/status/{job_id}"),
        ("DELETE", "/v1/download/{job_id}"),
        ("GET", "/v1/download/{job_id}"),
    ],
    ids=["status", "cancel", "result"],
)
async def test_expired_job_answers_410(autojump_clock, tmp_path, method, path):
    async with open_service(tmp_path, job_ttl_ms=60_000, **FIXED_DELAY) as service:
        job_id = await service.start()
        await trio.sleep(PAST_FIXED_DELAY)
        done = await service.status(job_id)
        await trio.sleep(TTL_SECONDS)
        response = await service.http.open(path.format(job_id=job_id), method=method)
        problem = await response.get_json(force=True)

    assert done["status"] == "done"
    assert response.status_code == 410
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "expired"


async def test_forgotten_job_answers_404(autojump_clock, tmp_path):
    # One tombstone: the second job's removal pushes out the first job's id.
    async with open_service(
        tmp_path, job_ttl_ms=60_000, max_tombstones=1, **FIXED_DELAY
    ) as service:
        first = await service.start(FILE_ID)
        await trio.sleep(1)
        second = await service.start(FILE_ID + 1)
        await trio.sleep(PAST_FIXED_DELAY)
        ends = [(await service.status(job_id))["status"] for job_id in (first, second)]
        await trio.sleep(TTL_SECONDS)
        first_response = await service.http.get(f"/v1/download/status/{first}")
        second_response = await service.http.get(f"/v1/download/status/{second}")
        problem = await first_response.get_json(force=True)

    assert ends == ["done", "done"]
    assert first_response.status_code == 404
    assert problem["code"] == "job_not_found"
    assert second_response.status_code == 410


# -- idempotency ------------------------------------------------------------


async def test_repeated_key_answers_200_same_job(autojump_clock, tmp_path):
    headers = {"Idempotency-Key": "order-4711"}
    async with open_service(tmp_path) as service:
        first = await service.http.post(START_PATH, json={"file_id": FILE_ID}, headers=headers)
        second = await service.http.post(START_PATH, json={"file_id": FILE_ID}, headers=headers)
        first_body = await first.get_json()
        second_body = await second.get_json()
        stats = await service.jobs.stats()

    assert first.status_code == 202
    assert second.status_code == 200
    assert second_body["jobId"] == first_body["jobId"]
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers["Location"] == f"/v1/download/status/{first_body['jobId']}"
    assert stats.jobs == 1


async def test_repeated_key_returns_status_document(autojump_clock, tmp_path):
    headers = {"Idempotency-Key": "order-4711"}
    async with open_service(tmp_path) as service:
        first = await service.http.post(START_PATH, json={"file_id": FILE_ID}, headers=headers)
        job_id = (await first.get_json())["jobId"]
        await trio.sleep(200)
        repeated = await service.http.post(START_PATH, json={"file_id": FILE_ID}, headers=headers)
        document = await service.status(job_id)

    assert repeated.status_code == 200
    assert document["status"] == "done"
    assert await repeated.get_json() == document


async def test_concurrent_repeats_create_one_job(autojump_clock, tmp_path):
    headers = {"Idempotency-Key": "order-4711"}
    statuses: list[int] = []
    job_ids: set[str] = set()
    async with open_service(tmp_path) as service:

        async def post() -> None:
            response = await service.http.post(
                START_PATH, json={"file_id": FILE_ID}, headers=headers
            )
            statuses.append(response.status_code)
            job_ids.add((await response.get_json())["jobId"])

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(post)
        stats = await service.jobs.stats()

    assert sorted(statuses) == [200] * 19 + [202]
    assert len(job_ids) == 1
    assert stats.jobs == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [(START_PATH, {"file_id": FILE_ID}), ("/v1/download/initiate", {"file_ids": [FILE_ID]})],
)
async def test_key_belongs_to_its_client(autojump_clock, tmp_path, path, body):
    # Another client's identical key neither returns the first client's job
    # nor names it in a 422.
    headers = {"Idempotency-Key": "order-4711"}
    async with open_service(tmp_path) as service:
        first = await service.http.post(
            path, json=body, headers=headers, scope_base={"client": ("192.0.2.1", 40000)}
        )
        other = await service.http.post(
            path, json=body, headers=headers, scope_base={"client": ("192.0.2.2", 40000)}
        )
        changed = await service.http.post(
            path,
            json={**body, "timeout_ms": 5000},
            headers=headers,
            scope_base={"client": ("192.0.2.3", 40000)},
        )
        job_ids = {(await response.get_json())["jobId"] for response in (first, other, changed)}
        stats = await service.jobs.stats()

    assert [first.status_code, other.status_code, changed.status_code] == [202] * 3
    assert len(job_ids) == 3
    assert stats.jobs == 3


async def test_key_with_other_body_answers_422(autojump_clock, tmp_path):
    headers = {"Idempotency-Key": "order-4711"}
    async with open_service(tmp_path) as service:
        first = await service.http.post(START_PATH, json={"file_id": FILE_ID}, headers=headers)
        other = await service.http.post(
            START_PATH, json={"file_id": FILE_ID, "timeout_ms": 5000}, headers=headers
        )
        problem = await other.get_json(force=True)
        stats = await service.jobs.stats()

    assert first.status_code == 202
    assert other.status_code == 422
    assert other.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "idempotency_key_reused"
    assert stats.jobs == 1


@pytest.mark.parametrize(
    "key",
    ["k" * 256, "", "order 4711", "order\t4711", "order\x7f", "bestellung-\xe9"],
    ids=["256-characters", "empty", "space", "tab", "delete", "latin-1"],
)
async def test_invalid_key_answers_400(autojump_clock, tmp_path, key):
    async with open_service(tmp_path) as service:
        response = await service.http.post(
            START_PATH, json={"file_id": FILE_ID}, headers={"Idempotency-Key": key}
        )
        problem = await response.get_json(force=True)
        stats = await service.jobs.stats()

    assert response.status_code == 400
    assert problem["code"] == "invalid_idempotency_key"
    assert problem["field"] == "Idempotency-Key"
    assert stats.jobs == 0


async def test_repeated_key_lines_answer_400(autojump_clock, tmp_path):
    headers = Headers([("Idempotency-Key", "order-1"), ("Idempotency-Key", "order-2")])
    async with open_service(tmp_path) as service:
        response = await service.http.post(START_PATH, json={"file_id": FILE_ID}, headers=headers)
        problem = await response.get_json(force=True)
        stats = await service.jobs.stats()

    assert response.status_code == 400
    assert problem["code"] == "invalid_idempotency_key"
    assert "2 header lines" in problem["detail"]
    assert stats.jobs == 0


async def test_key_at_length_limit_answers_202(autojump_clock, tmp_path):
    async with open_service(tmp_path) as service:
        response = await service.http.post(
            START_PATH, json={"file_id": FILE_ID}, headers={"Idempotency-Key": "~" * 255}
        )

    assert response.status_code == 202


async def test_key_reusable_after_expiry(autojump_clock, tmp_path):
    headers = {"Idempotency-Key": "order-4711"}
    async with open_service(tmp_path, job_ttl_ms=60_000, **FIXED_DELAY) as service:
        first = await service.http.post(START_PATH, json={"file_id": FILE_ID}, headers=headers)
        first_id = (await first.get_json())["jobId"]
        await trio.sleep(PAST_FIXED_DELAY)
        first_end = await service.status(first_id)
        await trio.sleep(TTL_SECONDS)
        again = await service.http.post(START_PATH, json={"file_id": FILE_ID}, headers=headers)
        again_id = (await again.get_json())["jobId"]

    assert first_end["status"] == "done"
    assert again.status_code == 202
    assert again_id != first_id


# -- metrics ----------------------------------------------------------------


async def test_metrics_is_prometheus_text(autojump_clock, tmp_path):
    async with open_service(tmp_path) as service:
        response = await service.http.get("/metrics")
        text = await response.get_data(as_text=True)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {family.name for family in text_string_to_metric_families(text)}
    for name in (
        "download_jobs_jobs",
        "download_jobs_queue_depth",
        "download_jobs_in_flight",
        "download_jobs_duration_seconds",
        "download_jobs_attempts",
        "download_jobs_retries",
        "download_jobs_timeouts",
        "download_jobs_cancellations",
        "download_jobs_evictions",
        "download_jobs_supervisor_mailbox_depth",
    ):
        assert name in families


async def test_metrics_count_jobs_by_state(autojump_clock, tmp_path):
    async with open_service(tmp_path, max_concurrent_jobs=1) as service:
        job_ids = [await service.start(FILE_ID + offset) for offset in range(4)]
        await service.http.delete(f"/v1/download/{job_ids[3]}")
        await trio.testing.wait_all_tasks_blocked()
        text = await service.metrics()

    expected = {"queued": 2, "processing": 1, "done": 0, "failed": 0, "cancelled": 1}
    for state, count in expected.items():
        assert sample_value(text, "download_jobs_jobs", {"state": state}) == count, state
    assert sample_value(text, "download_jobs_queue_depth") == 2
    assert sample_value(text, "download_jobs_in_flight") == 3


async def test_metrics_count_cancellations(autojump_clock, tmp_path):
    async with open_service(tmp_path, max_concurrent_jobs=1) as service:
        job_ids = [await service.start(FILE_ID + offset) for offset in range(3)]
        for job_id in job_ids[:2]:
            response = await service.http.delete(f"/v1/download/{job_id}")
            assert response.status_code == 200
        text = await service.metrics()

    assert sample_value(text, "download_jobs_cancellations_total") == 2
    assert sample_value(text, "download_jobs_jobs", {"state": "cancelled"}) == 2


async def test_metrics_record_timeouts_and_durations(autojump_clock, tmp_path):
    # Both jobs fail by their 5-second deadline, since downloads take 10-120 s.
    async with open_service(tmp_path) as service:
        job_ids = [await service.start(FILE_ID + offset, timeout_ms=5000) for offset in range(2)]
        await trio.sleep(6)
        ends = [(await service.status(job_id))["status"] for job_id in job_ids]
        text = await service.metrics()

    failed = {"state": "failed"}
    assert ends == ["failed", "failed"]
    assert sample_value(text, "download_jobs_timeouts_total") == 2
    assert sample_value(text, "download_jobs_duration_seconds_count", failed) == 2
    assert sample_value(text, "download_jobs_duration_seconds_sum", failed) == 10
    assert sample_value(text, "download_jobs_duration_seconds_bucket", {**failed, "le": "5.0"}) == 2
    assert sample_value(text, "download_jobs_duration_seconds_bucket", {**failed, "le": "1.0"}) == 0


async def test_metrics_count_attempts_and_retries(autojump_clock, tmp_path):
    # Every attempt fails, so each of the two jobs makes all three attempts.
    async with open_service(tmp_path, download_failure_rate=1.0, job_max_attempts=3) as service:
        job_ids = [await service.start(FILE_ID + offset) for offset in range(2)]
        await trio.sleep(250)
        ends = [await service.status(job_id) for job_id in job_ids]
        text = await service.metrics()

    assert [end["status"] for end in ends] == ["failed", "failed"]
    assert [end["error"]["code"] for end in ends] == ["transient_failure"] * 2
    assert [end["attempt"] for end in ends] == [3, 3]
    assert sample_value(text, "download_jobs_attempts_total") == 6
    assert sample_value(text, "download_jobs_retries_total") == 4


async def test_metrics_count_evictions(autojump_clock, tmp_path):
    async with open_service(
        tmp_path, max_concurrent_jobs=2, max_retained_jobs=2, **FIXED_DELAY
    ) as service:
        # The first job ends at 10 s and the second at 11 s, so the first is
        # the oldest finished job when the third arrives.
        job_ids = [await service.start(FILE_ID)]
        await trio.sleep(1)
        job_ids.append(await service.start(FILE_ID + 1))
        await trio.sleep(PAST_FIXED_DELAY)
        ends = [(await service.status(job_id))["status"] for job_id in job_ids]
        await service.start(FILE_ID + 2)
        text = await service.metrics()
        evicted = await service.http.get(f"/v1/download/status/{job_ids[0]}")

    assert ends == ["done", "done"]
    assert sample_value(text, "download_jobs_evictions_total") == 1
    assert evicted.status_code == 410


async def test_metrics_mailbox_depth_idle(autojump_clock, tmp_path):
    async with open_service(tmp_path) as service:
        job_id = await service.start()
        await trio.testing.wait_all_tasks_blocked()
        text = await service.metrics()
        pending = service.jobs.pending_messages()
        end = await service.http.delete(f"/v1/download/{job_id}")

    assert pending == 0
    assert sample_value(text, "download_jobs_supervisor_mailbox_depth") == 0
    assert end.status_code == 200
