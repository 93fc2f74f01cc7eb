"""Tests of ``engine._supervisor``: the job table, its clients and its actors.

Every test runs on the autojump clock, so the simulated 10-120 second
downloads take milliseconds, and under a deadline on that clock, so a hang
fails at once. Where the order of two messages matters, the test forces it
with ``wait_all_tasks_blocked`` or an event rather than relying on luck.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

from engine import (
    EngineSettings,
    FileUnavailable,
    JobAlreadyFinished,
    JobClient,
    JobNotFound,
    JobSnapshot,
    JobStatus,
    ProgressReporter,
    ResultInfo,
    ResultNotReady,
    ResultUnavailable,
    SimulatedSource,
    Source,
    SourceError,
    Supervisor,
    SupervisorClosed,
    archive_size,
    content_size,
    open_supervisor,
    utc_now,
)

# A deadline in virtual seconds on the autojump clock. It is far above the
# longest test (a few 120-second downloads in a row), so only a hang reaches it.
pytestmark = pytest.mark.deadline(3600)

# Longer than any delay the test settings can draw (120 s).
PAST_ANY_DELAY = 121.0

# Wall-clock timestamps have microsecond resolution, and the supervisor
# subtracts one rounded timedelta from another.
TIMESTAMP_TOLERANCE = timedelta(microseconds=10)


# -- test sources -----------------------------------------------------------


def write_now(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` on the trio thread, with no checkpoint.

    Test sources write synchronously on purpose. ``trio.Path`` would run the
    write in a worker thread, and while the event loop waits for it the
    autojump clock would jump ahead to the next deadline.
    """
    path.write_bytes(data)


@dataclasses.dataclass
class FetchRecord:
    """One call of ``RecordingSource.fetch``."""

    file_id: int
    destination: Path
    started_at: float
    # (start, duration) declared through ``advance_linearly``; None if none was.
    schedule: tuple[float, float] | None = None
    returned_at: float | None = None  # trio time fetch returned a result
    raised: BaseException | None = None  # what fetch raised, Cancelled included


class RecordingReporter:
    """A progress reporter that forwards to the job's slot and records the declared schedule."""

    def __init__(self, slot: ProgressReporter, record: FetchRecord) -> None:
        self._slot = slot
        self._record = record

    def advance_linearly(self, start: float, duration: float) -> None:
        self._record.schedule = (start, duration)
        self._slot.advance_linearly(start, duration)

    def set_fraction(self, fraction: float) -> None:
        self._slot.set_fraction(fraction)


class RecordingSource:
    """A source wrapper that records the schedule, return time and exception of each fetch."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.fetches: list[FetchRecord] = []

    def fetched_ids(self) -> list[int]:
        return [record.file_id for record in self.fetches]

    def record_for(self, file_id: int) -> FetchRecord:
        (record,) = [record for record in self.fetches if record.file_id == file_id]
        return record

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        record = FetchRecord(file_id, destination, started_at=trio.current_time())
        self.fetches.append(record)
        try:
            result = await self.inner.fetch(
                file_id, RecordingReporter(progress, record), destination
            )
        except BaseException as exc:
            record.raised = exc
            raise
        record.returned_at = trio.current_time()
        return result

    async def check(self, file_id: int) -> int | None:
        return await self.inner.check(file_id)

    async def check_health(self) -> None:
        await self.inner.check_health()


class InstantSource:
    """A source that writes a small text file and returns, with no checkpoint, once ``gate`` is set.

    Without a gate, ``fetch`` returns at once, so an actor starts, finishes and
    reports in one scheduling step.
    """

    def __init__(self, gate: trio.Event | None = None) -> None:
        self.gate = gate
        self.returned: list[int] = []  # file ids whose fetch returned a result

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        if self.gate is not None:
            await self.gate.wait()
        content = f"file {file_id}\n".encode()
        write_now(destination, content)
        self.returned.append(file_id)
        return ResultInfo(
            size=len(content),
            media_type="text/plain",
            file_name=f"{file_id}.txt",
            sha256=hashlib.sha256(content).hexdigest(),
        )

    async def check(self, file_id: int) -> int | None:
        await trio.lowlevel.checkpoint()
        return None

    async def check_health(self) -> None:
        await trio.lowlevel.checkpoint()


class UpstreamGone(SourceError):
    code = "upstream_gone"


class FaultySource:
    """A source that fails the file ids in ``failures`` after a partial write and one second.

    Other ids go to a ``SimulatedSource``.
    """

    def __init__(self, settings: EngineSettings, failures: dict[int, Exception]) -> None:
        self.inner = SimulatedSource(settings)
        self.failures = failures

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        failure = self.failures.get(file_id)
        if failure is None:
            return await self.inner.fetch(file_id, progress, destination)
        write_now(destination, b"partial")
        progress.set_fraction(0.5)
        await trio.sleep(1)
        raise failure

    async def check(self, file_id: int) -> int | None:
        return await self.inner.check(file_id)

    async def check_health(self) -> None:
        await self.inner.check_health()


class OverrunSource:
    """A source that declares a one-second schedule, then takes ``seconds`` to finish."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.inner = InstantSource()

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        progress.advance_linearly(trio.current_time(), 1.0)
        await trio.sleep(self.seconds)
        return await self.inner.fetch(file_id, progress, destination)

    async def check(self, file_id: int) -> int | None:
        return await self.inner.check(file_id)

    async def check_health(self) -> None:
        await self.inner.check_health()


class PartialSource:
    """A source that writes part of the file, then waits forever, like a stalled transfer.

    When cancelled, it first spends ``cleanup_seconds`` in a shielded cleanup,
    like a source that closes its connection cleanly.
    """

    def __init__(self, cleanup_seconds: float = 0.0) -> None:
        self.cleanup_seconds = cleanup_seconds
        self.cancelled: list[int] = []  # file ids whose fetch was cancelled

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        write_now(destination, b"partial")
        progress.set_fraction(0.3)
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.append(file_id)
            with trio.CancelScope(shield=True):
                await trio.sleep(self.cleanup_seconds)

    async def check(self, file_id: int) -> int | None:
        await trio.lowlevel.checkpoint()
        return None

    async def check_health(self) -> None:
        await trio.lowlevel.checkpoint()


# -- helpers ----------------------------------------------------------------


@asynccontextmanager
async def started_supervisor(
    settings: EngineSettings,
    source: Source | None = None,
    *,
    wall_clock: Callable[[], datetime] = utc_now,
) -> AsyncIterator[JobClient]:
    """Run a ``Supervisor`` for the block and shut it down on exit.

    ``open_supervisor`` shields its shutdown, so the test deadline could not
    end a shutdown that hangs. This shutdown is not shielded.
    """
    supervisor = Supervisor(settings, source, wall_clock=wall_clock)
    async with trio.open_nursery() as nursery:
        client: JobClient = await nursery.start(supervisor.run)
        try:
            yield client
        finally:
            await client.shutdown()


def count_tasks() -> int:
    """Count the tasks of this trio run by walking the nursery tree from the root task."""

    def count_below(task: trio.lowlevel.Task) -> int:
        return sum(
            1 + count_below(child)
            for nursery in task.child_nurseries
            for child in nursery.child_tasks
        )

    return 1 + count_below(trio.lowlevel.current_root_task())


async def wait_until_finished(client: JobClient, job_id: str, interval: float = 0.5) -> JobSnapshot:
    """Poll the job's status until it is terminal and return the terminal snapshot."""
    while True:
        snapshot = await client.status(job_id)
        if snapshot.status.is_terminal:
            return snapshot
        await trio.sleep(interval)


def result_path(results_dir: Path, job_id: str) -> Path:
    return results_dir / f"{job_id}.zip"


# -- lifecycle and progress -------------------------------------------------


async def test_submit_returns_queued_snapshot(autojump_clock, settings, wall_clock):
    await trio.sleep(7)
    async with started_supervisor(settings, wall_clock=wall_clock) as client:
        snapshot = await client.submit(42)

        assert snapshot.status is JobStatus.QUEUED
        assert snapshot.file_id == 42
        assert snapshot.progress == 0
        assert snapshot.created_at == wall_clock.at(7)
        assert snapshot.updated_at == snapshot.created_at
        assert snapshot.result is None
        assert snapshot.error is None
        assert snapshot.eta_seconds is None

        finished = await wait_until_finished(client, snapshot.job_id)
        assert finished.status is JobStatus.DONE


async def test_status_right_after_submit_finds_job(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        submitted = await client.submit(1)
        snapshot = await client.status(submitted.job_id)

        assert snapshot.job_id == submitted.job_id
        assert snapshot.status is JobStatus.PROCESSING

        await client.cancel(submitted.job_id)
        finished = await client.status(submitted.job_id)
        assert finished.status is JobStatus.CANCELLED


@pytest.mark.parametrize("step", [1, 5, 7, 50])
async def test_lifecycle_progress_rises_in_steps(autojump_clock, make_settings, step):
    # A fixed 20-second delay: one percent every 0.2 s, sampled every 0.05 s,
    # so every step shows up in the samples.
    settings = make_settings(
        download_delay_min_ms=20_000, download_delay_max_ms=20_000, progress_step_percent=step
    )
    async with started_supervisor(settings) as client:
        submitted = await client.submit(3)
        samples = [submitted]
        while not samples[-1].status.is_terminal:
            await trio.sleep(0.05)
            samples.append(await client.status(submitted.job_id))

    statuses = [sample.status for sample in samples]
    progresses = [sample.progress for sample in samples]
    processing = {s.progress for s in samples if s.status is JobStatus.PROCESSING}

    assert statuses[0] is JobStatus.QUEUED
    assert set(statuses[1:-1]) == {JobStatus.PROCESSING}
    assert statuses[-1] is JobStatus.DONE
    assert progresses == sorted(progresses)
    assert min(progresses) == 0
    assert max(processing) < 100
    assert progresses[-1] == 100
    assert processing == set(range(0, 100, step))


async def test_progress_below_100_until_done(autojump_clock, settings):
    async with started_supervisor(settings, OverrunSource(seconds=5)) as client:
        submitted = await client.submit(1)
        await trio.sleep(3)
        overdue = await client.status(submitted.job_id)
        finished = await wait_until_finished(client, submitted.job_id)

    assert overdue.status is JobStatus.PROCESSING
    assert overdue.progress == 95
    assert overdue.eta_seconds == 0
    assert finished.status is JobStatus.DONE
    assert finished.progress == 100


async def test_progress_timestamps_follow_schedule(autojump_clock, settings, wall_clock):
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source, wall_clock=wall_clock) as client:
        await trio.sleep(2)
        submitted = await client.submit(5)
        samples: list[tuple[float, JobSnapshot]] = []
        while True:
            await trio.sleep(0.75)
            snapshot = await client.status(submitted.job_id)
            if snapshot.status is not JobStatus.PROCESSING:
                break
            samples.append((trio.current_time(), snapshot))

    assert snapshot.status is JobStatus.DONE
    record = source.record_for(5)
    assert record.schedule is not None
    assert record.returned_at is not None
    start, duration = record.schedule
    assert start == 2
    assert snapshot.updated_at == wall_clock.at(record.returned_at)
    assert snapshot.eta_seconds is None
    for now, sample in samples:
        assert sample.eta_seconds == pytest.approx(start + duration - now)
        if sample.progress == 0:
            assert sample.updated_at == wall_clock.at(start)
        else:
            reached = start + duration * sample.progress / 100
            assert abs(sample.updated_at - wall_clock.at(reached)) <= TIMESTAMP_TOLERANCE


async def test_done_result_matches_snapshot(autojump_clock, settings, results_dir):
    async with started_supervisor(settings) as client:
        submitted = await client.submit(70_000)
        finished = await wait_until_finished(client, submitted.job_id)
        opened = await client.open_result(submitted.job_id)

    assert finished.status is JobStatus.DONE
    assert finished.progress == 100
    assert finished.error is None
    assert opened.snapshot.status is JobStatus.DONE
    assert opened.info == finished.result
    assert opened.path == result_path(results_dir, submitted.job_id)
    assert opened.info.size == opened.path.stat().st_size
    assert opened.info.sha256 == hashlib.sha256(opened.path.read_bytes()).hexdigest()


async def test_same_file_id_gives_identical_archives(autojump_clock, settings):
    file_id = 77
    async with started_supervisor(settings) as client:
        first = await client.submit(file_id)
        second = await client.submit(file_id)
        ends = [await wait_until_finished(client, job.job_id) for job in (first, second)]
        opened = [await client.open_result(job.job_id) for job in (first, second)]

    assert [end.status for end in ends] == [JobStatus.DONE, JobStatus.DONE]
    assert opened[0].path != opened[1].path
    assert opened[0].path.read_bytes() == opened[1].path.read_bytes()
    assert opened[0].info == opened[1].info
    assert opened[0].info.sha256 == hashlib.sha256(opened[0].path.read_bytes()).hexdigest()
    assert opened[0].info.file_name == f"{file_id}.zip"
    assert opened[0].info.media_type == "application/zip"

    size = content_size(file_id, settings.download_size_min_bytes, settings.download_size_max_bytes)
    assert settings.download_size_min_bytes <= size <= settings.download_size_max_bytes
    assert opened[0].info.size == archive_size(file_id, size)
    with zipfile.ZipFile(opened[0].path) as archive:
        assert archive.testzip() is None
        (member,) = archive.infolist()
    assert member.filename == f"{file_id}.bin"
    assert member.file_size == size


async def test_thousand_concurrent_jobs_finish_on_time(autojump_clock, settings, wall_clock):
    job_count = 1000
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source, wall_clock=wall_clock) as client:
        submitted = [await client.submit(file_id) for file_id in range(1, job_count + 1)]
        await trio.testing.wait_all_tasks_blocked()
        running = await client.list_jobs()

        await trio.sleep(PAST_ANY_DELAY)
        finished = await client.list_jobs()

    assert len(submitted) == job_count
    assert [job.status for job in running] == [JobStatus.PROCESSING] * job_count
    assert [job.status for job in finished] == [JobStatus.DONE] * job_count
    assert len(source.fetches) == job_count

    low = settings.download_delay_min_ms / 1000
    high = settings.download_delay_max_ms / 1000
    delays = set()
    for job in finished:
        record = source.record_for(job.file_id)
        assert record.schedule is not None
        assert record.returned_at is not None
        start, delay = record.schedule
        delays.add(delay)
        assert start == 0
        assert low <= delay <= high
        assert record.returned_at == pytest.approx(start + delay, abs=1e-9)
        assert job.updated_at == wall_clock.at(record.returned_at)
    assert len(delays) == job_count


async def test_same_seed_draws_same_delays(autojump_clock, settings):
    schedules = []
    for _ in range(2):
        source = RecordingSource(SimulatedSource(settings))
        async with started_supervisor(settings, source) as client:
            for file_id in range(20):
                await client.submit(file_id)
            await trio.sleep(PAST_ANY_DELAY)
            finished = await client.list_jobs()
        assert [job.status for job in finished] == [JobStatus.DONE] * 20
        schedules.append([record.schedule[1] for record in source.fetches if record.schedule])

    assert len(schedules[0]) == 20
    assert schedules[0] == schedules[1]


# -- queueing ---------------------------------------------------------------


async def test_queued_jobs_start_in_fifo_order(autojump_clock, make_settings):
    settings = make_settings(max_concurrent_jobs=1)
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source) as client:
        submitted = [await client.submit(file_id) for file_id in (30, 10, 20)]
        first = await client.status(submitted[0].job_id)
        others = [await client.status(job.job_id) for job in submitted[1:]]
        ends = [await wait_until_finished(client, job.job_id) for job in submitted]

    assert first.status is JobStatus.PROCESSING
    assert [job.status for job in others] == [JobStatus.QUEUED, JobStatus.QUEUED]
    assert [end.status for end in ends] == [JobStatus.DONE] * 3
    assert source.fetched_ids() == [30, 10, 20]
    # Each job starts when the one before it finishes.
    assert source.fetches[1].started_at == source.fetches[0].returned_at
    assert source.fetches[2].started_at == source.fetches[1].returned_at


# -- cancellation -----------------------------------------------------------


async def test_cancel_queued_job_never_starts(autojump_clock, make_settings):
    settings = make_settings(max_concurrent_jobs=1)
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source) as client:
        running = await client.submit(1)
        waiting = await client.submit(2)
        queued = await client.status(waiting.job_id)
        cancelled = await client.cancel(waiting.job_id)

        finished = await wait_until_finished(client, running.job_id)
        await trio.testing.wait_all_tasks_blocked()
        later = await client.status(waiting.job_id)
        with pytest.raises(ResultUnavailable):
            await client.open_result(waiting.job_id)

    assert queued.status is JobStatus.QUEUED
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.progress == 0
    assert finished.status is JobStatus.DONE
    assert later.status is JobStatus.CANCELLED
    assert source.fetched_ids() == [1]


async def test_cancel_processing_job_ends_its_actor(autojump_clock, settings, results_dir):
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source) as client:
        tasks_before = count_tasks()
        submitted = await client.submit(9)
        await trio.sleep(5)
        processing = await client.status(submitted.job_id)
        cancelled = await client.cancel(submitted.job_id)

        await trio.testing.wait_all_tasks_blocked()
        tasks_after = count_tasks()
        await trio.sleep(PAST_ANY_DELAY)
        later = await client.status(submitted.job_id)

    assert processing.status is JobStatus.PROCESSING
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.progress >= processing.progress
    assert cancelled.result is None
    assert cancelled.eta_seconds is None
    assert isinstance(source.record_for(9).raised, trio.Cancelled)
    assert tasks_after == tasks_before
    assert later == cancelled
    assert not result_path(results_dir, submitted.job_id).exists()


async def test_cancel_processing_job_deletes_partial_file(autojump_clock, settings, results_dir):
    source = PartialSource()
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(4)
        await trio.testing.wait_all_tasks_blocked()
        partial_existed = result_path(results_dir, submitted.job_id).exists()
        cancelled = await client.cancel(submitted.job_id)
        await trio.testing.wait_all_tasks_blocked()

    assert partial_existed
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.progress == 30
    assert source.cancelled == [4]
    assert list(results_dir.iterdir()) == []


async def test_cancel_is_idempotent(autojump_clock, make_settings):
    settings = make_settings(max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        processing = await client.submit(1)
        queued = await client.submit(2)
        await trio.sleep(3)
        first = [await client.cancel(job.job_id) for job in (processing, queued)]
        await trio.sleep(3)
        second = [await client.cancel(job.job_id) for job in (processing, queued)]

    assert [snapshot.status for snapshot in first] == [JobStatus.CANCELLED] * 2
    assert second == first


async def test_cancel_before_actor_runs_is_final(autojump_clock, make_settings):
    # One slot. Each even file fails after 1 s, and at that moment a cancel
    # of the queued odd file arrives in the same scheduling batch, so the
    # queued job is often admitted and cancelled before its actor's first
    # step. Its cancelled snapshot must not change when that step runs.
    settings = make_settings(max_concurrent_jobs=1)
    failures: dict[int, Exception] = {
        2 * pair: UpstreamGone("the upstream went away") for pair in range(20)
    }
    async with started_supervisor(settings, FaultySource(settings, failures)) as client:
        cancelled = []
        for pair in range(20):
            submitted_at = trio.current_time()
            await client.submit(2 * pair)
            queued = await client.submit(2 * pair + 1)
            await trio.sleep_until(submitted_at + 1)
            cancelled.append(await client.cancel(queued.job_id))
            await trio.testing.wait_all_tasks_blocked()
        later = [await client.status(snapshot.job_id) for snapshot in cancelled]
        stats = await client.stats()

    assert later == cancelled
    assert all(snapshot.status is JobStatus.CANCELLED for snapshot in later)
    assert stats.running_actors == 0


async def test_cancel_done_job_already_finished(autojump_clock, settings, results_dir):
    async with started_supervisor(settings) as client:
        submitted = await client.submit(8)
        finished = await wait_until_finished(client, submitted.job_id)
        with pytest.raises(JobAlreadyFinished, match=r" already ended as done$") as raised:
            await client.cancel(submitted.job_id)
        later = await client.status(submitted.job_id)

    assert finished.status is JobStatus.DONE
    assert raised.value.snapshot == finished
    assert later == finished
    assert result_path(results_dir, submitted.job_id).exists()


async def test_cancel_failed_job_already_finished(autojump_clock, settings):
    source = FaultySource(settings, {6: UpstreamGone("the upstream went away")})
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(6)
        finished = await wait_until_finished(client, submitted.job_id)
        with pytest.raises(JobAlreadyFinished, match=r" already ended as failed$"):
            await client.cancel(submitted.job_id)

    assert finished.status is JobStatus.FAILED


async def test_cancel_completion_race_cancel_wins(autojump_clock, settings, results_dir, caplog):
    caplog.set_level(logging.DEBUG, logger="engine")
    gate = trio.Event()
    source = InstantSource(gate)
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(12)
        await trio.testing.wait_all_tasks_blocked()

        # Step 1: release the actor. It is runnable but has not run yet.
        # Step 2: the cancel request goes straight to the idle supervisor, so
        # it is handled first, while the actor finishes without a checkpoint
        # and sends its result after it.
        gate.set()
        cancelled = await client.cancel(submitted.job_id)
        await trio.testing.wait_all_tasks_blocked()

        later = await client.status(submitted.job_id)
        with pytest.raises(ResultUnavailable):
            await client.open_result(submitted.job_id)

    assert source.returned == [12]
    assert cancelled.status is JobStatus.CANCELLED
    assert later.status is JobStatus.CANCELLED
    assert later.result is None
    assert list(results_dir.iterdir()) == []
    assert f"job {submitted.job_id}: discarded a result that arrived too late" in caplog.text


async def test_cancel_completion_race_one_state(autojump_clock, settings, results_dir):
    # The fetch returns at once, so the actor's report and the cancel request
    # reach the inbox in the order trio happens to schedule the two tasks.
    # Either order is valid, but each must give one consistent terminal state.
    source = InstantSource()
    outcomes = {"cancelled": 0, "done": 0}
    async with started_supervisor(settings, source) as client:
        for file_id in range(40):
            submitted = await client.submit(file_id)
            path = result_path(results_dir, submitted.job_id)
            try:
                replied = await client.cancel(submitted.job_id)
            except JobAlreadyFinished as exc:
                replied = exc.snapshot
            await trio.testing.wait_all_tasks_blocked()
            final = await client.status(submitted.job_id)

            assert final == replied
            if final.status is JobStatus.CANCELLED:
                outcomes["cancelled"] += 1
                assert not path.exists()
            else:
                outcomes["done"] += 1
                assert final.status is JobStatus.DONE
                assert path.exists()

    assert source.returned == list(range(40))
    assert sum(outcomes.values()) == 40


# -- failures ---------------------------------------------------------------


async def test_actor_exception_fails_only_that_job(autojump_clock, settings, results_dir, caplog):
    source = FaultySource(settings, {13: RuntimeError("bug in the source")})
    async with started_supervisor(settings, source) as client:
        submitted = {file_id: await client.submit(file_id) for file_id in (11, 12, 13, 14)}
        ends = {
            file_id: await wait_until_finished(client, job.job_id)
            for file_id, job in submitted.items()
        }
        with pytest.raises(ResultUnavailable):
            await client.open_result(submitted[13].job_id)

    failed = ends.pop(13)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "internal_error"
    assert failed.error.message == "the download failed unexpectedly"
    assert failed.result is None
    assert failed.progress == 50
    assert not result_path(results_dir, submitted[13].job_id).exists()
    assert [end.status for end in ends.values()] == [JobStatus.DONE] * 3
    assert "bug in the source" in caplog.text


async def test_source_error_sets_its_code(autojump_clock, settings):
    source = FaultySource(settings, {21: UpstreamGone("the upstream went away")})
    async with started_supervisor(settings, source) as client:
        submitted = await client.submit(21)
        failed = await wait_until_finished(client, submitted.job_id)

    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "upstream_gone"
    assert failed.error.message == "the upstream went away"


async def test_unavailable_file_fails_not_found(autojump_clock, make_settings):
    settings = make_settings(download_availability="multiple-of-7")
    async with started_supervisor(settings) as client:
        missing = await client.submit(8)
        present = await client.submit(14)
        missing_end = await wait_until_finished(client, missing.job_id)
        present_end = await wait_until_finished(client, present.job_id)

    assert missing_end.status is JobStatus.FAILED
    assert missing_end.error is not None
    assert missing_end.error.code == FileUnavailable.code
    assert missing_end.error.message == "file 8 not found"
    assert present_end.status is JobStatus.DONE


# -- queries ----------------------------------------------------------------


async def test_error_reply_leaves_no_cycle(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        gc.collect()
        gc.disable()
        try:
            with pytest.raises(JobNotFound):
                await client.status("no-such-job")
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            cyclic = [item for item in gc.garbage if isinstance(item, JobNotFound)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()

    # With reference counting alone, the error and its traceback are freed.
    assert cyclic == []


@pytest.mark.parametrize("method", ["status", "cancel", "open_result"])
async def test_unknown_job_id_not_found(autojump_clock, settings, method):
    async with started_supervisor(settings) as client:
        await client.submit(1)
        with pytest.raises(JobNotFound, match=r"^job no-such-job not found$"):
            await getattr(client, method)("no-such-job")
        jobs = await client.list_jobs()
        await client.cancel(jobs[0].job_id)
        ended = await client.status(jobs[0].job_id)

    assert ended.status is JobStatus.CANCELLED


async def test_open_result_unfinished_not_ready(autojump_clock, make_settings):
    settings = make_settings(max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        processing = await client.submit(1)
        queued = await client.submit(2)
        with pytest.raises(ResultNotReady, match=r" is processing, not done$") as not_processed:
            await client.open_result(processing.job_id)
        with pytest.raises(ResultNotReady, match=r" is queued, not done$") as not_started:
            await client.open_result(queued.job_id)
        finished = await wait_until_finished(client, queued.job_id)

    assert not_processed.value.snapshot.status is JobStatus.PROCESSING
    assert not_started.value.snapshot.status is JobStatus.QUEUED
    assert finished.status is JobStatus.DONE


async def test_open_result_cancelled_unavailable(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        submitted = await client.submit(1)
        await trio.sleep(1)
        cancelled = await client.cancel(submitted.job_id)
        with pytest.raises(ResultUnavailable, match=r" ended as cancelled and has no result$"):
            await client.open_result(submitted.job_id)

    assert cancelled.status is JobStatus.CANCELLED


async def test_list_jobs_returns_oldest_first(autojump_clock, settings, wall_clock):
    async with started_supervisor(settings, wall_clock=wall_clock) as client:
        submitted = []
        for file_id in (5, 3, 9, 1, 7):
            submitted.append(await client.submit(file_id))
            await trio.sleep(1)
        await client.cancel(submitted[2].job_id)
        listed = await client.list_jobs()
        await trio.sleep(PAST_ANY_DELAY)
        finished = await client.list_jobs()

    assert [job.job_id for job in listed] == [job.job_id for job in submitted]
    assert [job.created_at for job in listed] == [wall_clock.at(t) for t in range(5)]
    assert [job.job_id for job in finished] == [job.job_id for job in submitted]
    assert [job.status for job in finished] == [
        JobStatus.DONE,
        JobStatus.DONE,
        JobStatus.CANCELLED,
        JobStatus.DONE,
        JobStatus.DONE,
    ]


async def test_check_file_returns_archive_size(autojump_clock, make_settings):
    settings = make_settings(download_availability="multiple-of-7")
    async with started_supervisor(settings) as client:
        present = await client.check_file(14)
        missing = await client.check_file(15)
        await client.check_health()
        jobs = await client.list_jobs()

    size = content_size(14, settings.download_size_min_bytes, settings.download_size_max_bytes)
    assert present == archive_size(14, size)
    assert missing is None
    assert jobs == []


# -- callers and shutdown ---------------------------------------------------


async def test_cancelled_caller_leaves_supervisor_working(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        with trio.CancelScope() as scope:
            # trio checks deadlines once per scheduler pass, so a deadline set
            # inside the scope takes effect at the next pass. That is after the
            # request is sent and before the reply is read.
            scope.deadline = trio.current_time()
            await client.submit(17)
        jobs = await client.list_jobs()
        assert client.pending_messages() == 0

        finished = await wait_until_finished(client, jobs[0].job_id)

    assert scope.cancelled_caught
    assert [job.file_id for job in jobs] == [17]
    assert finished.status is JobStatus.DONE


async def test_caller_cancelled_before_request_sends_nothing(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.submit(17)
        jobs = await client.list_jobs()

    assert scope.cancelled_caught
    assert jobs == []


async def test_shutdown_cancels_unfinished_jobs(autojump_clock, make_settings, results_dir, caplog):
    caplog.set_level(logging.INFO, logger="engine")
    settings = make_settings(max_concurrent_jobs=2)
    source = RecordingSource(SimulatedSource(settings))
    supervisor = Supervisor(settings, source)
    tasks_before = count_tasks()
    async with trio.open_nursery() as nursery:
        client: JobClient = await nursery.start(supervisor.run)
        done = await client.submit(1)
        finished = await wait_until_finished(client, done.job_id)
        unfinished = [await client.submit(file_id) for file_id in (2, 3, 4)]
        await trio.sleep(5)
        states = [(await client.status(job.job_id)).status for job in unfinished]

        await client.shutdown()
        returned_at = trio.current_time()
    stopped_at = trio.current_time()

    assert finished.status is JobStatus.DONE
    assert states == [JobStatus.PROCESSING, JobStatus.PROCESSING, JobStatus.QUEUED]
    assert returned_at == stopped_at
    assert source.fetched_ids() == [1, 2, 3]
    assert isinstance(source.record_for(2).raised, trio.Cancelled)
    assert isinstance(source.record_for(3).raised, trio.Cancelled)
    assert list(results_dir.iterdir()) == [result_path(results_dir, done.job_id)]
    assert count_tasks() == tasks_before
    for job, old in zip(unfinished, ["processing", "processing", "queued"], strict=True):
        assert f"job {job.job_id}: {old} -> cancelled (by shutdown)" in caplog.text
    assert f"job {done.job_id}: processing -> done" in caplog.text


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("submit", (1,)),
        ("status", ("job",)),
        ("cancel", ("job",)),
        ("open_result", ("job",)),
        ("list_jobs", ()),
    ],
)
async def test_client_after_shutdown_closed(autojump_clock, settings, method, args):
    async with started_supervisor(settings) as client:
        submitted = await client.submit(1)
        await client.shutdown()
        with pytest.raises(SupervisorClosed, match=r"^the job supervisor is shutting down$"):
            await getattr(client, method)(*args)
        await client.shutdown()

    assert submitted.status is JobStatus.QUEUED


async def test_submit_during_shutdown_closed(autojump_clock, settings):
    source = PartialSource(cleanup_seconds=10)
    async with trio.open_nursery() as nursery:
        client: JobClient = await nursery.start(Supervisor(settings, source).run)
        submitted = await client.submit(1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(client.shutdown)
        await trio.testing.wait_all_tasks_blocked()

        # The supervisor waits for the actor's 10-second cleanup.
        with pytest.raises(SupervisorClosed):
            await client.submit(2)
        during = await client.status(submitted.job_id)

    assert during.status is JobStatus.CANCELLED
    assert trio.current_time() == 10


async def test_outside_cancel_cancels_jobs(autojump_clock, settings, results_dir, caplog):
    caplog.set_level(logging.INFO, logger="engine")
    source = PartialSource()
    async with trio.open_nursery() as nursery:
        client: JobClient = await nursery.start(Supervisor(settings, source).run)
        submitted = await client.submit(1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

    with pytest.raises(SupervisorClosed):
        await client.status(submitted.job_id)
    assert source.cancelled == [1]
    assert list(results_dir.iterdir()) == []
    assert f"job {submitted.job_id}: processing -> cancelled (by shutdown)" in caplog.text


async def test_shutdown_returns_if_supervisor_cancelled(autojump_clock, settings):
    # The supervisor accepts the shutdown, then waits for an actor that
    # cleans up for 30 s. Meanwhile its own task is cancelled from outside.
    source = PartialSource(cleanup_seconds=30)
    supervisor = Supervisor(settings, source)
    supervisor_scope = trio.CancelScope()
    shutdown_returned = trio.Event()

    async def run_supervisor(*, task_status: trio.TaskStatus[JobClient]) -> None:
        with supervisor_scope:
            await supervisor.run(task_status=task_status)

    async def shut_down(client: JobClient) -> None:
        await client.shutdown()
        shutdown_returned.set()

    async with trio.open_nursery() as nursery:
        client: JobClient = await nursery.start(run_supervisor)
        await client.submit(1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(shut_down, client)
        await trio.testing.wait_all_tasks_blocked()
        supervisor_scope.cancel()

        with trio.move_on_after(60):
            await shutdown_returned.wait()
        nursery.cancel_scope.cancel()

    assert supervisor_scope.cancelled_caught
    assert shutdown_returned.is_set()


async def test_open_supervisor_exit_cancels_jobs(autojump_clock, settings, results_dir):
    # NOTE: open_supervisor shields its shutdown, so the test deadline cannot
    # end this test if that shutdown hangs.
    source = PartialSource(cleanup_seconds=3)
    async with open_supervisor(settings, source) as client:
        submitted = await client.submit(1)
        await trio.testing.wait_all_tasks_blocked()
        partial_existed = result_path(results_dir, submitted.job_id).exists()

    assert partial_existed
    assert source.cancelled == [1]
    assert trio.current_time() == 3
    assert list(results_dir.iterdir()) == []
    with pytest.raises(SupervisorClosed):
        await client.status(submitted.job_id)


async def test_temporary_results_dir_removed_on_exit(autojump_clock, make_settings):
    settings = make_settings(results_dir=None)
    async with started_supervisor(settings) as client:
        submitted = await client.submit(2)
        finished = await wait_until_finished(client, submitted.job_id)
        opened = await client.open_result(submitted.job_id)
        existed = opened.path.exists()

    assert finished.status is JobStatus.DONE
    assert existed
    assert not opened.path.parent.exists()
