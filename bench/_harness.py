"""Bench-only in-process engine harness: ``engine.Supervisor`` on the real clock, no HTTP.

The suite runs it as a subprocess, ``python -m bench._harness MODE JSON``,
so its memory and CPU figures are its own, and reads one JSON document from
its stdout. Modes:

- ``inflight``: submit K jobs with the configured delays. While they run,
  measure resident memory per job and ``JobClient.status`` latency. Also
  measure trio scheduling lag (how late a task that sleeps a fixed interval
  wakes), CPU with no requests, and reported progress against elapsed/total
  delay.
- ``storm``: K jobs, half cancelled at random moments, a quarter with
  deadlines shorter than their delays. Check every terminal state and how
  long after its deadline each timed-out job ended. Also check that the task
  count returns to its idle value.
"""

from __future__ import annotations

import gc
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import trio
import trio.testing

from engine import (
    EngineSettings,
    JobAlreadyFinished,
    JobClient,
    JobStatus,
    SimulatedSource,
    Supervisor,
    manage_garbage_collection,
)
from engine._progress import ProgressReporter
from engine._snapshot import ResultInfo

from ._stats import latency_figures, percentile

FIRST_FILE_ID = 10_000
SUBMITTERS = 16


class RecordingSource(SimulatedSource):
    """The simulated source, recording each job's start and delay, with optional fixed delays.

    ``delays`` maps file ids to delays in seconds; other ids draw from the
    configured range. While ``hold_until`` (trio time) is set, each drawn
    delay is lengthened by the time left until then, so jobs submitted over
    a long submission phase all run for their drawn delay after it ends.
    ``draw_delay`` runs synchronously at the start of ``fetch``, before its
    first checkpoint, so ``_current_file`` is the file being fetched.
    """

    def __init__(self, settings: EngineSettings, delays: dict[int, float] | None = None) -> None:
        super().__init__(settings)
        self.delays = delays or {}
        self.hold_until: float | None = None
        # file id -> (trio time the delay began, delay in seconds)
        self.schedule: dict[int, tuple[float, float]] = {}
        self._current_file = 0

    def draw_delay(self) -> float:
        delay = self.delays.get(self._current_file)
        if delay is None:
            delay = super().draw_delay()
        now = trio.current_time()
        if self.hold_until is not None:
            delay += max(self.hold_until - now, 0.0)
        self.schedule[self._current_file] = (now, delay)
        return delay

    async def fetch(
        self, file_id: int, progress: ProgressReporter, destination: Path
    ) -> ResultInfo:
        self._current_file = file_id
        return await super().fetch(file_id, progress, destination)


def count_tasks() -> int:
    """Return the number of tasks in this trio run, found by walking from the root task."""
    root = trio.lowlevel.current_root_task()
    assert root is not None, "count_tasks must run inside trio.run"
    pending = [root]
    count = 0
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


def rss_bytes() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def engine_settings(
    jobs: int, delay_min_ms: int, delay_max_ms: int, results: Path
) -> EngineSettings:
    cap = max(2 * jobs, 1000)
    return EngineSettings(
        download_delay_min_ms=delay_min_ms,
        download_delay_max_ms=delay_max_ms,
        download_size_min_bytes=0,
        download_size_max_bytes=1024,
        max_concurrent_jobs=cap,
        max_queued_jobs=cap,
        max_retained_jobs=2 * cap,
        max_tombstones=cap,
        job_timeout_ms=delay_max_ms + 600_000,
        shutdown_grace_ms=0,
        results_dir=results,
    )


async def submit_all(
    client: JobClient,
    count: int,
    deadline_for: Callable[[int], float | None] | None = None,
    source: RecordingSource | None = None,
    on_submitted: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Submit ``count`` jobs from ``SUBMITTERS`` tasks; return their ids by index.

    ``deadline_for(index)`` gives a job's timeout in seconds, or None for the
    default. ``on_submitted(index, job_id)`` runs right after each submission.
    With ``source``, its ``hold_until`` follows the estimated end of the
    submission (from the rate so far, plus 20% and 1 s), so every job's
    drawn delay starts counting when all jobs are in.
    """
    job_ids = [""] * count
    next_index = 0
    started = trio.current_time()

    async def estimate_end() -> None:
        assert source is not None
        while True:
            elapsed = trio.current_time() - started
            rate = next_index / elapsed if next_index >= 100 else 1000.0
            source.hold_until = trio.current_time() + (count - next_index) / rate * 1.2 + 1.0
            await trio.sleep(0.25)

    async def submitter() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            job_timeout = deadline_for(index) if deadline_for is not None else None
            snapshot = await client.submit(FIRST_FILE_ID + index, job_timeout=job_timeout)
            job_ids[index] = snapshot.job_id
            if on_submitted is not None:
                on_submitted(index, snapshot.job_id)

    async with trio.open_nursery() as nursery:
        if source is not None:
            nursery.start_soon(estimate_end)
        async with trio.open_nursery() as submitters:
            for _ in range(SUBMITTERS):
                submitters.start_soon(submitter)
        nursery.cancel_scope.cancel()
    return job_ids


async def measure_lag(interval: float, until: float, lags: list[float]) -> None:
    """Sleep ``interval`` seconds repeatedly until trio time ``until``; record each late wake-up."""
    while trio.current_time() < until:
        target = trio.current_time() + interval
        await trio.sleep_until(target)
        lags.append(trio.current_time() - target)


async def query_statuses(
    client: JobClient, job_ids: list[str], rate: float, until: float, latencies: list[float]
) -> None:
    """Ask for random jobs' status at ``rate`` per second (open loop) until ``until``."""
    rng = random.Random(1)
    next_time = trio.current_time()

    async def one() -> None:
        started = time.perf_counter()
        await client.status(rng.choice(job_ids))
        latencies.append(time.perf_counter() - started)

    async with trio.open_nursery() as nursery:
        while next_time < until:
            await trio.sleep_until(next_time)
            nursery.start_soon(one)
            next_time += 1 / rate


async def run_inflight(parameters: dict[str, Any]) -> dict[str, Any]:
    jobs = int(parameters["jobs"])
    window = float(parameters["window_seconds"])
    with tempfile.TemporaryDirectory(prefix="bench-harness-") as folder:
        settings = engine_settings(
            jobs, parameters["delay_min_ms"], parameters["delay_max_ms"], Path(folder)
        )
        source = RecordingSource(settings)
        supervisor = Supervisor(settings, source)
        async with trio.open_nursery() as nursery:
            client: JobClient = await nursery.start(supervisor.run)
            await client.stats()
            # The same collector policy as `download-jobs serve` runs.
            await nursery.start(manage_garbage_collection)
            rss_before = rss_bytes()

            started = time.perf_counter()
            job_ids = await submit_all(client, jobs, source=source)
            submit_seconds = time.perf_counter() - started
            stats = await client.stats()
            rss_after = rss_bytes()

            # Idle: no requests, only the engine's own timers and completions.
            cpu_start = cpu_seconds()
            idle_started = time.perf_counter()
            idle_lags: list[float] = []
            await measure_lag(0.01, trio.current_time() + window, idle_lags)
            idle_cpu = (cpu_seconds() - cpu_start) / (time.perf_counter() - idle_started)

            # Under queries: status requests at a fixed rate, lag measured alongside.
            lags: list[float] = []
            latencies: list[float] = []
            until = trio.current_time() + window
            async with trio.open_nursery() as load:
                load.start_soon(measure_lag, 0.01, until, lags)
                load.start_soon(
                    query_statuses, client, job_ids, parameters["query_rate"], until, latencies
                )

            progress_errors = await sample_progress(
                client, job_ids, source, settings.progress_step_percent, parameters["samples"]
            )
            in_flight = (await client.stats()).by_status["processing"]

            started = time.perf_counter()
            await client.shutdown()
            shutdown_seconds = time.perf_counter() - started
            nursery.cancel_scope.cancel()

    idle_lags.sort()
    lags.sort()
    result: dict[str, Any] = {
        "jobs": jobs,
        "processing_after_submit": stats.by_status["processing"],
        "processing_at_end": in_flight,
        "submit_per_second": jobs / submit_seconds,
        "rss_before_mb": rss_before / 2**20,
        "rss_after_mb": rss_after / 2**20,
        "rss_per_job_bytes": (rss_after - rss_before) / jobs,
        "idle_cpu_percent": idle_cpu * 100,
        "idle_lag_p99_ms": percentile(idle_lags, 0.99) * 1000,
        "lag_p50_ms": percentile(lags, 0.5) * 1000,
        "lag_p99_ms": percentile(lags, 0.99) * 1000,
        "lag_max_ms": (lags[-1] if lags else math.nan) * 1000,
        "shutdown_seconds": shutdown_seconds,
        **latency_figures(latencies, "query"),
        **progress_errors,
    }
    return result


async def sample_progress(
    client: JobClient,
    job_ids: list[str],
    source: RecordingSource,
    step_percent: int,
    samples: int,
) -> dict[str, float]:
    """Compare reported progress with elapsed/total delay for random processing jobs.

    Reported progress is rounded down to ``step_percent`` and capped at 99,
    so a correct engine reports a value in (exact - step, exact]. The error
    is how far the reported value falls outside that band, in percentage
    points; 0 means exact up to the documented rounding.
    """
    rng = random.Random(2)
    errors: list[float] = []
    raw: list[float] = []
    for index in rng.sample(range(len(job_ids)), min(samples, len(job_ids))):
        snapshot = await client.status(job_ids[index])
        now = trio.current_time()
        if snapshot.status is not JobStatus.PROCESSING:
            continue
        began, delay = source.schedule[FIRST_FILE_ID + index]
        exact = min((now - began) / delay * 100, 99.0) if delay > 0 else 99.0
        reported = snapshot.progress
        raw.append(abs(exact - reported))
        errors.append(max(reported - exact, exact - step_percent - reported, 0.0))
    raw.sort()
    errors.sort()
    return {
        "progress_samples": float(len(errors)),
        "progress_error_max_points": errors[-1] if errors else math.nan,
        "progress_difference_p50_points": percentile(raw, 0.5),
        "progress_difference_max_points": raw[-1] if raw else math.nan,
    }


async def run_storm(parameters: dict[str, Any]) -> dict[str, Any]:
    """Run the cancellation and timeout storm; see the module docstring."""
    jobs = int(parameters["jobs"])
    low, high = parameters["delay_min_ms"] / 1000, parameters["delay_max_ms"] / 1000
    rng = random.Random(parameters.get("seed", 3))
    roles = ["cancel"] * (jobs // 2) + ["timeout"] * (jobs // 4)
    roles += ["finish"] * (jobs - len(roles))
    rng.shuffle(roles)
    delays = {FIRST_FILE_ID + i: rng.uniform(low, high) for i in range(jobs)}
    # A deadline between 30% and 80% of the delay; a cancel between 5% and 90% of it.
    timeouts = {
        i: rng.uniform(0.3, 0.8) * delays[FIRST_FILE_ID + i]
        for i in range(jobs)
        if roles[i] == "timeout"
    }
    cancel_after = {
        i: rng.uniform(0.05, 0.9) * delays[FIRST_FILE_ID + i]
        for i in range(jobs)
        if roles[i] == "cancel"
    }

    with tempfile.TemporaryDirectory(prefix="bench-storm-") as folder:
        settings = engine_settings(jobs, int(low * 1000), int(high * 1000), Path(folder))
        source = RecordingSource(settings, delays)
        supervisor = Supervisor(settings, source)
        async with trio.open_nursery() as nursery:
            client: JobClient = await nursery.start(supervisor.run)
            await client.stats()
            # The same collector policy as `download-jobs serve` runs.
            await nursery.start(manage_garbage_collection)
            await trio.testing.wait_all_tasks_blocked()
            idle_tasks = count_tasks()

            late_cancels = 0

            async def cancel_later(job_id: str, at: float) -> None:
                nonlocal late_cancels
                await trio.sleep_until(at)
                try:
                    await client.cancel(job_id)
                except JobAlreadyFinished:
                    late_cancels += 1

            # Each cancel counts from its own job's submission, which is
            # also when the job's delay starts (every job gets a slot at once).
            async with trio.open_nursery() as cancels:

                def schedule_cancel(index: int, job_id: str) -> None:
                    if index in cancel_after:
                        at = trio.current_time() + cancel_after[index]
                        cancels.start_soon(cancel_later, job_id, at)

                started = trio.current_time()
                job_ids = await submit_all(client, jobs, timeouts.get, on_submitted=schedule_cancel)
                submitted = trio.current_time()
                peak_tasks = count_tasks()

            # Every job ends by its delay (plus archive writing); wait for that, bounded.
            limit = trio.current_time() + high + 30
            while trio.current_time() < limit:
                stats = await client.stats()
                if stats.by_status["queued"] + stats.by_status["processing"] == 0:
                    break
                await trio.sleep(0.05)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            tasks_after = count_tasks()
            snapshots = {snapshot.job_id: snapshot for snapshot in await client.list_jobs()}
            await client.shutdown()
            nursery.cancel_scope.cancel()

    wrong = 0
    lateness: list[float] = []
    for index, job_id in enumerate(job_ids):
        snapshot = snapshots[job_id]
        role = roles[index]
        if role == "cancel":
            # A cancel that reached a finished job is counted in late_cancels.
            wrong += snapshot.status not in (JobStatus.CANCELLED, JobStatus.DONE)
        elif role == "timeout":
            timed_out = snapshot.status is JobStatus.FAILED and snapshot.error is not None
            if timed_out and snapshot.error is not None and snapshot.error.code == "timeout":
                deadline = snapshot.created_at.timestamp() + timeouts[index]
                lateness.append(snapshot.updated_at.timestamp() - deadline)
            else:
                wrong += 1
        else:
            wrong += snapshot.status is not JobStatus.DONE
    lateness.sort()
    return {
        "jobs": jobs,
        "submit_seconds": submitted - started,
        "wrong_terminal_states": float(wrong),
        "late_cancels": float(late_cancels),
        "timed_out_jobs": float(len(lateness)),
        "lateness_p50_ms": percentile(lateness, 0.5) * 1000,
        "lateness_p99_ms": percentile(lateness, 0.99) * 1000,
        "lateness_max_ms": (lateness[-1] if lateness else math.nan) * 1000,
        "lateness_min_ms": (lateness[0] if lateness else math.nan) * 1000,
        "lateness_samples_ms": [value * 1000 for value in lateness],
        "tasks_idle": float(idle_tasks),
        "tasks_peak": float(peak_tasks),
        "tasks_after": float(tasks_after),
        "tasks_left_behind": float(tasks_after - idle_tasks),
    }


MODES = {"inflight": run_inflight, "storm": run_storm}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in MODES:
        print(f"usage: python -m bench._harness {{{','.join(MODES)}}} JSON", file=sys.stderr)
        return 2
    parameters = json.loads(argv[1])
    result = trio.run(MODES[argv[0]], parameters)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
