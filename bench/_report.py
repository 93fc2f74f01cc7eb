"""Writing a full run's results: bench/results/<UTC time>.json, docs/benchmarks.md, charts."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ._servers import REPO
from .scenarios.polling import FLOOR_LONGPOLL

RESULTS_DIR = REPO / "bench" / "results"
PAGE = REPO / "docs" / "benchmarks.md"
# Hand-written analysis of the profiles in docs/profiles/, appended to the page.
ANALYSIS = REPO / "docs" / "profiles" / "analysis.md"
IMAGES = REPO / "docs" / "img"


def write_results(document: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{document['meta']['started_at_compact']}.json"
    path.write_text(json.dumps(document, indent=1, default=_json_default) + "\n")
    return path


def _json_default(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


# -- formatting ------------------------------------------------------------------


def cell(summary: dict[str, Any], name: str, digits: int = 1, scale: float = 1.0) -> str:
    """Format one figure as "median (min-max)", or "n/a" when it was not measured."""
    figure = summary.get(name)
    if figure is None:
        return "n/a"
    middle, low, high = (figure[key] * scale for key in ("median", "min", "max"))
    if low == high:
        return f"{middle:,.{digits}f}"
    return f"{middle:,.{digits}f} ({low:,.{digits}f}-{high:,.{digits}f})"


def table(
    result: dict[str, Any],
    columns: Sequence[tuple[str, str, int]],
    systems: Sequence[str] | None = None,
) -> list[str]:
    """Return a Markdown table: a row per system, a column per (title, figure, digits)."""
    keys = systems if systems is not None else list(result["systems"])
    lines = [
        "| system | " + " | ".join(title for title, _, _ in columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for key in keys:
        system = result["systems"].get(key)
        if system is None:
            continue
        cells = [cell(system["summary"], name, digits) for _, name, digits in columns]
        lines.append(f"| {system['label']} | " + " | ".join(cells) + " |")
    return lines


def _median(result: dict[str, Any], system: str, name: str) -> float:
    try:
        value: float = result["systems"][system]["summary"][name]["median"]
    except KeyError:
        return math.nan
    return value


# -- charts ------------------------------------------------------------------------


def _bars(
    path: Path,
    title: str,
    ylabel: str,
    groups: Sequence[str],
    series: dict[str, list[dict[str, float] | None]],
    line: float | None = None,
) -> None:
    """Draw grouped bars of medians with min-max whiskers.

    ``series`` maps a legend name to one summary figure (or None) per group.
    """
    figure, axes = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(len(series), 1)
    for offset, (name, values) in enumerate(series.items()):
        xs, heights, low, high = [], [], [], []
        for index, value in enumerate(values):
            if value is None:
                continue
            xs.append(index + (offset - (len(series) - 1) / 2) * width)
            heights.append(value["median"])
            low.append(value["median"] - value["min"])
            high.append(value["max"] - value["median"])
        axes.bar(xs, heights, width, yerr=[low, high], capsize=3, label=name)
    if line is not None:
        axes.axhline(line, color="crimson", linestyle="--", linewidth=1, label="target")
    axes.set_xticks(range(len(groups)), groups, fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _figure(result: dict[str, Any], system: str, name: str) -> dict[str, float] | None:
    value: dict[str, float] | None = result["systems"].get(system, {}).get("summary", {}).get(name)
    return value


def chart_start_latency(result: dict[str, Any]) -> str:
    systems = list(result["systems"])
    path = IMAGES / "bench-start-latency.png"
    _bars(
        path,
        "Start latency, open loop",
        "milliseconds",
        [result["systems"][key]["label"] for key in systems],
        {
            percentile: [_figure(result, key, f"latency_{percentile}_ms") for key in systems]
            for percentile in ("p50", "p99", "max")
        },
        line=20.0,
    )
    return path.name


def chart_throughput(result: dict[str, Any]) -> str:
    systems = list(result["systems"])
    path = IMAGES / "bench-throughput.png"
    series = {
        "Python load generator": [_figure(result, key, "requests_per_second") for key in systems]
    }
    if any(_figure(result, key, "wrk_requests_per_second") for key in systems):
        series["wrk"] = [_figure(result, key, "wrk_requests_per_second") for key in systems]
    _bars(
        path,
        "Status throughput, closed loop",
        "requests per second",
        [result["systems"][key]["label"].split(":")[0] for key in systems],
        series,
    )
    return path.name


def chart_polling(result: dict[str, Any], limit_ms: float) -> str:
    path = IMAGES / "bench-polling-staircase.png"
    figure, axes = plt.subplots(figsize=(8, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (key, runs) in enumerate(result.get("staircases", {}).items()):
        for run_number, steps in enumerate(runs):
            axes.plot(
                [step["clients"] for step in steps],
                [step["p99_ms"] for step in steps],
                marker="o",
                color=colors[index % len(colors)],
                alpha=0.8,
                label=key if run_number == 0 else None,
            )
    axes.axhline(limit_ms, color="crimson", linestyle="--", linewidth=1, label=f"{limit_ms:g} ms")
    axes.set_yscale("log")
    axes.set_xlabel("polling clients")
    axes.set_ylabel("status p99 (ms, log scale)")
    axes.set_title("Polling capacity staircase (one line per run)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def chart_inflight(result: dict[str, Any]) -> str:
    systems = list(result["systems"])
    path = IMAGES / "bench-inflight-memory.png"
    _bars(
        path,
        "Resident memory per job in flight",
        "bytes per job",
        [key for key in systems],
        {"RSS per job": [_figure(result, key, "rss_per_job_bytes") for key in systems]},
    )
    return path.name


def chart_storm(result: dict[str, Any]) -> str:
    path = IMAGES / "bench-storm-lateness.png"
    figure, axes = plt.subplots(figsize=(8, 4.2))
    for system in result["systems"].values():
        samples = [value for run in system["runs"] for value in run.get("lateness_samples_ms", [])]
        if samples:
            axes.hist(
                samples, bins=50, alpha=0.6, label=f"{system['label']} ({len(samples):,} jobs)"
            )
    axes.set_yscale("log")
    axes.set_xlabel("time ended - deadline (ms)")
    axes.set_ylabel("timed-out jobs (log scale)")
    axes.set_title("Timed-out jobs: lateness after their deadline, all runs")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


# -- the page ----------------------------------------------------------------------


def write_page(document: dict[str, Any]) -> Path:
    """Regenerate docs/benchmarks.md and its charts from one run's results."""
    IMAGES.mkdir(parents=True, exist_ok=True)
    meta = document["meta"]
    scenarios = document["scenarios"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench` (`make bench`); do not edit by hand, rerun it.",
        f"Run started {meta['started_at']} and took {meta['wall_seconds'] / 60:.1f} minutes. "
        f"Processes outside the benchmark used {meta['machine_load']['other_processes_cores']:.2f} "
        "of the 2 cores on average meanwhile." + _steal_sentence(meta["machine_load"]),
        "How to run and read the suite: [bench/README.md](../bench/README.md).",
        "",
        "Every figure is the median of the runs, with min-max in brackets. Each run",
        "starts fresh servers, and systems alternate run by run (A, B, A, B). Before",
        "each run the suite waited up to 30 s for processes outside the benchmark to",
        f"use under 0.3 cores ({meta['quiet_waited_seconds']:.0f} s of waiting in all);",
        "the 'other cores' columns give what they used during each run. The 'stolen",
        "cores' columns give the steal time of each run: CPU that the hypervisor gave",
        "to other virtual machines while this one had work to run. It slows whichever",
        "system is running and adds to its latencies (n/a in runs recorded before",
        "steal was measured).",
        "",
        "## Targets",
        "",
        "| result | target | measured | required | notes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for target in document["targets"]:
        verdict = "**PASS**" if target["passed"] else "**FAIL**"
        notes = "; ".join(target["notes"])
        lines.append(
            f"| {verdict} | {target['description']} | {target['figure']} | "
            f"{target['target']} | {notes} |"
        )
    missed = [target for target in document["targets"] if not target["passed"]]
    if missed:
        lines += ["", "Missed targets, with the measured figure:", ""]
        lines += [
            f"- {target['description']}: {target['figure']}, required {target['target']}."
            for target in missed
        ]
        if ANALYSIS.exists():
            lines += ["", "Profiles of where the time goes: see the last section."]
    lines += ["", *_setup_section(document)]

    renderers = {
        "start_latency": _start_latency_section,
        "polling": _polling_section,
        "throughput": _throughput_section,
        "inflight": _inflight_section,
        "storm": _storm_section,
    }
    for key, render in renderers.items():
        if key in scenarios:
            lines += ["", *render(scenarios[key]), *_load_lines(scenarios[key])]
        elif key in document.get("crashed", {}):
            lines += [
                "",
                f"## {key}",
                "",
                "This scenario crashed:",
                "",
                "```",
                document["crashed"][key],
                "```",
            ]
    if ANALYSIS.exists():
        lines += ["", ANALYSIS.read_text().rstrip()]
    PAGE.write_text("\n".join(lines) + "\n")
    return PAGE


def _setup_section(document: dict[str, Any]) -> list[str]:
    meta = document["meta"]
    machine = meta["machine"]
    lines = [
        "## Setup",
        "",
        f"- Command: `{meta['command']}`",
        *(
            f"- Rerun later and merged: {', '.join(rerun['scenarios'])}, started "
            f"{rerun['started_at']}"
            + (f" on commit {rerun['commit']}" if "commit" in rerun else "")
            + f", `{rerun['command']}`"
            for rerun in meta.get("reruns", [])
        ),
        f"- Machine: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
        f"({machine['physical_cores']} physical), "
        f"{machine['memory_bytes'] / 2**30:.1f} GiB memory, "
        f"{machine['os']}, Linux {machine['kernel']}",
        f"- Python: {machine['python']}; commit {machine['commit']} at the start"
        + (" with uncommitted changes" if machine["uncommitted_changes"] else ""),
        "- Packages: "
        + ", ".join(
            f"{name} {version}" for name, version in machine["packages"].items() if version
        ),
        f"- wrk: {machine['wrk'] or 'not installed (cross-check skipped)'}",
        f"- Load generator: one Python process on trio, keep-alive connections, "
        f"`{meta['http_parser']}` response parser; its CPU use is reported beside each figure.",
        "- Servers: one process each on 127.0.0.1. The product runs `download-jobs serve "
        "--log-level WARNING` (Hypercorn trio worker); FastAPI runs on uvicorn with its defaults "
        "(uvloop and httptools when installed), access log off.",
        "- Server settings in every scenario: RATE_LIMIT_ENABLED=false, MAX_CONCURRENT_JOBS and "
        "MAX_QUEUED_JOBS at twice the scenario's job count (at least 1000), MAX_RETAINED_JOBS at "
        "twice that, SHUTDOWN_GRACE_MS=0, archives of 0-1024 bytes. Each scenario lists its own.",
        "- Features found by probing the product: "
        + (", ".join(meta["features"]["found"]) or "no ETag, no 304, no long poll")
        + ". "
        + " ".join(f"{note}." for note in meta["features"]["notes"]),
        "",
        "Sizes of this run:",
        "",
        "| knob | value |",
        "| --- | --- |",
    ]
    for name, value in meta["sizes"].items():
        lines.append(f"| `--{name.replace('_', '-')}` | {value} |")
    return lines


def _load_lines(result: dict[str, Any]) -> list[str]:
    load = result.get("machine_load")
    if not load:
        return []
    return [
        "",
        f"Measured on commit {result.get('commit', 'unknown')}.",
        "",
        f"Processes outside the benchmark used {load['other_processes_cores']:.2f} cores on "
        f"average during this scenario (1-minute load average {load['load_average_1min']:.1f} at "
        "its end); figures taken while other work ran are noisier and slower."
        + _steal_sentence(load),
    ]


def _steal_sentence(load: dict[str, float]) -> str:
    """Return a sentence on the steal time in ``load``, or nothing if it was not measured."""
    if "stolen_cores" not in load:
        return ""
    return f" Steal took {load['stolen_cores']:.2f} cores on average."


def _non_202_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for key, system in result["systems"].items():
        for number, run in enumerate(system["runs"], 1):
            others = run.get("non_202_responses")
            if others:
                text = ", ".join(f"{name}: {count}" for name, count in others.items())
                lines.append(f"- {key} run {number}, responses other than 202: {text}")
    return [*lines, ""] if lines else []


def _settings_line(settings: dict[str, Any]) -> str:
    return (
        "Server settings: "
        + ", ".join(f"`{name}={value}`" for name, value in settings.items())
        + "."
    )


def _notes(result: dict[str, Any]) -> list[str]:
    return [f"- {note}" for note in result["notes"]]


def _start_latency_section(result: dict[str, Any]) -> list[str]:
    parameters = result["parameters"]
    lines = [
        f"## 1. {result['title']}",
        "",
        f"{parameters['preloaded_jobs']:,} jobs are started first and stay in flight; then "
        f"{parameters['rate_per_second']:g} starts per second, evenly spaced, for "
        f"{parameters['seconds']:g} s. Latency counts from each request's scheduled time.",
        "",
        *table(
            result,
            [
                ("p50 ms", "latency_p50_ms", 2),
                ("p99 ms", "latency_p99_ms", 2),
                ("max ms", "latency_max_ms", 1),
                ("non-202 %", "non_202_percent", 2),
                ("in flight before", "in_flight_before", 0),
                ("server CPU ms/start", "server_cpu_per_start_ms", 2),
                ("server CPU %", "server_cpu_percent", 0),
                ("load gen CPU %", "loadgen_cpu_percent", 0),
                ("preload starts/s", "preload_rate_per_second", 0),
                ("other cores", "other_processes_cores", 2),
                ("stolen cores", "stolen_cores", 2),
            ],
        ),
        "",
        *_non_202_lines(result),
        f"![start latency](img/{chart_start_latency(result)})",
        "",
        _settings_line(result["server_settings"]),
        *_notes(result),
    ]
    return lines


def _polling_section(result: dict[str, Any]) -> list[str]:
    parameters = result["parameters"]
    low, high = parameters["efficiency_delay_ms"]
    steps = ", ".join(f"{count:,}" for count in parameters["staircase_steps"])
    lines = [
        f"## 2. {result['title']}",
        "",
        f"Efficiency: {parameters['efficiency_clients_per_variant']:,} clients per variant, each "
        f"starting one job (delays {low / 1000:g}-{high / 1000:g} s), polling every "
        f"{parameters['poll_interval_seconds']:g} s until done and fetching the result. "
        "The variants "
        "of a round run at the same time, each on its own server, so latencies here share the "
        "machine; each server's CPU is its own.",
        "",
        *table(
            result,
            [
                ("completed", "completed_jobs", 0),
                ("status req/s", "status_requests_per_second", 0),
                ("status req/job", "status_requests_per_job", 1),
                ("304 %", "status_304_percent", 1),
                ("p50 ms", "status_latency_p50_ms", 2),
                ("p99 ms", "status_latency_p99_ms", 1),
                ("server CPU ms/job", "server_cpu_per_job_ms", 2),
                ("long-poll change seen after, p99 ms", "notify_delay_p99_ms", 1),
                ("other cores", "efficiency_other_processes_cores", 2),
                ("stolen cores", "efficiency_stolen_cores", 2),
            ],
            [key for key in result["systems"] if key != FLOOR_LONGPOLL.key],
        ),
        "",
        f"Capacity: clients are added in steps ({steps}), "
        f"{parameters.get('ramp_clients_per_second', 400):g} per second, and keep polling. "
        f"{parameters.get('staircase_settle_seconds', 1):g} s after a step's last arrival, a "
        f"{parameters['staircase_window_seconds']:g} s window "
        f"measures the p99 of immediate status requests (the clients' polls plus "
        f"{parameters['probe_rate_per_second']:g} probe polls per second). The largest step with "
        f"p99 < {parameters['p99_limit_ms']:g} ms and under 1% errors counts.",
        *_longpoll_staircase_text(result),
        "",
        *table(
            result,
            [
                ("largest N with p99 < limit", "largest_clients_p99_ok", 0),
                ("other cores", "other_processes_cores", 2),
                ("stolen cores", "stolen_cores", 2),
            ],
        ),
        "",
        f"![polling staircase](img/{chart_polling(result, parameters['p99_limit_ms'])})",
        "",
        "Staircase steps of each run (clients: p99 ms):",
        "",
    ]
    for key, runs in result.get("staircases", {}).items():
        for number, steps in enumerate(runs, 1):
            text = ", ".join(
                f"{step['clients']:,}: {step['p99_ms']:.1f}{'' if step['passed'] else ' (over)'}"
                for step in steps
            )
            lines.append(f"- {key} run {number}: {text}")
    settings = result["server_settings"]
    lines += [
        "",
        "Efficiency runs. " + _settings_line(settings["efficiency"]),
        "",
        "Staircase runs. " + _settings_line(settings["staircase"]),
        *_notes(result),
    ]
    return lines


def _longpoll_staircase_text(result: dict[str, Any]) -> list[str]:
    """Describe the long-poll staircases' own steps, and the floor's, if the run has them."""
    parameters = result["parameters"]
    floor = FLOOR_LONGPOLL.key in result["systems"]
    floor_text = (
        " The floor holds each poll in a sleeping task and answers 304 when the wait is up, "
        "so its figure is how many open long polls the bare server keeps within the limit."
    )
    if "longpoll_staircase_steps" in parameters:
        counts = ", ".join(f"{count:,}" for count in parameters["longpoll_staircase_steps"])
        text = f"Long-poll clients, the product's and the floor's, climb further: {counts}."
    elif floor and "floor_staircase_steps" in parameters:
        # Results saved when only the floor climbed further.
        counts = ", ".join(f"{count:,}" for count in parameters["floor_staircase_steps"])
        text = f"The floor's long-poll clients climb further: {counts}."
    else:
        return []
    return ["", text + (floor_text if floor else "")]


def _throughput_section(result: dict[str, Any]) -> list[str]:
    parameters = result["parameters"]
    lines = [
        f"## 3. {result['title']}",
        "",
        f"{parameters['connections']} keep-alive connections ask for one job's status back to "
        f"back; the window is {parameters['seconds']:g} s after "
        f"{parameters['warmup_seconds']:g} s of warm-up. wrk: {parameters['wrk']}, same URL and "
        "connection count, right after, on the same server.",
        "",
        *table(
            result,
            [
                ("req/s", "requests_per_second", 0),
                ("p50 ms", "latency_p50_ms", 1),
                ("p99 ms", "latency_p99_ms", 1),
                ("server CPU µs/req", "server_cpu_per_request_us", 0),
                ("server CPU %", "server_cpu_percent", 0),
                ("load gen CPU %", "loadgen_cpu_percent", 0),
                ("wrk req/s", "wrk_requests_per_second", 0),
                ("wrk p99 ms", "wrk_latency_p99_ms", 1),
                ("wrk CPU %", "wrk_cpu_percent", 0),
                ("other cores", "other_processes_cores", 2),
                ("stolen cores", "stolen_cores", 2),
            ],
        ),
        "",
        "The product as a ratio of the baselines (medians):",
        "",
        "| figure | vs floor | vs framework reference | vs FastAPI |",
        "| --- | --- | --- | --- |",
    ]
    for title, name in (
        ("requests/s", "requests_per_second"),
        ("requests/s (wrk)", "wrk_requests_per_second"),
        ("server CPU per request", "server_cpu_per_request_us"),
        ("p99 latency", "latency_p99_ms"),
    ):
        product = _median(result, "product", name)
        ratios = [
            product / _median(result, other, name) for other in ("floor", "framework", "fastapi")
        ]
        lines.append(
            f"| {title} | "
            + " | ".join("n/a" if math.isnan(r) else f"{r:.2f}x" for r in ratios)
            + " |"
        )
    lines += [
        "",
        f"![status throughput](img/{chart_throughput(result)})",
        "",
        _settings_line(result["server_settings"]),
        *_notes(result),
    ]
    return lines


def _inflight_section(result: dict[str, Any]) -> list[str]:
    parameters = result["parameters"]
    servers = [key for key in result["systems"] if not key.startswith("harness")]
    harness = [key for key in result["systems"] if key.startswith("harness")]
    lines = [
        f"## 4. {result['title']}",
        "",
        "Servers: K jobs are started over HTTP with 32 connections; then a "
        f"{parameters['window_seconds']:g} s window with no requests measures idle CPU, and "
        f"another sends {parameters['query_rate_per_second']:g} status requests per second to "
        "random "
        "jobs. Delays are 10-120 s plus the estimated start-up time (K / 400 s), so every job "
        "is still in flight when measured; 'in flight' is read from /metrics (the product) or is "
        "the number started (FastAPI).",
        "",
        *table(
            result,
            [
                ("starts/s", "starts_per_second", 0),
                ("in flight", "in_flight", 0),
                ("RSS idle MiB", "rss_idle_mb", 0),
                ("RSS loaded MiB", "rss_loaded_mb", 0),
                ("bytes/job", "rss_per_job_bytes", 0),
                ("idle CPU %", "idle_cpu_percent", 2),
                ("status p50 ms", "status_p50_ms", 2),
                ("status p99 ms", "status_p99_ms", 2),
                ("other cores", "other_processes_cores", 2),
                ("stolen cores", "stolen_cores", 2),
            ],
            servers,
        ),
        "",
        "Engine harness (`bench/_harness.py`: `engine.Supervisor` in-process, real clock, no "
        "HTTP), delays 10-120 s counted from the end of submission. Lag is how late a task "
        "sleeping 10 ms wakes: 'idle' with no requests, the others while "
        f"{parameters['harness_query_rate_per_second']:g} `JobClient.status` calls per second run. "
        "Progress error is how far reported progress falls outside (exact - step, exact], in "
        "percentage points; progress difference is |exact - reported|, which 5% steps bound "
        "by 5.",
        "",
        *table(
            result,
            [
                ("submits/s", "submit_per_second", 0),
                ("bytes/job", "rss_per_job_bytes", 0),
                ("query p50 ms", "query_p50_ms", 3),
                ("query p99 ms", "query_p99_ms", 3),
                ("idle lag p99 ms", "idle_lag_p99_ms", 2),
                ("lag p99 ms", "lag_p99_ms", 2),
                ("lag max ms", "lag_max_ms", 2),
                ("idle CPU %", "idle_cpu_percent", 2),
                ("progress error max", "progress_error_max_points", 2),
                ("progress diff max", "progress_difference_max_points", 2),
                ("shutdown s", "shutdown_seconds", 1),
                ("other cores", "other_processes_cores", 2),
                ("stolen cores", "stolen_cores", 2),
            ],
            harness,
        ),
        "",
        f"![memory per job](img/{chart_inflight(result)})",
        "",
    ]
    for jobs, settings in result["server_settings"].items():
        lines.append(f"- {int(jobs):,} jobs. " + _settings_line(settings))
    lines += _notes(result)
    return lines


def _storm_section(result: dict[str, Any]) -> list[str]:
    parameters = result["parameters"]
    low, high = parameters["delay_ms"]
    lines = [
        f"## 5. {result['title']}",
        "",
        f"Harness: {parameters['harness_jobs']:,} jobs; HTTP: {parameters['http_jobs']:,} jobs "
        "on the "
        f"product server. Delays {low / 1000:g}-{high / 1000:g} s; half are cancelled at random "
        "moments, a quarter have deadlines shorter than their delay. Lateness is updatedAt - "
        "(createdAt + timeout) of each timed-out job.",
        "",
        *table(
            result,
            [
                ("wrong states", "wrong_terminal_states", 0),
                ("late cancels", "late_cancels", 0),
                ("timed out", "timed_out_jobs", 0),
                ("lateness p50 ms", "lateness_p50_ms", 2),
                ("lateness p99 ms", "lateness_p99_ms", 2),
                ("lateness max ms", "lateness_max_ms", 2),
                ("tasks idle", "tasks_idle", 0),
                ("tasks peak", "tasks_peak", 0),
                ("tasks left behind", "tasks_left_behind", 0),
                ("actors after", "running_actors_after", 0),
                ("other cores", "other_processes_cores", 2),
                ("stolen cores", "stolen_cores", 2),
            ],
        ),
        "",
        f"![storm lateness](img/{chart_storm(result)})",
        "",
        _settings_line(result["server_settings"]),
        *_notes(result),
    ]
    return lines
