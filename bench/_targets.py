"""The performance targets, judged from the medians of a suite's results.

A target is reported as PASS or FAIL with the figure it was judged on; a
missed target is never an error. A target whose figure could not be
measured (scenario crashed, feature missing) is a FAIL that gives the reason.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .scenarios.polling import FLOOR_LONGPOLL, P99_LIMIT_MS

# Target values (units in the names).
THROUGHPUT_RATIO_MIN = 0.9
START_P99_MAX_MS = 20.0
START_RATE = 200.0
START_IN_FLIGHT_MIN = 5000
INFLIGHT_JOBS = 100_000
INFLIGHT_RSS_MAX_MB = 1024.0
INFLIGHT_QUERY_P99_MAX_MS = 10.0
STORM_LATENESS_MAX_MS = 100.0
LONGPOLL_CPU_RATIO_MAX = 0.5
CAPACITY_RATIO_MIN = 3.0


@dataclasses.dataclass
class Target:
    key: str
    description: str
    passed: bool
    figure: str
    target: str
    notes: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"{verdict}  {self.description}: {self.figure} (target {self.target}){notes}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def median(results: dict[str, Any], scenario: str, system: str, figure: str) -> float:
    """Return the median of ``figure`` for ``system`` in ``scenario``, or NaN if not measured."""
    try:
        value: float = results[scenario]["systems"][system]["summary"][figure]["median"]
    except (KeyError, TypeError):
        return math.nan
    return value


def evaluate(results: dict[str, Any], sizes: Any) -> list[Target]:
    """Judge every target from ``results`` (scenario key -> result record)."""
    return [
        _throughput(results),
        _start_latency(results, sizes),
        _inflight(results, sizes),
        _storm(results),
        _longpoll_cpu(results),
        _capacity(results, sizes),
    ]


def _missing(key: str, description: str, target: str, why: str) -> Target:
    return Target(key, description, False, "not measured", target, [why])


def _throughput(results: dict[str, Any]) -> Target:
    description = "status throughput vs framework reference"
    target = f">= {THROUGHPUT_RATIO_MIN}x"
    product = median(results, "throughput", "product", "requests_per_second")
    framework = median(results, "throughput", "framework", "requests_per_second")
    if math.isnan(product) or math.isnan(framework):
        return _missing("throughput", description, target, "scenario 3 has no figures")
    ratio = product / framework
    notes = [f"{product:.0f} vs {framework:.0f} req/s"]
    wrk_product = median(results, "throughput", "product", "wrk_requests_per_second")
    wrk_framework = median(results, "throughput", "framework", "wrk_requests_per_second")
    if not (math.isnan(wrk_product) or math.isnan(wrk_framework)):
        notes.append(f"wrk: {wrk_product / wrk_framework:.2f}x")
    return Target(
        "throughput", description, ratio >= THROUGHPUT_RATIO_MIN, f"{ratio:.2f}x", target, notes
    )


def _start_latency(results: dict[str, Any], sizes: Any) -> Target:
    description = "start latency p99"
    target = (
        f"< {START_P99_MAX_MS:g} ms at {START_RATE:g}/s with >= {START_IN_FLIGHT_MIN:,} in flight"
    )
    p99 = median(results, "start_latency", "product", "latency_p99_ms")
    if math.isnan(p99):
        return _missing("start_latency", description, target, "scenario 1 has no figures")
    in_flight = median(results, "start_latency", "product", "in_flight_before")
    non_202 = median(results, "start_latency", "product", "non_202_percent")
    notes = [f"{non_202:.2f}% non-202"]
    if sizes.start_rate < START_RATE or in_flight < START_IN_FLIGHT_MIN:
        notes.append(f"measured at {sizes.start_rate:g}/s with {in_flight:,.0f} in flight")
    passed = p99 < START_P99_MAX_MS
    return Target("start_latency", description, passed, f"{p99:.1f} ms", target, notes)


def _inflight(results: dict[str, Any], sizes: Any) -> Target:
    description = f"{INFLIGHT_JOBS:,} jobs in flight: RSS and status p99"
    target = f"< {INFLIGHT_RSS_MAX_MB:g} MiB and < {INFLIGHT_QUERY_P99_MAX_MS:g} ms"
    if not sizes.inflight_jobs:
        return _missing("inflight", description, target, "no server job count configured")
    jobs = max(sizes.inflight_jobs)
    system = f"product:{jobs}"
    rss = median(results, "inflight", system, "rss_loaded_mb")
    p99 = median(results, "inflight", system, "status_p99_ms")
    if math.isnan(rss) or math.isnan(p99):
        return _missing("inflight", description, target, "scenario 4 has no server figures")
    notes = []
    if jobs < INFLIGHT_JOBS:
        idle = median(results, "inflight", system, "rss_idle_mb")
        per_job = median(results, "inflight", system, "rss_per_job_bytes")
        rss = idle + per_job * INFLIGHT_JOBS / 2**20
        notes.append(f"measured at {jobs:,} jobs; RSS extrapolated to {INFLIGHT_JOBS:,}")
    in_flight = median(results, "inflight", system, "in_flight")
    notes.append(f"{in_flight:,.0f} in flight when measured")
    harness_p99 = median(
        results, "inflight", f"harness:{max(sizes.inflight_harness_jobs)}", "query_p99_ms"
    )
    if not math.isnan(harness_p99):
        notes.append(f"engine-only JobClient.status p99 {harness_p99:.2f} ms")
    passed = rss < INFLIGHT_RSS_MAX_MB and p99 < INFLIGHT_QUERY_P99_MAX_MS
    return Target(
        "inflight", description, passed, f"{rss:.0f} MiB, p99 {p99:.1f} ms", target, notes
    )


def _storm(results: dict[str, Any]) -> Target:
    description = "timed-out jobs end within 100 ms of their deadline; no task left behind"
    target = f"max lateness <= {STORM_LATENESS_MAX_MS:g} ms, 0 wrong states, 0 tasks left"
    storm = results.get("storm", {}).get("systems", {})
    if not storm:
        return _missing("storm", description, target, "scenario 5 has no figures")
    worst_lateness = -math.inf
    wrong = 0.0
    left_behind = 0.0
    late_cancels = 0.0
    for key, system in storm.items():
        for run in system["runs"]:
            worst_lateness = max(worst_lateness, run.get("lateness_max_ms", math.nan))
            wrong += run.get("wrong_terminal_states", 0.0)
            left_behind += run.get("tasks_left_behind", 0.0)
            late_cancels += run.get("late_cancels", 0.0)
            if key == "product":
                left_behind += run.get("running_actors_after", 0.0)
    passed = worst_lateness <= STORM_LATENESS_MAX_MS and wrong == 0 and left_behind == 0
    figure = (
        f"max lateness {worst_lateness:.1f} ms, {wrong:.0f} wrong states, "
        f"{left_behind:.0f} tasks or actors left"
    )
    notes = ["worst over all runs"]
    if late_cancels:
        notes.append(f"{late_cancels:.0f} cancels reached jobs that had already finished")
    return Target("storm", description, passed, figure, target, notes)


def _longpoll_cpu(results: dict[str, Any]) -> Target:
    description = "server CPU per completed job, long poll vs plain 2 s polling"
    target = f"<= {LONGPOLL_CPU_RATIO_MAX}x"
    if "polling" not in results:
        return _missing("longpoll_cpu", description, target, "scenario 2 did not run")
    plain = median(results, "polling", "product:plain", "server_cpu_per_job_ms")
    longpoll = median(results, "polling", "product:longpoll", "server_cpu_per_job_ms")
    if math.isnan(longpoll):
        return _missing(
            "longpoll_cpu", description, target, "the server does not support long poll ?wait=N"
        )
    if math.isnan(plain):
        return _missing("longpoll_cpu", description, target, "scenario 2 has no plain figures")
    ratio = longpoll / plain
    notes = [f"{longpoll:.1f} vs {plain:.1f} ms per job"]
    return Target(
        "longpoll_cpu", description, ratio <= LONGPOLL_CPU_RATIO_MAX, f"{ratio:.2f}x", target, notes
    )


def _capacity(results: dict[str, Any], sizes: Any) -> Target:
    description = (
        f"polling clients with status p99 < {P99_LIMIT_MS:g} ms, cheap polling vs FastAPI plain"
    )
    target = f">= {CAPACITY_RATIO_MIN:g}x"
    if "polling" not in results:
        return _missing("capacity", description, target, "scenario 2 did not run")
    fastapi = median(results, "polling", "fastapi:plain", "largest_clients_p99_ok")
    cheap = {
        mode: median(results, "polling", f"product:{mode}", "largest_clients_p99_ok")
        for mode in ("conditional", "longpoll")
    }
    measured = {mode: value for mode, value in cheap.items() if not math.isnan(value)}

    if not measured:
        plain = median(results, "polling", "product:plain", "largest_clients_p99_ok")
        return _missing(
            "capacity",
            description,
            target,
            "the server has neither ETag/304 nor long poll"
            + (
                f"; plain polling: {plain:.0f}, FastAPI plain: {fastapi:.0f}"
                if not math.isnan(plain)
                else ""
            ),
        )
    if math.isnan(fastapi):
        return _missing("capacity", description, target, "no FastAPI staircase figures")

    mode, best = max(measured.items(), key=lambda item: item[1])
    notes = [f"{mode}: {best:.0f} vs FastAPI plain {fastapi:.0f} clients"]
    top = max(sizes.poll_steps)  # FastAPI climbs the plain staircase
    if fastapi >= top:
        notes.append(f"FastAPI reached the largest step tested ({top}); its limit is higher")
    if mode == "longpoll" and best >= max(sizes.poll_longpoll_steps):
        notes.append("the product reached the largest long-poll step tested; its limit is higher")
    floor = median(results, "polling", FLOOR_LONGPOLL.key, "largest_clients_p99_ok")
    if not math.isnan(floor):
        notes.append(f"the bare floor held {floor:.0f} long polls")
    ratio = best / fastapi if fastapi else math.inf
    passed = ratio >= CAPACITY_RATIO_MIN and fastapi < top
    return Target("capacity", description, passed, f"{ratio:.2f}x", target, notes)
