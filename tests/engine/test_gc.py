"""Tests of ``engine.tune_garbage_collector``, in a child process so this one keeps its settings."""

from __future__ import annotations

import json
import subprocess
import sys

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
