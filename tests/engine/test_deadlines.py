"""Tests of job deadlines: ``job_timeout_ms``, per-job timeouts and what a timeout cancels.

A deadline counts from submission, queue time included. On the autojump
clock the supervisor wakes exactly at a deadline, so these tests poll the
status every 10 ms around it and check the virtual time of the first
``failed`` reading.
"""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import trio
import trio.testing
from test_supervisor import (
    InstantSource,
    PartialSource,
    RecordingSource,
    count_tasks,
    result_path,
    started_supervisor,
    wait_until_finished,
)

from engine import (
    JobClient,
    JobSnapshot,
    JobStatus,
    ProgressReporter,
    ResultInfo,
    SimulatedSource,
)

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

# How late after its deadline a job may still read as not failed (seconds).
DEADLINE_TOLERANCE = 0.1
POLL_INTERVAL = 0.01
DEFAULT_TIMEOUT_SECONDS = 300.0


async def poll_until_finished(
    client: JobClient, job_id: str, *, from_time: float
) -> tuple[JobSnapshot, float]:
    """Sleep until trio time ``from_time``, then poll every 10 ms until the job has ended.

    Returns the terminal snapshot and the trio time at which it was first read.
    """
    await trio.sleep_until(from_time)
    snapshot = await wait_until_finished(client, job_id, interval=POLL_INTERVAL)
    return snapshot, trio.current_time()


class ChattySource:
    """A source that reports progress every ``interval`` seconds, ``reports`` times, then succeeds.

    With ``reports=None`` it reports forever and never returns.
    """

    def __init__(self, interval: float, reports: int | None) -> None:
        self.interval = interval
        self.reports = reports
        self.sent = 0  # progress reports made, over all fetches
        self.inner = InstantSource()

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        count = 0
        while self.reports is None or count < self.reports:
            count += 1
            self.sent += 1
            # Approaches 1.0 but never reaches it, so every report moves progress.
            progress.set_fraction(1.0 - 1.0 / (count + 1))
            await trio.sleep(self.interval)
        return await self.inner.fetch(file_id, progress, destination)

    async def check(self, file_id: int) -> int | None:
        return await self.inner.check(file_id)

    async def check_health(self) -> None:
        await self.inner.check_health()


# -- when a job times out ---------------------------------------------------


async def test_stalled_job_fails_at_default_deadline(autojump_clock, settings):
    assert settings.job_timeout_ms == 300_000
    async with started_supervisor(settings, PartialSource()) as client:
        submitted = await client.submit(1)
        failed, failed_at = await poll_until_finished(
            client, submitted.job_id, from_time=DEFAULT_TIMEOUT_SECONDS - 0.5
        )

    assert failed.status is JobStatus.FAILED
    assert DEFAULT_TIMEOUT_SECONDS <= failed_at <= DEFAULT_TIMEOUT_SECONDS + DEADLINE_TOLERANCE


async def test_timeout_error_code(autojump_clock, settings):
    async with started_supervisor(settings, PartialSource()) as client:
        submitted = await client.submit(1)
        failed = await wait_until_finished(client, submitted.job_id)

    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "timeout"
    assert failed.error.message == "the job did not finish within 300 s"
    assert failed.result is None


async def test_timeout_recorded_in_metrics(autojump_clock, settings):
    async with started_supervisor(settings, PartialSource()) as client:
        submitted = await client.submit(1)
        failed = await wait_until_finished(client, submitted.job_id)
        registry = client.metrics_registry

    assert failed.status is JobStatus.FAILED
    assert registry.get_sample_value("download_jobs_timeouts_total") == 1
    failed_label = {"state": "failed"}
    duration_sum = registry.get_sample_value("download_jobs_duration_seconds_sum", failed_label)
    assert duration_sum == DEFAULT_TIMEOUT_SECONDS


async def test_snapshot_shows_deadline(autojump_clock, settings, wall_clock):
    async with started_supervisor(settings, PartialSource(), wall_clock=wall_clock) as client:
        await trio.sleep(4)
        submitted = await client.submit(1)
        failed = await wait_until_finished(client, submitted.job_id)

    assert submitted.deadline_at == wall_clock.at(4 + DEFAULT_TIMEOUT_SECONDS)
    assert failed.status is JobStatus.FAILED
    assert failed.deadline_at is None


async def test_finished_job_ignores_deadline(autojump_clock, make_settings):
    # A fixed 10-second download well inside a 20-second deadline.
    settings = make_settings(
        job_timeout_ms=20_000, download_delay_min_ms=10_000, download_delay_max_ms=10_000
    )
    async with started_supervisor(settings) as client:
        submitted = await client.submit(1)
        await trio.sleep(30)
        done = await client.status(submitted.job_id)

    assert done.status is JobStatus.DONE
    assert client.metrics_registry.get_sample_value("download_jobs_timeouts_total") == 0


# -- per-job timeouts -------------------------------------------------------


async def test_job_timeout_shortens_deadline(autojump_clock, settings):
    async with started_supervisor(settings, PartialSource()) as client:
        submitted = await client.submit(1, job_timeout=5)
        failed, failed_at = await poll_until_finished(client, submitted.job_id, from_time=4.5)

    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "timeout"
    assert 5.0 <= failed_at <= 5.0 + DEADLINE_TOLERANCE


async def test_job_timeout_sets_deadline_at(autojump_clock, settings, wall_clock):
    async with started_supervisor(settings, PartialSource(), wall_clock=wall_clock) as client:
        submitted = await client.submit(1, job_timeout=5)
        failed = await wait_until_finished(client, submitted.job_id)

    assert submitted.deadline_at == submitted.created_at + timedelta(seconds=5)
    assert failed.status is JobStatus.FAILED


async def test_longer_job_timeout_is_capped(autojump_clock, settings):
    async with started_supervisor(settings, PartialSource()) as client:
        submitted = await client.submit(1, job_timeout=1000)
        failed, failed_at = await poll_until_finished(
            client, submitted.job_id, from_time=DEFAULT_TIMEOUT_SECONDS - 0.5
        )

    assert submitted.deadline_at == submitted.created_at + timedelta(seconds=300)
    assert failed.status is JobStatus.FAILED
    assert DEFAULT_TIMEOUT_SECONDS <= failed_at <= DEFAULT_TIMEOUT_SECONDS + DEADLINE_TOLERANCE


@pytest.mark.parametrize("job_timeout", [0, -1, -0.5, math.nan])
async def test_invalid_job_timeout_rejected(autojump_clock, settings, job_timeout):
    async with started_supervisor(settings) as client:
        with pytest.raises(ValueError, match=r"^job timeout must be positive, got "):
            await client.submit(1, job_timeout=job_timeout)
        stats = await client.stats()

    assert stats.jobs == 0


# -- queue time -------------------------------------------------------------


async def test_queue_time_counts_toward_deadline(autojump_clock, make_settings):
    # One slot and fixed 10-second downloads: the second job starts at 10 s,
    # and its 15-second deadline counts from its submission at 0 s.
    settings = make_settings(
        max_concurrent_jobs=1, download_delay_min_ms=10_000, download_delay_max_ms=10_000
    )
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source) as client:
        first = await client.submit(1)
        second = await client.submit(2, job_timeout=15)
        failed, failed_at = await poll_until_finished(client, second.job_id, from_time=14.5)
        first_end = await client.status(first.job_id)

    assert first_end.status is JobStatus.DONE
    assert source.record_for(2).started_at == 10
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "timeout"
    assert 15.0 <= failed_at <= 15.0 + DEADLINE_TOLERANCE


async def test_queued_job_times_out_unstarted(autojump_clock, make_settings):
    settings = make_settings(max_concurrent_jobs=1)
    source = PartialSource()
    async with started_supervisor(settings, source) as client:
        running = await client.submit(1)
        queued = await client.submit(2, job_timeout=5)
        failed, failed_at = await poll_until_finished(client, queued.job_id, from_time=4.5)
        still_running = await client.status(running.job_id)

    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "timeout"
    assert failed.attempt == 0
    assert 5.0 <= failed_at <= 5.0 + DEADLINE_TOLERANCE
    assert still_running.status is JobStatus.PROCESSING
    assert source.cancelled == [1]


# -- what a timeout cancels -------------------------------------------------


async def test_timeout_cancels_actor(autojump_clock, settings, results_dir):
    source = PartialSource()
    async with started_supervisor(settings, source) as client:
        await trio.testing.wait_all_tasks_blocked()
        idle_tasks = count_tasks()
        submitted = await client.submit(1, job_timeout=5)
        await trio.testing.wait_all_tasks_blocked()
        busy_tasks = count_tasks()
        failed = await wait_until_finished(client, submitted.job_id)
        await trio.testing.wait_all_tasks_blocked()
        tasks_after = count_tasks()
        stats = await client.stats()

    assert failed.status is JobStatus.FAILED
    assert busy_tasks == idle_tasks + 1
    assert tasks_after == idle_tasks
    assert source.cancelled == [1]
    assert stats.running_actors == 0
    assert not result_path(results_dir, submitted.job_id).exists()


async def test_timeout_leaves_other_jobs_running(autojump_clock, settings):
    source = PartialSource()
    async with started_supervisor(settings, source) as client:
        short = await client.submit(1, job_timeout=5)
        long = await client.submit(2, job_timeout=50)
        short_end = await wait_until_finished(client, short.job_id)
        long_meanwhile = await client.status(long.job_id)
        long_end = await wait_until_finished(client, long.job_id)

    assert short_end.status is JobStatus.FAILED
    assert long_meanwhile.status is JobStatus.PROCESSING
    assert long_end.status is JobStatus.FAILED


# -- progress and deadlines -------------------------------------------------


async def test_progress_reports_never_time_out(autojump_clock, settings):
    # 990 reports, one every 10 ms, end at 9.9 s, inside a 10-second deadline,
    # while a poller reads the status as often.
    source = ChattySource(interval=0.01, reports=990)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(1, job_timeout=10)
        done, done_at = await poll_until_finished(client, submitted.job_id, from_time=0)

    assert done.status is JobStatus.DONE
    assert done.progress == 100
    assert source.sent == 990
    assert done_at < 10


async def test_progress_does_not_extend_deadline(autojump_clock, settings):
    source = ChattySource(interval=0.1, reports=None)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(1, job_timeout=10)
        failed, failed_at = await poll_until_finished(client, submitted.job_id, from_time=9.5)

    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "timeout"
    assert 0 < failed.progress < 100
    assert 10.0 <= failed_at <= 10.0 + DEADLINE_TOLERANCE
