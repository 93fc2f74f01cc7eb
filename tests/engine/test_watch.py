"""Tests of job watches: ``JobClient.watch``, ``JobClient.wait_for_change`` and the table's events.

A watch returns a snapshot, an event that the supervisor sets when the job
changes other than by the passage of time, and the trio time at which the
job's scheduled progress reaches its next step. These tests run on the
autojump clock, so the times they check are exact virtual times.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing
from test_supervisor import (
    InstantSource,
    started_supervisor,
    wait_until_finished,
)

from engine import (
    EngineSettings,
    FileUnavailable,
    JobClient,
    JobExpired,
    JobSnapshot,
    JobStatus,
    ProgressReporter,
    ResultInfo,
    SimulatedSource,
    TransientSourceError,
)
from engine._table import Job, JobTable

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

FILE_ID = 70_000
STEP_PERCENT = 5


def fixed_delay(make_settings: Callable[..., EngineSettings], seconds: int, **overrides):
    """Return settings whose simulated downloads all take exactly ``seconds``."""
    milliseconds = seconds * 1000
    return make_settings(
        download_delay_min_ms=milliseconds, download_delay_max_ms=milliseconds, **overrides
    )


def step_seconds(delay: float) -> float:
    """Return the time one progress step of ``STEP_PERCENT`` takes on a ``delay``-second job."""
    return delay * STEP_PERCENT / 100


def progress_moved(snapshot: JobSnapshot) -> bool:
    return snapshot.progress > 0


# -- test sources -----------------------------------------------------------


class StallSource:
    """A source that declares no schedule and never finishes."""

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def check(self, file_id: int) -> int | None:
        await trio.lowlevel.checkpoint()
        return None

    async def check_health(self) -> None:
        await trio.lowlevel.checkpoint()


class FlakySource:
    """A source whose first attempt per file fails transiently after ``fail_after`` seconds.

    The failing attempt reports no progress. Later attempts go to ``inner``.
    """

    def __init__(self, inner: SimulatedSource | StallSource, fail_after: float) -> None:
        self.inner = inner
        self.fail_after = fail_after
        self.attempts: dict[int, int] = {}

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        self.attempts[file_id] = self.attempts.get(file_id, 0) + 1
        if self.attempts[file_id] == 1:
            await trio.sleep(self.fail_after)
            raise TransientSourceError(f"first attempt of file {file_id} failed")
        return await self.inner.fetch(file_id, progress, destination)

    async def check(self, file_id: int) -> int | None:
        return await self.inner.check(file_id)

    async def check_health(self) -> None:
        await self.inner.check_health()


class LateScheduleSource:
    """A source that declares its ``duration``-second schedule only after ``setup`` seconds,
    like a source that connects before it learns the transfer's size."""

    def __init__(self, setup: float, duration: float) -> None:
        self.setup = setup
        self.duration = duration
        self.inner = InstantSource()

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        await trio.sleep(self.setup)
        progress.advance_linearly(trio.current_time(), self.duration)
        await trio.sleep(self.duration)
        return await self.inner.fetch(file_id, progress, destination)

    async def check(self, file_id: int) -> int | None:
        return await self.inner.check(file_id)

    async def check_health(self) -> None:
        await self.inner.check_health()


class PiecewiseSource:
    """A source that reports half its progress with ``set_fraction`` after ``after`` seconds,
    then stalls."""

    def __init__(self, after: float) -> None:
        self.after = after

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        await trio.sleep(self.after)
        progress.set_fraction(0.5)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def check(self, file_id: int) -> int | None:
        await trio.lowlevel.checkpoint()
        return None

    async def check_health(self) -> None:
        await trio.lowlevel.checkpoint()


class MissingAfterSource:
    """A source that raises ``FileUnavailable`` for the ids in ``missing`` after their delay.

    Other ids go to ``inner``.
    """

    def __init__(self, inner: SimulatedSource, missing: dict[int, float]) -> None:
        self.inner = inner
        self.missing = missing

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        delay = self.missing.get(file_id)
        if delay is None:
            return await self.inner.fetch(file_id, progress, destination)
        await trio.sleep(delay)
        raise FileUnavailable(file_id)

    async def check(self, file_id: int) -> int | None:
        return await self.inner.check(file_id)

    async def check_health(self) -> None:
        await self.inner.check_health()


class TaskSteps:
    """A trio instrument that counts the steps of every task except ``ignored``."""

    def __init__(self, ignored: trio.lowlevel.Task) -> None:
        self.ignored = ignored
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is not self.ignored:
            self.count += 1


async def submit_and_settle(client: JobClient, file_id: int = FILE_ID) -> JobSnapshot:
    """Submit a job and wait until every task is blocked, so its actor is inside its first fetch."""
    submitted = await client.submit(file_id)
    await trio.testing.wait_all_tasks_blocked()
    return submitted


# -- next_change_at ---------------------------------------------------------


async def test_next_change_at_first_step(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        started = trio.current_time()
        submitted = await submit_and_settle(client)
        watch = await client.watch(submitted.job_id)

        assert watch.snapshot.status is JobStatus.PROCESSING
        assert watch.snapshot.progress == 0
        assert watch.next_change_at == pytest.approx(started + step_seconds(20), abs=1e-9)

        finished = await wait_until_finished(client, submitted.job_id)
    assert finished.status is JobStatus.DONE


async def test_next_change_at_follows_progress(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        started = trio.current_time()
        submitted = await submit_and_settle(client)
        await trio.sleep(2.5)
        watch = await client.watch(submitted.job_id)

        assert watch.snapshot.progress == 10
        assert watch.next_change_at == pytest.approx(started + 3.0, abs=1e-9)

        finished = await wait_until_finished(client, submitted.job_id)
    assert finished.status is JobStatus.DONE


async def test_next_change_at_none_before_done(autojump_clock, make_settings):
    # At 95% the next step would be 100%, which only the end of the job sets.
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        submitted = await submit_and_settle(client)
        await trio.sleep(19.5)
        watch = await client.watch(submitted.job_id)

        assert watch.snapshot.progress == 95
        assert watch.next_change_at is None

        finished = await wait_until_finished(client, submitted.job_id)
    assert finished.status is JobStatus.DONE


async def test_next_change_at_none_when_queued(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20, max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        await client.submit(FILE_ID)
        queued = await client.submit(FILE_ID + 1)
        watch = await client.watch(queued.job_id)

        assert watch.snapshot.status is JobStatus.QUEUED
        assert watch.next_change_at is None

        finished = await wait_until_finished(client, queued.job_id)
    assert finished.status is JobStatus.DONE


async def test_next_change_at_none_for_bulk(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        submitted = await client.submit_bulk((FILE_ID, FILE_ID + 1))
        await trio.testing.wait_all_tasks_blocked()
        watch = await client.watch(submitted.job_id)

        assert watch.snapshot.status is JobStatus.PROCESSING
        assert watch.next_change_at is None

        finished = await wait_until_finished(client, submitted.job_id)
    assert finished.status is JobStatus.DONE


async def test_next_change_at_none_without_schedule(autojump_clock, settings):
    async with started_supervisor(settings, StallSource()) as client:
        submitted = await submit_and_settle(client)
        watch = await client.watch(submitted.job_id)

        assert watch.snapshot.status is JobStatus.PROCESSING
        assert watch.next_change_at is None

        cancelled = await client.cancel(submitted.job_id)
    assert cancelled.status is JobStatus.CANCELLED


# -- the changed event ------------------------------------------------------


async def test_changed_not_set_by_progress(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        submitted = await submit_and_settle(client)
        watch = await client.watch(submitted.job_id)
        await trio.sleep(10)
        later = await client.status(submitted.job_id)

        assert later.progress == 50
        assert not watch.changed.is_set()

        finished = await wait_until_finished(client, submitted.job_id)
    assert finished.status is JobStatus.DONE


async def test_changed_set_on_done(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        started = trio.current_time()
        submitted = await submit_and_settle(client)
        watch = await client.watch(submitted.job_id)
        await watch.changed.wait()
        woke_at = trio.current_time()
        finished = await client.status(submitted.job_id)

    assert woke_at == pytest.approx(started + 20, abs=1e-9)
    assert finished.status is JobStatus.DONE


async def test_changed_set_on_start(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20, max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        started = trio.current_time()
        await client.submit(FILE_ID)
        queued = await client.submit(FILE_ID + 1)
        watch = await client.watch(queued.job_id)
        await watch.changed.wait()
        woke_at = trio.current_time()
        processing = await client.status(queued.job_id)

        assert woke_at == pytest.approx(started + 20, abs=1e-9)
        assert processing.status is JobStatus.PROCESSING

        finished = await wait_until_finished(client, queued.job_id)
    assert finished.status is JobStatus.DONE


async def test_changed_set_on_cancel(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        submitted = await submit_and_settle(client)
        watch = await client.watch(submitted.job_id)
        cancelled = await client.cancel(submitted.job_id)

    assert watch.changed.is_set()
    assert cancelled.status is JobStatus.CANCELLED


async def test_changed_set_on_removal(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20, job_ttl_ms=5_000)
    async with started_supervisor(settings) as client:
        started = trio.current_time()
        submitted = await submit_and_settle(client)
        finished = await wait_until_finished(client, submitted.job_id, interval=1)
        watch = await client.watch(submitted.job_id)
        await watch.changed.wait()
        woke_at = trio.current_time()

        assert finished.status is JobStatus.DONE
        assert woke_at == pytest.approx(started + 25, abs=1e-9)
        with pytest.raises(JobExpired):
            await client.status(submitted.job_id)


async def test_changed_set_on_attempt(autojump_clock, make_settings):
    # No backoff, so the second attempt starts the moment the first fails.
    settings = make_settings(retry_backoff_base_ms=0)
    source = FlakySource(StallSource(), fail_after=3)
    async with started_supervisor(settings, source) as client:
        started = trio.current_time()
        submitted = await submit_and_settle(client)
        watch = await client.watch(submitted.job_id)
        await watch.changed.wait()
        woke_at = trio.current_time()
        retrying = await client.status(submitted.job_id)

        assert watch.snapshot.attempt == 1
        assert woke_at == pytest.approx(started + 3, abs=1e-9)
        assert retrying.attempt == 2
        assert retrying.status is JobStatus.PROCESSING

        cancelled = await client.cancel(submitted.job_id)
    assert cancelled.status is JobStatus.CANCELLED


async def test_changed_set_on_file_end(autojump_clock, make_settings):
    # One file at a time, 20 s each: the first file ends at 20 s.
    settings = fixed_delay(make_settings, 20, bulk_max_concurrent_files=1)
    async with started_supervisor(settings) as client:
        started = trio.current_time()
        submitted = await client.submit_bulk((FILE_ID, FILE_ID + 1))
        await trio.testing.wait_all_tasks_blocked()
        watch = await client.watch(submitted.job_id)
        await watch.changed.wait()
        woke_at = trio.current_time()
        after = await client.status(submitted.job_id)

        assert woke_at == pytest.approx(started + 20, abs=1e-9)
        assert after.status is JobStatus.PROCESSING
        assert sorted(state for _, state in after.file_states or ()) == ["done", "processing"]

        finished = await wait_until_finished(client, submitted.job_id)
    assert finished.status is JobStatus.DONE


async def test_changed_set_on_missing_file(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20)
    source = MissingAfterSource(SimulatedSource(settings), missing={FILE_ID + 1: 5.0})
    async with started_supervisor(settings, source) as client:
        started = trio.current_time()
        submitted = await client.submit_bulk((FILE_ID, FILE_ID + 1))
        await trio.testing.wait_all_tasks_blocked()
        watch = await client.watch(submitted.job_id)
        await watch.changed.wait()
        woke_at = trio.current_time()
        after = await client.status(submitted.job_id)

        assert woke_at == pytest.approx(started + 5, abs=1e-9)
        assert after.missing_file_ids == (FILE_ID + 1,)

        finished = await wait_until_finished(client, submitted.job_id)
    assert finished.status is JobStatus.DONE


async def test_changed_set_on_queue_move(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20, max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        await client.submit(FILE_ID)
        ahead = await client.submit(FILE_ID + 1)
        behind = await client.submit(FILE_ID + 2)
        watch = await client.watch(behind.job_id)
        await client.cancel(ahead.job_id)
        moved = await client.status(behind.job_id)

        assert watch.snapshot.queue_position == 2
        assert watch.changed.is_set()
        assert moved.queue_position == 1

        finished = await wait_until_finished(client, behind.job_id)
    assert finished.status is JobStatus.DONE


async def test_changed_unset_when_position_stays(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20, max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        await client.submit(FILE_ID)
        queued = await client.submit(FILE_ID + 1)
        watch = await client.watch(queued.job_id)
        await client.submit(FILE_ID + 2)  # joins the queue behind the watched job
        await trio.sleep(10)
        unmoved = await client.status(queued.job_id)

        assert unmoved.queue_position == 1
        assert not watch.changed.is_set()

        finished = await wait_until_finished(client, queued.job_id)
    assert finished.status is JobStatus.DONE


async def test_changed_unset_for_other_job(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        watched = await submit_and_settle(client, FILE_ID)
        other = await submit_and_settle(client, FILE_ID + 1)
        watch = await client.watch(watched.job_id)
        cancelled = await client.cancel(other.job_id)

        assert cancelled.status is JobStatus.CANCELLED
        assert not watch.changed.is_set()

        finished = await wait_until_finished(client, watched.job_id)
    assert finished.status is JobStatus.DONE


def make_queued_job(sequence: int) -> Job:
    return Job(
        str(uuid.uuid4()),
        FILE_ID + sequence,
        sequence=sequence,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        submitted_at=0.0,
        timeout=300.0,
    )


def test_queue_moves_notify_once_per_pass():
    table = JobTable(max_tombstones=10)
    jobs = [make_queued_job(sequence) for sequence in range(4)]
    for job in jobs:
        table.add(job)
    first = table.watch(jobs[3])

    table.move(jobs[0], JobStatus.PROCESSING)
    table.move(jobs[1], JobStatus.PROCESSING)
    set_before_pass_end = first.is_set()
    table.notify_queue_moved()
    set_at_pass_end = first.is_set()
    second = table.watch(jobs[3])
    table.notify_queue_moved()

    assert not set_before_pass_end
    assert set_at_pass_end
    assert second is not first
    assert not second.is_set()
    assert table.queue_position(jobs[3]) == 2


def test_watch_reuses_pending_event():
    table = JobTable(max_tombstones=10)
    job = make_queued_job(0)
    table.add(job)

    assert table.watch(job) is table.watch(job)


# -- wait_for_change --------------------------------------------------------


@pytest.mark.parametrize(("delay", "expected_wait"), [(20, 1.0), (200, 10.0)])
async def test_wait_returns_at_next_step(autojump_clock, make_settings, delay, expected_wait):
    async with started_supervisor(fixed_delay(make_settings, delay)) as client:
        submitted = await submit_and_settle(client)
        waited_from = trio.current_time()
        changed = await client.wait_for_change(submitted.job_id, progress_moved)
        waited = trio.current_time() - waited_from

        assert waited == pytest.approx(expected_wait, abs=1e-9)
        assert changed.progress == STEP_PERCENT
        assert changed.status is JobStatus.PROCESSING

        finished = await wait_until_finished(client, submitted.job_id)
    assert finished.status is JobStatus.DONE


async def test_wait_returns_at_once_if_differs(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        submitted = await submit_and_settle(client)
        waited_from = trio.current_time()
        changed = await client.wait_for_change(submitted.job_id, lambda snapshot: True)

        assert trio.current_time() == waited_from
        assert changed.status is JobStatus.PROCESSING

        finished = await wait_until_finished(client, submitted.job_id)
    assert finished.status is JobStatus.DONE


async def test_wait_returns_on_done(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        started = trio.current_time()
        submitted = await submit_and_settle(client)
        finished = await client.wait_for_change(
            submitted.job_id, lambda snapshot: snapshot.status.is_terminal
        )

    assert trio.current_time() == pytest.approx(started + 20, abs=1e-9)
    assert finished.status is JobStatus.DONE


async def test_wait_woken_by_cancel(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 200)) as client:
        submitted = await submit_and_settle(client)
        woken: list[tuple[float, JobSnapshot]] = []

        async def wait() -> None:
            snapshot = await client.wait_for_change(
                submitted.job_id, lambda snapshot: snapshot.status.is_terminal
            )
            woken.append((trio.current_time(), snapshot))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.sleep(3)
            cancelled_at = trio.current_time()
            await client.cancel(submitted.job_id)

    ((woke_at, snapshot),) = woken
    assert woke_at == cancelled_at
    assert snapshot.status is JobStatus.CANCELLED


async def test_wait_raises_expired(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20, job_ttl_ms=5_000)
    async with started_supervisor(settings) as client:
        started = trio.current_time()
        submitted = await submit_and_settle(client)
        finished = await wait_until_finished(client, submitted.job_id, interval=1)
        with pytest.raises(JobExpired):
            await client.wait_for_change(submitted.job_id, lambda snapshot: False)

    assert finished.status is JobStatus.DONE
    assert trio.current_time() == pytest.approx(started + 25, abs=1e-9)


async def test_wait_sleeps_without_schedule(autojump_clock, settings):
    async with started_supervisor(settings, StallSource()) as client:
        submitted = await submit_and_settle(client)
        waited_from = trio.current_time()
        with trio.move_on_after(30) as scope:
            await client.wait_for_change(submitted.job_id, progress_moved)
        unchanged = await client.status(submitted.job_id)

        assert scope.cancelled_caught
        assert trio.current_time() == pytest.approx(waited_from + 30, abs=1e-9)
        assert unchanged.progress == 0

        cancelled = await client.cancel(submitted.job_id)
    assert cancelled.status is JobStatus.CANCELLED


async def test_cancelled_wait_leaves_job_running(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        submitted = await submit_and_settle(client)
        with trio.move_on_after(0.5) as scope:
            await client.wait_for_change(submitted.job_id, progress_moved)
        running = await client.status(submitted.job_id)

        assert scope.cancelled_caught
        assert running.status is JobStatus.PROCESSING
        assert client.pending_messages() == 0

        finished = await wait_until_finished(client, submitted.job_id)
    assert finished.status is JobStatus.DONE


@pytest.mark.xfail(
    strict=True,
    reason="wait_for_change reads next_change_at once per watch, so progress that a source "
    "declares after the watch (a late schedule or set_fraction) wakes no waiter",
)
@pytest.mark.parametrize(
    ("source", "expected_wait"),
    [
        # The schedule starts at 1 s and runs 20 s, so 5% is reached at 2 s.
        pytest.param(LateScheduleSource(setup=1, duration=20), 2.0, id="late-schedule"),
        pytest.param(PiecewiseSource(after=2), 2.0, id="set-fraction"),
    ],
)
async def test_wait_sees_unscheduled_progress(autojump_clock, settings, source, expected_wait):
    async with started_supervisor(settings, source) as client:
        submitted = await submit_and_settle(client)
        waited_from = trio.current_time()
        with trio.move_on_after(30):
            await client.wait_for_change(submitted.job_id, progress_moved)
        waited = trio.current_time() - waited_from
        await client.cancel(submitted.job_id)

    assert waited == pytest.approx(expected_wait, abs=1e-9)


# -- many waiters -----------------------------------------------------------

WAITERS = 10_000


async def test_ten_thousand_waiters_stay_asleep(autojump_clock, make_settings):
    # A 200 s job reaches its first 5% step at 10 s.
    async with started_supervisor(fixed_delay(make_settings, 200)) as client:
        started = trio.current_time()
        submitted = await submit_and_settle(client)
        woken: list[tuple[float, int]] = []

        async def wait() -> None:
            snapshot = await client.wait_for_change(submitted.job_id, progress_moved)
            woken.append((trio.current_time(), snapshot.progress))

        async with trio.open_nursery() as nursery:
            for _ in range(WAITERS):
                nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()

            steps = TaskSteps(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(steps)
            try:
                autojump_clock.jump(9.0)
                await trio.testing.wait_all_tasks_blocked()
            finally:
                trio.lowlevel.remove_instrument(steps)
            woken_before_step = len(woken)
            pending_before_step = client.pending_messages()

        finished = await wait_until_finished(client, submitted.job_id, interval=10)

    wake_times = sorted({woke_at for woke_at, _ in woken})
    assert woken_before_step == 0
    assert pending_before_step == 0
    assert steps.count == 0
    assert len(woken) == WAITERS
    assert wake_times == [pytest.approx(started + 10, abs=1e-9)]
    assert {progress for _, progress in woken} == {STEP_PERCENT}
    assert finished.status is JobStatus.DONE
