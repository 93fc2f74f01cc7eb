"""Scenario sizes: the presets of ``--smoke``, ``--quick`` and the full run, and their knobs.

Every field is a command-line option of the same name (``start_rate`` is
``--start-rate``); an option given on the command line overrides the preset.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Sizes:
    # Runs of every figure; the report gives their median, min and max.
    runs: int
    # 1. Start latency: open-loop starts per second for some seconds, after
    #    preloading jobs that stay in flight throughout.
    start_rate: float
    start_seconds: float
    start_preload: int
    # 2. Polling load. Efficiency runs: this many clients per variant, each
    #    with one job whose delay is drawn from the range, polling until done.
    poll_clients: int
    poll_delay_min_ms: int
    poll_delay_max_ms: int
    # Capacity staircase: client counts tried in turn, each measured over a
    # window of this many seconds. It stops at the first count whose status
    # p99 reaches the limit. The capacity target counts only when FastAPI's
    # staircase stops below its largest step, so the steps go past 5,000.
    poll_steps: tuple[int, ...]
    poll_step_seconds: float
    # Seconds between the end of a step's arrivals and its window. Longer
    # waits leave the arrivals' backlog out of the window and measure the
    # steady state of the step's clients.
    poll_settle_seconds: float
    # The same for long-poll clients (the product's and the floor's), which
    # go past the others' largest step.
    poll_longpoll_steps: tuple[int, ...]
    # Seconds the long-poll client asks the server to wait (?wait=N).
    longpoll_wait: int
    # 3. Status throughput: closed-loop connections on one job's status.
    throughput_connections: int
    throughput_seconds: float
    # Rounds, from the first, that also run wrk on the same URL (when installed).
    throughput_wrk_runs: int
    # 4. Jobs in flight: job counts for the servers and for the in-process
    #    engine harness, delays drawn from 10-120 s, and the measuring window.
    inflight_jobs: tuple[int, ...]
    inflight_harness_jobs: tuple[int, ...]
    inflight_window_seconds: float
    # 5. Cancellation and timeout storm: jobs in the harness and over HTTP,
    #    with delays drawn from the range.
    storm_jobs: int
    storm_http_jobs: int
    storm_delay_min_ms: int
    storm_delay_max_ms: int


FULL = Sizes(
    runs=3,
    start_rate=200.0,
    start_seconds=10.0,
    start_preload=5000,
    poll_clients=500,
    poll_delay_min_ms=10_000,
    poll_delay_max_ms=40_000,
    poll_steps=(1000, 2000, 3000, 4000, 5000, 7500, 10_000),
    poll_step_seconds=3.0,
    poll_settle_seconds=1.0,
    poll_longpoll_steps=(
        1000,
        2000,
        3000,
        4000,
        5000,
        7500,
        10_000,
        12_500,
        15_000,
        17_500,
        20_000,
    ),
    longpoll_wait=20,
    throughput_connections=50,
    throughput_seconds=5.0,
    throughput_wrk_runs=3,
    inflight_jobs=(10_000, 100_000),
    inflight_harness_jobs=(10_000, 100_000),
    inflight_window_seconds=3.0,
    storm_jobs=10_000,
    storm_http_jobs=2000,
    storm_delay_min_ms=2000,
    storm_delay_max_ms=4000,
)

QUICK = dataclasses.replace(
    FULL,
    runs=1,
    start_rate=100.0,
    start_seconds=2.0,
    start_preload=500,
    poll_clients=100,
    poll_delay_min_ms=2000,
    poll_delay_max_ms=5000,
    poll_steps=(200, 500),
    poll_step_seconds=1.0,
    poll_settle_seconds=1.0,
    poll_longpoll_steps=(200, 500, 1000),
    throughput_connections=50,
    throughput_seconds=1.0,
    throughput_wrk_runs=1,
    inflight_jobs=(2000,),
    inflight_harness_jobs=(10_000,),
    inflight_window_seconds=1.0,
    storm_jobs=2000,
    storm_http_jobs=300,
    storm_delay_min_ms=1000,
    storm_delay_max_ms=2000,
)

SMOKE = dataclasses.replace(
    QUICK,
    runs=1,
    start_rate=50.0,
    start_seconds=0.5,
    start_preload=100,
    poll_clients=20,
    poll_delay_min_ms=300,
    poll_delay_max_ms=600,
    poll_steps=(50,),
    poll_step_seconds=0.5,
    poll_settle_seconds=0.5,
    poll_longpoll_steps=(50,),
    throughput_seconds=0.3,
    throughput_wrk_runs=0,
    inflight_jobs=(200,),
    inflight_harness_jobs=(500,),
    inflight_window_seconds=0.3,
    storm_jobs=200,
    storm_http_jobs=50,
    storm_delay_min_ms=300,
    storm_delay_max_ms=600,
)

PRESETS = {"full": FULL, "quick": QUICK, "smoke": SMOKE}

# Help text of each knob: what it sets and in what unit.
HELP = {
    "runs": "runs of every figure, alternating systems (A, B, A, B)",
    "start_rate": "open-loop start requests per second",
    "start_seconds": "seconds of open-loop starts",
    "start_preload": "jobs started and still in flight before the measurement",
    "poll_clients": "clients per polling variant in the efficiency runs",
    "poll_delay_min_ms": "shortest job delay in the efficiency runs (ms)",
    "poll_delay_max_ms": "longest job delay in the efficiency runs (ms)",
    "poll_steps": "comma-separated client counts of the capacity staircase",
    "poll_step_seconds": "measuring window of each staircase step (s)",
    "poll_settle_seconds": "pause between a staircase step's last arrival and its window (s)",
    "poll_longpoll_steps": "comma-separated client counts of the long-poll staircases",
    "longpoll_wait": "seconds the long-poll client asks to wait (?wait=N)",
    "throughput_connections": "closed-loop connections",
    "throughput_seconds": "measuring window per run (s), after a warm-up",
    "throughput_wrk_runs": "rounds that also run the wrk cross-check, if installed",
    "inflight_jobs": "comma-separated job counts started over HTTP",
    "inflight_harness_jobs": "comma-separated job counts in the in-process harness",
    "inflight_window_seconds": "seconds of each measuring window",
    "storm_jobs": "jobs in the in-process harness storm",
    "storm_http_jobs": "jobs in the HTTP storm",
    "storm_delay_min_ms": "shortest job delay (ms)",
    "storm_delay_max_ms": "longest job delay (ms)",
}


def parse_counts(text: str) -> tuple[int, ...]:
    """Parse "1000,2000" into (1000, 2000); raise ValueError on anything else."""
    counts = tuple(int(part) for part in text.split(",") if part.strip())
    if not counts or any(count <= 0 for count in counts):
        raise ValueError(f"expected positive comma-separated counts, got {text!r}")
    return counts


def sizes_with(preset: Sizes, overrides: dict[str, Any]) -> Sizes:
    """Return ``preset`` with the knobs in ``overrides`` that are not None."""
    return dataclasses.replace(
        preset, **{name: value for name, value in overrides.items() if value is not None}
    )
