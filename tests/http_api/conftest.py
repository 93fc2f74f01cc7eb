"""Fixtures for the HTTP API tests: one app per test, driven through Quart's test client.

Every async test takes pytest-trio's ``autojump_clock``, so the simulated
10-120 second downloads finish in milliseconds of real time. The ``api``
fixtures start the app, and with it the job supervisor, for one test and stop
it afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from quart.typing import TestClientProtocol
from werkzeug.datastructures import Headers

from engine import EngineSettings
from http_api import Settings, create_app
from http_api._results import RESULT_CHUNK_BYTES

# Archives of 1-4 KB keep every download small. The delays keep the production
# range of 10-120 s, which the autojump clock skips.
SMALL_ARCHIVES: dict[str, Any] = {
    "download_size_min_bytes": 1000,
    "download_size_max_bytes": 4000,
    "download_random_seed": 1,
}

# Longer than the longest simulated delay (120 s), so every started job has ended.
PAST_ANY_DELAY_SECONDS = 200


@dataclasses.dataclass(frozen=True)
class RawResponse:
    """A response exactly as the app sent it over ASGI."""

    status: int
    headers: Headers
    body: bytes

    @property
    def media_type(self) -> str:
        """The Content-Type without parameters, such as ``application/zip``."""
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    def json(self) -> Any:
        return json.loads(self.body)


class Api:
    """The test client of one running app, with helpers for the job workflow."""

    def __init__(self, client: TestClientProtocol, clock: trio.testing.MockClock) -> None:
        self.client = client
        self._clock = clock

    async def start(self, file_id: int) -> str:
        """Start a job for ``file_id`` and return its id. Fail the test unless it gets 202."""
        response = await self.client.post("/v1/download/start", json={"file_id": file_id})
        assert response.status_code == 202, await response.get_data(as_text=True)
        body = await response.get_json()
        job_id: str = body["jobId"]
        return job_id

    async def status(self, job_id: str) -> dict[str, Any]:
        """Return the status document of ``job_id``. Fail the test unless it gets 200."""
        response = await self.client.get(f"/v1/download/status/{job_id}")
        assert response.status_code == 200, await response.get_data(as_text=True)
        document: dict[str, Any] = await response.get_json()
        return document

    async def wait_until_finished(self, job_id: str) -> dict[str, Any]:
        """Sleep past any simulated delay and return the job's status document."""
        await trio.sleep(PAST_ANY_DELAY_SECONDS)
        return await self.status(job_id)

    async def send_raw(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | Headers | None = None,
    ) -> RawResponse:
        """Send one request and return the status, headers and body that the app sent.

        The test client's ``get``, ``head`` and other methods rebuild the
        response from its body, which overwrites ``Content-Length`` with the
        length of what arrived (0 for HEAD). This helper keeps the app's own headers.

        NOTE: the test connection buffers at most 10 body messages, so a longer
        response blocks the app. A result is sent in messages of up to 256 KiB,
        and the archives of these tests fill at most three.
        """
        connection = self.client.request(path, method=method, headers=headers)
        async with connection:
            await connection.send(body)
            await connection.send_complete()
        status = connection.status_code
        sent_headers = Headers(connection.headers)
        # as_response drains the received body into connection.response_data,
        # and it rewrites connection.headers in place, hence the copy above.
        await connection.as_response()
        assert status is not None
        return RawResponse(status, sent_headers, bytes(connection.response_data))

    async def fetch_result(self, job_id: str, method: str = "GET") -> RawResponse:
        """Send GET or HEAD to the result of ``job_id`` with the clock's autojump paused.

        The app opens and reads the file in trio worker threads. While a thread
        runs, every task is blocked, so the autojump clock would jump to the
        next deadline, which can be the test's own deadline.

        NOTE: with autojump paused, the test deadline cannot fire until this returns.
        """
        threshold = self._clock.autojump_threshold
        self._clock.autojump_threshold = math.inf
        try:
            return await self.send_raw(method, f"/v1/download/{job_id}")
        finally:
            self._clock.autojump_threshold = threshold


@asynccontextmanager
async def open_api(
    results_dir: Path, clock: trio.testing.MockClock, **engine_overrides: Any
) -> AsyncIterator[Api]:
    """Run an app with small archives plus ``engine_overrides`` for the ``async with`` block."""
    engine = EngineSettings(results_dir=results_dir, **{**SMALL_ARCHIVES, **engine_overrides})
    app = create_app(Settings(engine=engine))
    async with app.test_app() as test_app:
        yield Api(test_app.test_client(), clock)


@pytest.fixture
async def api(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> AsyncIterator[Api]:
    """An app where every file id exists and jobs start at once (10,000 processing slots)."""
    async with open_api(tmp_path, autojump_clock) as running:
        yield running


# Archive sizes of ``result_api``: read whole in one worker-thread call
# (at most RESULT_CHUNK_BYTES), or streamed in several chunks.
RESULT_SIZES = {
    "one-read": {},
    "streamed": {
        "download_size_min_bytes": 3 * RESULT_CHUNK_BYTES - 100,
        "download_size_max_bytes": 3 * RESULT_CHUNK_BYTES - 100,
    },
}


@pytest.fixture(params=list(RESULT_SIZES))
async def result_api(
    request: pytest.FixtureRequest, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> AsyncIterator[Api]:
    """The ``api`` app, once with small archives and once with archives of three chunks."""
    async with open_api(tmp_path, autojump_clock, **RESULT_SIZES[request.param]) as running:
        yield running


@pytest.fixture
async def single_slot_api(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> AsyncIterator[Api]:
    """An app with one processing slot, so a second job stays queued while the first runs."""
    async with open_api(tmp_path, autojump_clock, max_concurrent_jobs=1) as running:
        yield running


@pytest.fixture
async def sevens_api(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> AsyncIterator[Api]:
    """An app where only file ids divisible by 7 exist (DOWNLOAD_AVAILABILITY=multiple-of-7)."""
    async with open_api(tmp_path, autojump_clock, download_availability="multiple-of-7") as running:
        yield running
