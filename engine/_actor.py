"""The task that runs one download, with its retries."""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from ._errors import SourceError, TransientSourceError
from ._messages import ActorExited, AttemptFailed, AttemptStarted, Message
from ._progress import ProgressSlot
from ._retry import RetryPolicy
from ._snapshot import JobError, ResultInfo
from ._source import Source

logger = logging.getLogger("engine")


async def run_actor(
    job_id: str,
    file_id: int,
    source: Source,
    progress: ProgressSlot,
    destination: Path,
    retry: RetryPolicy,
    reports: trio.MemorySendChannel[Message],
    scope: trio.CancelScope,
) -> None:
    """Fetch one file, retrying transient failures, and report how it ended.

    Start it with ``nursery.start_soon``. The download runs inside ``scope``,
    a fresh ``CancelScope`` that the caller keeps: cancelling it cancels this
    job and nothing else, and it may be cancelled before the task first runs,
    in which case the actor reports at once without fetching.

    The actor never raises into its nursery. A ``SourceError`` or any other
    ``Exception`` from the source becomes a failed report, and a cancel of its
    own scope becomes a report with neither result nor error. Only
    cancellation from outside (the supervisor shutting down) propagates, after
    the report is sent. Unless the download succeeded, ``destination`` is
    deleted before the report. The deletion is a synchronous ``unlink``, so it
    completes even under cancellation and needs no shielded scope.
    """
    result: ResultInfo | None = None
    error: JobError | None = None
    try:
        with scope:
            try:
                result = await fetch_with_retries(
                    job_id, file_id, source, progress, destination, retry, reports
                )
            except SourceError as exc:
                logger.warning("job %s: download failed: %s", job_id, exc)
                error = JobError(code=exc.code, message=str(exc))
            except Exception:
                logger.exception("job %s: download raised an unexpected error", job_id)
                error = JobError(code="internal_error", message="the download failed unexpectedly")
    finally:
        if result is None:
            discard_file(destination)
        report_to_supervisor(
            reports, ActorExited(job_id, progress.attempt, result=result, error=error)
        )


def report_to_supervisor(reports: trio.MemorySendChannel[Message], report: Message) -> None:
    """Send a report without blocking; the inbox buffer is unbounded."""
    try:
        reports.send_nowait(report)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        # The supervisor has stopped reading, so it is shutting down and
        # will not look at this job again.
        logger.debug("%s dropped: supervisor gone", report)


async def fetch_with_retries(
    job_id: str,
    file_id: int,
    source: Source,
    progress: ProgressSlot,
    destination: Path,
    retry: RetryPolicy,
    reports: trio.MemorySendChannel[Message],
) -> ResultInfo:
    attempt = 1
    while True:
        progress.attempt = attempt
        if attempt > 1:
            report_to_supervisor(reports, AttemptStarted(job_id, attempt))
        try:
            return await source.fetch(file_id, progress, destination)
        except TransientSourceError as exc:
            progress.hold(trio.current_time())
            discard_file(destination)
            if attempt >= retry.max_attempts:
                raise
            wait = retry.backoff(attempt)
            logger.info(
                "job %s: attempt %d of %d failed (%s), retrying in %.3f s",
                job_id,
                attempt,
                retry.max_attempts,
                exc,
                wait,
            )
            report_to_supervisor(reports, AttemptFailed(job_id, attempt, wait))
            await trio.sleep(wait)
            attempt += 1


def discard_file(path: Path) -> None:
    # A synchronous unlink: it is fast, and a cleanup path must not checkpoint
    # while the task may already be cancelled.
    path.unlink(missing_ok=True)
