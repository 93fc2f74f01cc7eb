"""The supervisor: the one task that owns the job table.

Theory of operation
-------------------
Only the supervisor task reads or writes ``Supervisor._jobs``. Everyone else
talks to it by message: callers through ``JobClient``, which puts a request
with a one-shot reply channel into the inbox and waits on that channel, and
actors through one final ``ActorExited`` report. Because one task handles one
message at a time, each request sees and leaves the table in a consistent
state without locks, and a cancel that races with a completion is decided by
whichever message arrives first.

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
nursery that the supervisor owns, under a ``CancelScope`` that the actor hands
back at start-up. At most ``max_concurrent_jobs`` actors exist at once; other
jobs wait in a FIFO queue and have no task at all, so a queued job costs only
its table entry.

Progress travels without messages: see ``engine._progress``.
"""

from __future__ import annotations

import collections
import logging
import math
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
from ._errors import (
    JobAlreadyFinished,
    JobNotFound,
    ResultNotReady,
    ResultUnavailable,
    SupervisorClosed,
)
from ._messages import (
    ActorExited,
    CancelRequest,
    ListRequest,
    Message,
    ReplyChannel,
    Request,
    ResultRequest,
    ShutdownRequest,
    StatusRequest,
    SubmitRequest,
)
from ._progress import ProgressSlot
from ._settings import EngineSettings
from ._snapshot import JobError, JobSnapshot, ResultFile, ResultInfo
from ._source import SimulatedSource, Source
from ._states import JobStatus, check_transition

logger = logging.getLogger("engine")

WallClock = Callable[[], datetime]


def utc_now() -> datetime:
    """Return the current wall-clock time, timezone-aware in UTC."""
    return datetime.now(UTC)


class _Job:
    """One row of the job table. Only the supervisor task touches it."""

    __slots__ = (
        "created_at",
        "error",
        "file_id",
        "job_id",
        "progress",
        "result",
        "result_path",
        "scope",
        "slot",
        "status",
        "updated_at",
    )

    def __init__(self, job_id: str, file_id: int, created_at: datetime) -> None:
        self.job_id = job_id
        self.file_id = file_id
        self.status = JobStatus.QUEUED
        self.progress = 0  # last reported percentage; only grows
        self.created_at = created_at
        self.updated_at = created_at
        self.slot: ProgressSlot | None = None  # set while processing
        self.scope: trio.CancelScope | None = None  # the actor's scope while it runs
        self.result: ResultInfo | None = None
        self.result_path: Path | None = None
        self.error: JobError | None = None


class JobClient:
    """The handle through which other tasks use a running supervisor.

    Every method sends one request and waits for its reply. Cancellation: a
    method cancelled while it waits raises ``trio.Cancelled``, but a request
    that already reached the inbox still takes effect (a submitted job stays
    submitted, a cancel still cancels) and its reply is dropped. After the
    supervisor has stopped, every method raises ``SupervisorClosed``.
    """

    def __init__(self, inbox: trio.MemorySendChannel[Message], source: Source) -> None:
        self._inbox = inbox
        self._source = source

    async def submit(self, file_id: int) -> JobSnapshot:
        """Create a queued job for ``file_id``; it is in the table when this returns."""
        snapshot: JobSnapshot = await self._request(lambda reply: SubmitRequest(file_id, reply))
        return snapshot

    async def status(self, job_id: str) -> JobSnapshot:
        """Return the job's current snapshot, or raise ``JobNotFound``."""
        snapshot: JobSnapshot = await self._request(lambda reply: StatusRequest(job_id, reply))
        return snapshot

    async def cancel(self, job_id: str) -> JobSnapshot:
        """Cancel a queued or processing job and return its ``cancelled`` snapshot.

        Idempotent: cancelling a cancelled job returns the same state. Raises
        ``JobAlreadyFinished`` for a done or failed job and ``JobNotFound``
        for an unknown id. The job reads ``cancelled`` in the returned
        snapshot; its actor unwinds right after.
        """
        snapshot: JobSnapshot = await self._request(lambda reply: CancelRequest(job_id, reply))
        return snapshot

    async def open_result(self, job_id: str) -> ResultFile:
        """Return where a done job's file is and what it is.

        Raises ``ResultNotReady`` while the job is queued or processing,
        ``ResultUnavailable`` when it failed or was cancelled, and
        ``JobNotFound`` for an unknown id.
        """
        result: ResultFile = await self._request(lambda reply: ResultRequest(job_id, reply))
        return result

    async def list_jobs(self) -> list[JobSnapshot]:
        """Return a snapshot of every job in the table, oldest first."""
        snapshots: list[JobSnapshot] = await self._request(ListRequest)
        return snapshots

    async def shutdown(self) -> None:
        """Stop accepting jobs, cancel every unfinished one, and wait until no actor is left.

        Safe to call more than once and after the supervisor has stopped.
        """
        try:
            await self._request(ShutdownRequest)
        except SupervisorClosed:
            pass

    async def check_file(self, file_id: int) -> int | None:
        """Ask the source whether ``file_id`` exists; return its size in bytes or None.

        Runs in the caller's task, not the supervisor's, and starts no job.
        """
        return await self._source.check(file_id)

    async def check_health(self) -> None:
        """Probe the source's storage; raise ``SourceError`` if it fails.

        Runs in the caller's task; wrap it in a cancel scope to bound it.
        """
        await self._source.check_health()

    def pending_messages(self) -> int:
        """Return how many messages wait in the supervisor's inbox (mailbox depth)."""
        return self._inbox.statistics().current_buffer_used

    async def _request(self, build: Callable[[ReplyChannel], Request]) -> Any:
        reply_send, reply_receive = trio.open_memory_channel[outcome.Outcome[Any]](1)
        with reply_receive:
            try:
                await self._inbox.send(build(reply_send))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise SupervisorClosed() from None
            try:
                reply = await reply_receive.receive()
            except trio.EndOfChannel:
                raise SupervisorClosed() from None
        return reply.unwrap()


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
        self._jobs: dict[str, _Job] = {}
        self._queue: collections.deque[_Job] = collections.deque()
        self._running = 0  # actors started and not yet reported
        self._stopping = False
        self._shutdown_replies: list[ReplyChannel] = []
        self._results_dir = Path()
        self._actors: trio.Nursery | None = None

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
                    task_status.started(JobClient(self._inbox_send.clone(), self._source))
                    async for message in self._inbox_receive:
                        await self._handle(message)
                        if self._stopping and self._running == 0:
                            break
            finally:
                self._close()
        for reply in self._shutdown_replies:
            _send_reply(reply, outcome.Value(None))
        logger.info("supervisor stopped")

    # -- dispatch ---------------------------------------------------------

    async def _handle(self, message: Message) -> None:
        match message:
            case SubmitRequest(file_id=file_id, reply=reply):
                _send_reply(reply, outcome.capture(self._submit, file_id))
            case StatusRequest(job_id=job_id, reply=reply):
                _send_reply(reply, outcome.capture(self._status, job_id))
            case CancelRequest(job_id=job_id, reply=reply):
                _send_reply(reply, outcome.capture(self._cancel, job_id))
            case ResultRequest(job_id=job_id, reply=reply):
                _send_reply(reply, outcome.capture(self._result, job_id))
            case ListRequest(reply=reply):
                now = trio.current_time()
                _send_reply(
                    reply, outcome.Value([self._snapshot(j, now) for j in self._jobs.values()])
                )
            case ShutdownRequest(reply=reply):
                self._shutdown_replies.append(reply)
                self._begin_shutdown()
            case ActorExited():
                self._actor_exited(message)
        await self._admit_queued()

    # -- requests ---------------------------------------------------------

    def _submit(self, file_id: int) -> JobSnapshot:
        if self._stopping:
            raise SupervisorClosed()
        job = _Job(str(uuid.uuid4()), file_id, self._wall_clock())
        self._jobs[job.job_id] = job
        self._queue.append(job)
        logger.info("job %s: queued (file %d)", job.job_id, file_id)
        return self._snapshot(job, trio.current_time())

    def _status(self, job_id: str) -> JobSnapshot:
        return self._snapshot(self._lookup(job_id), trio.current_time())

    def _cancel(self, job_id: str) -> JobSnapshot:
        job = self._lookup(job_id)
        now = trio.current_time()
        if job.status in (JobStatus.DONE, JobStatus.FAILED):
            raise JobAlreadyFinished(self._snapshot(job, now))
        if job.status is JobStatus.PROCESSING:
            self._refresh_progress(job, now)
        if job.status is not JobStatus.CANCELLED:
            self._transition(job, JobStatus.CANCELLED, reason="on request")
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

    def _lookup(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    # -- actors -----------------------------------------------------------

    async def _admit_queued(self) -> None:
        """Start actors for queued jobs while processing slots are free."""
        while self._queue and self._running < self._settings.max_concurrent_jobs:
            job = self._queue.popleft()
            if job.status is not JobStatus.QUEUED:
                continue  # cancelled while it waited
            await self._start_actor(job)

    async def _start_actor(self, job: _Job) -> None:
        assert self._actors is not None
        job.slot = ProgressSlot()
        job.result_path = self._results_dir / f"{job.job_id}.zip"
        job.scope = await self._actors.start(
            run_actor,
            job.job_id,
            job.file_id,
            self._source,
            job.slot,
            job.result_path,
            self._inbox_send,
        )
        self._running += 1
        self._transition(job, JobStatus.PROCESSING)

    def _actor_exited(self, report: ActorExited) -> None:
        self._running -= 1
        job = self._jobs.get(report.job_id)
        if job is None or job.status.is_terminal:
            # The job was cancelled while the actor finished: the cancel won,
            # so a result that arrived too late is discarded.
            if report.result is not None and job is not None and job.result_path is not None:
                job.result_path.unlink(missing_ok=True)
                logger.debug("job %s: discarded result finished after cancel", report.job_id)
            if job is not None:
                job.scope = job.slot = None
            return

        now = trio.current_time()
        self._refresh_progress(job, now)
        if report.result is not None:
            job.result = report.result
            self._transition(job, JobStatus.DONE)
        elif report.error is not None:
            job.error = report.error
            self._transition(
                job, JobStatus.FAILED, reason=f"{report.error.code}: {report.error.message}"
            )
        else:
            self._transition(job, JobStatus.CANCELLED, reason="by shutdown")
        job.scope = job.slot = None

    # -- state ------------------------------------------------------------

    def _transition(self, job: _Job, new: JobStatus, *, reason: str = "") -> None:
        check_transition(job.status, new)
        old, job.status = job.status, new
        job.updated_at = max(job.updated_at, self._wall_clock())
        if new is JobStatus.DONE:
            job.progress = 100
        if new is JobStatus.CANCELLED and job.scope is not None:
            job.scope.cancel()
        logger.info(
            "job %s: %s -> %s%s", job.job_id, old.value, new.value, f" ({reason})" if reason else ""
        )

    def _refresh_progress(self, job: _Job, now: float) -> None:
        """Fold the actor's progress slot into ``job.progress`` (processing jobs only)."""
        if job.status is not JobStatus.PROCESSING or job.slot is None:
            return
        step = self._settings.progress_step_percent
        percent = min(int(job.slot.fraction(now) * 100), 99)
        percent -= percent % step
        if percent > job.progress:
            job.progress = percent
            reached = job.slot.reached_at(percent / 100, now)
            wall = self._wall_clock() - timedelta(seconds=now - reached)
            job.updated_at = max(job.updated_at, wall)

    def _snapshot(self, job: _Job, now: float) -> JobSnapshot:
        self._refresh_progress(job, now)
        eta: float | None = None
        if job.status is JobStatus.PROCESSING and job.slot is not None:
            finishes_at = job.slot.finishes_at()
            if finishes_at is not None:
                eta = max(finishes_at - now, 0.0)
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
        )

    # -- shutdown ---------------------------------------------------------

    def _begin_shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        logger.info("supervisor shutting down: cancelling %d unfinished jobs", self._unfinished())
        self._cancel_unfinished("by shutdown")

    def _cancel_unfinished(self, reason: str) -> None:
        now = trio.current_time()
        for job in self._jobs.values():
            if not job.status.is_terminal:
                self._refresh_progress(job, now)
                self._transition(job, JobStatus.CANCELLED, reason=reason)

    def _unfinished(self) -> int:
        return sum(1 for job in self._jobs.values() if not job.status.is_terminal)

    def _close(self) -> None:
        """Reject what is left in the inbox and mark unfinished jobs cancelled.

        Synchronous, so it completes even when the supervisor was cancelled.
        """
        self._stopping = True
        self._cancel_unfinished("by shutdown")
        self._inbox_receive.close()
        while True:
            try:
                message = self._inbox_receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if not isinstance(message, ActorExited):
                _send_reply(message.reply, outcome.Error(SupervisorClosed()))

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
    actor has ended.
    """
    supervisor = Supervisor(settings, source, wall_clock=wall_clock)
    async with trio.open_nursery() as nursery:
        client: JobClient = await nursery.start(supervisor.run)
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client.shutdown()
