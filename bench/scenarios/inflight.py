"""Scenario 4: many jobs in flight at once: memory per job, query latency, lag, idle CPU, progress.

Two parts:

- Servers (the product and the FastAPI baseline, alternating): start K jobs
  over HTTP, then measure resident memory per job, CPU over a window with
  no requests, and status latency at ``QUERY_RATE`` requests per second on
  random jobs. Starting 100,000 jobs over HTTP takes minutes, so the delays
  are drawn from 10-120 s plus the estimated start-up time (K divided by
  ``SLOWEST_START_RATE``): every job is still in flight when measured, and
  the report gives the count from /metrics.
- The in-process engine harness (``bench._harness``, no HTTP) with delays of
  10-120 s counted from the end of submission: memory per job, supervisor
  query latency (``JobClient.status``), trio scheduling lag (how late a task
  sleeping 10 ms wakes), CPU with no requests, and reported progress
  against elapsed/total delay.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from typing import Any

import trio

from .._load import Tally, open_loop, read_metrics, start_jobs
from .._runner import Context, add_run, new_result
from .._servers import FASTAPI, PRODUCT, REPO, ServerProcess, product_settings, running_server
from .._stats import latency_figures

KEY = "inflight"
TITLE = "Jobs in flight"
SYSTEMS = (PRODUCT, FASTAPI)
DELAY_MIN_MS = 10_000
DELAY_MAX_MS = 120_000
QUERY_RATE = 200.0
HARNESS_QUERY_RATE = 500.0
PROGRESS_SAMPLES = 1000
START_CONNECTIONS = 32
# Starts per second assumed when lengthening delays so jobs outlive the
# start-up phase; the product managed about 800 on the 2-core machine.
SLOWEST_START_RATE = 400.0


def run(context: Context) -> dict[str, Any]:
    sizes = context.sizes
    result = new_result(
        KEY,
        TITLE,
        {
            "server_jobs": list(sizes.inflight_jobs),
            "harness_jobs": list(sizes.inflight_harness_jobs),
            "delay_ms": [DELAY_MIN_MS, DELAY_MAX_MS],
            "window_seconds": sizes.inflight_window_seconds,
            "query_rate_per_second": QUERY_RATE,
            "harness_query_rate_per_second": HARNESS_QUERY_RATE,
            "start_connections": START_CONNECTIONS,
        },
    )
    result["server_settings"] = {}
    for jobs in sizes.inflight_jobs:
        settings = _server_settings(jobs)
        result["server_settings"][str(jobs)] = settings
        for round_number in range(sizes.runs):
            for system in SYSTEMS:
                context.begin_run()
                with running_server(system, settings) as server:
                    figures = trio.run(_measure_server, server, jobs, context)
                context.end_run(figures)
                add_run(result, f"{system.key}:{jobs}", f"{system.label}, {jobs:,} jobs", figures)
                context.echo(
                    f"  {KEY} round {round_number + 1} {system.key} K={jobs}: "
                    f"{figures['rss_per_job_bytes']:.0f} B/job, "
                    f"status p99 {figures['status_p99_ms']:.1f} ms"
                )
    for jobs in sizes.inflight_harness_jobs:
        for round_number in range(sizes.runs):
            context.begin_run()
            figures = run_harness(
                "inflight",
                {
                    "jobs": jobs,
                    "delay_min_ms": DELAY_MIN_MS,
                    "delay_max_ms": DELAY_MAX_MS,
                    "window_seconds": sizes.inflight_window_seconds,
                    "query_rate": HARNESS_QUERY_RATE,
                    "samples": PROGRESS_SAMPLES,
                },
                timeout=jobs / 500 + 120,
            )
            context.end_run(figures)
            add_run(result, f"harness:{jobs}", f"engine harness, {jobs:,} jobs", figures)
            context.echo(
                f"  {KEY} round {round_number + 1} harness K={jobs}: "
                f"{figures['rss_per_job_bytes']:.0f} B/job, "
                f"query p99 {figures['query_p99_ms']:.2f} ms, "
                f"lag p99 {figures['lag_p99_ms']:.2f} ms"
            )
    return result


def _server_settings(jobs: int) -> dict[str, str]:
    startup_ms = int(jobs / SLOWEST_START_RATE * 1000) + 10_000
    return product_settings(
        jobs,
        DOWNLOAD_DELAY_MIN_MS=str(DELAY_MIN_MS + startup_ms),
        DOWNLOAD_DELAY_MAX_MS=str(DELAY_MAX_MS + startup_ms),
        JOB_TIMEOUT_MS=str(DELAY_MAX_MS + startup_ms + 120_000),
    )


async def _measure_server(server: ServerProcess, jobs: int, context: Context) -> dict[str, Any]:
    parser = context.parser
    window = context.sizes.inflight_window_seconds
    rss_idle = server.rss_bytes()

    started = time.perf_counter()
    job_ids, _ = await start_jobs(server.port, jobs, connections=START_CONNECTIONS, parser=parser)
    start_seconds = time.perf_counter() - started
    in_flight = float(len(job_ids))
    if server.system is PRODUCT:
        in_flight = (await read_metrics(server.port, parser))["download_jobs_in_flight"]
    rss_loaded = server.rss_bytes()

    cpu_before = server.cpu_seconds()
    idle_started = time.perf_counter()
    await trio.sleep(window)
    idle_cpu = (server.cpu_seconds() - cpu_before) / (time.perf_counter() - idle_started)

    rng = random.Random(5)
    queries = Tally()
    await open_loop(
        server.port,
        rate=QUERY_RATE,
        duration=window,
        build=lambda _index: ("GET", f"/v1/download/status/{rng.choice(job_ids)}", None, b""),
        parser=parser,
        tally=queries,
        initial_connections=8,
    )
    return {
        "jobs_started": float(len(job_ids)),
        "start_failures": float(jobs - len(job_ids)),
        "starts_per_second": len(job_ids) / start_seconds,
        "in_flight": in_flight,
        "rss_idle_mb": rss_idle / 2**20,
        "rss_loaded_mb": rss_loaded / 2**20,
        "rss_per_job_bytes": (rss_loaded - rss_idle) / max(len(job_ids), 1),
        "idle_cpu_percent": idle_cpu * 100,
        **latency_figures(queries.latencies, "status"),
        "status_non_200_percent": queries.share_other_than(200) * 100,
    }


def run_harness(mode: str, parameters: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``python -m bench._harness MODE`` and return the JSON document it prints."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench._harness", mode, json.dumps(parameters)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"harness {mode} exited with status {completed.returncode}:\n{completed.stderr[-3000:]}"
        )
    figures: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return figures
