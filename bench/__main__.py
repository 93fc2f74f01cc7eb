"""``python -m bench``: the benchmark suite. See bench/README.md.

The full run (the default) writes bench/results/<UTC time>.json and
regenerates docs/benchmarks.md with its charts. ``--quick`` and ``--smoke``
run every scenario at smaller sizes and only print. Every mode prints one
line per scenario and one PASS/FAIL line per target, and exits with status
1 only if a scenario crashed: a missed target is reported, not an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from . import _config
from ._machine import LoadMonitor, command_line, current_commit, describe_machine, other_load
from ._runner import Context, Features, keep_full_collections_out_of_runs, probe_features
from ._targets import evaluate
from .scenarios import inflight, polling, start_latency, storm, throughput

SCENARIOS: dict[str, ModuleType] = {
    module.KEY: module for module in (start_latency, polling, throughput, inflight, storm)
}
COUNT_KNOBS = frozenset(
    {"poll_steps", "poll_longpoll_steps", "inflight_jobs", "inflight_harness_jobs"}
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark download-jobs against three baselines on 127.0.0.1. The full run "
            "(default) takes 20-30 minutes on 2 cores and rewrites docs/benchmarks.md; "
            "--quick takes under 2 minutes and --smoke a few seconds, and both only print."
        ),
        epilog="Scenarios: "
        + ", ".join(f"{key} ({module.TITLE})" for key, module in SCENARIOS.items()),
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick", action="store_true", help="every scenario at a small size, no report"
    )
    mode.add_argument(
        "--smoke", action="store_true", help="a still smaller run, for the test suite"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run (default: all: {','.join(SCENARIOS)})",
    )
    parser.add_argument(
        "--http-parser",
        choices=["fast", "h11"],
        default="fast",
        help="load generator's response parser (default fast; h11 checks the whole protocol "
        "but costs about 40 µs more per request)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        metavar="S",
        help="full run only: before each run, wait up to S seconds for other processes "
        "to use under 0.3 cores (default 30)",
    )
    parser.add_argument(
        "--quiet-wait-budget",
        type=float,
        default=600.0,
        metavar="S",
        help="full run only: maximum seconds spent on those waits in all (default 600)",
    )
    parser.add_argument(
        "--report-from",
        metavar="JSON",
        help="rebuild the targets and docs/benchmarks.md from a saved results file, run nothing",
    )
    parser.add_argument(
        "--merge-into",
        metavar="JSON",
        help="full run only: put this run's scenarios into a saved results file "
        "(replacing them there), then rebuild the targets and docs/benchmarks.md",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="full run only: print the figures, write no JSON, leave docs/benchmarks.md alone",
    )

    groups = {
        "runs": parser.add_argument_group("all scenarios"),
        "start": parser.add_argument_group("scenario 1: start latency"),
        "poll": parser.add_argument_group("scenario 2: polling load"),
        "throughput": parser.add_argument_group("scenario 3: status throughput"),
        "inflight": parser.add_argument_group("scenario 4: jobs in flight"),
        "storm": parser.add_argument_group("scenario 5: cancellation and timeout storm"),
    }
    for field in dataclasses.fields(_config.Sizes):
        prefix = field.name.split("_")[0]
        group = groups["poll" if prefix == "longpoll" else prefix]
        values = {name: getattr(preset, field.name) for name, preset in _config.PRESETS.items()}
        shown = ", ".join(f"{name} {_show(value)}" for name, value in values.items())
        is_counts = field.name in COUNT_KNOBS
        value_type: Any = _config.parse_counts if is_counts else type(values["full"])
        group.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            type=value_type,
            default=None,
            metavar="N,N" if is_counts else "N",
            help=f"{_config.HELP[field.name]} ({shown})",
        )
    return parser


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def raise_open_file_limit() -> None:
    """Allow as many sockets as the hard limit does: 5,000 polling clients need 5,000."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rebuild_report(path: str) -> int:
    """Judge the targets again and rewrite docs/benchmarks.md from a saved results file."""
    import json

    from ._report import write_page

    document = json.loads(Path(path).read_text())
    saved = document["meta"]["sizes"]
    # A file saved before a knob existed gets the full preset's value for it.
    sizes = _config.Sizes(
        **{
            field.name: (
                _parse_saved(field.name, saved[field.name])
                if field.name in saved
                else getattr(_config.FULL, field.name)
            )
            for field in dataclasses.fields(_config.Sizes)
        }
    )
    targets = evaluate(document["scenarios"], sizes)
    document["targets"] = [target.as_dict() for target in targets]
    Path(path).write_text(json.dumps(document, indent=1) + "\n")
    for target in targets:
        print(target.line())
    print(f"bench: report in {write_page(document)}")
    return 0


def merge_into(
    path: str, results: dict[str, Any], crashed: dict[str, str], started_at: datetime, wall: float
) -> int:
    """Replace the rerun scenarios in a saved results file, then rebuild its report."""
    import json

    document = json.loads(Path(path).read_text())
    document["scenarios"].update(results)
    for key in results:
        document["crashed"].pop(key, None)
    document["crashed"].update(crashed)
    # A rerun entry says where figures in the file came from, so earlier
    # reruns whose scenarios this run replaces are dropped.
    document["meta"]["reruns"] = [
        rerun
        for rerun in document["meta"].get("reruns", [])
        if not set(rerun["scenarios"]) <= set(results)
    ]
    document["meta"]["reruns"].append(
        {
            "scenarios": sorted(results),
            "command": command_line(),
            "started_at": started_at.isoformat(timespec="seconds"),
            # What the servers ran: each scenario notes the commit at its start.
            "commit": ", ".join(sorted({str(result.get("commit")) for result in results.values()})),
            "wall_seconds": wall,
        }
    )
    Path(path).write_text(json.dumps(document, indent=1) + "\n")
    print(f"bench: merged {', '.join(sorted(results))} into {path}", flush=True)
    rebuild_report(path)
    return 1 if crashed else 0


def _parse_saved(name: str, text: str) -> Any:
    if name in COUNT_KNOBS:
        return _config.parse_counts(text)
    preset_value = getattr(_config.FULL, name)
    return type(preset_value)(float(text)) if isinstance(preset_value, int) else float(text)


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.report_from:
        return rebuild_report(arguments.report_from)
    mode = "full"
    if arguments.smoke:
        mode = "smoke"
    elif arguments.quick:
        mode = "quick"
    knobs = {
        field.name: getattr(arguments, field.name) for field in dataclasses.fields(_config.Sizes)
    }
    sizes = _config.sizes_with(_config.PRESETS[mode], knobs)
    selected = [key.strip() for key in arguments.scenarios.split(",") if key.strip()]
    unknown = [key for key in selected if key not in SCENARIOS]
    if unknown:
        echo(f"bench: unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
        return 2

    raise_open_file_limit()
    keep_full_collections_out_of_runs()
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    echo(f"bench: {mode} run of {', '.join(selected)}, {sizes.runs} run(s) per figure")
    machine = describe_machine()
    crashed: dict[str, str] = {}
    try:
        features = probe_features(arguments.http_parser, echo)
    except Exception:
        crashed["feature_probe"] = traceback.format_exc()
        features = Features(notes=["the feature probe crashed"])
        print("scenario feature_probe: CRASHED")
    monitor = LoadMonitor()
    monitor.start()
    context = Context(sizes, arguments.http_parser, features, shutil.which("wrk"), echo, monitor)
    if mode == "full":
        context.quiet_wait_per_run = arguments.quiet_wait
        context.quiet_wait_budget = arguments.quiet_wait_budget
    run_reading = monitor.reading()
    results: dict[str, Any] = {}
    for key in selected:
        scenario_started = time.perf_counter()
        reading = monitor.reading()
        # The servers import the work tree afresh, so record what they ran.
        commit = current_commit()
        try:
            results[key] = SCENARIOS[key].run(context)
            results[key]["commit"] = commit
            results[key]["machine_load"] = other_load(reading, monitor.reading())
        except Exception:
            crashed[key] = traceback.format_exc()
            echo(crashed[key])
            print(
                f"scenario {key}: CRASHED after {time.perf_counter() - scenario_started:.0f} s",
                flush=True,
            )
            continue
        print(f"scenario {key}: ok in {time.perf_counter() - scenario_started:.0f} s", flush=True)

    run_load = other_load(run_reading, monitor.reading())
    monitor.stop()
    targets = evaluate(results, sizes)
    for target in targets:
        print(target.line(), flush=True)
    wall = time.perf_counter() - started
    print(
        f"bench: {mode} run took {wall:.0f} s; other processes used "
        f"{run_load['other_processes_cores']:.2f} cores and steal "
        f"{run_load['stolen_cores']:.2f} cores on average",
        flush=True,
    )

    if mode == "full" and arguments.merge_into:
        return merge_into(arguments.merge_into, results, crashed, started_at, wall)
    if mode == "full" and not arguments.no_report:
        from ._report import write_page, write_results

        document = {
            "meta": {
                "command": command_line(),
                "mode": mode,
                "started_at": started_at.isoformat(timespec="seconds"),
                "started_at_compact": started_at.strftime("%Y%m%dT%H%M%SZ"),
                "wall_seconds": wall,
                "machine_load": run_load,
                "quiet_waited_seconds": context.quiet_waited,
                "http_parser": arguments.http_parser,
                "machine": machine,
                "sizes": {name: _show(value) for name, value in dataclasses.asdict(sizes).items()},
                "features": {
                    "found": [
                        name
                        for name, present in (
                            ("ETag", features.etag),
                            ("If-None-Match/304", features.conditional),
                            ("long poll ?wait=N", features.longpoll),
                        )
                        if present
                    ],
                    "notes": features.notes,
                },
            },
            "scenarios": results,
            "targets": [target.as_dict() for target in targets],
            "crashed": crashed,
        }
        print(f"bench: results in {write_results(document)}", flush=True)
        print(f"bench: report in {write_page(document)}", flush=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
