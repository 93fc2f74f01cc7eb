"""A latest-value slot through which an actor publishes its progress.

An actor could send a message to the supervisor every time its progress
moves, but with 100,000 jobs in flight that wakes the supervisor hundreds of
thousands of times a minute for values nobody may ever read. Instead, each job
owns one ``ProgressSlot``. The actor (through its source) writes to it without
blocking and without waking anyone, and the supervisor reads it only when it
builds a snapshot.

A source that knows how long it will take declares a linear schedule once
(``advance_linearly``), so a job that sleeps for two minutes costs one write
and zero wake-ups, and its progress is still exact whenever it is read. A
source that learns its progress piecemeal (bytes received from a remote
server) calls ``set_fraction`` instead.

Both writers and the reader run in the same trio thread, so no lock is needed.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio


class ProgressReporter(Protocol):
    """The write side of a progress slot, as a source uses it."""

    def advance_linearly(self, start: float, duration: float) -> None:
        """Declare that progress runs from its current value to 1.0 between
        ``start`` and ``start + duration`` (trio clock, seconds)."""

    def set_fraction(self, fraction: float) -> None:
        """Set progress to ``fraction`` (0.0-1.0) as of now."""


class ProgressSlot:
    """Progress of one job as a fraction from 0.0 to 1.0.

    Invariant: ``fraction(now)`` never decreases as ``now`` grows or as
    writers update the slot; a write that would lower it is clamped.
    """

    __slots__ = ("_base", "_duration", "_latest_read", "_start", "_updated", "attempt")

    def __init__(self) -> None:
        # Attempt now running, 1 for the first; the actor sets it before each.
        self.attempt = 0
        self._base = 0.0  # fraction reached at ``_start``
        self._start: float | None = None  # trio time the linear schedule began
        self._duration = 0.0
        self._updated: float | None = None  # trio time of the last set_fraction
        self._latest_read = -math.inf  # latest trio time passed to fraction()

    def advance_linearly(self, start: float, duration: float) -> None:
        # Anchor the new schedule at the latest time anyone has read, so a
        # schedule that starts in the past cannot lower a value already read:
        # it continues from that value over the time left until its end.
        anchor = max(start, self._latest_read)
        current = self.fraction(anchor)
        self._base = current
        self._start = anchor
        self._duration = max(start + duration - anchor, 0.0)

    def set_fraction(self, fraction: float) -> None:
        now = trio.current_time()
        self._base = max(self.fraction(now), min(max(fraction, 0.0), 1.0))
        self._start = None
        self._updated = now

    def hold(self, now: float) -> None:
        """Stop a linear schedule at the value it reached at ``now``.

        A retry calls this when an attempt fails, so progress neither runs on
        during the backoff nor falls back; the next attempt's schedule then
        spreads the remaining share over its own duration.
        """
        self._base = self.fraction(now)
        self._start = None
        self._updated = now

    def fraction(self, now: float) -> float:
        """Return the progress reached at trio time ``now``."""
        if now > self._latest_read:
            self._latest_read = now
        if self._start is None:
            return self._base
        if self._duration <= 0.0 or now >= self._start + self._duration:
            return 1.0
        elapsed = max(now - self._start, 0.0)
        return self._base + (1.0 - self._base) * elapsed / self._duration

    def reached_at(self, fraction: float, now: float) -> float:
        """Return the trio time at which progress first reached ``fraction``.

        Exact on a linear schedule; otherwise the time of the last write,
        which is when the current value became known. Never later than ``now``.
        """
        if self._start is not None and fraction > self._base and self._duration > 0.0:
            share = (fraction - self._base) / (1.0 - self._base)
            return min(self._start + share * self._duration, now)
        if self._start is not None:
            return min(self._start, now)
        return now if self._updated is None else min(self._updated, now)

    def time_of(self, fraction: float) -> float | None:
        """Return the trio time the linear schedule reaches ``fraction``, or None.

        None when there is no schedule or the schedule never reaches it.
        """
        if self._start is None or not self._base <= fraction <= 1.0:
            return None
        if self._base >= 1.0 or self._duration <= 0.0:
            return self._start
        share = (fraction - self._base) / (1.0 - self._base)
        return self._start + share * self._duration

    def finishes_at(self) -> float | None:
        """Return the trio time the linear schedule ends, or None without one."""
        if self._start is None:
            return None
        return self._start + self._duration
