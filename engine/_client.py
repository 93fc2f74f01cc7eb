"""``JobClient``: how other tasks talk to a running supervisor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import outcome
import trio
from prometheus_client import CollectorRegistry

from ._errors import SupervisorClosed
from ._messages import (
    CancelRequest,
    DrainRequest,
    ListRequest,
    Message,
    ReplyChannel,
    Request,
    ResultRequest,
    ShutdownRequest,
    StatsRequest,
    StatusRequest,
    SubmitRequest,
    WatchRequest,
)
from ._snapshot import EngineStats, JobSnapshot, JobWatch, ResultFile
from ._source import Source

# Idempotency keys longer than this are rejected, so a key cannot be used to
# store large values in the supervisor.
MAX_IDEMPOTENCY_KEY_LENGTH = 255


class JobClient:
    """The handle through which other tasks use a running supervisor.

    Every method except ``check_file``, ``check_health`` and
    ``pending_messages`` sends one request and waits for its reply.
    Cancellation: a method cancelled while it waits raises ``trio.Cancelled``,
    but a request that already reached the inbox still takes effect (a
    submitted job stays submitted, a cancel still cancels) and its reply is
    dropped. After the supervisor has stopped, every request raises
    ``SupervisorClosed``.
    """

    def __init__(
        self,
        inbox: trio.MemorySendChannel[Message],
        source: Source,
        registry: CollectorRegistry,
    ) -> None:
        self._inbox = inbox
        self._source = source
        self.metrics_registry = registry

    async def submit(self, file_id: int, *, job_timeout: float | None = None) -> JobSnapshot:
        """Create a queued job for ``file_id`` and return its snapshot.

        ``job_timeout`` (seconds from now, queue time included) may only shorten
        the configured deadline; a longer one is capped to it. The job is in
        the table when this returns. Raises ``Overloaded`` when the queue or
        the table is full, and ``ValueError`` for a timeout that is not positive.
        """
        snapshot, _ = await self.submit_idempotent(file_id, job_timeout=job_timeout)
        return snapshot

    async def submit_idempotent(
        self,
        file_id: int,
        *,
        job_timeout: float | None = None,
        idempotency_key: str | None = None,
        idempotency_owner: str = "",
        fingerprint: object = None,
    ) -> tuple[JobSnapshot, bool]:
        """Like ``submit``, but return an existing job for a repeated idempotency key.

        Returns the snapshot and whether the job is new. A retained job
        created with the same key and owner and an equal ``fingerprint`` is
        returned with ``False``; a different fingerprint raises
        ``IdempotencyConflict``. ``idempotency_owner`` names the caller, such
        as a client address: another owner's key never matches.
        Raises ``ValueError`` for a key over ``MAX_IDEMPOTENCY_KEY_LENGTH``
        characters.
        """
        if job_timeout is not None and not job_timeout > 0:
            raise ValueError(f"job timeout must be positive, got {job_timeout}")
        if idempotency_key is not None and len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise ValueError(
                f"idempotency key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
            )
        submission: tuple[JobSnapshot, bool] = await self._request(
            lambda reply: SubmitRequest(
                file_id, job_timeout, None, idempotency_key, idempotency_owner, fingerprint, reply
            )
        )
        return submission

    async def submit_bulk(
        self, file_ids: tuple[int, ...], *, job_timeout: float | None = None
    ) -> JobSnapshot:
        """Create one queued job that fetches every file in ``file_ids`` into one archive.

        ``file_ids`` must be non-empty and free of duplicates; the caller
        reports collapsed duplicates. Otherwise like ``submit``.
        """
        snapshot, _ = await self.submit_bulk_idempotent(file_ids, job_timeout=job_timeout)
        return snapshot

    async def submit_bulk_idempotent(
        self,
        file_ids: tuple[int, ...],
        *,
        job_timeout: float | None = None,
        idempotency_key: str | None = None,
        idempotency_owner: str = "",
        fingerprint: object = None,
    ) -> tuple[JobSnapshot, bool]:
        """Like ``submit_bulk``, but return an existing job for a repeated idempotency key.

        Keys are shared with ``submit_idempotent``: a key used for a job of
        either kind with another fingerprint raises ``IdempotencyConflict``.
        Otherwise like ``submit_idempotent``.
        """
        if not file_ids or len(set(file_ids)) != len(file_ids):
            raise ValueError("file_ids must be a non-empty tuple without duplicates")
        if job_timeout is not None and not job_timeout > 0:
            raise ValueError(f"job timeout must be positive, got {job_timeout}")
        if idempotency_key is not None and len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise ValueError(
                f"idempotency key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
            )
        submission: tuple[JobSnapshot, bool] = await self._request(
            lambda reply: SubmitRequest(
                file_ids[0],
                job_timeout,
                file_ids,
                idempotency_key,
                idempotency_owner,
                fingerprint,
                reply,
            )
        )
        return submission

    async def status(self, job_id: str) -> JobSnapshot:
        """Return the job's current snapshot.

        Raises ``JobExpired`` for a removed job whose id is still remembered
        and ``JobNotFound`` for any other unknown id.
        """
        snapshot: JobSnapshot = await self._request(lambda reply: StatusRequest(job_id, reply))
        return snapshot

    async def watch(self, job_id: str) -> JobWatch:
        """Return the job's snapshot and the means to wait for its next change.

        Raises like ``status``. The returned ``JobChange`` costs nothing while
        no task waits on it. ``wait_for_change`` builds a long poll on it.
        """
        watch: JobWatch = await self._request(lambda reply: WatchRequest(job_id, reply))
        return watch

    async def wait_for_change(
        self, job_id: str, differs: Callable[[JobSnapshot], bool]
    ) -> JobSnapshot:
        """Wait until ``differs(snapshot)`` is true after a state change, and return that snapshot.

        Checks the current snapshot first and returns at once if it already
        differs. Otherwise it sleeps on the job's ``JobChange``, which is set
        only at state changes (see ``JobWatch``), and checks again after each:
        one supervisor round trip per state change, and no CPU at all in
        between. Progress and queue position never wake it, so a predicate on
        them alone is checked only at the next state change. A caller that
        wants fresh progress bounds the wait and reads the status when it ends.

        There is no time limit: the caller bounds the wait with a cancel
        scope. Cancelling the wait never affects the job. Raises like
        ``status``, for example ``JobExpired`` when the job is removed while
        the caller waits.
        """
        while True:
            watch = await self.watch(job_id)
            if differs(watch.snapshot):
                return watch.snapshot
            await watch.changed.wait()

    async def cancel(self, job_id: str) -> JobSnapshot:
        """Cancel a queued or processing job and return its ``cancelled`` snapshot.

        Idempotent: cancelling a cancelled job returns the same state. Raises
        ``JobAlreadyFinished`` for a done or failed job, and ``JobExpired`` or
        ``JobNotFound`` like ``status``. The returned snapshot already reads
        ``cancelled``; the actor unwinds right after, and a queued job never
        starts.
        """
        snapshot: JobSnapshot = await self._request(lambda reply: CancelRequest(job_id, reply))
        return snapshot

    async def open_result(self, job_id: str) -> ResultFile:
        """Return where a done job's file is and what it is.

        Raises ``ResultNotReady`` while the job is queued or processing,
        ``ResultUnavailable`` when it failed or was cancelled, and
        ``JobExpired`` or ``JobNotFound`` like ``status``.
        """
        result: ResultFile = await self._request(lambda reply: ResultRequest(job_id, reply))
        return result

    async def list_jobs(self) -> list[JobSnapshot]:
        """Return a snapshot of every job in the table, oldest first."""
        snapshots: list[JobSnapshot] = await self._request(ListRequest)
        return snapshots

    async def stats(self) -> EngineStats:
        """Return the current sizes of the supervisor's tables."""
        stats: EngineStats = await self._request(StatsRequest)
        return stats

    async def drain(self, grace: float) -> None:
        """Stop accepting jobs; wait up to ``grace`` seconds for processing ones, then cancel.

        Queued jobs are cancelled at once. Returns when no actor is left.
        The supervisor keeps replying to status and result requests.
        """
        await self._request(lambda reply: DrainRequest(grace, reply))

    async def shutdown(self) -> None:
        """Cancel every unfinished job, wait until no actor is left, and stop the supervisor.

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
        # A request cancelled before it is sent is not sent.
        await trio.lowlevel.checkpoint_if_cancelled()
        reply_send, reply_receive = trio.open_memory_channel[outcome.Outcome[Any]](1)
        with reply_receive:
            try:
                # The inbox is unbounded, so the send never waits. Without a
                # checkpoint it saves a scheduler pass per request, and the
                # wait for the reply below is the checkpoint.
                self._inbox.send_nowait(build(reply_send))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise SupervisorClosed() from None
            try:
                reply = await reply_receive.receive()
            except trio.EndOfChannel:
                raise SupervisorClosed() from None
        try:
            return reply.unwrap()
        finally:
            # An error reply refers to its exception, whose traceback refers to
            # this frame. Without the del, each error would leave a cycle.
            del reply
