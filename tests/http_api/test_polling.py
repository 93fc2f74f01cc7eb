"""Tests of cheap polling on ``GET /v1/download/status/{jobId}``: ETags, 304s, long polls
and Retry-After.

Every test runs on the autojump clock, so the elapsed times checked here are
exact virtual times. Tests that need a source other than the simulated one
replace the ``Supervisor`` that ``create_app`` builds.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from quart.typing import TestClientProtocol as QuartTestClient
from quart.wrappers import Response
from scopes import http_scope
from sources import StallSource
from werkzeug.datastructures import Headers

import http_api._app as app_module
from engine import (
    EngineSettings,
    ProgressReporter,
    ResultInfo,
    Source,
    Supervisor,
    TransientSourceError,
)
from http_api import Settings, create_app
from http_api._context import STATUS_LAYER_KEY
from http_api._settings import MAX_BODY_BYTES

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

FILE_ID = 70_000
PROBLEM_MEDIA_TYPE = "application/problem+json"
# Small archives and a fixed seed, as in the shared fixtures of conftest.py.
SMALL_ARCHIVES: dict[str, Any] = {
    "download_size_min_bytes": 1000,
    "download_size_max_bytes": 4000,
    "download_random_seed": 1,
}
# Longer than the longest simulated delay of the default settings (120 s).
PAST_ANY_DELAY_SECONDS = 200
MAX_WAIT_SECONDS = 30

OpenClient = Callable[..., AbstractAsyncContextManager[QuartTestClient]]


# -- test sources -------------------------------------------------------------


class FlakySource(StallSource):
    """A source whose first attempt fails transiently after ``fail_after`` seconds, with no
    progress, and whose later attempts stall."""

    def __init__(self, fail_after: float) -> None:
        self.fail_after = fail_after
        self.attempts = 0

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        self.attempts += 1
        if self.attempts == 1:
            await trio.sleep(self.fail_after)
            raise TransientSourceError("the first attempt failed")
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class PiecewiseSource(StallSource):
    """A source that reports half its progress with ``set_fraction`` after ``after`` seconds,
    then stalls, like a transfer that learns its progress from received bytes."""

    def __init__(self, after: float) -> None:
        self.after = after

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        await trio.sleep(self.after)
        progress.set_fraction(0.5)
        await trio.sleep_forever()
        raise AssertionError("unreachable")


# -- fixtures and helpers -----------------------------------------------------


@pytest.fixture
def open_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OpenClient:
    """Return a function that runs an app for an ``async with`` block and yields its test client.

    Keyword arguments override engine settings. ``source`` replaces the
    simulated source of the app's supervisor.
    """

    @asynccontextmanager
    async def open_(
        source: Source | None = None, **engine_overrides: Any
    ) -> AsyncIterator[QuartTestClient]:
        if source is not None:

            def make_supervisor(engine: EngineSettings) -> Supervisor:
                return Supervisor(engine, source)

            monkeypatch.setattr(app_module, "Supervisor", make_supervisor)
        engine = EngineSettings(
            results_dir=tmp_path / "results", **{**SMALL_ARCHIVES, **engine_overrides}
        )
        app = create_app(Settings(engine=engine))
        async with app.test_app() as test_app:
            yield test_app.test_client()

    return open_


def fixed_delay(seconds: float) -> dict[str, Any]:
    """Return engine overrides that make every simulated download take exactly ``seconds``."""
    milliseconds = int(seconds * 1000)
    return {"download_delay_min_ms": milliseconds, "download_delay_max_ms": milliseconds}


async def start(client: QuartTestClient, file_id: int = FILE_ID) -> str:
    response = await client.post("/v1/download/start", json={"file_id": file_id})
    assert response.status_code == 202, await response.get_data(as_text=True)
    body = await response.get_json()
    job_id: str = body["jobId"]
    return job_id


async def get_status(
    client: QuartTestClient,
    job_id: str,
    *,
    if_none_match: str | None = None,
    wait: str | None = None,
) -> Response:
    path = f"/v1/download/status/{job_id}"
    if wait is not None:
        path += f"?wait={wait}"
    headers = {} if if_none_match is None else {"If-None-Match": if_none_match}
    response: Response = await client.get(path, headers=headers)
    return response


async def current_tag(client: QuartTestClient, job_id: str) -> str:
    """Return the ETag header of a 200 status response, quotes included."""
    response = await get_status(client, job_id)
    assert response.status_code == 200, await response.get_data(as_text=True)
    return response.headers["ETag"]


async def timed_status(
    client: QuartTestClient, job_id: str, **kwargs: str
) -> tuple[Response, float]:
    """Send a status request. Return the response and the virtual seconds it took."""
    started = trio.current_time()
    response = await get_status(client, job_id, **kwargs)
    return response, trio.current_time() - started


async def finish(
    client: QuartTestClient, job_id: str, seconds: float = PAST_ANY_DELAY_SECONDS
) -> dict[str, Any]:
    """Sleep ``seconds``, by default past any simulated delay, and return the status document."""
    await trio.sleep(seconds)
    response = await get_status(client, job_id)
    document: dict[str, Any] = await response.get_json()
    return document


async def cancel(client: QuartTestClient, job_id: str) -> dict[str, Any]:
    response = await client.delete(f"/v1/download/{job_id}")
    assert response.status_code == 200, await response.get_data(as_text=True)
    document: dict[str, Any] = await response.get_json()
    return document


async def cancel_if_running(client: QuartTestClient, job_id: str) -> None:
    response = await client.delete(f"/v1/download/{job_id}")
    assert response.status_code in (200, 409)


# -- ETag ---------------------------------------------------------------------


async def test_status_has_strong_etag(autojump_clock, open_client):
    async with open_client() as client:
        job_id = await start(client)
        response = await get_status(client, job_id)
        finished = await finish(client, job_id)

    etag = response.headers["ETag"]
    assert response.status_code == 200
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert len(etag) > 2
    assert finished["status"] == "done"


async def test_etag_stable_without_change(autojump_clock, open_client):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        first = await get_status(client, job_id)
        await trio.sleep(0.5)  # within the first 5% step, which takes 1 s
        second = await get_status(client, job_id)
        finished = await finish(client, job_id)

    assert first.headers["ETag"] == second.headers["ETag"]
    assert await first.get_json() == await second.get_json()
    assert finished["status"] == "done"


async def test_etag_changes_on_progress_step(autojump_clock, open_client):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        before = await get_status(client, job_id)
        await trio.sleep(1.0)
        after = await get_status(client, job_id)
        finished = await finish(client, job_id)

    assert (await before.get_json())["progress"] == 0
    assert (await after.get_json())["progress"] == 5
    assert before.headers["ETag"] != after.headers["ETag"]
    assert finished["status"] == "done"


async def test_etag_changes_on_cancel(autojump_clock, open_client):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        before = await current_tag(client, job_id)
        cancelled = await cancel(client, job_id)
        after = await current_tag(client, job_id)

    assert cancelled["status"] == "cancelled"
    assert cancelled["progress"] == 0
    assert before != after


async def test_etag_changes_on_queue_move(autojump_clock, open_client):
    async with open_client(max_concurrent_jobs=1, **fixed_delay(20)) as client:
        await start(client, FILE_ID)
        ahead = await start(client, FILE_ID + 1)
        behind = await start(client, FILE_ID + 2)
        before = await get_status(client, behind)
        await cancel(client, ahead)
        after = await get_status(client, behind)
        finished = await finish(client, behind)

    assert (await before.get_json())["queuePosition"] == 2
    assert (await after.get_json())["queuePosition"] == 1
    assert (await after.get_json())["status"] == "queued"
    assert before.headers["ETag"] != after.headers["ETag"]
    assert finished["status"] == "done"


async def test_etag_changes_on_attempt(autojump_clock, open_client):
    # No backoff, so attempt 2 starts as attempt 1 fails at 3 s. Neither reports progress.
    source = FlakySource(fail_after=3)
    async with open_client(source=source, retry_backoff_base_ms=0) as client:
        job_id = await start(client)
        before = await get_status(client, job_id)
        await trio.sleep(5)
        after = await get_status(client, job_id)
        cancelled = await cancel(client, job_id)

    before_body = await before.get_json()
    after_body = await after.get_json()
    assert before_body["attempt"] == 1
    assert after_body["attempt"] == 2
    assert after_body["progress"] == before_body["progress"]
    assert after_body["status"] == "processing"
    assert before.headers["ETag"] != after.headers["ETag"]
    assert cancelled["status"] == "cancelled"


async def test_long_poll_returns_retry_time(autojump_clock, open_client):
    # Attempt 1 fails at 3 s. The backoff is drawn from [0, 20] s, and the
    # next attempt stalls.
    source = FlakySource(fail_after=3)
    async with open_client(source=source, retry_backoff_base_ms=20_000) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response, elapsed = await timed_status(client, job_id, if_none_match=etag, wait="30")
        waiting = await response.get_json()
        # Past the longest backoff, so attempt 2 runs.
        await trio.sleep(21)
        retrying = await (await get_status(client, job_id)).get_json()
        cancelled = await cancel(client, job_id)

    assert response.status_code == 200
    assert elapsed == 3
    assert waiting["status"] == "processing"
    assert waiting["attempt"] == 1
    retry_at = datetime.fromisoformat(waiting["retryAt"])
    updated_at = datetime.fromisoformat(waiting["updatedAt"])
    backoff = (retry_at - updated_at).total_seconds()
    assert 0 <= backoff <= 20
    assert 1 <= int(response.headers["Retry-After"]) <= 10
    assert source.attempts == 2
    assert retrying["attempt"] == 2
    assert "retryAt" not in retrying
    assert "retryAt" not in cancelled


async def test_etag_changes_on_error(autojump_clock, open_client):
    async with open_client(download_failure_rate=1.0, job_max_attempts=1) as client:
        job_id = await start(client)
        before = await current_tag(client, job_id)
        failed = await finish(client, job_id)
        after = await current_tag(client, job_id)

    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "transient_failure"
    assert before != after


async def test_etag_changes_on_result(autojump_clock, open_client):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        await trio.sleep(19.5)
        last_step = await get_status(client, job_id)
        await trio.sleep(1)
        done = await get_status(client, job_id)

    assert (await last_step.get_json())["progress"] == 95
    assert (await done.get_json())["status"] == "done"
    assert "result" in await done.get_json()
    assert last_step.headers["ETag"] != done.headers["ETag"]


async def test_current_tag_gets_304(autojump_clock, open_client):
    async with open_client() as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response = await get_status(client, job_id, if_none_match=etag)
        finished = await finish(client, job_id)

    assert response.status_code == 304
    assert await response.get_data() == b""
    assert response.headers["ETag"] == etag
    assert response.headers["Cache-Control"] == "no-cache"
    assert finished["status"] == "done"


async def test_304_for_done_job(autojump_clock, open_client):
    async with open_client() as client:
        job_id = await start(client)
        finished = await finish(client, job_id)
        etag = await current_tag(client, job_id)
        response = await get_status(client, job_id, if_none_match=etag)

    assert finished["status"] == "done"
    assert response.status_code == 304
    assert response.headers["ETag"] == etag


async def test_tag_on_second_line_gets_304(autojump_clock, open_client):
    # RFC 9110 reads two If-None-Match lines as one list.
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        headers = Headers([("If-None-Match", '"stale"'), ("If-None-Match", etag)])
        response = await client.get(f"/v1/download/status/{job_id}", headers=headers)
        held = await client.get(
            f"/v1/download/status/{job_id}", query_string={"wait": "0.5"}, headers=headers
        )
        finished = await finish(client, job_id)

    assert response.status_code == 304
    assert held.status_code == 304
    assert finished["status"] == "done"


async def test_stale_tag_gets_200(autojump_clock, open_client):
    async with open_client() as client:
        job_id = await start(client)
        response = await get_status(client, job_id, if_none_match='"stale"')
        finished = await finish(client, job_id)

    assert response.status_code == 200
    assert (await response.get_json())["jobId"] == job_id
    assert finished["status"] == "done"


async def test_star_gets_304(autojump_clock, open_client):
    async with open_client() as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response = await get_status(client, job_id, if_none_match="*")
        finished = await finish(client, job_id)

    assert response.status_code == 304
    assert response.headers["ETag"] == etag
    assert finished["status"] == "done"


async def test_tag_list_with_current_gets_304(autojump_clock, open_client):
    async with open_client() as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response = await get_status(client, job_id, if_none_match=f'"old", {etag}, "older"')
        finished = await finish(client, job_id)

    assert response.status_code == 304
    assert finished["status"] == "done"


async def test_tag_list_without_current_gets_200(autojump_clock, open_client):
    async with open_client() as client:
        job_id = await start(client)
        response = await get_status(client, job_id, if_none_match='"old", "older"')
        finished = await finish(client, job_id)

    assert response.status_code == 200
    assert finished["status"] == "done"


async def test_weak_current_tag_gets_304(autojump_clock, open_client):
    async with open_client() as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response = await get_status(client, job_id, if_none_match=f"W/{etag}")
        await cancel(client, job_id)

    assert response.status_code == 304


# -- long polls ---------------------------------------------------------------


async def test_long_poll_stale_tag_returns_at_once(autojump_clock, open_client):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        response, elapsed = await timed_status(client, job_id, if_none_match='"stale"', wait="30")
        finished = await finish(client, job_id)

    assert response.status_code == 200
    assert elapsed == 0
    assert finished["status"] == "done"


async def test_long_poll_without_tag_returns_at_once(autojump_clock, open_client):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        response, elapsed = await timed_status(client, job_id, wait="30")
        finished = await finish(client, job_id)

    assert response.status_code == 200
    assert elapsed == 0
    assert finished["status"] == "done"


async def test_zero_wait_returns_at_once(autojump_clock, open_client):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response, elapsed = await timed_status(client, job_id, if_none_match=etag, wait="0")
        finished = await finish(client, job_id)

    assert response.status_code == 304
    assert elapsed == 0
    assert finished["status"] == "done"


@pytest.mark.parametrize(
    ("wait", "elapsed_seconds", "status", "progress"),
    [
        # Progress passes 5% every second of the 20 s job; none of it ends the wait.
        pytest.param("10", 10, "processing", 50, id="progress-at-end-of-wait"),
        pytest.param("30", 20, "done", 100, id="done-ends-wait"),
    ],
)
async def test_long_poll_ends_on_status_not_progress(
    autojump_clock, open_client, wait, elapsed_seconds, status, progress
):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response, elapsed = await timed_status(client, job_id, if_none_match=etag, wait=wait)
        body = await response.get_json()
        await cancel_if_running(client, job_id)

    assert response.status_code == 200
    assert elapsed == pytest.approx(elapsed_seconds, abs=1e-9)
    assert body["status"] == status
    assert body["progress"] == progress
    assert response.headers["ETag"] != etag


async def test_long_poll_woken_by_retry(autojump_clock, open_client):
    # No backoff, so attempt 2 starts as attempt 1 fails at 3 s; neither reports progress.
    async with open_client(source=FlakySource(fail_after=3), retry_backoff_base_ms=0) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response, elapsed = await timed_status(client, job_id, if_none_match=etag, wait="30")
        body = await response.get_json()
        cancelled = await cancel(client, job_id)

    assert response.status_code == 200
    assert elapsed == pytest.approx(3, abs=1e-9)
    assert body["attempt"] == 2
    assert body["status"] == "processing"
    assert cancelled["status"] == "cancelled"


async def test_long_poll_reports_queue_move_when_wait_ends(autojump_clock, open_client):
    async with open_client(max_concurrent_jobs=1, **fixed_delay(120)) as client:
        await start(client, FILE_ID)
        ahead = await start(client, FILE_ID + 1)
        behind = await start(client, FILE_ID + 2)
        etag = await current_tag(client, behind)
        answers: list[tuple[Response, float]] = []

        async def poll() -> None:
            answers.append(await timed_status(client, behind, if_none_match=etag, wait="10"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(2)
            await cancel(client, ahead)
        await cancel_if_running(client, behind)

    ((response, elapsed),) = answers
    body = await response.get_json()
    assert response.status_code == 200
    assert elapsed == pytest.approx(10, abs=1e-9)
    assert body["status"] == "queued"
    assert body["queuePosition"] == 1


async def test_long_poll_returns_at_start(autojump_clock, open_client):
    async with open_client(max_concurrent_jobs=1, **fixed_delay(20)) as client:
        await start(client, FILE_ID)
        queued = await start(client, FILE_ID + 1)
        etag = await current_tag(client, queued)
        response, elapsed = await timed_status(client, queued, if_none_match=etag, wait="30")
        body = await response.get_json()
        finished = await finish(client, queued)

    assert response.status_code == 200
    assert elapsed == pytest.approx(20, abs=1e-9)
    assert body["status"] == "processing"
    assert finished["status"] == "done"


async def test_long_poll_queued_times_out(autojump_clock, open_client):
    # The job ahead takes 120 s, so nothing about the queued job changes for 10 s.
    async with open_client(max_concurrent_jobs=1, **fixed_delay(120)) as client:
        await start(client, FILE_ID)
        queued = await start(client, FILE_ID + 1)
        etag = await current_tag(client, queued)
        response, elapsed = await timed_status(client, queued, if_none_match=etag, wait="10")
        finished = await finish(client, queued, seconds=240)

    assert response.status_code == 304
    assert elapsed == pytest.approx(10, abs=1e-9)
    assert response.headers["ETag"] == etag
    assert await response.get_data() == b""
    assert finished["status"] == "done"


async def test_long_poll_unscheduled_times_out(autojump_clock, open_client):
    async with open_client(source=StallSource()) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response, elapsed = await timed_status(client, job_id, if_none_match=etag, wait="10")
        cancelled = await cancel(client, job_id)

    assert response.status_code == 304
    assert elapsed == pytest.approx(10, abs=1e-9)
    assert cancelled["status"] == "cancelled"


@pytest.mark.parametrize("wait", ["2.5", "25e-1", "02.50"])
async def test_long_poll_fractional_wait(autojump_clock, open_client, wait):
    async with open_client(source=StallSource()) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response, elapsed = await timed_status(client, job_id, if_none_match=etag, wait=wait)
        cancelled = await cancel(client, job_id)

    assert response.status_code == 304
    assert elapsed == pytest.approx(2.5, abs=1e-9)
    assert cancelled["status"] == "cancelled"


@pytest.mark.parametrize("wait", ["30", "100", "3600"])
async def test_long_poll_wait_capped(autojump_clock, open_client, wait):
    async with open_client(source=StallSource()) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response, elapsed = await timed_status(client, job_id, if_none_match=etag, wait=wait)
        cancelled = await cancel(client, job_id)

    assert response.status_code == 304
    assert elapsed == pytest.approx(MAX_WAIT_SECONDS, abs=1e-9)
    assert cancelled["status"] == "cancelled"


@pytest.mark.parametrize(
    "wait",
    [
        "abc",
        "-1",
        "nan",
        "inf",
        "-inf",
        "1e9",
        "3601",
        "",
        "1_0",
        "1e",
        "%201",  # a leading space
        "+1",
        "%D9%A3",  # ARABIC-INDIC DIGIT THREE, which float() reads as 3
        "1.",
    ],
)
async def test_invalid_wait_rejected(autojump_clock, open_client, wait):
    async with open_client() as client:
        job_id = await start(client)
        response = await get_status(client, job_id, wait=wait)
        problem = await response.get_json()
        cancelled = await cancel(client, job_id)

    assert response.status_code == 400
    assert response.mimetype == PROBLEM_MEDIA_TYPE
    assert problem["code"] == "invalid_wait"
    assert problem["field"] == "wait"
    assert "wait" in problem["detail"]
    assert cancelled["status"] == "cancelled"


async def test_long_invalid_wait_shortened(autojump_clock, open_client):
    async with open_client() as client:
        job_id = await start(client)
        response = await get_status(client, job_id, wait="9" * 16_000)
        problem = await response.get_json()

    assert response.status_code == 400
    assert problem["code"] == "invalid_wait"
    assert "9" * 40 + "..." in problem["detail"]
    assert len(problem["detail"]) < 200


async def test_long_poll_woken_by_cancel(autojump_clock, open_client):
    async with open_client(**fixed_delay(200)) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        answers: list[tuple[Response, float]] = []

        async def poll() -> None:
            answers.append(await timed_status(client, job_id, if_none_match=etag, wait="30"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(poll)
            await trio.sleep(3)
            cancelled = await cancel(client, job_id)

    ((response, elapsed),) = answers
    body = await response.get_json()
    assert cancelled["status"] == "cancelled"
    assert response.status_code == 200
    assert elapsed == pytest.approx(3, abs=1e-9)
    assert body["status"] == "cancelled"
    assert response.headers["ETag"] != etag


async def test_long_poll_woken_by_expiry(autojump_clock, open_client):
    # The job is done at 20 s and removed 5 s later.
    async with open_client(job_ttl_ms=5_000, **fixed_delay(20)) as client:
        started = trio.current_time()
        job_id = await start(client)
        await trio.sleep_until(started + 21)
        done = await get_status(client, job_id)
        response, elapsed = await timed_status(
            client, job_id, if_none_match=done.headers["ETag"], wait="30"
        )
        problem = await response.get_json()

    assert (await done.get_json())["status"] == "done"
    assert response.status_code == 410
    assert problem["code"] == "expired"
    assert elapsed == pytest.approx(4, abs=1e-9)


async def test_disconnected_poll_leaves_job(autojump_clock, open_client):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        with trio.move_on_after(0.5) as scope:
            await get_status(client, job_id, if_none_match=etag, wait="30")
        running = await get_status(client, job_id)
        health = await client.get("/health")
        finished = await finish(client, job_id)

    assert scope.cancelled_caught
    assert (await running.get_json())["status"] == "processing"
    assert health.status_code == 200
    assert finished["status"] == "done"


async def test_hold_ends_when_client_leaves(autojump_clock, open_client):
    # Over ASGI directly, to see when the app's task returns: at once when the
    # client leaves, with nothing sent, rather than when the 30 s wait ends.
    async with open_client(**fixed_delay(60)) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        path = f"/v1/download/status/{job_id}"
        scope = http_scope(
            "GET", path, [(b"if-none-match", etag.encode())], query_string=b"wait=30"
        )
        messages = [{"type": "http.request", "body": b"", "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            await trio.sleep(2)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        began = trio.current_time()
        await client.app(scope, receive, send)
        elapsed = trio.current_time() - began
        running = await get_status(client, job_id)

    assert elapsed == 2
    assert sent == []
    assert (await running.get_json())["status"] == "processing"


async def test_cancelled_poll_task_leaves_job(autojump_clock, open_client):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(get_status, client, job_id, if_none_match=etag, wait="30")
            )
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        running = await get_status(client, job_id)
        finished = await finish(client, job_id)

    assert nursery.cancel_scope.cancelled_caught
    assert (await running.get_json())["status"] == "processing"
    assert finished["status"] == "done"


@pytest.mark.parametrize(
    ("body", "status", "held_seconds"),
    [
        # Progress moves 25% in the 5 s of the hold, so the response is 200.
        pytest.param(b"hello", 200, 5, id="held"),
        # A body over the limit ends the hold, and the route rejects it.
        pytest.param(b"x" * (MAX_BODY_BYTES + 1), 413, 0, id="over-limit-rejected"),
    ],
)
async def test_long_poll_with_body(autojump_clock, open_client, body, status, held_seconds):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        began = trio.current_time()
        # Quart's test client declares no length for a GET body; HTTP framing would.
        response = await client.get(
            f"/v1/download/status/{job_id}",
            query_string={"wait": "5"},
            headers={"If-None-Match": etag, "Content-Length": str(len(body))},
            data=body,
        )
        elapsed = trio.current_time() - began
        finished = await finish(client, job_id)

    assert response.status_code == status
    assert elapsed == held_seconds
    assert finished["status"] == "done"


async def test_release_answers_held_polls(autojump_clock, open_client):
    async with open_client(**fixed_delay(20)) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        responses: list[Response] = []

        async def long_poll() -> None:
            responses.append(await get_status(client, job_id, if_none_match=etag, wait="30"))

        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(long_poll)
            await trio.testing.wait_all_tasks_blocked()
            client.app.extensions[STATUS_LAYER_KEY].release()
        elapsed = trio.current_time() - began
        after, after_elapsed = await timed_status(client, job_id, if_none_match=etag, wait="30")
        finished = await finish(client, job_id)

    assert [response.status_code for response in responses] == [304]
    assert elapsed == 0
    assert after.status_code == 304
    assert after_elapsed == 0
    assert finished["status"] == "done"


async def test_long_poll_timeout_rechecks_tag(autojump_clock, open_client):
    # Progress jumps to 50% at 2 s through set_fraction; only the end of the wait reports it.
    async with open_client(source=PiecewiseSource(after=2)) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response, _ = await timed_status(client, job_id, if_none_match=etag, wait="10")
        current = await current_tag(client, job_id)
        await cancel(client, job_id)

    assert current != etag
    assert response.status_code == 200


# -- Retry-After --------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "asked_at", "expected"),
    [
        (20, 0.0, "1"),  # 1 s steps
        (200, 0.0, "10"),  # 10 s steps
        (200, 3.5, "7"),  # the first step is 6.5 s away
        (1000, 0.0, "10"),  # 50 s steps, capped
    ],
)
async def test_retry_after_is_next_step(autojump_clock, open_client, delay, asked_at, expected):
    async with open_client(job_timeout_ms=2_000_000, **fixed_delay(delay)) as client:
        started = trio.current_time()
        job_id = await start(client)
        await trio.sleep_until(started + asked_at)
        response = await get_status(client, job_id)
        cancelled = await cancel(client, job_id)

    assert (await response.get_json())["status"] == "processing"
    assert response.headers["Retry-After"] == expected
    assert cancelled["status"] == "cancelled"


async def test_retry_after_near_end(autojump_clock, open_client):
    # At 95% of a 20 s job the next change is the end, 0.5 s away, so Retry-After is the minimum.
    async with open_client(**fixed_delay(20)) as client:
        started = trio.current_time()
        job_id = await start(client)
        await trio.sleep_until(started + 19.5)
        response = await get_status(client, job_id)
        finished = await finish(client, job_id)

    assert (await response.get_json())["progress"] == 95
    assert response.headers["Retry-After"] == "1"
    assert finished["status"] == "done"


async def test_retry_after_on_304(autojump_clock, open_client):
    async with open_client(**fixed_delay(200)) as client:
        job_id = await start(client)
        etag = await current_tag(client, job_id)
        response = await get_status(client, job_id, if_none_match=etag)
        cancelled = await cancel(client, job_id)

    assert response.status_code == 304
    assert response.headers["Retry-After"] == "10"
    assert cancelled["status"] == "cancelled"


async def test_retry_after_queued_in_range(autojump_clock, open_client):
    # Completions every 20 s ahead of the queued job give an estimate.
    async with open_client(max_concurrent_jobs=1, **fixed_delay(20)) as client:
        first = await start(client, FILE_ID)
        second = await start(client, FILE_ID + 1)
        queued = await start(client, FILE_ID + 2)
        await trio.sleep(25)
        response = await get_status(client, queued)
        body = await response.get_json()
        for job_id in (first, second, queued):
            await cancel_if_running(client, job_id)

    assert body["status"] == "queued"
    assert 1 <= int(response.headers["Retry-After"]) <= 10


async def test_retry_after_without_estimate(autojump_clock, open_client):
    async with open_client(source=StallSource()) as client:
        job_id = await start(client)
        response = await get_status(client, job_id)
        cancelled = await cancel(client, job_id)

    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 10
    assert cancelled["status"] == "cancelled"


@pytest.mark.parametrize("ending", ["done", "failed", "cancelled"])
async def test_retry_after_absent_when_finished(autojump_clock, open_client, ending):
    overrides: dict[str, Any] = {}
    if ending == "failed":
        overrides = {"download_failure_rate": 1.0, "job_max_attempts": 1}
    async with open_client(**overrides) as client:
        job_id = await start(client)
        if ending == "cancelled":
            await cancel(client, job_id)
        await trio.sleep(PAST_ANY_DELAY_SECONDS)
        response = await get_status(client, job_id)
        body = await response.get_json()

    assert body["status"] == ending
    assert "Retry-After" not in response.headers
