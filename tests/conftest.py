"""Fixtures shared by the test suites.

Engine tests run on pytest-trio's ``autojump_clock``: whenever every task is
blocked, the mock clock jumps to the next deadline, so a 120-second download
finishes in milliseconds of real time, and timings do not depend on the
speed of the machine.

An async test marked ``@pytest.mark.deadline(seconds)`` (or a module with
``pytestmark = pytest.mark.deadline(seconds)``) runs inside
``trio.fail_after(seconds)`` on its own clock. On the autojump clock a hang
then fails at once with ``trio.TooSlowError`` and the captured logs, instead
of stalling the suite.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from engine import EngineSettings

# Engine tests use the production range of delays, because delays cost
# nothing on the mock clock, and small archives, because content costs real time.
ENGINE_TEST_SETTINGS: dict[str, Any] = {
    "download_delay_enabled": True,
    "download_delay_min_ms": 10_000,
    "download_delay_max_ms": 120_000,
    "download_size_min_bytes": 1024,
    "download_size_max_bytes": 4096,
    "download_random_seed": 20_240_601,
    "max_concurrent_jobs": 10_000,
    "progress_step_percent": 5,
}

# The wall-clock time that trio time 0.0 maps to in ``wall_clock``.
WALL_CLOCK_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "deadline(seconds): fail an async test after this many seconds on its clock"
    )


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    # tryfirst puts this wrapper outside pytest-trio's, so the test function is
    # wrapped before pytest-trio turns it into a trio.run call.
    marker = item.get_closest_marker("deadline")
    test = getattr(item, "obj", None)
    if marker is not None and inspect.iscoroutinefunction(test):
        item.obj = _with_deadline(test, marker.args[0])
    yield


def _with_deadline(test: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    @functools.wraps(test)
    async def run_with_deadline(*args: Any, **kwargs: Any) -> None:
        with trio.fail_after(seconds):
            await test(*args, **kwargs)

    return run_with_deadline


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """pytest-trio's autojump clock, except that it does not jump while worker threads run.

    The autojump moves the clock as soon as every task is blocked, and a
    task waiting for ``trio.to_thread.run_sync`` counts as blocked. The
    engine writes result files in worker threads, so with the plain clock a
    job's deadline, or a test's own, could pass while a file is written.
    See https://github.com/python-trio/trio/issues/456.
    """
    clock = trio.testing.MockClock(autojump_threshold=0)
    jump = clock._autojump

    def jump_unless_threads_run() -> None:
        if trio.testing.active_thread_count() == 0:
            jump()

    # NOTE: the run loop calls this private method when it goes idle, and
    # MockClock cannot be subclassed; check it on trio upgrades.
    clock._autojump = jump_unless_threads_run  # type: ignore[method-assign]
    return clock


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """Folder for the archives of one test. The supervisor creates it."""
    return tmp_path / "results"


@pytest.fixture
def make_settings(results_dir: Path) -> Callable[..., EngineSettings]:
    """Return a function that builds ``EngineSettings`` from the test defaults and overrides."""

    def make(**overrides: Any) -> EngineSettings:
        values = {**ENGINE_TEST_SETTINGS, "results_dir": results_dir, **overrides}
        return EngineSettings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., EngineSettings]) -> EngineSettings:
    """Engine test settings: 10-120 s delays, 1-4 KiB archives, a fixed seed."""
    return make_settings()


class TrioWallClock:
    """A wall clock that reads ``WALL_CLOCK_EPOCH`` plus ``trio.current_time()`` seconds.

    Pass it as ``Supervisor(..., wall_clock=...)``. ``at`` returns the reading
    expected at a given trio time.
    """

    def __call__(self) -> datetime:
        return self.at(trio.current_time())

    def at(self, trio_time: float) -> datetime:
        return WALL_CLOCK_EPOCH + timedelta(seconds=trio_time)


@pytest.fixture
def wall_clock() -> TrioWallClock:
    """A wall clock derived from the trio clock, for supervisors whose timestamps are checked."""
    return TrioWallClock()
