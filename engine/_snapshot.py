"""Immutable values that the engine hands to its callers."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import trio

from ._states import JobStatus


@dataclasses.dataclass(frozen=True, slots=True)
class ResultInfo:
    """Description of a finished job's file."""

    size: int  # bytes
    media_type: str
    file_name: str
    sha256: str  # lowercase hex digest of the whole file


@dataclasses.dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed: a machine-readable ``code`` and a human-readable ``message``."""

    code: str
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class JobSnapshot:
    """State of one job at one moment.

    ``progress`` is a whole percentage from 0 to 100. It never decreases
    between snapshots of the same job and is 100 exactly when ``status`` is
    ``done``. ``result`` is set exactly when the job is done and ``error``
    exactly when it failed. Timestamps are timezone-aware UTC.
    """

    job_id: str
    file_id: int  # the only file, or the first file of a bulk job
    status: JobStatus
    progress: int
    created_at: datetime
    updated_at: datetime
    result: ResultInfo | None = None
    error: JobError | None = None
    # Seconds until the engine expects the job to finish, or None when it has
    # no estimate (queued, finished, or a source that reports no schedule).
    eta_seconds: float | None = None
    # Estimated seconds until the snapshot next changes (the next progress step,
    # or a queued job's start), or None without an estimate. Clients use it to
    # pace their polls.
    next_change_seconds: float | None = None
    # 1 for the next job to start; None unless queued.
    queue_position: int | None = None
    # Attempt running or last run, 1 for the first; 0 before the job starts.
    # For a bulk job, the highest attempt that any of its files has reached.
    attempt: int = 0
    # While a processing single-file job waits to retry a failed attempt:
    # when attempt ``attempt + 1`` starts. None otherwise, and None when the
    # retry would start after the deadline, which then ends the job first.
    retry_at: datetime | None = None
    # When the job fails with code "timeout" unless it has finished.
    deadline_at: datetime | None = None
    # When a finished job and its result will be removed.
    expires_at: datetime | None = None
    # Bulk jobs only: every file id in order, each file's state (queued,
    # processing, done, missing, failed, or cancelled when the job ended
    # before the file did), and the ids the source lacks.
    file_ids: tuple[int, ...] | None = None
    file_states: tuple[tuple[int, str], ...] | None = None
    missing_file_ids: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class ResultFile:
    """A finished job's file, as returned by ``JobClient.open_result``.

    The file at ``path`` is never modified once the job is done. It may be
    removed when the job is removed from the table, so a reader should open
    it promptly; on POSIX systems an already open file stays readable.
    """

    snapshot: JobSnapshot
    path: Path
    info: ResultInfo


@dataclasses.dataclass(frozen=True, slots=True)
class EngineStats:
    """Sizes of the supervisor's tables at one moment."""

    jobs: int  # rows in the job table
    by_status: dict[str, int]  # rows per status value
    queued: int  # jobs in the queue
    running_actors: int  # actor tasks alive, cancelled ones not yet exited included
    tombstones: int
    accepting: bool  # False once draining or shutting down


class JobChange:
    """The next state change of one job, announced once by the supervisor.

    A task waits for it with ``wait``, as on a ``trio.Event``. A task that
    waits for something else at the same time, such as a client leaving,
    runs that wait in a cancel scope that ``cancelling`` registers, so it
    needs no second task. Only the supervisor calls ``set``.
    """

    __slots__ = ("_event", "_scopes")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._scopes: set[trio.CancelScope] = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        """Return once the change has happened. A checkpoint."""
        await self._event.wait()

    def set(self) -> None:
        """Announce the change: wake the waiters and cancel the registered scopes."""
        self._event.set()
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()

    @contextlib.contextmanager
    def cancelling(self, scope: trio.CancelScope) -> Iterator[None]:
        """Cancel ``scope`` if the change happens before the block ends, or now if it has.

        The registration ends with the block, so a scope is never cancelled
        afterwards. Not a checkpoint.
        """
        if self._event.is_set():
            scope.cancel()
            yield
            return
        self._scopes.add(scope)
        try:
            yield
        finally:
            self._scopes.discard(scope)


@dataclasses.dataclass(frozen=True, slots=True)
class JobWatch:
    """A snapshot plus the job's next state change, for a watcher to wait on.

    ``changed`` is set at the job's next state change: a status transition
    (which also brings any result or error), a failed attempt that will be
    retried, the start of the retry, or the job's removal. Progress, queue
    position and a bulk job's file states move continually and never set it;
    a watcher reads them when it wakes.
    """

    snapshot: JobSnapshot
    changed: JobChange
