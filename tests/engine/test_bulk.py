"""Tests of bulk jobs: one job, one actor, one child task per file, one ZIP for all files.

Every test runs on the autojump clock. Test sources and helpers come from
``test_supervisor.py``, which pytest puts on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from test_supervisor import (
    PartialSource,
    RecordingSource,
    UpstreamGone,
    count_tasks,
    started_supervisor,
    wait_until_finished,
    write_now,
)

from engine import (
    MAX_MILLISECONDS,
    EngineSettings,
    JobClient,
    JobSnapshot,
    JobStatus,
    ProgressReporter,
    ResultInfo,
    SimulatedSource,
    Source,
    TransientSourceError,
    build_archive,
    content_size,
)

# Virtual seconds on the autojump clock: only a hang gets this far.
pytestmark = pytest.mark.deadline(3600)

# 70000, 70007 and 70014 are multiples of 7, but 70001 is not, so it is missing under
# DOWNLOAD_AVAILABILITY=multiple-of-7.
PRESENT_IDS = (70_000, 70_007, 70_014)
MISSING_ID = 70_001
FILE_STATES = ("queued", "processing", "done", "missing", "failed")


def fixed_delay(make_settings: Callable[..., EngineSettings], seconds: int, **overrides):
    """Return settings whose simulated downloads all take exactly ``seconds``."""
    milliseconds = seconds * 1000
    return make_settings(
        download_delay_min_ms=milliseconds, download_delay_max_ms=milliseconds, **overrides
    )


def leftover_files(results_dir: Path) -> list[str]:
    """Return the names of every file and folder in ``results_dir``."""
    return sorted(path.name for path in results_dir.iterdir())


async def expected_archive(settings: EngineSettings, file_id: int, tmp_path: Path) -> bytes:
    """Return the bytes of the single-file archive the simulated source builds for ``file_id``."""
    size = content_size(file_id, settings.download_size_min_bytes, settings.download_size_max_bytes)
    path = tmp_path / f"expected-{file_id}.zip"
    await build_archive(file_id, size, path)
    return path.read_bytes()


async def run_bulk(client: JobClient, file_ids: tuple[int, ...]) -> tuple[JobSnapshot, bytes]:
    """Run a bulk job to its end. Return its final snapshot and, if it is done, its archive."""
    submitted = await client.submit_bulk(file_ids)
    finished = await wait_until_finished(client, submitted.job_id)
    if finished.status is not JobStatus.DONE:
        return finished, b""
    opened = await client.open_result(submitted.job_id)
    return finished, opened.path.read_bytes()


# -- test sources -----------------------------------------------------------


class ConcurrencySource:
    """A source wrapper that counts how many fetches run at once."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.running = 0
        self.max_running = 0

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            return await self.inner.fetch(file_id, progress, destination)
        finally:
            self.running -= 1

    async def check(self, file_id: int) -> int | None:
        return await self.inner.check(file_id)

    async def check_health(self) -> None:
        await self.inner.check_health()


class FailingFileSource:
    """A source that fails ``file_id`` with ``error`` after ``after`` seconds.

    Before it fails, it writes part of the file. Other ids go to ``inner``.
    """

    def __init__(self, inner: Source, file_id: int, error: Exception, after: float) -> None:
        self.inner = inner
        self.file_id = file_id
        self.error = error
        self.after = after

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        if file_id != self.file_id:
            return await self.inner.fetch(file_id, progress, destination)
        write_now(destination, b"partial")
        await trio.sleep(self.after)
        raise self.error

    async def check(self, file_id: int) -> int | None:
        return await self.inner.check(file_id)

    async def check_health(self) -> None:
        await self.inner.check_health()


class FirstAttemptFailsSource:
    """A source whose first attempt at each file fails transiently.

    Later attempts go to ``inner``.
    """

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.attempts: dict[int, int] = {}

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        self.attempts[file_id] = self.attempts.get(file_id, 0) + 1
        if self.attempts[file_id] == 1:
            await trio.sleep(1)
            raise TransientSourceError(f"first attempt of file {file_id} failed")
        return await self.inner.fetch(file_id, progress, destination)

    async def check(self, file_id: int) -> int | None:
        return await self.inner.check(file_id)

    async def check_health(self) -> None:
        await self.inner.check_health()


# -- submission ---------------------------------------------------------------


async def test_submit_bulk_snapshot(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        submitted = await client.submit_bulk(PRESENT_IDS)
        finished = await wait_until_finished(client, submitted.job_id)

    assert submitted.status is JobStatus.QUEUED
    assert submitted.file_ids == PRESENT_IDS
    assert submitted.file_id == PRESENT_IDS[0]
    assert submitted.file_states == tuple((file_id, "queued") for file_id in PRESENT_IDS)
    assert submitted.missing_file_ids == ()
    assert finished.status is JobStatus.DONE


@pytest.mark.parametrize("file_ids", [(), (70_000, 70_007, 70_000)], ids=["empty", "duplicate"])
async def test_submit_bulk_rejects_ids(autojump_clock, settings, file_ids):
    async with started_supervisor(settings) as client:
        with pytest.raises(ValueError, match="file_ids"):
            await client.submit_bulk(file_ids)
        jobs = await client.list_jobs()

    assert jobs == []


async def test_single_job_has_no_bulk_fields(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        submitted = await client.submit(PRESENT_IDS[0])
        finished = await wait_until_finished(client, submitted.job_id)

    assert finished.status is JobStatus.DONE
    assert finished.file_ids is None
    assert finished.file_states is None
    assert finished.missing_file_ids is None


async def test_bulk_uses_one_slot(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20, max_concurrent_jobs=1)
    async with started_supervisor(settings) as client:
        bulk = await client.submit_bulk(PRESENT_IDS)
        single = await client.submit(MISSING_ID)
        await trio.testing.wait_all_tasks_blocked()
        bulk_running = await client.status(bulk.job_id)
        single_waiting = await client.status(single.job_id)
        stats = await client.stats()
        finished = await wait_until_finished(client, single.job_id)

    assert bulk_running.status is JobStatus.PROCESSING
    assert single_waiting.status is JobStatus.QUEUED
    assert stats.running_actors == 1
    assert finished.status is JobStatus.DONE


# -- fetching -----------------------------------------------------------------


async def test_bulk_fetches_every_file(autojump_clock, settings):
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source) as client:
        finished, _ = await run_bulk(client, PRESENT_IDS)

    assert finished.status is JobStatus.DONE
    assert sorted(source.fetched_ids()) == sorted(PRESENT_IDS)


@pytest.mark.parametrize("limit", [1, 3])
async def test_bulk_limits_concurrent_files(autojump_clock, make_settings, limit):
    # Ten 10-120 s files one at a time can exceed the default 300 s deadline.
    settings = make_settings(bulk_max_concurrent_files=limit, job_timeout_ms=MAX_MILLISECONDS)
    source = ConcurrencySource(SimulatedSource(settings))
    file_ids = tuple(range(70_000, 70_070, 7))  # ten files
    async with started_supervisor(settings, source) as client:
        finished, _ = await run_bulk(client, file_ids)

    assert finished.status is JobStatus.DONE
    assert source.max_running == limit


async def test_bulk_file_states_move_forward(autojump_clock, make_settings):
    settings = make_settings(bulk_max_concurrent_files=2, download_availability="multiple-of-7")
    file_ids = (*PRESENT_IDS, MISSING_ID, 70_021)
    async with started_supervisor(settings) as client:
        submitted = await client.submit_bulk(file_ids)
        samples = [submitted]
        while not samples[-1].status.is_terminal:
            await trio.sleep(0.5)
            samples.append(await client.status(submitted.job_id))

    finished = samples[-1]
    assert finished.status is JobStatus.DONE
    for file_id in file_ids:
        seen = [dict(sample.file_states or ())[file_id] for sample in samples]
        order = [FILE_STATES.index(state) for state in seen]
        assert order == sorted(order), f"file {file_id} went back: {seen}"
        assert seen[0] == "queued"
    final = dict(finished.file_states or ())
    assert final == {
        70_000: "done",
        70_007: "done",
        70_014: "done",
        MISSING_ID: "missing",
        70_021: "done",
    }


async def test_bulk_shows_processing_files(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20, bulk_max_concurrent_files=2)
    async with started_supervisor(settings) as client:
        submitted = await client.submit_bulk(PRESENT_IDS)
        await trio.sleep(10)
        running = await client.status(submitted.job_id)
        finished = await wait_until_finished(client, submitted.job_id)

    states = [state for _, state in running.file_states or ()]
    assert sorted(states) == ["processing", "processing", "queued"]
    assert finished.status is JobStatus.DONE


async def test_bulk_lists_missing_ids(autojump_clock, make_settings):
    settings = make_settings(download_availability="multiple-of-7")
    async with started_supervisor(settings) as client:
        finished, _ = await run_bulk(client, (70_000, MISSING_ID, 70_007, 70_002))

    assert finished.status is JobStatus.DONE
    assert finished.missing_file_ids == (MISSING_ID, 70_002)


async def test_bulk_retries_a_file(autojump_clock, settings):
    source = FirstAttemptFailsSource(SimulatedSource(settings))
    async with started_supervisor(settings, source) as client:
        finished, _ = await run_bulk(client, PRESENT_IDS)

    assert finished.status is JobStatus.DONE
    assert source.attempts == dict.fromkeys(PRESENT_IDS, 2)


# -- the archive --------------------------------------------------------------


async def test_bulk_result_is_valid_zip(autojump_clock, make_settings):
    settings = make_settings(download_availability="multiple-of-7")
    async with started_supervisor(settings) as client:
        finished, archive_bytes = await run_bulk(client, (*PRESENT_IDS, MISSING_ID))

    assert finished.status is JobStatus.DONE
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == [
            "70000.zip",
            "70007.zip",
            "70014.zip",
            "manifest.json",
        ]


async def test_bulk_members_match_single_archives(autojump_clock, make_settings, tmp_path):
    settings = make_settings(download_availability="multiple-of-7")
    async with started_supervisor(settings) as client:
        finished, archive_bytes = await run_bulk(client, (*PRESENT_IDS, MISSING_ID))

    assert finished.status is JobStatus.DONE
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        for file_id in PRESENT_IDS:
            member = archive.read(f"{file_id}.zip")
            assert member == await expected_archive(settings, file_id, tmp_path)


async def test_bulk_manifest_lists_files(autojump_clock, make_settings):
    settings = make_settings(download_availability="multiple-of-7")
    async with started_supervisor(settings) as client:
        finished, archive_bytes = await run_bulk(client, (*PRESENT_IDS, MISSING_ID))

    assert finished.status is JobStatus.DONE
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        members = {file_id: archive.read(f"{file_id}.zip") for file_id in PRESENT_IDS}

    assert manifest["jobId"] == finished.job_id
    assert manifest["missingFileIds"] == [MISSING_ID]
    assert [entry["fileId"] for entry in manifest["files"]] == list(PRESENT_IDS)
    for entry in manifest["files"]:
        member = members[entry["fileId"]]
        assert entry["name"] == f"{entry['fileId']}.zip"
        assert entry["size"] == len(member)
        assert entry["sha256"] == hashlib.sha256(member).hexdigest()


async def test_bulk_result_info_matches_file(autojump_clock, settings):
    async with started_supervisor(settings) as client:
        finished, archive_bytes = await run_bulk(client, PRESENT_IDS)

    assert finished.status is JobStatus.DONE
    assert finished.result is not None
    assert finished.result.size == len(archive_bytes)
    assert finished.result.sha256 == hashlib.sha256(archive_bytes).hexdigest()
    assert finished.result.media_type == "application/zip"
    assert finished.result.file_name == f"download-{finished.job_id}.zip"


async def test_bulk_keeps_only_result(autojump_clock, settings, results_dir):
    async with started_supervisor(settings) as client:
        finished, _ = await run_bulk(client, PRESENT_IDS)
        left = leftover_files(results_dir)

    assert finished.status is JobStatus.DONE
    assert left == [f"{finished.job_id}.zip"]


# -- failure, cancellation and deadlines --------------------------------------


async def test_bulk_permanent_failure_fails_job(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20)
    source = FailingFileSource(
        SimulatedSource(settings), PRESENT_IDS[1], UpstreamGone("upstream went away"), after=5
    )
    async with started_supervisor(settings, source) as client:
        finished, _ = await run_bulk(client, PRESENT_IDS)

    assert finished.status is JobStatus.FAILED
    assert finished.error is not None
    assert finished.error.code == "upstream_gone"
    assert finished.result is None


async def test_bulk_failure_cancels_siblings(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20)
    failing = FailingFileSource(
        SimulatedSource(settings), PRESENT_IDS[1], UpstreamGone("upstream went away"), after=5
    )
    source = RecordingSource(failing)
    async with started_supervisor(settings, source) as client:
        finished, _ = await run_bulk(client, PRESENT_IDS)

    assert finished.status is JobStatus.FAILED
    for file_id in (PRESENT_IDS[0], PRESENT_IDS[2]):
        record = source.record_for(file_id)
        assert isinstance(record.raised, trio.Cancelled), file_id
        assert record.returned_at is None, file_id


async def test_bulk_transient_failure_fails_job(autojump_clock, make_settings):
    settings = make_settings(job_max_attempts=2, retry_backoff_base_ms=0)
    source = FailingFileSource(
        SimulatedSource(settings), PRESENT_IDS[0], TransientSourceError("dropped"), after=1
    )
    async with started_supervisor(settings, source) as client:
        finished, _ = await run_bulk(client, PRESENT_IDS)

    assert finished.status is JobStatus.FAILED
    assert finished.error is not None
    assert finished.error.code == "transient_failure"


async def test_bulk_failure_removes_parts(autojump_clock, make_settings, results_dir):
    settings = fixed_delay(make_settings, 20)
    source = FailingFileSource(
        SimulatedSource(settings), PRESENT_IDS[1], UpstreamGone("upstream went away"), after=5
    )
    async with started_supervisor(settings, source) as client:
        finished, _ = await run_bulk(client, PRESENT_IDS)
        await trio.testing.wait_all_tasks_blocked()
        left = leftover_files(results_dir)

    assert finished.status is JobStatus.FAILED
    assert left == []


async def test_bulk_cancel_ends_children(autojump_clock, settings, results_dir):
    source = PartialSource()
    async with started_supervisor(settings, source) as client:
        await trio.testing.wait_all_tasks_blocked()
        tasks_before = count_tasks()
        submitted = await client.submit_bulk(PRESENT_IDS)
        await trio.testing.wait_all_tasks_blocked()
        tasks_running = count_tasks()
        parts_while_running = leftover_files(results_dir)
        cancelled = await client.cancel(submitted.job_id)
        await trio.testing.wait_all_tasks_blocked()
        tasks_after = count_tasks()
        left = leftover_files(results_dir)
        stats = await client.stats()

    assert cancelled.status is JobStatus.CANCELLED
    # The actor, its nursery's children and nothing else ran for the job.
    assert tasks_running == tasks_before + 1 + len(PRESENT_IDS)
    assert parts_while_running == [f"{submitted.job_id}.zip.parts"]
    assert sorted(source.cancelled) == sorted(PRESENT_IDS)
    assert tasks_after == tasks_before
    assert left == []
    assert stats.running_actors == 0


async def test_bulk_cancel_queued_children(autojump_clock, make_settings, results_dir):
    # One file at a time: the other files wait on the limiter when the job is cancelled.
    settings = make_settings(bulk_max_concurrent_files=1)
    source = PartialSource()
    async with started_supervisor(settings, source) as client:
        await trio.testing.wait_all_tasks_blocked()
        tasks_before = count_tasks()
        submitted = await client.submit_bulk(PRESENT_IDS)
        await trio.testing.wait_all_tasks_blocked()
        cancelled = await client.cancel(submitted.job_id)
        await trio.testing.wait_all_tasks_blocked()
        tasks_after = count_tasks()
        left = leftover_files(results_dir)

    assert cancelled.status is JobStatus.CANCELLED
    assert len(source.cancelled) == 1
    assert tasks_after == tasks_before
    assert left == []


async def test_bulk_deadline_covers_whole_job(autojump_clock, make_settings, results_dir):
    # Three 20 s files one after another need 60 s, but the job may take only 50 s.
    settings = fixed_delay(make_settings, 20, bulk_max_concurrent_files=1, job_timeout_ms=50_000)
    source = RecordingSource(SimulatedSource(settings))
    async with started_supervisor(settings, source) as client:
        started = trio.current_time()
        submitted = await client.submit_bulk(PRESENT_IDS)
        finished = await wait_until_finished(client, submitted.job_id, interval=0.25)
        failed_at = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        left = leftover_files(results_dir)

    assert finished.status is JobStatus.FAILED
    assert finished.error is not None
    assert finished.error.code == "timeout"
    assert failed_at == pytest.approx(started + 50, abs=0.25)
    last = max(source.fetches, key=lambda record: record.started_at)
    assert last.started_at == pytest.approx(started + 40, abs=1e-9)
    assert isinstance(last.raised, trio.Cancelled)
    assert left == []


async def test_finished_bulk_has_no_processing_file(autojump_clock, make_settings):
    settings = fixed_delay(make_settings, 20)
    source = FailingFileSource(
        SimulatedSource(settings), PRESENT_IDS[1], UpstreamGone("upstream went away"), after=5
    )
    async with started_supervisor(settings, source) as client:
        finished, _ = await run_bulk(client, PRESENT_IDS)

    assert finished.status is JobStatus.FAILED
    states = dict(finished.file_states or ())
    assert "processing" not in states.values(), states


# -- progress -----------------------------------------------------------------


async def test_bulk_progress_is_mean(autojump_clock, make_settings):
    # One 20 s file at a time: at 10 s the files are at 50% and 0%, at 30 s at 100% and 50%.
    settings = fixed_delay(make_settings, 20, bulk_max_concurrent_files=1)
    async with started_supervisor(settings) as client:
        started = trio.current_time()
        submitted = await client.submit_bulk(PRESENT_IDS[:2])
        await trio.sleep_until(started + 10)
        first = await client.status(submitted.job_id)
        await trio.sleep_until(started + 30)
        second = await client.status(submitted.job_id)
        finished = await wait_until_finished(client, submitted.job_id)

    assert first.progress == 25
    assert second.progress == 75
    assert finished.status is JobStatus.DONE
    assert finished.progress == 100


async def test_bulk_progress_counts_missing(autojump_clock, make_settings):
    # The missing file counts as complete at once, the other is halfway at 10 s.
    settings = fixed_delay(make_settings, 20, download_availability="multiple-of-7")
    async with started_supervisor(settings) as client:
        started = trio.current_time()
        submitted = await client.submit_bulk((PRESENT_IDS[0], MISSING_ID))
        await trio.sleep_until(started + 10)
        halfway = await client.status(submitted.job_id)
        finished = await wait_until_finished(client, submitted.job_id)

    assert halfway.progress == 75
    assert finished.status is JobStatus.DONE


async def test_bulk_progress_never_decreases(autojump_clock, make_settings):
    settings = make_settings(bulk_max_concurrent_files=2, download_availability="multiple-of-7")
    file_ids = (*PRESENT_IDS, MISSING_ID, 70_021, 70_028)
    async with started_supervisor(settings) as client:
        submitted = await client.submit_bulk(file_ids)
        samples = [submitted]
        while not samples[-1].status.is_terminal:
            await trio.sleep(0.5)
            samples.append(await client.status(submitted.job_id))

    progress = [sample.progress for sample in samples]
    processing = [sample.progress for sample in samples if sample.status is JobStatus.PROCESSING]
    assert samples[-1].status is JobStatus.DONE
    for earlier, later in itertools.pairwise(progress):
        assert later >= earlier, progress
    assert max(processing) < 100
    assert progress[-1] == 100
