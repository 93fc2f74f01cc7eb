"""Retry policy: exponential backoff with full jitter."""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(slots=True)
class RetryPolicy:
    """How many attempts a job gets and how long it waits between them.

    The wait before retry ``n`` (after the ``n``-th failed attempt) is drawn
    uniformly from ``[0, min(cap, base * 2 ** (n - 1))]``. Drawing the whole
    interval ("full jitter") spreads the retries of jobs that failed together,
    so they do not hit the source again in lockstep.
    """

    max_attempts: int
    base: float  # seconds
    cap: float  # seconds
    rng: random.Random

    def backoff(self, failed_attempt: int) -> float:
        """Return the wait in seconds after attempt ``failed_attempt`` (1-based) failed."""
        ceiling = min(self.cap, self.base * 2 ** (failed_attempt - 1))
        return self.rng.uniform(0.0, ceiling)
