"""Exceptions raised by the engine.

Every error a caller of the engine can receive derives from ``EngineError``::

    EngineError
    ├── SettingsError          a setting has an invalid value (the operator's fault)
    ├── JobNotFound            no job has this id (the caller's fault)
    │   └── JobExpired             the job existed but was removed after its time to live
    ├── JobConflict            the request does not fit the job's current state
    │   ├── JobAlreadyFinished     cancel of a job that is done or failed
    │   ├── ResultNotReady         result of a job that is still queued or processing
    │   └── ResultUnavailable      result of a job that failed or was cancelled
    ├── IdempotencyConflict    an idempotency key was reused for a different request
    ├── Overloaded             no room for another job now; retry later
    ├── SupervisorClosed       the supervisor is shutting down or has stopped
    └── SourceError            a source could not produce a file
        ├── FileUnavailable        the source has no file with this id (permanent)
        └── TransientSourceError   a failure that another attempt may not meet

``JobConflict`` subclasses carry the job's snapshot at the moment of the
refusal, so that a front end can show the current state without a second query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._snapshot import JobSnapshot


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class SettingsError(EngineError, ValueError):
    """A configuration variable has a value the engine cannot use."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"invalid {name}={value!r}: expected {expected}")
        self.name = name
        self.value = value
        self.expected = expected


class JobNotFound(EngineError, LookupError):
    """No job with this id is in the job table."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class JobExpired(JobNotFound):
    """The job finished and was removed; its id is still remembered."""

    def __init__(self, job_id: str) -> None:
        EngineError.__init__(self, f"job {job_id} expired and was removed")
        self.job_id = job_id


class IdempotencyConflict(EngineError):
    """An idempotency key that names an existing job came with a different request."""

    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(f"idempotency key {key!r} was used for a different request (job {job_id})")
        self.key = key
        self.job_id = job_id


class Overloaded(EngineError):
    """The engine has no room for another job now.

    ``retry_after`` estimates, in seconds, when room is likely to free up.
    """

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class JobConflict(EngineError):
    """The request is valid, but not in the job's current state."""

    def __init__(self, snapshot: JobSnapshot, message: str) -> None:
        super().__init__(message)
        self.snapshot = snapshot


class JobAlreadyFinished(JobConflict):
    """Cancel was requested for a job that already ended as done or failed."""

    def __init__(self, snapshot: JobSnapshot) -> None:
        super().__init__(
            snapshot, f"job {snapshot.job_id} already ended as {snapshot.status.value}"
        )


class ResultNotReady(JobConflict):
    """The result was requested before the job is done."""

    def __init__(self, snapshot: JobSnapshot) -> None:
        super().__init__(snapshot, f"job {snapshot.job_id} is {snapshot.status.value}, not done")


class ResultUnavailable(JobConflict):
    """The result was requested for a job that failed or was cancelled."""

    def __init__(self, snapshot: JobSnapshot) -> None:
        super().__init__(
            snapshot, f"job {snapshot.job_id} ended as {snapshot.status.value} and has no result"
        )


class SupervisorClosed(EngineError):
    """The supervisor accepts no more requests because it is shutting down or stopped."""

    def __init__(self) -> None:
        super().__init__("the job supervisor is shutting down")


class SourceError(EngineError):
    """A source failed to produce a file.

    ``code`` is the machine-readable reason that ends up in the failed job's
    ``error.code``; subclasses fix it.
    """

    code = "source_error"


class FileUnavailable(SourceError):
    """The source has no file with this id; retrying cannot help."""

    code = "not_found"

    def __init__(self, file_id: int) -> None:
        super().__init__(f"file {file_id} not found")
        self.file_id = file_id


class TransientSourceError(SourceError):
    """A failure that may not happen again, such as a dropped connection; the job retries."""

    code = "transient_failure"
