"""Tests of job watches: ``JobClient.watch``, ``JobClient.wait_for_change`` and ``JobChange``.

A watch returns a snapshot and a ``JobChange`` that the supervisor sets at the
job's next state change (a transition, a retry, its removal); progress, queue
position and a bulk job's file states never set it. These tests run on the
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
from sources import StallSource
from test_supervisor import (
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


def fixed_delay(make_settings: Callable[..., EngineSettings], seconds: int, **overrides):
    """Return settings whose simulated downloads all take exactly ``seconds``."""
    milliseconds = seconds * 1000
    return make_settings(
        download_delay_min_ms=milliseconds, download_delay_max_ms=milliseconds, **overrides
    )


def progress_moved(snapshot: JobSnapshot) -> bool:
    return snapshot.progress > 0


# -- test sources -----------------------------------------------------------


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


async def test_changed_set_on_attempt_failure_and_start(autojump_clock, make_settings):
    # The backoff after the first attempt is drawn from [0, 4] s.
    settings = make_settings(retry_backoff_base_ms=4_000)
    source = FlakySource(StallSource(), fail_after=3)
    async with started_supervisor(settings, source) as client:
        started = trio.current_time()
        submitted = await submit_and_settle(client)
        watch = await client.watch(submitted.job_id)
        await watch.changed.wait()
        failed_at = trio.current_time()
        waiting = await client.status(submitted.job_id)
        next_watch = await client.watch(submitted.job_id)
        await next_watch.changed.wait()
        retried_at = trio.current_time()
        retrying = await client.status(submitted.job_id)

        assert watch.snapshot.attempt == 1
        assert failed_at == pytest.approx(started + 3, abs=1e-9)
        assert waiting.attempt == 1
        assert waiting.retry_at is not None
        assert waiting.next_change_seconds is not None
        assert retried_at - failed_at == pytest.approx(waiting.next_change_seconds, abs=1e-9)
        assert retrying.attempt == 2
        assert retrying.retry_at is None
        assert retrying.status is JobStatus.PROCESSING

        cancelled = await client.cancel(submitted.job_id)
    assert cancelled.status is JobStatus.CANCELLED


async def test_changed_not_set_by_file_end(autojump_clock, make_settings):
    # One file at a time, 20 s each: the first file ends at 20 s, the job at 40 s.
    settings = fixed_delay(make_settings, 20, bulk_max_concurrent_files=1)
    async with started_supervisor(settings) as client:
        started = trio.current_time()
        submitted = await client.submit_bulk((FILE_ID, FILE_ID + 1))
        await trio.testing.wait_all_tasks_blocked()
        watch = await client.watch(submitted.job_id)
        await trio.sleep(30)
        halfway = await client.status(submitted.job_id)
        set_halfway = watch.changed.is_set()
        await watch.changed.wait()
        woke_at = trio.current_time()

        assert sorted(state for _, state in halfway.file_states or ()) == ["done", "processing"]
        assert not set_halfway
        assert woke_at == pytest.approx(started + 40, abs=1e-9)

        finished = await client.status(submitted.job_id)
    assert finished.status is JobStatus.DONE


async def test_changed_not_set_by_missing_file(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20)
    source = MissingAfterSource(SimulatedSource(settings), missing={FILE_ID + 1: 5.0})
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit_bulk((FILE_ID, FILE_ID + 1))
        await trio.testing.wait_all_tasks_blocked()
        watch = await client.watch(submitted.job_id)
        await trio.sleep(10)
        after = await client.status(submitted.job_id)

        assert after.missing_file_ids == (FILE_ID + 1,)
        assert not watch.changed.is_set()

        finished = await wait_until_finished(client, submitted.job_id)
    assert finished.status is JobStatus.DONE


async def test_changed_not_set_by_queue_move(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20, max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        await client.submit(FILE_ID)
        ahead = await client.submit(FILE_ID + 1)
        behind = await client.submit(FILE_ID + 2)
        watch = await client.watch(behind.job_id)
        await client.cancel(ahead.job_id)
        moved = await client.status(behind.job_id)

        assert watch.snapshot.queue_position == 2
        assert moved.queue_position == 1
        assert not watch.changed.is_set()

        finished = await wait_until_finished(client, behind.job_id)
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


async def test_change_cancels_registered_scope(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        submitted = await submit_and_settle(client, FILE_ID)
        began = trio.current_time()
        watch = await client.watch(submitted.job_id)
        with trio.CancelScope() as scope, watch.changed.cancelling(scope):
            await trio.sleep_forever()
        waited = trio.current_time() - began

    assert scope.cancelled_caught
    # The job's next change is its end, 20 s after it started.
    assert waited == pytest.approx(20, abs=0.01)


async def test_past_change_cancels_scope_at_once(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        submitted = await submit_and_settle(client, FILE_ID)
        watch = await client.watch(submitted.job_id)
        await client.cancel(submitted.job_id)
        with trio.CancelScope() as scope, watch.changed.cancelling(scope):
            await trio.sleep_forever()

    assert watch.changed.is_set()
    assert scope.cancelled_caught


async def test_change_after_block_cancels_nothing(autojump_clock, make_settings):
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        submitted = await submit_and_settle(client, FILE_ID)
        watch = await client.watch(submitted.job_id)
        with trio.CancelScope() as scope, watch.changed.cancelling(scope):
            await trio.sleep(1)
        finished = await wait_until_finished(client, submitted.job_id)

    assert finished.status is JobStatus.DONE
    assert watch.changed.is_set()
    assert not scope.cancel_called


def make_queued_job(sequence: int) -> Job:
    return Job(
        str(uuid.uuid4()),
        FILE_ID + sequence,
        sequence=sequence,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        submitted_at=0.0,
        timeout=300.0,
    )


def test_watch_reuses_pending_event():
    table = JobTable(max_tombstones=10)
    job = make_queued_job(0)
    table.add(job)

    assert table.watch(job) is table.watch(job)


# -- wait_for_change --------------------------------------------------------


async def test_wait_ignores_progress_until_state_change(autojump_clock, make_settings):
    # Progress passes 5% at 1 s, but only the end of the job at 20 s wakes the waiter.
    async with started_supervisor(fixed_delay(make_settings, 20)) as client:
        submitted = await submit_and_settle(client)
        waited_from = trio.current_time()
        changed = await client.wait_for_change(submitted.job_id, progress_moved)
        waited = trio.current_time() - waited_from

    assert waited == pytest.approx(20.0, abs=1e-9)
    assert changed.status is JobStatus.DONE
    assert changed.progress == 100


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


# -- many waiters -----------------------------------------------------------

WAITERS = 10_000


async def test_ten_thousand_waiters_stay_asleep(autojump_clock, make_settings):
    # A 200 s job passes nineteen progress steps before it ends; none wakes anyone.
    async with started_supervisor(fixed_delay(make_settings, 200)) as client:
        started = trio.current_time()
        submitted = await submit_and_settle(client)
        woken: list[tuple[float, JobSnapshot]] = []

        async def wait() -> None:
            snapshot = await client.wait_for_change(
                submitted.job_id, lambda snapshot: snapshot.status.is_terminal
            )
            woken.append((trio.current_time(), snapshot))

        async with trio.open_nursery() as nursery:
            for _ in range(WAITERS):
                nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()

            steps = TaskSteps(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(steps)
            try:
                autojump_clock.jump(199.0)
                await trio.testing.wait_all_tasks_blocked()
            finally:
                trio.lowlevel.remove_instrument(steps)
            woken_before_end = len(woken)
            pending_before_end = client.pending_messages()

    wake_times = sorted({woke_at for woke_at, _ in woken})
    assert woken_before_end == 0
    assert pending_before_end == 0
    assert steps.count == 0
    assert len(woken) == WAITERS
    assert wake_times == [pytest.approx(started + 200, abs=1e-9)]
    assert {snapshot.status for _, snapshot in woken} == {JobStatus.DONE}
