"""Scenario 1: start latency under an open-loop arrival rate, with thousands of jobs in flight.

Each run starts a fresh server, starts ``start_preload`` jobs as fast as 16
connections allow, then sends ``start_rate`` starts per second, evenly
spaced, for ``start_seconds``. Latency counts from each request's scheduled
time. Job delays are long enough that every job stays in flight until the
run ends. Systems: the product and the FastAPI baseline, alternating.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from .._load import Tally, open_loop, read_metrics, start_jobs, start_spec
from .._runner import Context, add_run, new_result
from .._servers import FASTAPI, PRODUCT, SelfMeter, ServerProcess, product_settings, running_server
from .._stats import latency_figures

KEY = "start_latency"
TITLE = "Start latency (open loop)"
SYSTEMS = (PRODUCT, FASTAPI)
PRELOAD_CONNECTIONS = 16
# The slowest start rate assumed when sizing delays so that preloaded jobs
# outlive the run (starts per second), and the extra margin (seconds).
SLOWEST_PRELOAD_RATE = 200
DELAY_MARGIN_SECONDS = 30


def run(context: Context) -> dict[str, Any]:
    sizes = context.sizes
    jobs = sizes.start_preload + int(sizes.start_rate * sizes.start_seconds)
    min_delay_ms = int(
        1000
        * (sizes.start_preload / SLOWEST_PRELOAD_RATE + sizes.start_seconds + DELAY_MARGIN_SECONDS)
    )
    settings = product_settings(
        jobs,
        DOWNLOAD_DELAY_MIN_MS=str(min_delay_ms),
        DOWNLOAD_DELAY_MAX_MS=str(min_delay_ms + 60_000),
        JOB_TIMEOUT_MS=str(min_delay_ms + 120_000),
    )
    result = new_result(
        KEY,
        TITLE,
        {
            "rate_per_second": sizes.start_rate,
            "seconds": sizes.start_seconds,
            "preloaded_jobs": sizes.start_preload,
            "preload_connections": PRELOAD_CONNECTIONS,
        },
    )
    result["server_settings"] = settings
    meter = SelfMeter()
    for round_number in range(sizes.runs):
        for system in SYSTEMS:
            context.begin_run()
            with running_server(system, settings) as server:
                figures = trio.run(_measure, server, context, meter)
            context.end_run(figures)
            add_run(result, system.key, system.label, figures)
            context.echo(
                f"  {KEY} round {round_number + 1} {system.key}: "
                f"p99 {figures['latency_p99_ms']:.1f} ms, "
                f"non-202 {figures['non_202_percent']:.2f}%"
            )
    return result


async def _measure(server: ServerProcess, context: Context, meter: SelfMeter) -> dict[str, Any]:
    sizes = context.sizes
    parser = context.parser
    preload_started = trio.current_time()
    job_ids, _ = await start_jobs(
        server.port, sizes.start_preload, connections=PRELOAD_CONNECTIONS, parser=parser
    )
    preload_seconds = trio.current_time() - preload_started
    in_flight = float(len(job_ids))
    if server.system is PRODUCT:
        in_flight = (await read_metrics(server.port, parser))["download_jobs_in_flight"]

    tally = Tally()
    first_file_id = 10_000 + sizes.start_preload
    server_before, self_before = server.cpu_seconds(), meter.cpu_seconds()
    elapsed = await open_loop(
        server.port,
        rate=sizes.start_rate,
        duration=sizes.start_seconds,
        build=lambda index: start_spec(first_file_id + index),
        parser=parser,
        tally=tally,
    )
    server_seconds = server.cpu_seconds() - server_before
    self_seconds = meter.cpu_seconds() - self_before
    sent = tally.attempts
    others = {str(status): count for status, count in tally.statuses.items() if status != 202}
    others.update(tally.errors)
    return {
        "non_202_responses": others,
        **latency_figures(tally.latencies, "latency"),
        "non_202_percent": tally.share_other_than(202) * 100,
        "starts_sent": float(sent),
        "achieved_rate_per_second": sent / elapsed if elapsed > 0 else math.nan,
        "in_flight_before": in_flight,
        "preload_rate_per_second": len(job_ids) / preload_seconds,
        "preload_failed": float(sizes.start_preload - len(job_ids)),
        "server_cpu_percent": server_seconds / elapsed * 100,
        "server_cpu_per_start_ms": server_seconds / sent * 1000 if sent else math.nan,
        "loadgen_cpu_percent": self_seconds / elapsed * 100,
        "rss_mb": server.rss_bytes() / 2**20,
    }
