"""Tests of retries: attempts, backoff, progress across attempts, and their metrics.

Only ``TransientSourceError`` retries. A job gets ``job_max_attempts``
attempts in all, and the wait before retry ``n`` is drawn from
``[0, min(cap, base * 2 ** (n - 1))]``. Every test runs on the autojump
clock, so the virtual time between two attempts is exactly the backoff.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import trio
import trio.testing
from test_supervisor import RecordingSource, started_supervisor, wait_until_finished, write_now

from engine import (
    JobClient,
    JobSnapshot,
    JobStatus,
    ProgressReporter,
    ResultInfo,
    SimulatedSource,
    TransientSourceError,
)

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

# Float tolerance when comparing a wait rebuilt from two trio times (seconds).
TIME_TOLERANCE = 1e-9


@dataclasses.dataclass
class Attempt:
    """One call of ``FlakySource.fetch``."""

    file_id: int
    started_at: float
    ended_at: float | None = None
    failed: bool = False


class FlakySource:
    """A source whose first ``failures`` attempts per file id fail with ``TransientSourceError``.

    ``failures_by_file`` overrides ``failures`` for the file ids it lists, and
    ``math.inf`` fails every attempt. Every attempt declares a linear schedule
    of ``duration`` seconds. A failing attempt raises after ``fail_after``
    seconds, and a succeeding one writes a small file at the end of its schedule.
    """

    def __init__(
        self,
        failures: float,
        duration: float = 10.0,
        fail_after: float = 5.0,
        failures_by_file: dict[int, float] | None = None,
    ) -> None:
        self.failures = failures
        self.failures_by_file = failures_by_file or {}
        self.duration = duration
        self.fail_after = fail_after
        self.attempts: list[Attempt] = []

    def attempts_of(self, file_id: int) -> list[Attempt]:
        return [attempt for attempt in self.attempts if attempt.file_id == file_id]

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        attempt = Attempt(file_id, started_at=trio.current_time())
        self.attempts.append(attempt)
        failures = self.failures_by_file.get(file_id, self.failures)
        failing = len(self.attempts_of(file_id)) <= failures
        progress.advance_linearly(trio.current_time(), self.duration)
        if failing:
            await trio.sleep(self.fail_after)
            attempt.ended_at = trio.current_time()
            attempt.failed = True
            raise TransientSourceError(f"attempt at file {file_id} dropped")
        await trio.sleep(self.duration)
        content = f"file {file_id}\n".encode()
        write_now(destination, content)
        attempt.ended_at = trio.current_time()
        return ResultInfo(
            size=len(content), media_type="text/plain", file_name=f"{file_id}.txt", sha256="0" * 64
        )

    async def check(self, file_id: int) -> int | None:
        await trio.lowlevel.checkpoint()
        return 1

    async def check_health(self) -> None:
        await trio.lowlevel.checkpoint()


async def sample_until_finished(
    client: JobClient, job_id: str, interval: float = 0.1
) -> list[JobSnapshot]:
    """Poll the job every ``interval`` seconds and return every snapshot, the terminal one last."""
    samples = []
    while True:
        snapshot = await client.status(job_id)
        samples.append(snapshot)
        if snapshot.status.is_terminal:
            return samples
        await trio.sleep(interval)


# -- attempts ---------------------------------------------------------------


async def test_transient_failures_retry_until_done(autojump_clock, make_settings):
    settings = make_settings(job_max_attempts=3)
    source = FlakySource(failures=2)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(1)
        done = await wait_until_finished(client, submitted.job_id)

    assert done.status is JobStatus.DONE
    assert done.attempt == 3
    assert [attempt.failed for attempt in source.attempts] == [True, True, False]


async def test_snapshot_shows_each_attempt(autojump_clock, make_settings):
    settings = make_settings(job_max_attempts=3)
    source = FlakySource(failures=2)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(1)
        samples = await sample_until_finished(client, submitted.job_id)

    attempts = [sample.attempt for sample in samples]
    assert samples[-1].status is JobStatus.DONE
    assert attempts == sorted(attempts)
    assert sorted(set(attempts)) == [1, 2, 3]


async def test_progress_never_decreases_across_retry(autojump_clock, make_settings):
    settings = make_settings(job_max_attempts=3)
    source = FlakySource(failures=2)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(1)
        samples = await sample_until_finished(client, submitted.job_id)

    progress = [sample.progress for sample in samples]
    assert samples[-1].status is JobStatus.DONE
    assert progress == sorted(progress)
    # The first attempt fails halfway, so later attempts start from 50 %.
    assert min(sample.progress for sample in samples if sample.attempt == 2) >= 50


async def test_progress_never_exceeds_100(autojump_clock, make_settings):
    settings = make_settings(job_max_attempts=4)
    source = FlakySource(failures=3, duration=10.0, fail_after=9.9)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(1)
        samples = await sample_until_finished(client, submitted.job_id)

    assert samples[-1].status is JobStatus.DONE
    assert max(sample.progress for sample in samples) == 100
    assert max(sample.progress for sample in samples[:-1]) <= 99


async def test_backoff_waits_within_bounds(autojump_clock, make_settings):
    # Base 1 s and cap 3 s: the waits after attempts 1 to 4 are drawn from
    # [0, 1], [0, 2], [0, 3] and [0, 3] seconds.
    settings = make_settings(
        job_max_attempts=5, retry_backoff_base_ms=1_000, retry_backoff_cap_ms=3_000
    )
    source = FlakySource(failures=4, fail_after=1.0)
    file_ids = range(20)
    async with started_supervisor(settings, source) as client:
        jobs = [await client.submit(file_id) for file_id in file_ids]
        ends = [await wait_until_finished(client, job.job_id) for job in jobs]

    assert [end.status for end in ends] == [JobStatus.DONE] * 20
    waits: list[float] = []
    for file_id in file_ids:
        attempts = source.attempts_of(file_id)
        assert len(attempts) == 5
        for number, (failed, following) in enumerate(itertools.pairwise(attempts), start=1):
            assert failed.ended_at is not None
            wait = following.started_at - failed.ended_at
            ceiling = min(3.0, 1.0 * 2 ** (number - 1))
            assert -TIME_TOLERANCE <= wait <= ceiling + TIME_TOLERANCE, (file_id, number, wait)
            waits.append(wait)
    # Full jitter draws different waits, not one fixed delay.
    assert len({round(wait, 6) for wait in waits}) > len(waits) // 2


async def test_snapshot_shows_retry_time(autojump_clock, make_settings, wall_clock):
    settings = make_settings(job_max_attempts=2, retry_backoff_base_ms=10_000)
    source = FlakySource(failures=1, fail_after=5.0)
    async with started_supervisor(settings, source, wall_clock=wall_clock) as client:
        submitted = await client.submit(1)
        watch = await client.watch(submitted.job_id)
        # The failed attempt changes the document, so the watch wakes at once.
        await watch.changed.wait()
        failed_at = trio.current_time()
        waiting = await client.status(submitted.job_id)
        done = await wait_until_finished(client, submitted.job_id)

    first, second = source.attempts
    assert first.ended_at == failed_at
    backoff = second.started_at - failed_at
    assert backoff > 0
    assert waiting.status is JobStatus.PROCESSING
    assert waiting.attempt == 1
    assert waiting.retry_at == wall_clock.at(second.started_at)
    assert waiting.next_change_seconds == pytest.approx(backoff, abs=TIME_TOLERANCE)
    assert done.status is JobStatus.DONE
    assert done.attempt == 2
    assert done.retry_at is None


async def test_retry_time_cleared_by_next_attempt(autojump_clock, make_settings):
    settings = make_settings(job_max_attempts=2, retry_backoff_base_ms=10_000)
    source = FlakySource(failures=1, duration=100.0, fail_after=5.0)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(1)
        samples = []
        while len(source.attempts) < 2:
            samples.append(await client.status(submitted.job_id))
            await trio.sleep(0.01)
        retrying = await client.status(submitted.job_id)
        cancelled = await client.cancel(submitted.job_id)

    assert any(sample.retry_at is not None for sample in samples)
    assert retrying.attempt == 2
    assert retrying.retry_at is None
    assert cancelled.retry_at is None


async def test_bulk_snapshot_has_no_retry_time(autojump_clock, make_settings):
    settings = make_settings(job_max_attempts=2, retry_backoff_base_ms=10_000)
    source = FlakySource(failures=1, fail_after=5.0)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit_bulk([1, 2])
        samples = await sample_until_finished(client, submitted.job_id)

    assert len(source.attempts) == 4
    assert samples[-1].status is JobStatus.DONE
    assert all(sample.retry_at is None for sample in samples)


async def test_bulk_attempt_is_highest_of_files(autojump_clock, make_settings):
    # File 2 fails twice, file 1 never: the job reaches attempt 3 through file 2.
    settings = make_settings(job_max_attempts=3, retry_backoff_base_ms=10_000)
    source = FlakySource(failures=0, fail_after=5.0, failures_by_file={2: 2})
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit_bulk((1, 2))
        samples = await sample_until_finished(client, submitted.job_id)

    attempts = [sample.attempt for sample in samples]
    assert samples[-1].status is JobStatus.DONE
    assert attempts == sorted(attempts)
    assert attempts[-1] == 3
    assert len(source.attempts_of(2)) == 3


async def test_every_attempt_failing_ends_failed(autojump_clock, make_settings):
    settings = make_settings(job_max_attempts=4)
    source = FlakySource(failures=math.inf, fail_after=1.0)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(1)
        failed = await wait_until_finished(client, submitted.job_id)

    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "transient_failure"
    assert failed.error.message == "attempt at file 1 dropped"
    assert failed.attempt == 4
    assert len(source.attempts) == 4


async def test_unavailable_file_fails_without_retry(autojump_clock, make_settings):
    settings = make_settings(download_availability="multiple-of-7", job_max_attempts=5)
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(8)
        await trio.testing.wait_all_tasks_blocked()
        failed = await client.status(submitted.job_id)
        failed_at = trio.current_time()
        registry = client.metrics_registry

    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "not_found"
    assert failed.attempt == 1
    assert failed_at == 0
    assert source.fetched_ids() == [8]
    assert registry.get_sample_value("download_jobs_attempts_total") == 1
    assert registry.get_sample_value("download_jobs_retries_total") == 0


def long_backoff_settings(make_settings):
    """Return settings whose backoffs are drawn from [0, 60] s, for up to 100 attempts.

    With the seed of the test settings the first draw is about 7 s.
    """
    return make_settings(
        job_max_attempts=100, retry_backoff_base_ms=60_000, retry_backoff_cap_ms=60_000
    )


async def test_backoff_counts_against_deadline(autojump_clock, make_settings):
    # The first backoff is about 7 s, so the job is waiting to retry, with no
    # attempt running, when its 5-second deadline passes.
    settings = long_backoff_settings(make_settings)
    source = FlakySource(failures=math.inf, fail_after=1.0)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(1, job_timeout=5)
        failed = await wait_until_finished(client, submitted.job_id, interval=0.01)
        failed_at = trio.current_time()

    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "timeout"
    assert 5.0 <= failed_at <= 5.1
    assert len(source.attempts) < settings.job_max_attempts
    assert all(attempt.failed for attempt in source.attempts)


async def test_retry_after_deadline_not_shown(autojump_clock, make_settings):
    # The first attempt fails at 1 s and the backoff is about 7 s, so the
    # retry would start after the 5-second deadline. The snapshot shows no
    # retry time, and its next change is the deadline.
    settings = long_backoff_settings(make_settings)
    source = FlakySource(failures=math.inf, fail_after=1.0)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(1, job_timeout=5)
        watch = await client.watch(submitted.job_id)
        await watch.changed.wait()
        waiting = await client.status(submitted.job_id)
        failed = await wait_until_finished(client, submitted.job_id)

    assert waiting.status is JobStatus.PROCESSING
    assert waiting.retry_at is None
    assert waiting.next_change_seconds == pytest.approx(4.0, abs=TIME_TOLERANCE)
    assert failed.error is not None
    assert failed.error.code == "timeout"
    assert len(source.attempts) == 1


# -- the simulated source ---------------------------------------------------


async def test_failure_rate_one_fails_every_attempt(autojump_clock, make_settings):
    settings = make_settings(download_failure_rate=1.0, job_max_attempts=3)
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source) as client:
        jobs = [await client.submit(file_id) for file_id in range(10)]
        ends = [await wait_until_finished(client, job.job_id) for job in jobs]

    assert [end.status for end in ends] == [JobStatus.FAILED] * 10
    assert {end.error.code for end in ends if end.error is not None} == {"transient_failure"}
    assert [end.attempt for end in ends] == [3] * 10
    assert sorted(source.fetched_ids()) == sorted(list(range(10)) * 3)


async def test_failure_rate_zero_never_fails(autojump_clock, make_settings):
    settings = make_settings(download_failure_rate=0.0, job_max_attempts=3)
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source) as client:
        jobs = [await client.submit(file_id) for file_id in range(50)]
        ends = [await wait_until_finished(client, job.job_id) for job in jobs]

    assert [end.status for end in ends] == [JobStatus.DONE] * 50
    assert [end.attempt for end in ends] == [1] * 50
    assert sorted(source.fetched_ids()) == list(range(50))


# -- metrics ----------------------------------------------------------------


async def test_attempt_metrics_match_attempts(autojump_clock, make_settings):
    # File 1 succeeds at once, file 2 on its second attempt, and file 3 fails
    # all three: 1 + 2 + 3 = 6 attempts, of which 0 + 1 + 2 = 3 are retries.
    settings = make_settings(job_max_attempts=3)
    source = FlakySource(failures=0, fail_after=1.0, failures_by_file={2: 1, 3: math.inf})
    async with started_supervisor(settings, source) as client:
        jobs = [await client.submit(file_id) for file_id in (1, 2, 3)]
        ends = [await wait_until_finished(client, job.job_id) for job in jobs]
        registry = client.metrics_registry

    assert [end.status for end in ends] == [JobStatus.DONE, JobStatus.DONE, JobStatus.FAILED]
    assert [end.attempt for end in ends] == [1, 2, 3]
    assert len(source.attempts) == 6
    assert registry.get_sample_value("download_jobs_attempts_total") == 6
    assert registry.get_sample_value("download_jobs_retries_total") == 3
