"""Bench-only: where a server spends its time under closed-loop status load, by py-spy.

Run ``python -m bench._profile`` (about a minute). It profiles the product
and the framework reference (the minimal Quart-Trio route) in turn. Each
server starts on 127.0.0.1, and ``wrk`` loads one status URL (one thread,
50 connections) while ``py-spy record`` samples the server. The summary
goes to ``docs/profiles/status-<system>.txt``:

- the share of samples in each layer (Hypercorn and h11, Quart and
  Werkzeug, quart-schema, trio, the product's ``http_api`` and ``engine``),
  counted by the innermost frame that belongs to a known layer;
- the functions with the most samples of their own, lines merged.

It needs ``wrk`` on the PATH and ``py-spy``, which comes with the bench
extra. Sampling another process may need ptrace permission.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from ._servers import FRAMEWORK, PRODUCT, REPO, System, product_settings, running_server
from .baselines._document import JOB_ID
from .scenarios.throughput import start_one_job

PROFILES = REPO / "docs" / "profiles"
CONNECTIONS = 50
SAMPLES_PER_SECOND = 250
TOP_FUNCTIONS = 25

# Layers by the start of the file path that py-spy prints, checked in order.
LAYERS = (
    ("http_api (product)", ("http_api/",)),
    ("engine (product)", ("engine/",)),
    ("bench baseline route", ("bench/",)),
    ("quart-schema", ("quart_schema/",)),
    ("quart and quart-trio", ("quart/", "quart_trio/")),
    ("werkzeug", ("werkzeug/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("hypercorn", ("hypercorn/",)),
    ("h11", ("h11/",)),
    ("trio", ("trio/",)),
)


def split_frame(frame: str) -> tuple[str, str]:
    """Split py-spy's ``function (path:line)`` into the function with its path, and the path."""
    function, _, location = frame.rpartition(" (")
    path = location.rstrip(")").rsplit(":", 1)[0]
    return f"{function} ({path})", path


def layer_of(frame: str) -> str | None:
    _, path = split_frame(frame)
    for name, prefixes in LAYERS:
        if path.startswith(prefixes):
            return name
    return None


def summarize(raw: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """Return samples per layer, per own function and in all, from py-spy's collapsed stacks.

    A sample counts for the layer of its innermost frame that has one, and
    for the innermost frame's function (all its lines together) as own time.
    """
    by_layer: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        by_function[split_frame(frames[-1])[0]] += count
        layer = next(
            (found for found in map(layer_of, reversed(frames)) if found), "other (stdlib)"
        )
        by_layer[layer] += count
    return dict(by_layer), dict(by_function), total


def render(
    system: System, seconds: float, summary: tuple[dict[str, int], dict[str, int], int]
) -> str:
    by_layer, by_function, total = summary
    lines = [
        f"py-spy profile of {system.label} under wrk -t1 -c{CONNECTIONS} for {seconds:g} s",
        f"on one status URL, {SAMPLES_PER_SECOND} samples/s, {total} samples.",
        "",
        "Samples by layer (innermost frame of a known layer):",
    ]
    for name, count in sorted(by_layer.items(), key=lambda item: -item[1]):
        lines.append(f"  {count / total * 100:5.1f}%  {name}")
    lines += ["", f"Top {TOP_FUNCTIONS} functions by own samples:"]
    ranked = sorted(by_function.items(), key=lambda item: -item[1])[:TOP_FUNCTIONS]
    for frame, count in ranked:
        lines.append(f"  {count / total * 100:5.1f}%  {frame}")
    return "\n".join(lines) + "\n"


def profile(system: System, seconds: float, wrk: str, py_spy: str) -> str:
    with running_server(system, product_settings(1000)) as server:
        if system is PRODUCT:
            path = trio.run(start_one_job, server.port, "fast")
        else:
            path = f"/v1/download/status/{JOB_ID}"
        with tempfile.TemporaryDirectory(prefix="bench-profile-") as folder:
            raw = Path(folder) / "stacks.txt"
            load = subprocess.Popen(
                [
                    wrk,
                    "-t1",
                    f"-c{CONNECTIONS}",
                    f"-d{seconds + 2:g}s",
                    f"http://127.0.0.1:{server.port}{path}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                subprocess.run(
                    [
                        py_spy,
                        "record",
                        "--pid",
                        str(server.process.pid),
                        "--duration",
                        f"{seconds:g}",
                        "--rate",
                        str(SAMPLES_PER_SECOND),
                        "--format",
                        "raw",
                        "--output",
                        str(raw),
                        "--nonblocking",
                    ],
                    check=True,
                    capture_output=True,
                    timeout=seconds + 60,
                )
            finally:
                load.wait(timeout=seconds + 30)
            return render(system, seconds, summarize(raw))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench._profile", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="seconds of sampling per server"
    )
    arguments = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    # py-spy comes with the bench extra, next to this interpreter.
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if wrk is None or py_spy is None:
        print(
            "bench._profile needs wrk and py-spy; install wrk and the bench extra", file=sys.stderr
        )
        return 2
    PROFILES.mkdir(parents=True, exist_ok=True)
    for system in (PRODUCT, FRAMEWORK):
        text = profile(system, arguments.seconds, wrk, py_spy)
        target = PROFILES / f"status-{system.key}.txt"
        target.write_text(text)
        print(f"wrote {target.relative_to(REPO)}")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
