"""``python -m bench --smoke``: the benchmark suite runs every scenario end to end.

The figures of a smoke run mean nothing; this only checks that the suite
starts its servers on 127.0.0.1, drives every scenario and exits 0. It
needs the ``bench`` extra (``pip install -e '.[dev,bench]'``, as ``make
bench`` does) and is skipped without it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("psutil", reason="the bench extra is not installed")
pytest.importorskip("fastapi", reason="the bench extra is not installed")
pytest.importorskip("uvicorn", reason="the bench extra is not installed")

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("start_latency", "polling", "throughput", "inflight", "storm")
# A smoke run takes 20-30 s on 2 idle cores; the margin covers a busy machine.
SMOKE_TIMEOUT_SECONDS = 180


@pytest.mark.e2e
def test_bench_smoke_runs_every_scenario() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_SECONDS,
        check=False,
    )
    output = f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr[-5000:]}"
    assert completed.returncode == 0, output
    for key in SCENARIOS:
        assert f"scenario {key}: ok" in completed.stdout, output
    assert "PASS" in completed.stdout or "FAIL" in completed.stdout, output
    # The floor's long-poll staircase ran, and its 50 held polls passed.
    assert "staircase floor:longpoll: largest N with p99 < 100 ms = 50" in completed.stderr, output
