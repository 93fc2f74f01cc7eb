"""Sources: the protocol that produces downloads, and the simulated source.

A source turns a file id into a file on disk. The supervisor does not care
how: the simulated source below sleeps and generates an archive, and a
directory, HTTP or S3 source can implement the same protocol.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Protocol

import trio

from ._archive import archive_size, build_archive, content_size
from ._errors import FileUnavailable, TransientSourceError
from ._progress import ProgressReporter
from ._settings import EngineSettings
from ._snapshot import ResultInfo


class Source(Protocol):
    """A place that can produce the file for a file id."""

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        """Write the file for ``file_id`` to ``destination`` and describe it.

        Report progress through ``progress``; it never blocks. Raise a
        ``SourceError`` subclass for a failure with a known cause; any other
        exception fails the job as an internal error.

        Cancellation: the caller cancels this call when the job is cancelled
        and then deletes ``destination``, so an implementation only has to
        release resources of its own.
        """
        ...

    async def check(self, file_id: int) -> int | None:
        """Return the size in bytes of the file for ``file_id``, or None if it does not exist.

        Starts no download. The caller bounds the time it may take.
        """
        ...

    async def check_health(self) -> None:
        """Return if the storage behind the source responds; raise ``SourceError`` if not.

        The caller bounds the time it may take.
        """
        ...


class SimulatedSource:
    """A source that waits a random delay and then builds a deterministic ZIP.

    The delay is drawn uniformly from the configured range with a PRNG seeded
    by ``download_random_seed``, so a run with a fixed seed and the same order
    of submissions draws the same delays and failures. Each attempt fails with
    probability ``download_failure_rate``, after a uniformly drawn share of
    its delay, with ``TransientSourceError``. The archive depends on the file
    id only (see ``engine._archive``).
    """

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._rng = random.Random(settings.download_random_seed)

    def draw_delay(self) -> float:
        """Draw one preparation delay, in seconds (0 when delays are disabled)."""
        settings = self._settings
        if not settings.download_delay_enabled:
            return 0.0
        low, high = settings.download_delay_min_ms, settings.download_delay_max_ms
        return self._rng.uniform(low, high) / 1000

    def exists(self, file_id: int) -> bool:
        if self._settings.download_availability == "multiple-of-7":
            return file_id % 7 == 0
        return True

    def _content_size(self, file_id: int) -> int:
        return content_size(
            file_id,
            self._settings.download_size_min_bytes,
            self._settings.download_size_max_bytes,
        )

    async def check(self, file_id: int) -> int | None:
        await trio.lowlevel.checkpoint()
        if not self.exists(file_id):
            return None
        return archive_size(file_id, self._content_size(file_id))

    async def check_health(self) -> None:
        # Generated content has no storage that could be down.
        await trio.lowlevel.checkpoint()

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        if not self.exists(file_id):
            await trio.lowlevel.checkpoint()
            raise FileUnavailable(file_id)

        # One sleep for the whole delay: the declared schedule lets the
        # supervisor derive progress at any moment without waking this task.
        delay = self.draw_delay()
        progress.advance_linearly(trio.current_time(), delay)
        if self._rng.random() < self._settings.download_failure_rate:
            await trio.sleep(delay * self._rng.random())
            raise TransientSourceError(f"simulated transient failure of file {file_id}")
        await trio.sleep(delay)

        return await build_archive(file_id, self._content_size(file_id), destination)
