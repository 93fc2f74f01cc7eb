"""Messages that reach the supervisor's inbox.

Requests come from callers through ``JobClient``. Each carries a one-shot
reply channel; the supervisor sends exactly one ``outcome.Outcome`` on it
and never waits, so a caller that went away cannot stall it.

Reports come from actors. Every actor sends exactly one ``ActorExited``, as
the last thing it does, whatever way it ends.
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
    file_id: int
    reply: ReplyChannel


@dataclasses.dataclass(frozen=True, slots=True)
class StatusRequest:
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
class ShutdownRequest:
    """Stop accepting submissions, cancel every unfinished job, then stop."""

    reply: ReplyChannel


@dataclasses.dataclass(frozen=True, slots=True)
class ActorExited:
    """An actor's final report.

    Exactly one of ``result`` and ``error`` is set when the download ended on
    its own; neither is set when the actor was cancelled.
    """

    job_id: str
    result: ResultInfo | None = None
    error: JobError | None = None


Request = (
    SubmitRequest | StatusRequest | CancelRequest | ResultRequest | ListRequest | ShutdownRequest
)
Message = Request | ActorExited
