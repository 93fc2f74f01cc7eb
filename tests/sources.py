"""Test doubles of ``engine.Source`` shared by the engine and HTTP tests."""

from __future__ import annotations

from pathlib import Path

import trio

from engine import ProgressReporter, ResultInfo


class StallSource:
    """A source that declares no schedule and never finishes."""

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def check(self, file_id: int) -> int | None:
        await trio.lowlevel.checkpoint()
        return None

    async def check_health(self) -> None:
        await trio.lowlevel.checkpoint()
