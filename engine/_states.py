"""The job state machine.

Theory of operation: a job moves through the states below, and every legal
move is listed in ``_TRANSITIONS``. Nothing else in the engine decides whether
a move is legal; the supervisor calls ``check_transition`` before it changes a
job's status, so a bug that would resurrect a finished job raises instead of
silently rewriting history.

::

    queued ──▶ processing ──▶ done
       │            ├───────▶ failed
       │            └───────▶ cancelled
       ├──────────────────────▶ failed      (deadline passed while queued)
       └──────────────────────▶ cancelled

``done``, ``failed`` and ``cancelled`` are terminal: no move leaves them.
"""

from __future__ import annotations

import enum


class JobStatus(enum.Enum):
    """Lifecycle state of a job. The values are the strings the HTTP API shows."""

    # Accepted and waiting for a free processing slot; no actor exists yet.
    QUEUED = "queued"
    # An actor task is running the download.
    PROCESSING = "processing"
    # The result is stored and can be opened.
    DONE = "done"
    # The download raised an error; the snapshot carries its code and message.
    FAILED = "failed"
    # Cancelled on request or at shutdown; any partial result was discarded.
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})

_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.PROCESSING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.PROCESSING: frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.DONE: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """The engine tried a move that the state machine forbids: a bug in the engine."""

    def __init__(self, old: JobStatus, new: JobStatus) -> None:
        super().__init__(f"invalid job transition {old.value} -> {new.value}")
        self.old = old
        self.new = new


def check_transition(old: JobStatus, new: JobStatus) -> None:
    """Raise ``InvalidTransition`` unless a job may move from ``old`` to ``new``."""
    if new not in _TRANSITIONS[old]:
        raise InvalidTransition(old, new)


def allowed_transitions() -> dict[JobStatus, frozenset[JobStatus]]:
    """Return a copy of the transition table, for docs and tests."""
    return dict(_TRANSITIONS)
