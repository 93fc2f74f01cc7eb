"""Scenario 2: polling load. Clients that each start one job and poll its status until done.

Polling variants, each run only where the server supports it:

- ``plain``: ``GET /v1/download/status/{id}`` every 2 s (the Retry-After).
- ``conditional``: the same with ``If-None-Match`` set to the last ETag, so
  an unchanged job costs a bodyless 304 (only if the product sends ETag).
- ``longpoll``: ``GET .../status/{id}?wait=N`` sent again as soon as it
  returns (only if the feature probe saw the server hold such a request).

Two measurements:

- Efficiency runs: ``poll_clients`` clients per variant, jobs with delays
  drawn from ``poll_delay_min_ms``-``poll_delay_max_ms``, every client
  polling until its job is done and then fetching the result. Figures:
  status requests per second, latency, and server CPU seconds per completed
  job. All variants of one round run at the same time, each on its own
  server, so a round lasts one job lifetime instead of one per variant. Each
  server's CPU is its own, but latencies in these runs share the machine;
  the latency that decides capacity comes from the staircase.
- Capacity staircase: one server per run; clients are added in steps
  (``poll_steps``), ``RAMP_CLIENTS_PER_SECOND`` at a time, and keep polling
  (their jobs outlast the staircase). ``poll_settle_seconds`` after a step's
  last arrival, a window of ``poll_step_seconds`` measures the p99 of
  immediate status requests: the clients' own polls (plain and conditional)
  plus a probe stream of plain polls at ``PROBE_RATE`` per second (the only
  immediate requests under long poll). The staircase stops at the first step
  whose p99 reaches ``P99_LIMIT_MS`` or whose error share exceeds 1%.
- Long-poll staircases climb further, over ``poll_longpoll_steps``: the
  product's long-poll variant, and the same clients against the bare ASGI
  floor, which holds each long poll in one sleeping task. The floor runs
  only where the product has long poll, and shows how many open long polls
  the server itself keeps within the limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import random
import time
from datetime import datetime
from typing import Any

import trio

from .._config import Sizes
from .._http import HttpConnection, Response
from .._load import RequestSpec, Tally, open_loop, send, start_spec
from .._runner import Context, add_run, new_result
from .._servers import FASTAPI, FLOOR, PRODUCT, SelfMeter, ServerProcess, System, product_settings
from .._stats import latency_figures, percentile

KEY = "polling"
TITLE = "Polling load"
POLL_INTERVAL_SECONDS = 2.0
P99_LIMIT_MS = 100.0
MAX_ERROR_SHARE = 0.01
PROBE_RATE = 50.0
# New clients per second while a staircase step ramps up.
RAMP_CLIENTS_PER_SECOND = 400.0
# Efficiency runs: new clients per second at the start of a run.
EFFICIENCY_RAMP_CLIENTS_PER_SECOND = 200.0
TERMINAL = frozenset({"done", "failed", "cancelled"})
# A long poll that returns faster than this without a change was not held,
# so the client waits the poll interval before it polls again.
NOT_HELD_SECONDS = 0.05


MODE_LABELS = {
    "plain": "plain polling",
    "conditional": "conditional polling (If-None-Match)",
    "longpoll": "long poll (?wait=N)",
}


@dataclasses.dataclass(frozen=True)
class Variant:
    system: System
    mode: str  # "plain", "conditional" or "longpoll"

    @property
    def key(self) -> str:
        return f"{self.system.key}:{self.mode}"

    @property
    def label(self) -> str:
        return f"{self.system.label}, {MODE_LABELS[self.mode]}"


@dataclasses.dataclass
class PollRecord:
    """Requests and outcomes of the clients of one variant."""

    starts: Tally = dataclasses.field(default_factory=Tally)
    polls: Tally = dataclasses.field(default_factory=Tally)
    results: Tally = dataclasses.field(default_factory=Tally)
    # Latencies of immediate status requests inside the window (seconds).
    window_latencies: list[float] = dataclasses.field(default_factory=list)
    window: tuple[float, float] = (-math.inf, math.inf)
    window_polls: int = 0
    window_errors: int = 0
    # Long poll: seconds from a change (updatedAt) to the client seeing it.
    notify_delays: list[float] = dataclasses.field(default_factory=list)
    completed: int = 0
    unfinished: int = 0
    status_paths: list[str] = dataclasses.field(default_factory=list)

    def in_window(self, response: Response, offset: float) -> bool:
        return self.window[0] <= response.finished_at - offset < self.window[1]


# Staircase only: the floor's jobs never finish, so it has no efficiency runs.
FLOOR_LONGPOLL = Variant(FLOOR, "longpoll")


def variants(context: Context) -> list[Variant]:
    found = [Variant(PRODUCT, "plain")]
    if context.features.conditional:
        found.append(Variant(PRODUCT, "conditional"))
    if context.features.longpoll:
        found.append(Variant(PRODUCT, "longpoll"))
    found.append(Variant(FASTAPI, "plain"))
    return found


def run(context: Context) -> dict[str, Any]:
    sizes = context.sizes
    chosen = variants(context)
    result = new_result(
        KEY,
        TITLE,
        {
            "variants": [variant.key for variant in chosen],
            "poll_interval_seconds": POLL_INTERVAL_SECONDS,
            "efficiency_clients_per_variant": sizes.poll_clients,
            "efficiency_delay_ms": [sizes.poll_delay_min_ms, sizes.poll_delay_max_ms],
            "staircase_steps": list(sizes.poll_steps),
            "longpoll_staircase_steps": list(sizes.poll_longpoll_steps),
            "staircase_window_seconds": sizes.poll_step_seconds,
            "staircase_settle_seconds": sizes.poll_settle_seconds,
            "ramp_clients_per_second": RAMP_CLIENTS_PER_SECOND,
            "p99_limit_ms": P99_LIMIT_MS,
            "probe_rate_per_second": PROBE_RATE,
            "longpoll_wait_seconds": sizes.longpoll_wait,
        },
    )
    if not context.features.conditional:
        result["notes"].append("conditional polling skipped: the server sends no ETag or no 304")
    if not context.features.longpoll:
        result["notes"].append("long poll skipped: the server did not hold a ?wait=N request")

    efficiency_settings = product_settings(
        sizes.poll_clients,
        DOWNLOAD_DELAY_MIN_MS=str(sizes.poll_delay_min_ms),
        DOWNLOAD_DELAY_MAX_MS=str(sizes.poll_delay_max_ms),
        JOB_TIMEOUT_MS=str(sizes.poll_delay_max_ms + 120_000),
    )
    longest = max(sizes.poll_steps, sizes.poll_longpoll_steps, key=max)
    staircase_seconds = _staircase_seconds(longest, sizes)
    staircase_delay_ms = int((staircase_seconds + 60) * 1000)
    staircase_settings = product_settings(
        max(longest),
        DOWNLOAD_DELAY_MIN_MS=str(staircase_delay_ms),
        DOWNLOAD_DELAY_MAX_MS=str(staircase_delay_ms + 60_000),
        JOB_TIMEOUT_MS=str(staircase_delay_ms + 120_000),
    )
    result["server_settings"] = {"efficiency": efficiency_settings, "staircase": staircase_settings}
    result["staircases"] = {}

    meter = SelfMeter()
    for round_number in range(sizes.runs):
        context.begin_run()
        figures_by_variant = _efficiency_round(chosen, efficiency_settings, context, meter)
        efficiency_load: dict[str, Any] = {}
        context.end_run(efficiency_load)
        for variant in chosen:
            figures = figures_by_variant[variant]
            if efficiency_load:
                figures["efficiency_other_processes_cores"] = efficiency_load[
                    "other_processes_cores"
                ]
                figures["efficiency_stolen_cores"] = efficiency_load["stolen_cores"]
            context.echo(
                f"  {KEY} efficiency round {round_number + 1} {variant.key}: "
                f"{figures['server_cpu_per_job_ms']:.1f} ms CPU per job, "
                f"{figures['status_requests_per_second']:.0f} status req/s"
            )
            steps = sizes.poll_longpoll_steps if variant.mode == "longpoll" else sizes.poll_steps
            _climb_and_record(result, variant, staircase_settings, steps, figures, context)
        if context.features.longpoll:
            _climb_and_record(result, FLOOR_LONGPOLL, {}, sizes.poll_longpoll_steps, {}, context)
    return result


def _climb_and_record(
    result: dict[str, Any],
    variant: Variant,
    settings: dict[str, str],
    steps: tuple[int, ...],
    figures: dict[str, Any],
    context: Context,
) -> None:
    """Run one staircase of ``variant`` and add its figures to ``result`` as one run."""
    context.begin_run()
    climbed = _staircase(variant, settings, steps, context)
    context.end_run(figures)
    passing = [step["clients"] for step in climbed if step["passed"]]
    figures["largest_clients_p99_ok"] = float(passing[-1]) if passing else 0.0
    add_run(result, variant.key, variant.label, figures)
    result["staircases"].setdefault(variant.key, []).append(climbed)
    context.echo(
        f"  {KEY} staircase {variant.key}: largest N with p99 < {P99_LIMIT_MS:g} ms = "
        f"{figures['largest_clients_p99_ok']:.0f}"
    )


# -- efficiency --------------------------------------------------------------


def _efficiency_round(
    chosen: list[Variant], settings: dict[str, str], context: Context, meter: SelfMeter
) -> dict[Variant, dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        servers = {}
        for variant in chosen:
            server = ServerProcess(variant.system, settings)
            stack.callback(server.stop)
            servers[variant] = server
        for server in servers.values():
            server.wait_until_ready()
        return trio.run(_efficiency, servers, context, meter)


async def _efficiency(
    servers: dict[Variant, ServerProcess], context: Context, meter: SelfMeter
) -> dict[Variant, dict[str, Any]]:
    sizes = context.sizes
    clients = sizes.poll_clients
    ramp = max(0.2, clients / EFFICIENCY_RAMP_CLIENTS_PER_SECOND)
    give_up = trio.current_time() + ramp + sizes.poll_delay_max_ms / 1000 + 60
    figures: dict[Variant, dict[str, Any]] = {}
    self_before = meter.cpu_seconds()
    round_started = time.perf_counter()

    async def one_variant(variant: Variant, server: ServerProcess) -> None:
        record = PollRecord()
        cpu_before = server.cpu_seconds()
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(clients):
                nursery.start_soon(
                    poll_client,
                    variant,
                    server.port,
                    context,
                    record,
                    10_000 + index,
                    trio.current_time() + index * ramp / clients,
                    give_up,
                )
        elapsed = time.perf_counter() - started
        cpu_seconds = server.cpu_seconds() - cpu_before
        figures[variant] = _efficiency_figures(variant, record, elapsed, cpu_seconds)

    async with trio.open_nursery() as nursery:
        for variant, server in servers.items():
            nursery.start_soon(one_variant, variant, server)
    loadgen = (meter.cpu_seconds() - self_before) / (time.perf_counter() - round_started) * 100
    for values in figures.values():
        values["loadgen_cpu_percent_all_variants"] = loadgen
    return figures


def _efficiency_figures(
    variant: Variant, record: PollRecord, elapsed: float, cpu_seconds: float
) -> dict[str, Any]:
    polls = record.polls
    requests = polls.attempts
    completed = record.completed
    figures: dict[str, Any] = {
        "completed_jobs": float(completed),
        "unfinished_jobs": float(record.unfinished),
        "run_seconds": elapsed,
        "status_requests": float(requests),
        "status_requests_per_second": requests / elapsed,
        "status_requests_per_job": requests / completed if completed else math.nan,
        "status_304_percent": polls.statuses[304] / requests * 100 if requests else math.nan,
        "status_error_percent": (
            (requests - polls.statuses[200] - polls.statuses[304]) / requests * 100
            if requests
            else math.nan
        ),
        "server_cpu_seconds": cpu_seconds,
        "server_cpu_per_job_ms": cpu_seconds / completed * 1000 if completed else math.nan,
    }
    if variant.mode == "longpoll":
        figures.update(latency_figures(polls.latencies, "longpoll_response"))
        figures.update(latency_figures(record.notify_delays, "notify_delay"))
    else:
        figures.update(latency_figures(polls.latencies, "status_latency"))
    return figures


# -- one client ----------------------------------------------------------------


async def poll_client(
    variant: Variant,
    port: int,
    context: Context,
    record: PollRecord,
    file_id: int,
    start_at: float,
    give_up: float,
    stop: trio.Event | None = None,
) -> None:
    """Start one job at ``start_at``, poll it per ``variant.mode`` until done, fetch the result.

    Gives up at trio time ``give_up`` (counted unfinished), or when ``stop``
    is set (the staircase's end).
    """
    await trio.sleep_until(start_at)
    connection = HttpConnection(port, context.parser)
    offset = time.perf_counter() - trio.current_time()
    try:
        response = await send(connection, start_spec(file_id), record.starts)
        if response is None or response.status != 202:
            return
        document = json.loads(response.body)
        status_path: str = document["statusUrl"]
        result_path: str = document["resultUrl"]
        record.status_paths.append(status_path)

        with trio.move_on_at(give_up):
            if variant.mode == "longpoll":
                done = await _long_poll(connection, status_path, context, record, stop)
            else:
                done = await _poll(connection, status_path, variant.mode, record, offset, stop)
            if done:
                result = await send(connection, ("GET", result_path, None, b""), record.results)
                if result is not None and result.status == 200:
                    record.completed += 1
                return
        record.unfinished += 1
    finally:
        await connection.aclose()


async def _poll(
    connection: HttpConnection,
    status_path: str,
    mode: str,
    record: PollRecord,
    offset: float,
    stop: trio.Event | None,
) -> bool:
    """Poll every POLL_INTERVAL_SECONDS on a fixed schedule; return True once the job is done."""
    etag: str | None = None
    next_poll = trio.current_time() + POLL_INTERVAL_SECONDS
    while stop is None or not stop.is_set():
        await trio.sleep_until(next_poll)
        next_poll = max(next_poll + POLL_INTERVAL_SECONDS, trio.current_time())
        headers = [("If-None-Match", etag)] if mode == "conditional" and etag else None
        response = await send(connection, ("GET", status_path, headers, b""), record.polls)
        if response is None:
            if record.window[0] <= trio.current_time() < record.window[1]:
                record.window_polls += 1
                record.window_errors += 1
            continue
        record.polls.latencies.append(response.latency)
        if record.in_window(response, offset):
            record.window_latencies.append(response.latency)
            record.window_polls += 1
            if response.status not in (200, 304):
                record.window_errors += 1
        if response.status != 200:
            continue
        etag = response.headers.get("etag")
        status: str = json.loads(response.body)["status"]
        if status in TERMINAL:
            return status == "done"
    return False


async def _long_poll(
    connection: HttpConnection,
    status_path: str,
    context: Context,
    record: PollRecord,
    stop: trio.Event | None,
) -> bool:
    """Ask again as soon as each long poll returns; return True once the job is done."""
    etag: str | None = None
    updated_at: str | None = None
    target = f"{status_path}?wait={context.sizes.longpoll_wait}"
    while stop is None or not stop.is_set():
        headers = None
        if etag is not None and context.features.longpoll_uses_etag:
            headers = [("If-None-Match", etag)]
        response = await send(connection, ("GET", target, headers, b""), record.polls)
        if response is None:
            await trio.sleep(POLL_INTERVAL_SECONDS)
            continue
        record.polls.latencies.append(response.latency)
        if response.status == 304:
            continue
        if response.status != 200:
            await trio.sleep(POLL_INTERVAL_SECONDS)
            continue
        etag = response.headers.get("etag", etag)
        document = json.loads(response.body)
        changed = document.get("updatedAt") != updated_at
        if changed and updated_at is not None:
            record.notify_delays.append(time.time() - _timestamp(document["updatedAt"]))
        updated_at = document.get("updatedAt")
        if document["status"] in TERMINAL:
            return bool(document["status"] == "done")
        if not changed and response.latency < NOT_HELD_SECONDS:
            await trio.sleep(POLL_INTERVAL_SECONDS)
    return False


def _timestamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- capacity staircase ----------------------------------------------------------


def _probe_spec(rng: random.Random, paths: list[str], _index: int) -> RequestSpec:
    return ("GET", rng.choice(paths), None, b"")


def _ramp_seconds(added: int) -> float:
    return max(0.2, added / RAMP_CLIENTS_PER_SECOND)


def _staircase_seconds(steps: tuple[int, ...], sizes: Sizes) -> float:
    previous = 0
    total = 0.0
    for clients in steps:
        total += _ramp_seconds(clients - previous) + sizes.poll_settle_seconds
        total += sizes.poll_step_seconds
        previous = clients
    return total


def _staircase(
    variant: Variant, settings: dict[str, str], steps: tuple[int, ...], context: Context
) -> list[dict[str, Any]]:
    server = ServerProcess(variant.system, settings)
    try:
        server.wait_until_ready()
        return trio.run(_climb, variant, server, steps, context)
    finally:
        server.stop()


async def _climb(
    variant: Variant, server: ServerProcess, client_counts: tuple[int, ...], context: Context
) -> list[dict[str, Any]]:
    sizes = context.sizes
    record = PollRecord()
    stop = trio.Event()
    steps: list[dict[str, Any]] = []
    give_up = trio.current_time() + _staircase_seconds(client_counts, sizes) + 60
    rng = random.Random(4)

    async with trio.open_nursery() as nursery:
        clients = 0
        for target in client_counts:
            added = target - clients
            ramp = _ramp_seconds(added)
            ramp_start = trio.current_time()
            for index in range(added):
                nursery.start_soon(
                    poll_client,
                    variant,
                    server.port,
                    context,
                    record,
                    10_000 + clients + index,
                    ramp_start + index * ramp / added,
                    give_up,
                    stop,
                )
            clients = target
            await trio.sleep_until(ramp_start + ramp + sizes.poll_settle_seconds)

            window_start = trio.current_time()
            window_end = window_start + sizes.poll_step_seconds
            record.window = (window_start, window_end)
            record.window_latencies = []
            record.window_polls = 0
            record.window_errors = 0
            cpu_before = server.cpu_seconds()
            probes = Tally()
            await open_loop(
                server.port,
                rate=PROBE_RATE,
                duration=sizes.poll_step_seconds,
                build=functools.partial(_probe_spec, rng, list(record.status_paths)),
                parser=context.parser,
                tally=probes,
                initial_connections=4,
            )
            await trio.sleep_until(window_end)
            cpu_percent = (server.cpu_seconds() - cpu_before) / (trio.current_time() - window_start)
            immediate = sorted(record.window_latencies + probes.latencies)
            requests = record.window_polls + probes.attempts
            errors = record.window_errors + probes.attempts - probes.statuses[200]
            p99_ms = percentile(immediate, 0.99) * 1000
            error_share = errors / requests if requests else 1.0
            passed = p99_ms < P99_LIMIT_MS and error_share <= MAX_ERROR_SHARE
            steps.append(
                {
                    "clients": target,
                    "p50_ms": percentile(immediate, 0.5) * 1000,
                    "p99_ms": p99_ms,
                    "probe_p99_ms": percentile(sorted(probes.latencies), 0.99) * 1000,
                    "immediate_requests_per_second": requests / sizes.poll_step_seconds,
                    "error_percent": error_share * 100,
                    "server_cpu_percent": cpu_percent * 100,
                    "passed": passed,
                }
            )
            if not passed:
                break
        stop.set()
        nursery.cancel_scope.cancel()
    return steps
