"""Parts shared by the scenarios: the run context, result records and the feature probe."""

from __future__ import annotations

import dataclasses
import gc
import time
from collections.abc import Callable
from typing import Any

import trio

from ._config import Sizes
from ._http import HttpConnection, Parser
from ._load import start_spec
from ._machine import LoadMonitor, LoadReading, other_load
from ._servers import PRODUCT, ServerProcess, product_settings, running_server
from ._stats import summarize_runs

# Seconds of the long poll that the feature probe requests, and the minimum
# time its response must take to count as held.
PROBE_WAIT_SECONDS = 1
PROBE_HELD_SECONDS = 0.5


@dataclasses.dataclass
class Features:
    """Optional API features of the product, found by probe requests before the scenarios run."""

    etag: bool = False
    conditional: bool = False
    longpoll: bool = False
    longpoll_uses_etag: bool = False
    notes: list[str] = dataclasses.field(default_factory=list)


# A run starts once processes outside the benchmark use fewer cores than
# this, or after the run's share of the wait budget is spent.
QUIET_CORES = 0.3
# A middle-collection count no run reaches: the old generation is collected
# only by explicit calls (see ``keep_full_collections_out_of_runs``).
NO_AUTOMATIC_FULL_COLLECTIONS = 1_000_000


@dataclasses.dataclass
class Context:
    sizes: Sizes
    parser: Parser
    features: Features
    wrk: str | None
    echo: Callable[[str], None]
    monitor: LoadMonitor | None = None
    # Longest wait for a quiet machine before one run, and for all runs (s).
    quiet_wait_per_run: float = 0.0
    quiet_wait_budget: float = 0.0
    quiet_waited: float = 0.0
    _run_reading: LoadReading | None = None

    def begin_run(self) -> None:
        """Collect garbage and wait, within the budget, for other processes to go quiet.

        Then start the run's clock. The full collection here replaces
        the ones ``keep_full_collections_out_of_runs`` stops during runs.
        """
        gc.collect()
        if self.monitor is None:
            return
        allowed = min(self.quiet_wait_per_run, self.quiet_wait_budget - self.quiet_waited)
        if allowed > 0:
            self.quiet_waited += self.monitor.wait_until_quiet(QUIET_CORES, allowed)
        self._run_reading = self.monitor.reading()

    def end_run(self, figures: dict[str, Any]) -> None:
        """Add the cores that other processes used, and that steal took, since ``begin_run``."""
        if self.monitor is None or self._run_reading is None:
            return
        load = other_load(self._run_reading, self.monitor.reading())
        figures["other_processes_cores"] = load["other_processes_cores"]
        figures["stolen_cores"] = load["stolen_cores"]


def keep_full_collections_out_of_runs() -> None:
    """Stop automatic full garbage collections in this process, the load generator.

    With thousands of client tasks a full collection pauses the generator
    for 100-230 ms (measured on the 2-core Xeon), and every request in
    flight meanwhile would be timed that much slower than the server
    responded. Young and middle collections still run, with pauses of a
    few milliseconds. ``Context.begin_run`` collects fully before each run.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NO_AUTOMATIC_FULL_COLLECTIONS)


def new_result(key: str, title: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Return an empty result record of one scenario."""
    return {
        "key": key,
        "title": title,
        "parameters": parameters,
        "server_settings": {},
        "systems": {},
        "notes": [],
    }


def add_run(result: dict[str, Any], key: str, label: str, figures: dict[str, Any]) -> None:
    """Append one run's figures for system ``key`` and refresh its median/min/max summary."""
    system = result["systems"].setdefault(key, {"label": label, "runs": [], "summary": {}})
    system["runs"].append(figures)
    system["summary"] = summarize_runs(system["runs"])


def cpu_window(server: ServerProcess, meter_self: Callable[[], float]) -> Callable[[str], None]:
    """Return an ``on_window`` callback that stores CPU readings of the server and this process.

    The readings land in the callback's ``readings`` attribute, keyed
    "start" and "end", as (perf_counter, server CPU s, load generator CPU s).
    """
    readings: dict[str, tuple[float, float, float]] = {}

    def on_window(edge: str) -> None:
        readings[edge] = (time.perf_counter(), server.cpu_seconds(), meter_self())

    on_window.readings = readings  # type: ignore[attr-defined]
    return on_window


def window_figures(readings: dict[str, tuple[float, float, float]]) -> dict[str, float]:
    """Return wall seconds and CPU use (percent of one core) between "start" and "end"."""
    wall_start, server_start, self_start = readings["start"]
    wall_end, server_end, self_end = readings["end"]
    wall = wall_end - wall_start
    return {
        "window_seconds": wall,
        "server_cpu_seconds": server_end - server_start,
        "server_cpu_percent": (server_end - server_start) / wall * 100,
        "loadgen_cpu_percent": (self_end - self_start) / wall * 100,
    }


def probe_features(parser: Parser, echo: Callable[[str], None]) -> Features:
    """Find out whether the product sends ETag, returns 304, and holds ``?wait=N`` polls.

    Runs a product server whose one job takes 10 minutes with progress in
    50% steps, so its status document cannot change during the probe. A
    ``?wait=1`` poll that returns in under 0.5 s was not held.
    """
    features = Features()
    settings = product_settings(
        10,
        DOWNLOAD_DELAY_MIN_MS="600000",
        DOWNLOAD_DELAY_MAX_MS="600000",
        JOB_TIMEOUT_MS="900000",
        PROGRESS_STEP_PERCENT="50",
    )
    with running_server(PRODUCT, settings) as server:
        trio.run(_probe, server.port, parser, features)
    found = [
        name
        for name, present in (
            ("ETag", features.etag),
            ("If-None-Match/304", features.conditional),
            ("long poll ?wait=N", features.longpoll),
        )
        if present
    ]
    echo(f"features: {', '.join(found) if found else 'no ETag, no 304, no long poll'}")
    return features


async def _probe(port: int, parser: Parser, features: Features) -> None:
    import json

    connection = HttpConnection(port, parser)
    method, target, headers, body = start_spec(70000)
    started = await connection.request(method, target, headers=headers, body=body)
    status_path = json.loads(started.body)["statusUrl"]

    first = await connection.request("GET", status_path)
    etag = first.headers.get("etag")
    features.etag = etag is not None
    extra = sorted(
        name
        for name in first.headers
        if name not in ("content-type", "content-length", "date", "server", "cache-control")
    )
    features.notes.append(f"status response headers besides the basics: {', '.join(extra)}")
    if etag is not None:
        again = await connection.request("GET", status_path, headers=[("If-None-Match", etag)])
        features.conditional = again.status == 304
        features.notes.append(f"If-None-Match with the current ETag answered {again.status}")

    attempts: list[tuple[bool, list[tuple[str, str]] | None]] = []
    if etag is not None:
        attempts.append((True, [("If-None-Match", etag)]))
    attempts.append((False, None))
    for uses_etag, probe_headers in attempts:
        target = f"{status_path}?wait={PROBE_WAIT_SECONDS}"
        response = await connection.request("GET", target, headers=probe_headers)
        held = response.latency
        form = "with If-None-Match" if uses_etag else "without If-None-Match"
        features.notes.append(
            f"GET ?wait={PROBE_WAIT_SECONDS} {form} answered {response.status} after {held:.3f} s"
        )
        if held >= PROBE_HELD_SECONDS and response.status in (200, 304):
            features.longpoll = True
            features.longpoll_uses_etag = uses_etag
            break
    await connection.aclose()
