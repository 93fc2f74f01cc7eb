"""The job table and the indexes the supervisor keeps beside it.

Only the supervisor task uses a ``JobTable``. Every index is sized by the
table or by its own setting, so memory stays bounded however many jobs come
and go:

- ``jobs``: every retained job, at most ``max_retained_jobs``.
- the queue: queued jobs in FIFO order, keyed by a sequence number, so the
  head pops and a queue position is found in O(log n).
- the finished order: finished jobs in the order they ended. The time to
  live is the same for every job, so this is also their expiry order, and
  the oldest finished job (the first to evict) is its head.
- tombstones: ids of removed jobs, oldest dropped first beyond
  ``max_tombstones``, stored as 16-byte UUIDs.
- idempotency keys: at most one per retained job.
"""

from __future__ import annotations

import collections
import uuid
from datetime import datetime
from pathlib import Path

import trio
from sortedcontainers import SortedDict

from ._progress import ProgressSlot
from ._snapshot import JobChange, JobError, ResultInfo
from ._states import JobStatus, check_transition

# An idempotency key with its owner, (owner, key): the same key from two
# owners names two jobs.
ScopedKey = tuple[str, str]


class Job:
    """One row of the job table. Only the supervisor task touches it."""

    __slots__ = (
        "changed",
        "created_at",
        "deadline",
        "error",
        "file_id",
        "file_ids",
        "fingerprint",
        "finished_at",
        "idempotency_key",
        "job_id",
        "progress",
        "result",
        "result_path",
        "retry_at",
        "retry_due",
        "scope",
        "sequence",
        "slot",
        "started_at",
        "status",
        "submitted_at",
        "timeout",
        "updated_at",
    )

    def __init__(
        self,
        job_id: str,
        file_id: int,
        *,
        sequence: int,
        created_at: datetime,
        submitted_at: float,
        timeout: float,
    ) -> None:
        self.job_id = job_id
        self.file_id = file_id
        self.file_ids: tuple[int, ...] | None = None  # set for a bulk job
        self.sequence = sequence  # submission order; the queue's key
        self.status = JobStatus.QUEUED
        self.progress = 0  # last reported percentage; only grows
        self.created_at = created_at  # wall clock
        self.updated_at = created_at  # wall clock
        self.submitted_at = submitted_at  # trio clock
        self.timeout = timeout  # seconds, from submission
        self.deadline = submitted_at + timeout  # trio clock
        self.started_at: float | None = None  # trio clock
        self.finished_at: float | None = None  # trio clock
        self.slot: ProgressSlot | None = None  # set from the start of processing
        self.scope: trio.CancelScope | None = None  # the actor's scope while it runs
        self.result: ResultInfo | None = None
        self.result_path: Path | None = None
        self.error: JobError | None = None
        # While a single-file job waits out a retry's backoff: when the next
        # attempt starts, on the wall clock and on the trio clock.
        self.retry_at: datetime | None = None
        self.retry_due: float | None = None
        self.idempotency_key: ScopedKey | None = None
        self.fingerprint: object = None
        # Set (and dropped) when the job's snapshot changes other than by the
        # passage of time; created only while someone watches the job.
        self.changed: JobChange | None = None


class JobTable:
    """Jobs by id plus the queue, finished order, tombstones and idempotency keys."""

    def __init__(self, max_tombstones: int) -> None:
        self.jobs: dict[str, Job] = {}
        self.counts: collections.Counter[JobStatus] = collections.Counter()
        self._queue: SortedDict = SortedDict()  # sequence -> queued Job
        self._finished: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._tombstones: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._max_tombstones = max_tombstones
        self._idempotency: dict[ScopedKey, str] = {}  # (owner, key) -> job id

    def __len__(self) -> int:
        return len(self.jobs)

    # -- membership -------------------------------------------------------

    def add(self, job: Job) -> None:
        """Add a new queued job."""
        self.jobs[job.job_id] = job
        self.counts[job.status] += 1
        self._queue[job.sequence] = job
        if job.idempotency_key is not None:
            self._idempotency[job.idempotency_key] = job.job_id

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def remove(self, job: Job) -> None:
        """Drop a finished job and remember its id as a tombstone."""
        self.notify(job)
        del self.jobs[job.job_id]
        self.counts[job.status] -= 1
        self._finished.pop(job.job_id, None)
        if job.idempotency_key is not None:
            self._idempotency.pop(job.idempotency_key, None)
        if self._max_tombstones > 0:
            self._tombstones[uuid.UUID(job.job_id).bytes] = None
            while len(self._tombstones) > self._max_tombstones:
                self._tombstones.popitem(last=False)

    def is_tombstone(self, job_id: str) -> bool:
        try:
            key = uuid.UUID(job_id).bytes
        except ValueError:
            return False
        return key in self._tombstones

    def tombstone_count(self) -> int:
        return len(self._tombstones)

    def job_for_key(self, key: ScopedKey) -> Job | None:
        job_id = self._idempotency.get(key)
        return None if job_id is None else self.jobs.get(job_id)

    # -- watchers ---------------------------------------------------------

    def watch(self, job: Job) -> JobChange:
        """Return the job's next change, which ``notify`` sets, creating it if needed."""
        if job.changed is None:
            job.changed = JobChange()
        return job.changed

    def notify(self, job: Job) -> None:
        """Wake the job's watchers; the next ``watch`` gets a fresh ``JobChange``."""
        if job.changed is not None:
            job.changed.set()
            job.changed = None

    # -- state ------------------------------------------------------------

    def move(self, job: Job, new: JobStatus) -> JobStatus:
        """Change ``job.status`` after checking the transition; return the old status."""
        check_transition(job.status, new)
        old = job.status
        self.counts[old] -= 1
        self.counts[new] += 1
        job.status = new
        self.notify(job)
        if old is JobStatus.QUEUED:
            self._queue.pop(job.sequence, None)
        if new.is_terminal:
            self._finished[job.job_id] = job
        return old

    # -- queue ------------------------------------------------------------

    def queued_count(self) -> int:
        return len(self._queue)

    def peek_queued(self) -> Job | None:
        if not self._queue:
            return None
        job: Job = self._queue.peekitem(0)[1]
        return job

    def queue_position(self, job: Job) -> int:
        """Return the 1-based place of a queued job in the queue."""
        position: int = self._queue.index(job.sequence)
        return position + 1

    def queued_jobs(self) -> list[Job]:
        return list(self._queue.values())

    # -- finished jobs ----------------------------------------------------

    def oldest_finished(self) -> Job | None:
        """Return the job that finished first among those still retained."""
        for job in self._finished.values():
            return job
        return None

    def in_flight_count(self) -> int:
        return len(self.jobs) - len(self._finished)
