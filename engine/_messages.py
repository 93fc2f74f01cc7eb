"""Messages that reach the supervisor's inbox.

Requests come from callers through ``JobClient``. Each carries a one-shot
reply channel; the supervisor sends exactly one ``outcome.Outcome`` on it
and never waits, so a caller that went away cannot stall it.

Reports come from actors. Every actor sends exactly one ``ActorExited``, as
the last thing it does, whatever way it ends. Before each retry it sends
one ``AttemptFailed`` when the failed attempt's backoff begins and one
``AttemptStarted`` when the backoff ends.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import outcome
import trio

from ._snapshot import JobError, ResultInfo

ReplyChannel = trio.MemorySendChannel[outcome.Outcome[Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class SubmitRequest:
    """Create a job. With an idempotency key, an existing job for the same key
    and fingerprint is returned instead of a new one."""

    file_id: int
    timeout: float | None  # seconds from submission; None means the default
    file_ids: tuple[int, ...] | None  # set for a bulk job, whose file_id is then its first
    idempotency_key: str | None
    # Whose key it is: the same key from two owners names two jobs.
    idempotency_owner: str
    fingerprint: object  # compared for equality with an earlier request's
    reply: ReplyChannel


@dataclasses.dataclass(frozen=True, slots=True)
class StatusRequest:
    job_id: str
    reply: ReplyChannel


@dataclasses.dataclass(frozen=True, slots=True)
class WatchRequest:
    job_id: str
    reply: ReplyChannel


@dataclasses.dataclass(frozen=True, slots=True)
class CancelRequest:
    job_id: str
    reply: ReplyChannel


@dataclasses.dataclass(frozen=True, slots=True)
class ResultRequest:
    job_id: str
    reply: ReplyChannel


@dataclasses.dataclass(frozen=True, slots=True)
class ListRequest:
    reply: ReplyChannel


@dataclasses.dataclass(frozen=True, slots=True)
class StatsRequest:
    reply: ReplyChannel


@dataclasses.dataclass(frozen=True, slots=True)
class DrainRequest:
    """Stop accepting submissions and cancel queued jobs at once. Processing
    jobs may run for ``grace`` seconds more before they are cancelled. The
    reply comes once no actor is left; status queries are still answered."""

    grace: float
    reply: ReplyChannel


@dataclasses.dataclass(frozen=True, slots=True)
class ShutdownRequest:
    """Drain with no grace, then stop the supervisor."""

    reply: ReplyChannel


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptFailed:
    """An attempt failed transiently, and the actor retries after ``retry_in`` seconds."""

    job_id: str
    attempt: int  # the attempt that failed
    retry_in: float  # seconds of backoff before the next attempt


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptStarted:
    """An actor is about to retry; sent only for attempts after the first."""

    job_id: str
    attempt: int


@dataclasses.dataclass(frozen=True, slots=True)
class ActorExited:
    """An actor's final report.

    Exactly one of ``result`` and ``error`` is set when the download ended on
    its own; neither is set when the actor was cancelled.
    """

    job_id: str
    attempts: int
    result: ResultInfo | None = None
    error: JobError | None = None


Request = (
    SubmitRequest
    | StatusRequest
    | WatchRequest
    | CancelRequest
    | ResultRequest
    | ListRequest
    | StatsRequest
    | DrainRequest
    | ShutdownRequest
)
Message = Request | AttemptFailed | AttemptStarted | ActorExited
