"""Bench-only: where a server spends its time under status load and arriving clients, by py-spy.

Run ``python -m bench._profile`` (about a minute). Each server starts on
127.0.0.1, and ``py-spy record`` samples it under one of two loads:

- ``docs/profiles/status-<system>.txt``: ``wrk`` loads one status URL (one
  thread, 50 connections), for the product and for the framework reference
  (the minimal Quart-Trio route).
- ``docs/profiles/arrivals-product.txt``: long-poll clients arrive as in a
  step of the polling staircase (``RAMP_CLIENTS_PER_SECOND``). Each opens a
  connection, starts a job, reads its status and sends a long poll.

Each summary contains:

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
import threading
import time
from pathlib import Path

import trio

from ._config import FULL
from ._runner import Context, Features
from ._servers import FRAMEWORK, PRODUCT, REPO, System, product_settings, running_server
from .baselines._document import JOB_ID
from .scenarios.polling import RAMP_CLIENTS_PER_SECOND, PollRecord, Variant, poll_client
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


def render(title: str, summary: tuple[dict[str, int], dict[str, int], int]) -> str:
    """Return the summary as text under ``title``, which names the server and the load."""
    by_layer, by_function, total = summary
    lines = [
        f"py-spy profile of {title},",
        f"{SAMPLES_PER_SECOND} samples/s, {total} samples.",
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


def record(py_spy: str, pid: int, seconds: float, raw: Path) -> None:
    """Sample process ``pid`` for ``seconds`` into ``raw``, as collapsed stacks."""
    subprocess.run(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
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


def profile_status(system: System, seconds: float, wrk: str, py_spy: str) -> str:
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
                record(py_spy, server.process.pid, seconds, raw)
            finally:
                load.wait(timeout=seconds + 30)
            title = (
                f"{system.label} under wrk -t1 -c{CONNECTIONS} for {seconds:g} s on one status URL"
            )
            return render(title, summarize(raw))


def profile_arrivals(seconds: float, py_spy: str) -> str:
    """Profile the product while long-poll clients arrive for ``seconds``, as in the staircase."""
    # The jobs outlast the profile, so no client finishes or fetches a result.
    delay_ms = str(int((seconds + 120) * 1000))
    settings = product_settings(
        int(seconds * RAMP_CLIENTS_PER_SECOND),
        DOWNLOAD_DELAY_MIN_MS=delay_ms,
        DOWNLOAD_DELAY_MAX_MS=delay_ms,
        JOB_TIMEOUT_MS=str(int(delay_ms) + 60_000),
    )
    with running_server(PRODUCT, settings) as server:
        load = threading.Thread(target=trio.run, args=(_arrive, server.port, seconds + 1.0))
        load.start()
        try:
            # Skip the first half second, while the first connections open.
            time.sleep(0.5)
            with tempfile.TemporaryDirectory(prefix="bench-profile-") as folder:
                raw = Path(folder) / "stacks.txt"
                record(py_spy, server.process.pid, seconds, raw)
                summary = summarize(raw)
        finally:
            load.join(timeout=seconds + 30)
    title = (
        f"{PRODUCT.label} for {seconds:g} s while long-poll clients arrive, "
        f"{RAMP_CLIENTS_PER_SECOND:g} per second, each opening a connection, starting a job, "
        "reading its status and sending a long poll"
    )
    return render(title, summary)


async def _arrive(port: int, seconds: float) -> None:
    """Run the polling staircase's long-poll clients, arriving for ``seconds``, then stop them."""
    features = Features(etag=True, conditional=True, longpoll=True, longpoll_uses_etag=True)
    context = Context(FULL, "fast", features, None, print)
    variant = Variant(PRODUCT, "longpoll")
    poll_record = PollRecord()
    stop = trio.Event()
    begin = trio.current_time()
    end = begin + seconds
    async with trio.open_nursery() as nursery:
        for index in range(int(seconds * RAMP_CLIENTS_PER_SECOND)):
            arrival = begin + index / RAMP_CLIENTS_PER_SECOND
            nursery.start_soon(
                poll_client, variant, port, context, poll_record, 10_000 + index, arrival, end, stop
            )
        await trio.sleep_until(end)
        stop.set()
        nursery.cancel_scope.cancel()


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
    profiles = {
        f"status-{system.key}.txt": profile_status(system, arguments.seconds, wrk, py_spy)
        for system in (PRODUCT, FRAMEWORK)
    }
    profiles["arrivals-product.txt"] = profile_arrivals(arguments.seconds, py_spy)
    for name, text in profiles.items():
        target = PROFILES / name
        target.write_text(text)
        print(f"wrote {target.relative_to(REPO)}")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
