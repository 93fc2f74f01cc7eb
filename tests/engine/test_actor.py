"""Tests of ``engine._actor.run_actor``: one download and its one report."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from engine import ProgressReporter, ProgressSlot, ResultInfo, SourceError
from engine._actor import run_actor
from engine._messages import ActorExited, Message
from engine._retry import RetryPolicy

pytestmark = pytest.mark.deadline(60)

# One attempt only: these tests are about a single download and its report.
NO_RETRY = RetryPolicy(max_attempts=1, base=0.0, cap=0.0, rng=random.Random(0))
RESULT = ResultInfo(size=7, media_type="text/plain", file_name="1.txt", sha256="0" * 64)


def write_now(path: Path, data: bytes) -> None:
    """Write on the trio thread, because a worker thread would let the autojump clock jump."""
    path.write_bytes(data)


class UpstreamGone(SourceError):
    code = "upstream_gone"


class ScriptedSource:
    """Writes a partial file, waits ``seconds``, then returns RESULT or raises ``error``."""

    def __init__(self, seconds: float = 1.0, error: Exception | None = None) -> None:
        self.seconds = seconds
        self.error = error

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        write_now(destination, b"partial")
        await trio.sleep(self.seconds)
        if self.error is not None:
            raise self.error
        return RESULT

    async def check(self, file_id: int) -> int | None:
        await trio.lowlevel.checkpoint()
        return None

    async def check_health(self) -> None:
        await trio.lowlevel.checkpoint()


async def run_to_report(source: ScriptedSource, destination: Path) -> ActorExited:
    """Run one actor to its end and return the single report it sent."""
    send, receive = trio.open_memory_channel[Message](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run_actor,
            "job-1",
            1,
            source,
            ProgressSlot(),
            destination,
            NO_RETRY,
            send,
            trio.CancelScope(),
        )
    (report,) = [receive.receive_nowait() for _ in range(receive.statistics().current_buffer_used)]
    assert isinstance(report, ActorExited)
    return report


async def test_actor_reports_result(autojump_clock, tmp_path):
    destination = tmp_path / "job-1.zip"
    report = await run_to_report(ScriptedSource(), destination)

    assert report == ActorExited("job-1", 1, result=RESULT, error=None)
    assert destination.exists()


async def test_actor_reports_source_error_code(autojump_clock, tmp_path):
    destination = tmp_path / "job-1.zip"
    report = await run_to_report(ScriptedSource(error=UpstreamGone("gone")), destination)

    assert report.result is None
    assert report.error is not None
    assert report.error.code == "upstream_gone"
    assert report.error.message == "gone"
    assert not destination.exists()


async def test_actor_reports_internal_error(autojump_clock, tmp_path):
    destination = tmp_path / "job-1.zip"
    report = await run_to_report(ScriptedSource(error=KeyError("secret detail")), destination)

    assert report.result is None
    assert report.error is not None
    assert report.error.code == "internal_error"
    assert report.error.message == "the download failed unexpectedly"
    assert not destination.exists()


async def test_actor_scope_cancel_reports_neither(autojump_clock, tmp_path):
    destination = tmp_path / "job-1.zip"
    send, receive = trio.open_memory_channel[Message](10)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()
        nursery.start_soon(
            run_actor,
            "job-1",
            1,
            ScriptedSource(seconds=100),
            ProgressSlot(),
            destination,
            NO_RETRY,
            send,
            scope,
        )
        await trio.sleep(1)
        scope.cancel()
    report = receive.receive_nowait()

    assert report == ActorExited("job-1", 1, result=None, error=None)
    assert not nursery.cancel_scope.cancelled_caught
    assert trio.current_time() == 1.0
    assert not destination.exists()


async def test_actor_scope_cancelled_before_start_fetches_nothing(autojump_clock, tmp_path):
    destination = tmp_path / "job-1.zip"
    send, receive = trio.open_memory_channel[Message](10)
    source = ScriptedSource(seconds=100)
    scope = trio.CancelScope()
    scope.cancel()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run_actor, "job-1", 1, source, ProgressSlot(), destination, NO_RETRY, send, scope
        )
    report = receive.receive_nowait()

    assert report == ActorExited("job-1", 1, result=None, error=None)
    assert scope.cancelled_caught
    assert trio.current_time() == 0.0
    assert not destination.exists()


async def test_actor_cancelled_from_outside_still_reports(autojump_clock, tmp_path):
    destination = tmp_path / "job-1.zip"
    send, receive = trio.open_memory_channel[Message](10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run_actor,
            "job-1",
            1,
            ScriptedSource(seconds=100),
            ProgressSlot(),
            destination,
            NO_RETRY,
            send,
            trio.CancelScope(),
        )
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    report = receive.receive_nowait()

    assert nursery.cancel_scope.cancelled_caught
    assert report == ActorExited("job-1", 1, result=None, error=None)
    assert not destination.exists()


async def test_actor_with_closed_inbox_does_not_raise(autojump_clock, tmp_path):
    destination = tmp_path / "job-1.zip"
    send, receive = trio.open_memory_channel[Message](10)
    receive.close()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            run_actor,
            "job-1",
            1,
            ScriptedSource(),
            ProgressSlot(),
            destination,
            NO_RETRY,
            send,
            trio.CancelScope(),
        )

    assert destination.exists()
