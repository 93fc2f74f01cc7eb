"""Bulk jobs: many files fetched by child tasks of one actor, delivered as one ZIP.

A bulk job is one job to the supervisor: it takes one processing slot, has
one deadline and one cancel scope. Inside, its actor runs a nursery with one
child task per file, at most ``max_concurrent_files`` of them fetching at
once. Cancelling the job cancels the actor's scope and with it every child.

A file the source does not have (``FileUnavailable``) is recorded as missing
and the others go on. Any other failure of one file, after its retries,
cancels the siblings and fails the whole job, because a partial archive that
silently lacks a file the source does have would be worse than an error.

The result holds each fetched file's archive as a member ``{file_id}.zip``
plus ``manifest.json``, which lists the included files with their SHA-256
and the missing ids.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import trio

from ._actor import discard_file, fetch_with_retries, report_to_supervisor
from ._archive import create_file, describe_archive
from ._errors import FileUnavailable, SourceError
from ._messages import ActorExited, Message
from ._progress import ProgressSlot
from ._retry import RetryPolicy
from ._snapshot import JobError, ResultInfo
from ._source import Source

logger = logging.getLogger("engine")

COPY_CHUNK_BYTES = 256 * 1024
_FIXED_TIMESTAMP = (1980, 1, 1, 0, 0, 0)

# States of one file of a bulk job, as shown in its snapshot.
FILE_QUEUED = "queued"
FILE_PROCESSING = "processing"
FILE_DONE = "done"
FILE_MISSING = "missing"
FILE_FAILED = "failed"


def bulk_file_name(job_id: str) -> str:
    return f"download-{job_id}.zip"


class BulkProgress(ProgressSlot):
    """Progress of a bulk job: the mean of one ``ProgressSlot`` per file, plus file states.

    The actor and its children write; the supervisor reads. Reading costs
    O(number of files), at most the 1,000 files a bulk job may have.
    """

    __slots__ = ("files", "states")

    def __init__(self, file_ids: tuple[int, ...]) -> None:
        super().__init__()
        self.files = {file_id: ProgressSlot() for file_id in file_ids}
        self.states = dict.fromkeys(file_ids, FILE_QUEUED)

    def highest_attempt(self) -> int:
        """Return the highest attempt that any file has reached, at least the job's ``attempt``.

        Each file retries on its own, in its own slot, so the job's own
        ``attempt`` stays 1.
        """
        return max([self.attempt, *(slot.attempt for slot in self.files.values())])

    def fraction(self, now: float) -> float:
        if not self.files:
            return 1.0
        return sum(slot.fraction(now) for slot in self.files.values()) / len(self.files)

    def reached_at(self, fraction: float, now: float) -> float:
        return now

    def time_of(self, fraction: float) -> float | None:
        return None  # a mean of schedules has no single one; file ends wake watchers instead

    def finishes_at(self) -> float | None:
        ends = [slot.finishes_at() for slot in self.files.values()]
        if not ends or any(end is None for end in ends):
            return None
        return max(end for end in ends if end is not None)

    def hold(self, now: float) -> None:
        for slot in self.files.values():
            slot.hold(now)

    def missing(self) -> tuple[int, ...]:
        return tuple(file_id for file_id, state in self.states.items() if state == FILE_MISSING)


async def run_bulk_actor(
    job_id: str,
    file_ids: tuple[int, ...],
    source: Source,
    progress: BulkProgress,
    destination: Path,
    retry: RetryPolicy,
    max_concurrent_files: int,
    reports: trio.MemorySendChannel[Message],
    scope: trio.CancelScope,
) -> None:
    """Fetch every file of a bulk job and build its archive; report like ``run_actor``.

    The same contract as ``engine._actor.run_actor`` holds: it never raises
    into its nursery except for cancellation from outside, sends exactly one
    ``ActorExited`` last, and deletes ``destination`` and every part file
    unless the job succeeded.
    """
    parts = destination.with_name(destination.name + ".parts")
    result: ResultInfo | None = None
    error: JobError | None = None
    try:
        with scope:
            try:
                _make_parts_dir(parts)
                fetched = await _fetch_files(
                    job_id, source, progress, parts, retry, max_concurrent_files, reports
                )
                result = await _build_bulk_archive(job_id, fetched, progress.missing(), destination)
            except SourceError as exc:
                logger.warning("job %s: bulk download failed: %s", job_id, exc)
                error = JobError(code=exc.code, message=str(exc))
            except Exception:
                logger.exception("job %s: bulk download raised an unexpected error", job_id)
                error = JobError(code="internal_error", message="the download failed unexpectedly")
    finally:
        _discard_parts(parts)
        if result is None:
            discard_file(destination)
        report_to_supervisor(
            reports, ActorExited(job_id, progress.attempt, result=result, error=error)
        )


async def _fetch_files(
    job_id: str,
    source: Source,
    progress: BulkProgress,
    parts: Path,
    retry: RetryPolicy,
    max_concurrent_files: int,
    reports: trio.MemorySendChannel[Message],
) -> dict[int, tuple[Path, ResultInfo]]:
    """Fetch every file with bounded concurrency; raise the first failure that is not missing."""
    limiter = trio.CapacityLimiter(max_concurrent_files)
    fetched: dict[int, tuple[Path, ResultInfo]] = {}
    failures: list[SourceError] = []
    progress.attempt = 1

    async def fetch_one(file_id: int, nursery: trio.Nursery) -> None:
        async with limiter:
            progress.states[file_id] = FILE_PROCESSING
            slot = progress.files[file_id]
            path = parts / f"{file_id}.zip"
            try:
                info = await fetch_with_retries(job_id, file_id, source, slot, path, retry, reports)
            except FileUnavailable:
                progress.states[file_id] = FILE_MISSING
            except SourceError as exc:
                progress.states[file_id] = FILE_FAILED
                failures.append(exc)
                nursery.cancel_scope.cancel()
            else:
                progress.states[file_id] = FILE_DONE
                fetched[file_id] = (path, info)
            slot.advance_linearly(trio.current_time(), 0.0)  # this file counts as complete

    async with trio.open_nursery() as nursery:
        for file_id in progress.files:
            nursery.start_soon(fetch_one, file_id, nursery)
    if failures:
        raise failures[0]
    return {file_id: fetched[file_id] for file_id in progress.files if file_id in fetched}


async def _build_bulk_archive(
    job_id: str,
    fetched: dict[int, tuple[Path, ResultInfo]],
    missing: tuple[int, ...],
    destination: Path,
) -> ResultInfo:
    """Write one stored ZIP with every fetched archive and a manifest; checkpoint per chunk."""
    manifest = {
        "jobId": job_id,
        "files": [
            {"fileId": file_id, "name": f"{file_id}.zip", "size": info.size, "sha256": info.sha256}
            for file_id, (_, info) in fetched.items()
        ],
        "missingFileIds": list(missing),
    }
    file = await create_file(destination)
    with file, zipfile.ZipFile(file, "w") as archive:
        for file_id, (path, info) in fetched.items():
            member = zipfile.ZipInfo(f"{file_id}.zip", date_time=_FIXED_TIMESTAMP)
            member.external_attr = 0o644 << 16
            member.file_size = info.size
            with archive.open(member, "w") as stream, path.open("rb") as part:
                while chunk := part.read(COPY_CHUNK_BYTES):
                    stream.write(chunk)
                    await trio.lowlevel.checkpoint()
        manifest_member = zipfile.ZipInfo("manifest.json", date_time=_FIXED_TIMESTAMP)
        manifest_member.external_attr = 0o644 << 16
        archive.writestr(manifest_member, json.dumps(manifest, indent=2) + "\n")

    return await describe_archive(destination, bulk_file_name(job_id))


def _make_parts_dir(parts: Path) -> None:
    parts.mkdir(exist_ok=True)


def _discard_parts(parts: Path) -> None:
    # Synchronous like the actor's cleanup, so it completes under cancellation.
    if not parts.is_dir():
        return
    for part in parts.iterdir():
        part.unlink(missing_ok=True)
    parts.rmdir()
