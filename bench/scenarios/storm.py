"""Scenario 5: cancellation and timeout storm.

K jobs: half are cancelled at random moments while they run, a quarter get
a deadline (``timeout_ms``) shorter than their delay, and the rest finish.
Every job must end in its expected terminal state: cancelled, failed with
code ``timeout``, or done. For timed-out jobs the figure is how long after
its deadline each one ended (updatedAt minus createdAt plus the timeout).

- In the in-process engine harness (real clock), each job's delay is fixed
  in advance, deadlines are 30-80% of it and cancels come at 5-90% of it.
  The task count, found by walking the trio task tree from the root task,
  must return to its idle value once every job has ended.
- Over HTTP on the product server, delays are drawn by the server, so
  deadlines (20-80%) and cancels (5-90%) are fractions of the shortest
  delay. Afterwards /metrics must show no running actor and no job in flight.
"""

from __future__ import annotations

import json
import random
from datetime import datetime
from typing import Any

import trio

from .._http import HttpConnection, Parser
from .._load import Tally, read_metrics, send, start_spec
from .._runner import Context, add_run, new_result
from .._servers import PRODUCT, ServerProcess, product_settings, running_server
from .._stats import percentile
from .inflight import run_harness

KEY = "storm"
TITLE = "Cancellation and timeout storm"
HTTP_CONNECTIONS = 32
# Seconds to wait, after the longest delay, for the last jobs to end.
END_MARGIN_SECONDS = 2.0


def run(context: Context) -> dict[str, Any]:
    sizes = context.sizes
    settings = product_settings(
        sizes.storm_http_jobs,
        DOWNLOAD_DELAY_MIN_MS=str(sizes.storm_delay_min_ms),
        DOWNLOAD_DELAY_MAX_MS=str(sizes.storm_delay_max_ms),
    )
    result = new_result(
        KEY,
        TITLE,
        {
            "harness_jobs": sizes.storm_jobs,
            "http_jobs": sizes.storm_http_jobs,
            "delay_ms": [sizes.storm_delay_min_ms, sizes.storm_delay_max_ms],
            "cancelled_share": 0.5,
            "deadline_share": 0.25,
        },
    )
    result["server_settings"] = settings
    for round_number in range(sizes.runs):
        context.begin_run()
        figures = run_harness(
            "storm",
            {
                "jobs": sizes.storm_jobs,
                "delay_min_ms": sizes.storm_delay_min_ms,
                "delay_max_ms": sizes.storm_delay_max_ms,
                "seed": round_number,
            },
            timeout=sizes.storm_jobs / 200 + sizes.storm_delay_max_ms / 1000 + 120,
        )
        context.end_run(figures)
        add_run(result, "harness", "engine harness (real clock)", figures)
        context.echo(
            f"  {KEY} round {round_number + 1} harness: "
            f"{figures['wrong_terminal_states']:.0f} wrong states, "
            f"lateness max {figures['lateness_max_ms']:.1f} ms, "
            f"{figures['tasks_left_behind']:.0f} tasks left behind"
        )
        context.begin_run()
        with running_server(PRODUCT, settings) as server:
            figures = trio.run(_http_storm, server, context, round_number)
        context.end_run(figures)
        add_run(result, "product", PRODUCT.label, figures)
        context.echo(
            f"  {KEY} round {round_number + 1} product: "
            f"{figures['wrong_terminal_states']:.0f} wrong states, "
            f"lateness max {figures['lateness_max_ms']:.1f} ms, "
            f"{figures['running_actors_after']:.0f} actors left"
        )
    return result


class ConnectionPool:
    """At most ``size`` keep-alive connections shared by many tasks."""

    def __init__(self, port: int, parser: Parser, size: int) -> None:
        self._idle = [HttpConnection(port, parser) for _ in range(size)]
        self._available = trio.Semaphore(size)

    async def request(self, spec: tuple[str, str, Any, bytes], tally: Tally) -> Any:
        async with self._available:
            connection = self._idle.pop()
            try:
                return await send(connection, spec, tally)
            finally:
                self._idle.append(connection)

    async def aclose(self) -> None:
        for connection in self._idle:
            await connection.aclose()


async def _http_storm(server: ServerProcess, context: Context, seed: int) -> dict[str, Any]:
    sizes = context.sizes
    jobs = sizes.storm_http_jobs
    shortest = sizes.storm_delay_min_ms / 1000
    rng = random.Random(seed)
    roles = ["cancel"] * (jobs // 2) + ["timeout"] * (jobs // 4)
    roles += ["finish"] * (jobs - len(roles))
    rng.shuffle(roles)
    timeouts_ms = {
        i: max(1, int(rng.uniform(0.2, 0.8) * shortest * 1000))
        for i, role in enumerate(roles)
        if role == "timeout"
    }
    cancel_after = {
        i: rng.uniform(0.05, 0.9) * shortest for i, role in enumerate(roles) if role == "cancel"
    }
    # Cancels get their own connections, so none waits behind queued starts.
    pool = ConnectionPool(server.port, context.parser, HTTP_CONNECTIONS)
    cancel_pool = ConnectionPool(server.port, context.parser, HTTP_CONNECTIONS)
    starts, cancels, statuses = Tally(), Tally(), Tally()
    job_ids: dict[int, str] = {}
    last_start = trio.current_time()

    async def one_job(index: int) -> None:
        nonlocal last_start
        spec = start_spec(10_000 + index, timeouts_ms.get(index))
        response = await pool.request(spec, starts)
        if response is None or response.status != 202:
            return
        started = trio.current_time()
        last_start = max(last_start, started)
        job_ids[index] = json.loads(response.body)["jobId"]
        if index in cancel_after:
            await trio.sleep_until(started + cancel_after[index])
            spec = ("DELETE", f"/v1/download/{job_ids[index]}", None, b"")
            await cancel_pool.request(spec, cancels)

    async with trio.open_nursery() as nursery:
        for index in range(jobs):
            nursery.start_soon(one_job, index)
    await trio.sleep_until(last_start + sizes.storm_delay_max_ms / 1000 + END_MARGIN_SECONDS)

    documents: dict[int, dict[str, Any]] = {}

    async def fetch(index: int, job_id: str) -> None:
        response = await pool.request(("GET", f"/v1/download/status/{job_id}", None, b""), statuses)
        if response is not None and response.status == 200:
            documents[index] = json.loads(response.body)

    async with trio.open_nursery() as nursery:
        for index, job_id in job_ids.items():
            nursery.start_soon(fetch, index, job_id)
    metrics = await read_metrics(server.port, context.parser)
    await pool.aclose()
    await cancel_pool.aclose()

    wrong = jobs - len(documents)
    lateness: list[float] = []
    for index, document in documents.items():
        role = roles[index]
        status = document["status"]
        if role == "cancel":
            wrong += status != "cancelled"
        elif role == "finish":
            wrong += status != "done"
        elif status == "failed" and document.get("error", {}).get("code") == "timeout":
            deadline = _timestamp(document["createdAt"]) + timeouts_ms[index] / 1000
            lateness.append(_timestamp(document["updatedAt"]) - deadline)
        else:
            wrong += 1
    lateness.sort()
    return {
        "jobs": float(jobs),
        "wrong_terminal_states": float(wrong),
        "start_failures": float(jobs - len(job_ids)),
        "cancel_non_200": float(cancels.attempts - cancels.statuses[200]),
        "timed_out_jobs": float(len(lateness)),
        "lateness_p50_ms": percentile(lateness, 0.5) * 1000,
        "lateness_p99_ms": percentile(lateness, 0.99) * 1000,
        "lateness_max_ms": (lateness[-1] * 1000) if lateness else float("nan"),
        "lateness_min_ms": (lateness[0] * 1000) if lateness else float("nan"),
        "lateness_samples_ms": [value * 1000 for value in lateness],
        "running_actors_after": metrics.get("download_jobs_running_actors", float("nan")),
        "in_flight_after": metrics.get("download_jobs_in_flight", float("nan")),
    }


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
