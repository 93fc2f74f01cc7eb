"""Tests of the collector settings: ``tune_garbage_collector`` and ``collect_on_schedule``.

``tune_garbage_collector`` runs in a child process, so this one keeps its settings.
"""

from __future__ import annotations

import functools
import gc
import json
import subprocess
import sys

import trio

from engine import collect_on_schedule
from engine._gc import YOUNG_GENERATION_THRESHOLD

PROBE = """
import gc, json
import engine
before = gc.get_threshold()
survivor = [object() for _ in range(10)]
engine.tune_garbage_collector()
frozen = gc.get_freeze_count()
after = gc.get_threshold()
cycle = []
cycle.append(cycle)
del cycle
collected = gc.collect()
print(json.dumps({"before": before, "after": after, "frozen": frozen, "collected": collected}))
"""


def run_probe() -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    result: dict[str, object] = json.loads(completed.stdout)
    return result


def test_tune_freezes_and_raises_threshold():
    result = run_probe()

    assert result["before"] == [700, 10, 10]
    assert result["after"] == [YOUNG_GENERATION_THRESHOLD, 10, 10]
    assert isinstance(result["frozen"], int)
    assert result["frozen"] > 1000
    # Garbage made after the freeze is still collected.
    assert isinstance(result["collected"], int)
    assert result["collected"] >= 1


async def test_schedule_collects_by_timetable(autojump_clock, monkeypatch):
    collected: list[tuple[float, int]] = []

    def record(generation: int = 2) -> int:
        collected.append((trio.current_time(), generation))
        return 0

    monkeypatch.setattr(gc, "collect", record)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(collect_on_schedule, young_period=1, middle_every=3, full_period=7.5)
        )
        disabled_while_running = not gc.isenabled()
        await trio.sleep(10.5)
        nursery.cancel_scope.cancel()

    assert disabled_while_running
    assert gc.isenabled()
    assert [(time - start, generation) for time, generation in collected] == [
        (1, 0),
        (2, 0),
        (3, 1),
        (4, 0),
        (5, 0),
        (6, 1),
        (7, 0),
        (8, 2),  # the first round at or after 7.5 s
        (9, 1),
        (10, 0),
    ]
