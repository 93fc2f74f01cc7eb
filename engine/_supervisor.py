"""The supervisor: the one task that owns the job table.

Theory of operation
-------------------
Only the supervisor task reads or writes the job table (``engine._table``).
Everyone else talks to it by message: callers through ``JobClient``, which
puts a request with a one-shot reply channel into the inbox and waits on that
channel, and actors through one final ``ActorExited`` report. Because one
task handles one message at a time, each request finds and leaves the table in
a consistent state without locks, and a cancel that races with a completion
is decided by whichever message arrives first.

The inbox buffer is unbounded on purpose. Every sender has at most one
message in it at a time (a caller waits for its reply, an actor sends one
report as it exits), so its length is bounded by the number of callers plus
actors, and no sender ever waits on the supervisor to make room. Actors in
particular must never block on the supervisor, or a slow supervisor would
stretch their deadlines.

Replies go out with ``send_nowait`` on a channel with room for exactly one
value, so the supervisor never blocks on a caller. A caller that was
cancelled has closed its end, and its reply is dropped.

Each download runs in an actor task (``engine._actor.run_actor``) in a
nursery that the supervisor owns, under a ``CancelScope`` that the supervisor
creates and keeps in the job's table entry. At most ``max_concurrent_jobs``
actors exist at once. Other jobs wait in a FIFO queue and have no task at
all, so a queued job costs only its table entry.

Timers need no tasks either. The loop waits for the next message with
``trio.move_on_at`` set to the earliest of three times: the next job deadline
(a heap), the next expiry (the oldest finished job, because every job has the
same time to live) and the end of a shutdown grace period. After each wake-up
it handles what is due, in batches of at most ``TIMER_BATCH`` jobs so that a
burst of expiries cannot stall the inbox.

Progress travels without messages: see ``engine._progress``.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import random
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import outcome
import trio

from ._actor import run_actor
from ._bulk import BulkProgress, run_bulk_actor
from ._client import JobClient
from ._errors import (
    IdempotencyConflict,
    JobAlreadyFinished,
    JobExpired,
    JobNotFound,
    Overloaded,
    ResultNotReady,
    ResultUnavailable,
    SupervisorClosed,
)
from ._messages import (
    ActorExited,
    AttemptFailed,
    AttemptStarted,
    CancelRequest,
    DrainRequest,
    ListRequest,
    Message,
    ReplyChannel,
    ResultRequest,
    ShutdownRequest,
    StatsRequest,
    StatusRequest,
    SubmitRequest,
    WatchRequest,
)
from ._metrics import EngineMetrics
from ._progress import ProgressSlot
from ._retry import RetryPolicy
from ._settings import EngineSettings
from ._snapshot import EngineStats, JobError, JobSnapshot, JobWatch, ResultFile
from ._source import SimulatedSource, Source
from ._states import JobStatus
from ._table import Job, JobTable, ScopedKey

logger = logging.getLogger("engine")

WallClock = Callable[[], datetime]

# Reported progress stays below 100 until the job is done.
MAX_PROGRESS_BEFORE_DONE = 99
# Messages handled per pass of the supervisor loop, at most (see
# ``_handle_waiting_messages``).
MESSAGE_BATCH = 64
# Stale deadline entries tolerated beyond twice the jobs in flight before the
# heap is rebuilt; keeps small tables from rebuilding on every pass.
STALE_DEADLINES_SLACK = 1024
# Most timers (deadlines or expiries) handled in one pass of the loop.
TIMER_BATCH = 1000
# Completions counted for the Retry-After estimate of a rejected start (seconds).
COMPLETION_WINDOW_SECONDS = 60.0
# Retry-After bounds for a rejected start, and the value used with no
# completion in the window (seconds).
MIN_RETRY_AFTER_SECONDS = 1.0
MAX_RETRY_AFTER_SECONDS = 60.0
DEFAULT_RETRY_AFTER_SECONDS = 10.0


def utc_now() -> datetime:
    """Return the current wall-clock time, timezone-aware in UTC."""
    return datetime.now(UTC)


class Supervisor:
    """Owner of the job table; run it with ``await nursery.start(supervisor.run)``.

    ``run`` hands back a ``JobClient`` once the supervisor accepts requests.
    """

    def __init__(
        self,
        settings: EngineSettings,
        source: Source | None = None,
        *,
        wall_clock: WallClock = utc_now,
    ) -> None:
        self._settings = settings
        self._source: Source = source if source is not None else SimulatedSource(settings)
        self._wall_clock = wall_clock
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[Message](math.inf)
        self._table = JobTable(settings.max_tombstones)
        self._deadlines: list[tuple[float, int, Job]] = []  # heap of (deadline, sequence, job)
        self._sequence = itertools.count()
        self._completions: collections.deque[float] = collections.deque()
        self._retry = RetryPolicy(
            max_attempts=settings.job_max_attempts,
            base=settings.retry_backoff_base_ms / 1000,
            cap=settings.retry_backoff_cap_ms / 1000,
            rng=random.Random(settings.download_random_seed),
        )
        self.metrics = EngineMetrics(
            mailbox_depth=lambda: self._inbox_send.statistics().current_buffer_used
        )
        self._running = 0  # actors started and not yet reported
        self._accepting = True
        self._grace_deadline = math.inf  # trio time processing jobs are cancelled at
        self._stop_requested = False
        self._drain_replies: list[ReplyChannel] = []
        self._stop_replies: list[ReplyChannel] = []
        self._results_dir = Path()
        self._actors: trio.Nursery | None = None
        self._gauge_sizes: tuple[int, ...] = ()  # what _update_gauges last copied

    async def run(
        self, *, task_status: trio.TaskStatus[JobClient] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve requests until a shutdown request has been handled.

        When cancelled from outside, every unfinished job is marked
        ``cancelled`` and logged before the cancellation propagates, and the
        actors are cancelled with the supervisor's nursery. Either way, a
        request still in the inbox gets ``SupervisorClosed``.
        """
        with self._open_results_dir() as results_dir:
            self._results_dir = results_dir
            try:
                async with trio.open_nursery() as actors:
                    self._actors = actors
                    logger.info("supervisor started, results in %s", results_dir)
                    client = JobClient(
                        self._inbox_send.clone(), self._source, self.metrics.registry
                    )
                    task_status.started(client)
                    await self._serve()
            finally:
                self._close()
        logger.info("supervisor stopped")

    async def _serve(self) -> None:
        while not (self._stop_requested and self._running == 0):
            message: Message | None = None
            with trio.move_on_at(self._next_wakeup()):
                message = await self._inbox_receive.receive()
            if message is not None:
                self._handle(message)
                self._handle_waiting_messages()
            self._fire_timers(trio.current_time())
            self._admit_queued()
            self._finish_drain()
            self._update_gauges()

    def _handle_waiting_messages(self) -> None:
        """Handle up to ``MESSAGE_BATCH - 1`` more messages that are already in the inbox.

        Under load, requests arrive faster than one per pass of the loop, so
        handling those already waiting shares one round of timers, admission
        and gauges among them. The bound keeps a flood from delaying timers.
        """
        for _ in range(MESSAGE_BATCH - 1):
            try:
                message = self._inbox_receive.receive_nowait()
            except trio.WouldBlock:
                return
            self._handle(message)

    # -- dispatch ---------------------------------------------------------

    def _handle(self, message: Message) -> None:
        match message:
            case SubmitRequest(reply=reply):
                _send_reply(reply, outcome.capture(self._submit, message))
            case StatusRequest(job_id=job_id, reply=reply):
                _send_reply(reply, outcome.capture(self._status, job_id))
            case WatchRequest(job_id=job_id, reply=reply):
                _send_reply(reply, outcome.capture(self._watch, job_id))
            case CancelRequest(job_id=job_id, reply=reply):
                _send_reply(reply, outcome.capture(self._cancel, job_id))
            case ResultRequest(job_id=job_id, reply=reply):
                _send_reply(reply, outcome.capture(self._result, job_id))
            case ListRequest(reply=reply):
                now = trio.current_time()
                snapshots = [self._snapshot(job, now) for job in self._table.jobs.values()]
                _send_reply(reply, outcome.Value(snapshots))
            case StatsRequest(reply=reply):
                _send_reply(reply, outcome.Value(self._stats()))
            case DrainRequest(grace=grace, reply=reply):
                self._drain_replies.append(reply)
                self._begin_drain(grace)
            case ShutdownRequest(reply=reply):
                self._stop_replies.append(reply)
                self._stop_requested = True
                self._begin_drain(0.0)
            case AttemptFailed(job_id=job_id):
                job = self._table.get(job_id)
                # A bulk job's files retry on their own schedules, so one time
                # for the whole job would mislead; its files stay "processing".
                if job is not None and not job.status.is_terminal and job.file_ids is None:
                    now_wall = self._wall_clock()
                    job.retry_due = trio.current_time() + message.retry_in
                    job.retry_at = now_wall + timedelta(seconds=message.retry_in)
                    job.updated_at = max(job.updated_at, now_wall)
                    self._table.notify(job)
            case AttemptStarted(job_id=job_id):
                job = self._table.get(job_id)
                if job is not None and not job.status.is_terminal:
                    logger.info("job %s: attempt %d started", job_id, message.attempt)
                    job.retry_at = job.retry_due = None
                    job.updated_at = max(job.updated_at, self._wall_clock())
                    self._table.notify(job)
            case ActorExited():
                self._actor_exited(message)

    # -- requests ---------------------------------------------------------

    def _submit(self, request: SubmitRequest) -> tuple[JobSnapshot, bool]:
        now = trio.current_time()
        if not self._accepting:
            raise SupervisorClosed()

        key = request.idempotency_key
        scoped_key: ScopedKey | None = None
        if key is not None:
            scoped_key = (request.idempotency_owner, key)
            existing = self._table.job_for_key(scoped_key)
            if existing is not None:
                if existing.fingerprint != request.fingerprint:
                    raise IdempotencyConflict(key, existing.job_id)
                return self._snapshot(existing, now), False

        self._make_room(now)
        default_timeout = self._settings.job_timeout
        timeout = (
            default_timeout if request.timeout is None else min(request.timeout, default_timeout)
        )
        job = Job(
            str(uuid.uuid4()),
            request.file_id,
            sequence=next(self._sequence),
            created_at=self._wall_clock(),
            submitted_at=now,
            timeout=timeout,
        )
        job.idempotency_key = scoped_key
        job.fingerprint = request.fingerprint
        job.file_ids = request.file_ids
        self._table.add(job)
        heapq.heappush(self._deadlines, (job.deadline, job.sequence, job))
        self.metrics.submitted.inc()
        if job.file_ids is None:
            files = f"file {job.file_id}"
        else:
            files = f"bulk of {len(job.file_ids)} files"
        logger.info("job %s: queued (%s, timeout %g s)", job.job_id, files, timeout)
        return self._snapshot(job, now), True

    def _make_room(self, now: float) -> None:
        """Raise ``Overloaded`` unless a new job fits the queue and the table."""
        settings = self._settings
        free_slots = max(settings.max_concurrent_jobs - self._running, 0)
        waiting = self._table.queued_count()
        if waiting - free_slots >= settings.max_queued_jobs:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise Overloaded(
                f"the queue is full ({waiting} waiting, MAX_QUEUED_JOBS is "
                f"{settings.max_queued_jobs})",
                self._retry_after(now),
            )

        if len(self._table) >= settings.max_retained_jobs:
            oldest = self._table.oldest_finished()
            if oldest is None:
                self.metrics.rejected.labels(reason="table_full").inc()
                raise Overloaded(
                    f"the job table is full: {len(self._table)} jobs are in flight",
                    self._retry_after(now),
                )
            self._remove(oldest, "evicted to make room")
            self.metrics.evictions.inc()

    def _retry_after(self, now: float) -> float:
        """Estimate the seconds until a processing slot frees, from recent completions."""
        interval = self._completion_interval(now)
        if interval is None:
            return DEFAULT_RETRY_AFTER_SECONDS
        return min(max(interval, MIN_RETRY_AFTER_SECONDS), MAX_RETRY_AFTER_SECONDS)

    def _completion_interval(self, now: float) -> float | None:
        """Return the mean seconds between recent actor exits, or None without any."""
        self._forget_old_completions(now)
        if not self._completions:
            return None
        span = min(COMPLETION_WINDOW_SECONDS, max(now - self._completions[0], 1.0))
        return span / len(self._completions)

    def _forget_old_completions(self, now: float) -> None:
        while self._completions and self._completions[0] < now - COMPLETION_WINDOW_SECONDS:
            self._completions.popleft()

    def _status(self, job_id: str) -> JobSnapshot:
        return self._snapshot(self._lookup(job_id), trio.current_time())

    def _watch(self, job_id: str) -> JobWatch:
        job = self._lookup(job_id)
        now = trio.current_time()
        snapshot = self._snapshot(job, now)
        return JobWatch(snapshot=snapshot, changed=self._table.watch(job))

    def _next_progress_step_at(self, job: Job, now: float) -> float | None:
        """Return the trio time the job's reported progress moves next, if it is scheduled.

        Never earlier than ``now``. None when the next change is the end of
        the job or the source declared no schedule.
        """
        if job.status is not JobStatus.PROCESSING or job.slot is None:
            return None
        next_percent = job.progress + self._settings.progress_step_percent
        if next_percent > MAX_PROGRESS_BEFORE_DONE:
            return None
        moment = job.slot.time_of(next_percent / 100)
        return None if moment is None else max(moment, now)

    def _cancel(self, job_id: str) -> JobSnapshot:
        job = self._lookup(job_id)
        now = trio.current_time()
        if job.status in (JobStatus.DONE, JobStatus.FAILED):
            raise JobAlreadyFinished(self._snapshot(job, now))
        if job.status is not JobStatus.CANCELLED:
            self._transition(job, JobStatus.CANCELLED, now, reason="on request")
        return self._snapshot(job, now)

    def _result(self, job_id: str) -> ResultFile:
        job = self._lookup(job_id)
        snapshot = self._snapshot(job, trio.current_time())
        if job.status is JobStatus.DONE:
            assert job.result is not None and job.result_path is not None
            return ResultFile(snapshot=snapshot, path=job.result_path, info=job.result)
        if job.status.is_terminal:
            raise ResultUnavailable(snapshot)
        raise ResultNotReady(snapshot)

    def _lookup(self, job_id: str) -> Job:
        job = self._table.get(job_id)
        if job is not None:
            return job
        if self._table.is_tombstone(job_id):
            raise JobExpired(job_id)
        raise JobNotFound(job_id)

    def _stats(self) -> EngineStats:
        return EngineStats(
            jobs=len(self._table),
            by_status={status.value: self._table.counts[status] for status in JobStatus},
            queued=self._table.queued_count(),
            running_actors=self._running,
            tombstones=self._table.tombstone_count(),
            accepting=self._accepting,
        )

    # -- actors -----------------------------------------------------------

    def _admit_queued(self) -> None:
        """Start actors for queued jobs, oldest first, while processing slots are free."""
        while self._running < self._settings.max_concurrent_jobs:
            job = self._table.peek_queued()
            if job is None:
                return
            self._start_actor(job)

    def _start_actor(self, job: Job) -> None:
        """Mark ``job`` processing and spawn its actor; no checkpoint.

        The supervisor makes the actor's ``CancelScope`` itself and spawns
        with ``start_soon``, so admitting a job never waits for the new task
        to run. A cancel that arrives before the actor's first step still
        works: trio lets a scope be cancelled before it is entered.
        """
        assert self._actors is not None
        job.result_path = self._result_path(job.job_id)
        job.started_at = trio.current_time()
        job.scope = trio.CancelScope()
        job.slot = ProgressSlot() if job.file_ids is None else BulkProgress(job.file_ids)
        # The first attempt counts from admission, not from the actor's first
        # step, so a job cancelled before that step reads the same afterwards.
        job.slot.attempt = 1
        self._transition(job, JobStatus.PROCESSING, job.started_at)
        self._running += 1

        if isinstance(job.slot, BulkProgress) and job.file_ids is not None:
            self._actors.start_soon(
                run_bulk_actor,
                job.job_id,
                job.file_ids,
                self._source,
                job.slot,
                job.result_path,
                self._retry,
                self._settings.bulk_max_concurrent_files,
                self._inbox_send,
                job.scope,
            )
        else:
            self._actors.start_soon(
                run_actor,
                job.job_id,
                job.file_id,
                self._source,
                job.slot,
                job.result_path,
                self._retry,
                self._inbox_send,
                job.scope,
            )

    def _result_path(self, job_id: str) -> Path:
        return self._results_dir / f"{job_id}.zip"

    def _actor_exited(self, report: ActorExited) -> None:
        self._running -= 1
        now = trio.current_time()
        self._completions.append(now)
        self._forget_old_completions(now)
        self.metrics.attempts.inc(report.attempts)
        self.metrics.retries.inc(max(report.attempts - 1, 0))

        job = self._table.get(report.job_id)
        if job is None or job.status.is_terminal:
            # The job was cancelled, timed out or removed while the actor
            # finished: that decision is final, and a late result is discarded.
            if report.result is not None:
                self._result_path(report.job_id).unlink(missing_ok=True)
                logger.debug("job %s: discarded a result that arrived too late", report.job_id)
            if job is not None:
                job.scope = None
            return

        if report.result is not None:
            job.result = report.result
            self._transition(job, JobStatus.DONE, now)
        elif report.error is not None:
            job.error = report.error
            reason = f"{report.error.code}: {report.error.message}"
            self._transition(job, JobStatus.FAILED, now, reason=reason)
        else:
            self._transition(job, JobStatus.CANCELLED, now, reason="by shutdown")
        job.scope = None

    # -- timers -----------------------------------------------------------

    def _next_wakeup(self) -> float:
        deadlines = self._deadlines
        while deadlines and deadlines[0][2].status.is_terminal:
            heapq.heappop(deadlines)  # the job ended before its deadline
        # Entries of jobs that ended early stay in the heap until their deadline
        # would have come, holding the Job objects. Every job in flight has
        # exactly one entry, so once more than half are stale, rebuild the heap
        # from the live ones: O(n), and amortized O(1) per finished job.
        if len(deadlines) > 2 * self._table.in_flight_count() + STALE_DEADLINES_SLACK:
            deadlines[:] = [entry for entry in deadlines if not entry[2].status.is_terminal]
            heapq.heapify(deadlines)
        wakeup = self._grace_deadline
        if deadlines:
            wakeup = min(wakeup, deadlines[0][0])
        oldest = self._table.oldest_finished()
        if oldest is not None and oldest.finished_at is not None:
            wakeup = min(wakeup, oldest.finished_at + self._settings.job_ttl)
        return wakeup

    def _fire_timers(self, now: float) -> None:
        handled = 0
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now and handled < TIMER_BATCH:
            _, _, job = heapq.heappop(deadlines)
            if not job.status.is_terminal:
                self._time_out(job, now)
                handled += 1

        ttl = self._settings.job_ttl
        while handled < TIMER_BATCH:
            oldest = self._table.oldest_finished()
            if oldest is None or oldest.finished_at is None or oldest.finished_at + ttl > now:
                break
            self._remove(oldest, "expired")
            self.metrics.expired.inc()
            handled += 1

        if now >= self._grace_deadline:
            self._grace_deadline = math.inf
            processing = self._table.counts[JobStatus.PROCESSING]
            if processing:
                logger.info("shutdown grace period ended, cancelling %d jobs", processing)
            self._cancel_unfinished(now, "by shutdown")

    def _time_out(self, job: Job, now: float) -> None:
        job.error = JobError(
            code="timeout", message=f"the job did not finish within {job.timeout:g} s"
        )
        self.metrics.timeouts.inc()
        self._transition(job, JobStatus.FAILED, now, reason=f"timeout after {job.timeout:g} s")

    def _remove(self, job: Job, reason: str) -> None:
        if job.result_path is not None:
            job.result_path.unlink(missing_ok=True)
        self._table.remove(job)
        logger.info("job %s: removed (%s)", job.job_id, reason)

    # -- state ------------------------------------------------------------

    def _transition(self, job: Job, new: JobStatus, now: float, *, reason: str = "") -> None:
        """Move ``job`` to ``new``; on a terminal state, also cancel its actor."""
        self._refresh_progress(job, now)
        old = self._table.move(job, new)
        job.updated_at = max(job.updated_at, self._wall_clock())
        if new is JobStatus.DONE:
            job.progress = 100
        if new.is_terminal:
            job.finished_at = now
            if job.slot is not None:
                job.slot.hold(now)
            if job.scope is not None:
                job.scope.cancel()
            self.metrics.finished.labels(state=new.value).inc()
            self.metrics.duration.labels(state=new.value).observe(now - job.submitted_at)
            if new is JobStatus.CANCELLED:
                self.metrics.cancellations.inc()
        logger.info(
            "job %s: %s -> %s%s", job.job_id, old.value, new.value, f" ({reason})" if reason else ""
        )

    def _refresh_progress(self, job: Job, now: float) -> None:
        """Fold the actor's progress slot into ``job.progress`` (processing jobs only)."""
        if job.status is not JobStatus.PROCESSING or job.slot is None:
            return
        step = self._settings.progress_step_percent
        # The tolerance keeps 0.29 * 100 = 28.999... from reading as 28.
        percent = min(math.floor(job.slot.fraction(now) * 100 + 1e-9), MAX_PROGRESS_BEFORE_DONE)
        percent -= percent % step
        if percent > job.progress:
            job.progress = percent
            reached = job.slot.reached_at(percent / 100, now)
            job.updated_at = max(job.updated_at, self._wall_at(reached, now))

    def _wall_at(self, moment: float, now: float) -> datetime:
        """Convert trio time ``moment`` to wall-clock time, given trio time ``now``."""
        return self._wall_clock() - timedelta(seconds=now - moment)

    def _snapshot(self, job: Job, now: float) -> JobSnapshot:
        self._refresh_progress(job, now)
        eta: float | None = None
        next_change: float | None = None
        queue_position: int | None = None
        if job.status is JobStatus.PROCESSING and job.slot is not None:
            finishes_at = job.slot.finishes_at()
            if finishes_at is not None:
                eta = max(finishes_at - now, 0.0)
            step_at = self._next_progress_step_at(job, now)
            next_change = eta if step_at is None else step_at - now
            if job.retry_due is not None:
                # A retry due after the deadline never starts: the timeout comes first.
                next_change = max(min(job.retry_due, job.deadline) - now, 0.0)
        if job.status is JobStatus.QUEUED:
            queue_position = self._table.queue_position(job)
            interval = self._completion_interval(now)
            if interval is not None:
                # The job moves up one place each time a processing job ends.
                next_change = interval
        # Both times derive from stored wall-clock moments, so repeated
        # snapshots of an unchanged job are equal.
        terminal = job.status.is_terminal
        expires_at = None
        if terminal:
            expires_at = job.updated_at + timedelta(seconds=self._settings.job_ttl)
        return JobSnapshot(
            job_id=job.job_id,
            file_id=job.file_id,
            status=job.status,
            progress=job.progress,
            created_at=job.created_at,
            updated_at=job.updated_at,
            result=job.result if job.status is JobStatus.DONE else None,
            error=job.error if job.status is JobStatus.FAILED else None,
            eta_seconds=eta,
            next_change_seconds=next_change,
            queue_position=queue_position,
            attempt=self._attempt(job),
            retry_at=self._retry_at(job),
            deadline_at=None if terminal else job.created_at + timedelta(seconds=job.timeout),
            expires_at=expires_at,
            **self._bulk_fields(job),
        )

    @staticmethod
    def _attempt(job: Job) -> int:
        if job.slot is None:
            return 0
        if isinstance(job.slot, BulkProgress):
            return job.slot.highest_attempt()
        return job.slot.attempt

    @staticmethod
    def _retry_at(job: Job) -> datetime | None:
        """Return when the next attempt starts, if the job waits for one due before its deadline."""
        if job.status is not JobStatus.PROCESSING or job.retry_due is None:
            return None
        return job.retry_at if job.retry_due < job.deadline else None

    def _bulk_fields(self, job: Job) -> dict[str, Any]:
        if job.file_ids is None:
            return {}
        states: tuple[tuple[int, str], ...]
        if isinstance(job.slot, BulkProgress):
            states = tuple(job.slot.states.items())
            missing = job.slot.missing()
            if job.status.is_terminal:
                # Files still queued or processing when the job ended never will be.
                states = tuple(
                    (file_id, "cancelled" if state in ("queued", "processing") else state)
                    for file_id, state in states
                )
        else:
            state = "cancelled" if job.status is JobStatus.CANCELLED else "queued"
            states = tuple((file_id, state) for file_id in job.file_ids)
            missing = ()
        return {"file_ids": job.file_ids, "file_states": states, "missing_file_ids": missing}

    def _update_gauges(self) -> None:
        """Copy the table's sizes into the gauges, if any changed since the last copy.

        Most passes handle a status query and change nothing, and setting
        seven gauges, each behind a lock, costs more than the query itself.
        """
        counts = self._table.counts
        by_status = (counts[status] for status in JobStatus)
        sizes = (self._running, self._table.queued_count(), *by_status)
        if sizes == self._gauge_sizes:
            return
        self._gauge_sizes = sizes
        metrics = self.metrics
        for status in JobStatus:
            metrics.jobs.labels(state=status.value).set(self._table.counts[status])
        metrics.queue_depth.set(self._table.queued_count())
        metrics.in_flight.set(self._table.in_flight_count())
        metrics.running_actors.set(self._running)

    # -- shutdown ---------------------------------------------------------

    def _begin_drain(self, grace: float) -> None:
        now = trio.current_time()
        self._grace_deadline = min(self._grace_deadline, now + grace)
        if not self._accepting:
            return
        self._accepting = False
        logger.info(
            "supervisor draining: %d queued jobs cancelled, %d processing get %g s",
            self._table.queued_count(),
            self._table.counts[JobStatus.PROCESSING],
            grace,
        )
        for job in self._table.queued_jobs():
            self._transition(job, JobStatus.CANCELLED, now, reason="by shutdown")

    def _finish_drain(self) -> None:
        if self._accepting or self._running > 0 or not self._drain_replies:
            return
        for reply in self._drain_replies:
            _send_reply(reply, outcome.Value(None))
        self._drain_replies.clear()

    def _cancel_unfinished(self, now: float, reason: str) -> None:
        for job in list(self._table.jobs.values()):
            if not job.status.is_terminal:
                self._transition(job, JobStatus.CANCELLED, now, reason=reason)

    def _close(self) -> None:
        """Reject what is left in the inbox and mark unfinished jobs cancelled.

        Synchronous, so it completes even when the supervisor was cancelled.
        """
        self._accepting = False
        self._cancel_unfinished(trio.current_time(), "by shutdown")
        self._inbox_receive.close()
        while True:
            try:
                message = self._inbox_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if not isinstance(message, ActorExited | AttemptFailed | AttemptStarted):
                _send_reply(message.reply, outcome.Error(SupervisorClosed()))
        # Every actor has ended by now, because the nursery has exited, so
        # waiting drain and shutdown callers get their reply even when the
        # supervisor was cancelled from outside.
        for reply in self._drain_replies + self._stop_replies:
            _send_reply(reply, outcome.Value(None))
        self._drain_replies.clear()
        self._stop_replies.clear()

    @contextmanager
    def _open_results_dir(self) -> Iterator[Path]:
        configured = self._settings.results_dir
        if configured is not None:
            configured.mkdir(parents=True, exist_ok=True)
            yield configured
            return
        temporary = Path(tempfile.mkdtemp(prefix="download-jobs-"))
        try:
            yield temporary
        finally:
            shutil.rmtree(temporary, ignore_errors=True)


def _send_reply(reply: ReplyChannel, result: outcome.Outcome[Any]) -> None:
    """Deliver ``result`` without blocking; drop it if the caller has gone."""
    try:
        reply.send_nowait(result)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        logger.debug("reply dropped: the caller stopped waiting")
    finally:
        reply.close()


@asynccontextmanager
async def open_supervisor(
    settings: EngineSettings,
    source: Source | None = None,
    *,
    wall_clock: WallClock = utc_now,
) -> AsyncIterator[JobClient]:
    """Run a supervisor for the duration of the ``async with`` block.

    On exit, unfinished jobs are cancelled and the block waits until every
    actor has ended. An exception from the block arrives wrapped in an
    ``ExceptionGroup``, because the block runs inside the supervisor's nursery.
    """
    supervisor = Supervisor(settings, source, wall_clock=wall_clock)
    async with trio.open_nursery() as nursery:
        client: JobClient = await nursery.start(supervisor.run)
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client.shutdown()
