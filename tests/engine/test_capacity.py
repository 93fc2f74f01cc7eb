"""Tests of the supervisor's capacity limits: processing slots, the queue and overload.

Every test runs on the autojump clock. Helpers and test sources come from
``test_supervisor.py``, which pytest puts on ``sys.path`` (there is no
``tests/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from test_supervisor import (
    PAST_ANY_DELAY,
    PartialSource,
    RecordingSource,
    count_tasks,
    started_supervisor,
    wait_until_finished,
)

from engine import (
    MAX_MILLISECONDS,
    EngineSettings,
    JobClient,
    JobSnapshot,
    JobStatus,
    Overloaded,
    SimulatedSource,
)
from engine._supervisor import DEFAULT_RETRY_AFTER_SECONDS, MIN_RETRY_AFTER_SECONDS

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)


@pytest.fixture
def make_queue_settings(
    make_settings: Callable[..., EngineSettings],
) -> Callable[..., EngineSettings]:
    """Return ``make_settings`` with the job deadline at its maximum unless overridden.

    Jobs here wait behind each other for several 10-120 s downloads, which can
    add up past the 300 s default deadline. Deadlines are tested in
    ``test_deadlines.py``.
    """

    def make(**overrides: Any) -> EngineSettings:
        return make_settings(**{"job_timeout_ms": MAX_MILLISECONDS, **overrides})

    return make


async def finish_all(client: JobClient, jobs: list[JobSnapshot]) -> list[JobStatus]:
    """Wait until every job in ``jobs`` has ended and return their terminal states."""
    return [(await wait_until_finished(client, job.job_id)).status for job in jobs]


async def queue_positions(client: JobClient, jobs: list[JobSnapshot]) -> list[int | None]:
    return [(await client.status(job.job_id)).queue_position for job in jobs]


# -- processing slots -------------------------------------------------------


async def test_slots_limit_running_actors(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=3)
    async with started_supervisor(settings) as client:
        jobs = [await client.submit(file_id) for file_id in range(12)]
        await trio.testing.wait_all_tasks_blocked()
        stats = await client.stats()
        ends = await finish_all(client, jobs)

    assert stats.running_actors == 3
    assert stats.by_status["processing"] == 3
    assert stats.by_status["queued"] == 9
    assert stats.queued == 9
    assert ends == [JobStatus.DONE] * 12


async def test_slots_never_exceeded(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=3)
    samples: list[tuple[int, int]] = []
    async with started_supervisor(settings) as client:
        jobs = [await client.submit(file_id) for file_id in range(12)]
        while True:
            stats = await client.stats()
            samples.append((stats.running_actors, stats.by_status["processing"]))
            if stats.by_status["queued"] + stats.by_status["processing"] == 0:
                break
            await trio.sleep(0.5)
        ends = await finish_all(client, jobs)

    assert max(running for running, _ in samples) == 3
    assert max(processing for _, processing in samples) == 3
    assert ends == [JobStatus.DONE] * 12


async def test_queue_admits_in_fifo_order(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=2)
    source = RecordingSource(SimulatedSource(settings))
    file_ids = [50, 10, 40, 20, 30, 60]
    async with started_supervisor(settings, source) as client:
        jobs = [await client.submit(file_id) for file_id in file_ids]
        ends = await finish_all(client, jobs)

    assert source.fetched_ids() == file_ids
    starts = [record.started_at for record in source.fetches]
    assert starts == sorted(starts)
    assert ends == [JobStatus.DONE] * 6


# -- queue positions --------------------------------------------------------


async def test_queue_positions_count_from_one(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        jobs = [await client.submit(file_id) for file_id in range(5)]
        positions = await queue_positions(client, jobs)
        ends = await finish_all(client, jobs)

    assert positions == [None, 1, 2, 3, 4]
    assert ends == [JobStatus.DONE] * 5


async def test_submit_snapshot_has_queue_position(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        first = await client.submit(1)
        second = await client.submit(2)
        third = await client.submit(3)
        ends = await finish_all(client, [first, second, third])

    # The first job is still queued when its reply is built, because it gets
    # its processing slot later in the same pass of the supervisor's loop.
    assert first.queue_position == 1
    assert second.queue_position == 1
    assert third.queue_position == 2
    assert ends == [JobStatus.DONE] * 3


async def test_queue_positions_shift_on_start(autojump_clock, make_queue_settings):
    settings = make_queue_settings(
        max_concurrent_jobs=1, download_delay_min_ms=10_000, download_delay_max_ms=10_000
    )
    async with started_supervisor(settings) as client:
        jobs = [await client.submit(file_id) for file_id in range(4)]
        before = await queue_positions(client, jobs)
        await trio.sleep(10.5)  # the first job ends at 10 s and the second starts
        after = await queue_positions(client, jobs)
        first_end = await client.status(jobs[0].job_id)
        ends = await finish_all(client, jobs)

    assert before == [None, 1, 2, 3]
    assert first_end.status is JobStatus.DONE
    assert after == [None, None, 1, 2]
    assert ends == [JobStatus.DONE] * 4


async def test_queue_positions_shift_on_cancel(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        jobs = [await client.submit(file_id) for file_id in range(5)]
        cancelled = await client.cancel(jobs[2].job_id)
        after = await queue_positions(client, jobs)
        ends = await finish_all(client, jobs)

    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.queue_position is None
    assert after == [None, 1, None, 2, 3]
    assert ends == [
        JobStatus.DONE,
        JobStatus.DONE,
        JobStatus.CANCELLED,
        JobStatus.DONE,
        JobStatus.DONE,
    ]


async def test_cancel_queued_leaves_queue(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        jobs = [await client.submit(file_id) for file_id in range(3)]
        before = await client.stats()
        await client.cancel(jobs[1].job_id)
        after = await client.stats()
        ends = await finish_all(client, jobs)

    assert before.queued == 2
    assert after.queued == 1
    assert after.by_status["cancelled"] == 1
    assert ends == [JobStatus.DONE, JobStatus.CANCELLED, JobStatus.DONE]


async def test_cancel_queued_never_fetched(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=1)
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source) as client:
        jobs = [await client.submit(file_id) for file_id in (1, 2, 3)]
        await client.cancel(jobs[1].job_id)
        ends = await finish_all(client, jobs)
        await trio.sleep(PAST_ANY_DELAY)

    assert ends == [JobStatus.DONE, JobStatus.CANCELLED, JobStatus.DONE]
    assert source.fetched_ids() == [1, 3]


# -- overload ---------------------------------------------------------------


async def test_full_queue_raises_overloaded(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=1, max_queued_jobs=2)
    async with started_supervisor(settings) as client:
        jobs = [await client.submit(file_id) for file_id in range(3)]
        with pytest.raises(
            Overloaded, match=r"^the queue is full \(2 waiting, MAX_QUEUED_JOBS is 2\)$"
        ) as raised:
            await client.submit(3)
        ends = await finish_all(client, jobs)

    assert 1 <= raised.value.retry_after <= 60
    assert ends == [JobStatus.DONE] * 3


async def test_full_queue_creates_nothing(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=1, max_queued_jobs=2)
    async with started_supervisor(settings) as client:
        jobs = [await client.submit(file_id) for file_id in range(3)]
        stats_before = await client.stats()
        listed_before = await client.list_jobs()
        with pytest.raises(Overloaded):
            await client.submit(3)
        stats_after = await client.stats()
        listed_after = await client.list_jobs()
        ends = await finish_all(client, jobs)

    assert stats_after == stats_before
    assert listed_after == listed_before
    assert ends == [JobStatus.DONE] * 3


async def test_zero_queue_rejects_when_slots_busy(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=2, max_queued_jobs=0)
    async with started_supervisor(settings) as client:
        jobs = [await client.submit(file_id) for file_id in range(2)]
        with pytest.raises(Overloaded):
            await client.submit(2)
        ends = await finish_all(client, jobs)
        # Free slots take a job again once the first two have ended.
        later = await client.submit(3)
        later_end = await wait_until_finished(client, later.job_id)

    assert ends == [JobStatus.DONE] * 2
    assert later_end.status is JobStatus.DONE


async def test_retry_after_default_without_completions(autojump_clock, make_queue_settings):
    settings = make_queue_settings(max_concurrent_jobs=1, max_queued_jobs=0)
    async with started_supervisor(settings) as client:
        running = await client.submit(1)
        with pytest.raises(Overloaded) as raised:
            await client.submit(2)
        end = await wait_until_finished(client, running.job_id)

    assert raised.value.retry_after == DEFAULT_RETRY_AFTER_SECONDS
    assert end.status is JobStatus.DONE


async def test_retry_after_follows_completion_rate(autojump_clock, make_queue_settings):
    # One slot and a fixed 5-second download: one completion every 5 s, so a
    # slot frees about every 5 s. Completions at 5, 10, ..., 60 s fall in the
    # 60-second window at 62.5 s: 12 over 57.5 s, an estimate of 4.8 s.
    settings = make_queue_settings(
        max_concurrent_jobs=1,
        max_queued_jobs=30,
        download_delay_min_ms=5_000,
        download_delay_max_ms=5_000,
    )
    async with started_supervisor(settings) as client:
        jobs = [await client.submit(file_id) for file_id in range(31)]
        await trio.sleep(62.5)
        done = [await client.status(job.job_id) for job in jobs[:12]]
        while True:
            try:
                jobs.append(await client.submit(len(jobs)))
            except Overloaded as exc:
                retry_after = exc.retry_after
                break

    assert [job.status for job in done] == [JobStatus.DONE] * 12
    assert retry_after == pytest.approx(5.0, rel=0.1)


async def test_retry_after_clamped_to_minimum(autojump_clock, make_queue_settings):
    # 20 slots and a fixed 1-second download: 20 completions per second,
    # whose reciprocal (0.05 s) is below the 1-second minimum.
    settings = make_queue_settings(
        max_concurrent_jobs=20,
        max_queued_jobs=0,
        download_delay_min_ms=1_000,
        download_delay_max_ms=1_000,
    )
    async with started_supervisor(settings) as client:
        first = [await client.submit(file_id) for file_id in range(20)]
        first_ends = await finish_all(client, first)
        second = [await client.submit(file_id) for file_id in range(20, 40)]
        with pytest.raises(Overloaded) as raised:
            await client.submit(40)
        second_ends = await finish_all(client, second)

    assert first_ends == [JobStatus.DONE] * 20
    assert raised.value.retry_after == MIN_RETRY_AFTER_SECONDS
    assert second_ends == [JobStatus.DONE] * 20


# -- cancellation at scale --------------------------------------------------


async def test_cancel_ten_thousand_processing(autojump_clock, make_queue_settings):
    job_count = 10_000
    settings = make_queue_settings(max_concurrent_jobs=job_count)
    source = PartialSource()
    async with started_supervisor(settings, source) as client:
        await trio.testing.wait_all_tasks_blocked()
        idle_tasks = count_tasks()
        jobs = [await client.submit(file_id) for file_id in range(job_count)]
        await trio.testing.wait_all_tasks_blocked()
        busy = await client.stats()

        cancelled: list[JobSnapshot] = []

        async def cancel(job_id: str) -> None:
            cancelled.append(await client.cancel(job_id))

        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(cancel, job.job_id)
        await trio.testing.wait_all_tasks_blocked()
        tasks_after = count_tasks()
        after = await client.stats()

    assert busy.running_actors == job_count
    assert len(cancelled) == job_count
    assert {snapshot.status for snapshot in cancelled} == {JobStatus.CANCELLED}
    assert {snapshot.job_id for snapshot in cancelled} == {job.job_id for job in jobs}
    assert len(source.cancelled) == job_count
    assert tasks_after == idle_tasks
    assert after.running_actors == 0
    assert after.by_status["cancelled"] == job_count
