"""Tests of ``engine.manage_garbage_collection``, in a child process so this one keeps its settings.

The child runs the policy on trio's mock clock with a stand-in for
``sys.getallocatedblocks``, and records every full collection through
``gc.callbacks``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine._gc import (
    CHECK_INTERVAL_SECONDS,
    MIN_FULL_COLLECTION_INTERVAL_SECONDS,
    NO_AUTOMATIC_FULL_COLLECTIONS,
)

PROBE = """
import functools, gc, json
import trio, trio.testing
import engine

blocks = [10_000]
full_collections = []

def record(phase, info):
    if phase == "stop" and info["generation"] == 2:
        full_collections.append(info["collected"])

def make_old_garbage():
    cycle = []
    cycle.append(cycle)
    # Still referenced here, so the collection moves it to the oldest generation.
    gc.collect(1)

async def main():
    report = {"before": gc.get_threshold()}
    gc.callbacks.append(record)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(engine.manage_garbage_collection, allocated_blocks=lambda: blocks[0])
        )
        report["during"] = gc.get_threshold()
        report["frozen"] = gc.get_freeze_count()
        report["at_start"] = list(full_collections)
        full_collections.clear()
        # From here on, this task wakes half a check interval away from the
        # policy's checks. Tasks that wake at one moment run in random order.
        await trio.sleep(INTERVAL / 2)

        make_old_garbage()
        blocks[0] = 20_000
        await trio.sleep(MIN_INTERVAL - 2 * INTERVAL)
        report["doubled_early"] = list(full_collections)
        await trio.sleep(3 * INTERVAL)
        report["doubled_after_interval"] = list(full_collections)

        # The baseline is now the count after that collection: 20,000.
        blocks[0] = 39_999
        await trio.sleep(2 * MIN_INTERVAL)
        report["below_next"] = len(full_collections)
        blocks[0] = 40_000
        await trio.sleep(2 * INTERVAL)
        report["at_next"] = len(full_collections)

        # Doubled again at once: waits for the interval again.
        blocks[0] = 80_000
        await trio.sleep(MIN_INTERVAL - 2 * INTERVAL)
        report["doubled_soon_after"] = len(full_collections)
        await trio.sleep(3 * INTERVAL)
        report["doubled_later"] = len(full_collections)
        nursery.cancel_scope.cancel()
    report["after"] = gc.get_threshold()
    print(json.dumps(report))

trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
"""


@pytest.fixture(scope="module")
def result() -> dict[str, object]:
    script = PROBE.replace("MIN_INTERVAL", repr(MIN_FULL_COLLECTION_INTERVAL_SECONDS))
    script = script.replace("INTERVAL", repr(CHECK_INTERVAL_SECONDS))
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    report: dict[str, object] = json.loads(completed.stdout)
    return report


def test_policy_sets_thresholds_and_restores_them(result):
    assert result["before"] == [700, 10, 10]
    assert result["during"] == [700, 10, NO_AUTOMATIC_FULL_COLLECTIONS]
    assert result["after"] == [700, 10, 10]


def test_policy_freezes_start_up_objects(result):
    assert isinstance(result["frozen"], int)
    assert result["frozen"] > 1000
    # One full collection before the freeze, so only live objects are frozen.
    at_start = result["at_start"]
    assert isinstance(at_start, list)
    assert len(at_start) == 1


def test_full_collection_waits_for_interval(result):
    assert result["doubled_early"] == []
    collected = result["doubled_after_interval"]
    assert isinstance(collected, list)
    assert len(collected) == 1
    # The cycle that reached the oldest generation is collected then.
    assert collected[0] >= 1


def test_full_collection_waits_for_double_heap(result):
    assert result["below_next"] == 1
    assert result["at_next"] == 2


def test_next_full_collection_waits_for_interval(result):
    assert result["doubled_soon_after"] == 2
    assert result["doubled_later"] == 3
