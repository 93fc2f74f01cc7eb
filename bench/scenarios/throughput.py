"""Scenario 3: status throughput, closed loop, on all four systems, cross-checked with wrk.

About 50 keep-alive connections request one job's status back to back. The
product and the FastAPI baseline serve a job started for the purpose, with a
10-minute delay so it stays processing. The floor and the framework
reference serve the same document from a dict. When ``wrk`` is installed it
measures the same URL right after, on the same server, for comparison with
this Python load generator.
"""

from __future__ import annotations

import functools
import json
import math
import re
import resource
import subprocess
import time
from typing import Any

import trio

from .._http import HttpConnection
from .._load import Tally, closed_loop, start_spec
from .._runner import Context, add_run, cpu_window, new_result, window_figures
from .._servers import (
    FASTAPI,
    FLOOR,
    FRAMEWORK,
    PRODUCT,
    SelfMeter,
    product_settings,
    running_server,
)
from .._stats import latency_figures
from ..baselines._document import STATUS_PATH

KEY = "throughput"
TITLE = "Status throughput (closed loop)"
SYSTEMS = (PRODUCT, FLOOR, FRAMEWORK, FASTAPI)
WARMUP_SECONDS = 1.0


def run(context: Context) -> dict[str, Any]:
    sizes = context.sizes
    warmup = min(WARMUP_SECONDS, sizes.throughput_seconds)
    result = new_result(
        KEY,
        TITLE,
        {
            "connections": sizes.throughput_connections,
            "seconds": sizes.throughput_seconds,
            "warmup_seconds": warmup,
            "wrk": context.wrk or "not installed: cross-check skipped",
        },
    )
    settings = product_settings(
        10, DOWNLOAD_DELAY_MIN_MS="600000", DOWNLOAD_DELAY_MAX_MS="600000", JOB_TIMEOUT_MS="900000"
    )
    result["server_settings"] = settings
    meter = SelfMeter()

    for round_number in range(sizes.runs):
        for system in SYSTEMS:
            context.begin_run()
            with running_server(system, settings) as server:
                path = STATUS_PATH
                if system in (PRODUCT, FASTAPI):
                    path = trio.run(start_one_job, server.port, context.parser)
                tally = Tally()
                on_window = cpu_window(server, meter.cpu_seconds)
                completed = trio.run(
                    functools.partial(
                        closed_loop,
                        server.port,
                        connections=sizes.throughput_connections,
                        warmup=warmup,
                        duration=sizes.throughput_seconds,
                        spec=("GET", path, None, b""),
                        parser=context.parser,
                        tally=tally,
                        on_window=on_window,
                    )
                )
                window = window_figures(on_window.readings)  # type: ignore[attr-defined]
                figures: dict[str, Any] = {
                    "requests_per_second": completed / window["window_seconds"],
                    **latency_figures(tally.latencies, "latency"),
                    "server_cpu_per_request_us": (
                        window["server_cpu_seconds"] / completed * 1e6 if completed else math.nan
                    ),
                    "server_cpu_percent": window["server_cpu_percent"],
                    "loadgen_cpu_percent": window["loadgen_cpu_percent"],
                    "non_200_percent": tally.share_other_than(200) * 100,
                }
                if context.wrk is not None and round_number < sizes.throughput_wrk_runs:
                    figures.update(
                        _run_wrk(context.wrk, server.port, path, sizes, server.cpu_seconds)
                    )
            context.end_run(figures)
            add_run(result, system.key, system.label, figures)
            context.echo(
                f"  {KEY} round {round_number + 1} {system.key}: "
                f"{figures['requests_per_second']:.0f} req/s"
                + (
                    f", wrk {figures['wrk_requests_per_second']:.0f} req/s"
                    if "wrk_requests_per_second" in figures
                    else ""
                )
            )
    return result


async def start_one_job(port: int, parser: Any) -> str:
    connection = HttpConnection(port, parser)
    method, target, headers, body = start_spec(70000)
    response = await connection.request(method, target, headers=headers, body=body)
    await connection.aclose()
    if response.status != 202:
        raise RuntimeError(f"start request returned {response.status}: {response.body[:200]!r}")
    path: str = json.loads(response.body)["statusUrl"]
    return path


_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_PERCENTILE = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_TOTAL = re.compile(r"(\d+) requests in")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _run_wrk(wrk: str, port: int, path: str, sizes: Any, server_cpu: Any) -> dict[str, float]:
    """Run wrk (one thread) on the same URL and connections; return its figures, prefixed wrk_."""
    seconds = max(1, round(sizes.throughput_seconds))
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = server_cpu()
    started = time.perf_counter()
    completed = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{sizes.throughput_connections}",
            f"-d{seconds}s",
            "--latency",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    wall = time.perf_counter() - started

    server_seconds = server_cpu() - server_before
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after_children.ru_utime + after_children.ru_stime) - (
        before_children.ru_utime + before_children.ru_stime
    )

    output = completed.stdout
    rate = _WRK_RATE.search(output)
    if completed.returncode != 0 or rate is None:
        raise RuntimeError(f"wrk failed with status {completed.returncode}: {completed.stderr}")
    percentiles = {
        name: float(value) * _UNIT_MS[unit] for name, value, unit in _WRK_PERCENTILE.findall(output)
    }

    non_2xx = _WRK_NON_2XX.search(output)
    total = _WRK_TOTAL.search(output)
    return {
        "wrk_requests_per_second": float(rate.group(1)),
        "wrk_latency_p50_ms": percentiles.get("50", math.nan),
        "wrk_latency_p99_ms": percentiles.get("99", math.nan),
        "wrk_cpu_percent": wrk_cpu / wall * 100,
        "wrk_server_cpu_percent": server_seconds / wall * 100,
        "wrk_non_2xx_percent": (
            int(non_2xx.group(1)) / int(total.group(1)) * 100 if non_2xx and total else 0.0
        ),
    }
