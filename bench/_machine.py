"""Facts about the machine, the interpreter and the packages that every report states."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from ._servers import REPO

PACKAGES = (
    "trio",
    "quart",
    "quart-trio",
    "hypercorn",
    "werkzeug",
    "h11",
    "httpx",
    "pydantic",
    "prometheus-client",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "psutil",
    "matplotlib",
)


def describe_machine() -> dict[str, Any]:
    """Return CPU model, core counts, memory, OS, Python and package versions, and the commit."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
        "os": _os_name(),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": {name: _version(name) for name in PACKAGES},
        "wrk": _wrk_version(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _wrk_version() -> str | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    completed = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    lines = (completed.stdout or completed.stderr).strip().splitlines()
    return lines[0] if lines else "unknown version"


def _git(*arguments: str) -> str:
    try:
        completed = subprocess.run(
            ["git", *arguments], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return ""
    return completed.stdout.strip()


def current_commit() -> str:
    """Return the short commit of the work tree, noting uncommitted changes to tracked files."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += " with uncommitted changes"
    return commit


def command_line() -> str:
    """Return the command that started this run, as a user would type it."""
    return " ".join(["python -m bench", *sys.argv[1:]])


# Seconds over which ``LoadMonitor.wait_until_quiet`` averages each check.
QUIET_SAMPLE_SECONDS = 1.0


class LoadReading(NamedTuple):
    """Cumulative CPU counters at one moment, all in seconds."""

    monotonic: float
    # CPU time that any process on the machine ran, steal excluded.
    busy: float
    # CPU time of the benchmark's own processes.
    ours: float
    # Steal time: CPU time the hypervisor gave to other virtual machines
    # while this one had work to run.
    steal: float


class LoadMonitor:
    """CPU used by processes outside this benchmark, sampled every ``interval`` seconds in a thread.

    Machine-wide busy and steal time come from /proc/stat (through psutil).
    The benchmark's own share is this process and its descendants (servers,
    harness, wrk). A descendant's CPU since its last sample is lost when it
    exits, so "other" can overstate other processes' use by a little.
    """

    def __init__(self, interval: float = 1.0) -> None:
        import threading

        self._interval = interval
        self._self = psutil.Process()
        self._last: dict[int, float] = {}
        self._ours = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="load-monitor", daemon=True)

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def reading(self) -> LoadReading:
        """Return the CPU counters so far."""
        self._sample()
        busy, steal = _machine_seconds()
        with self._lock:
            return LoadReading(time.monotonic(), busy, self._ours, steal)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def _sample(self) -> None:
        processes = [self._self]
        with contextlib.suppress(psutil.Error):
            processes += self._self.children(recursive=True)
        with self._lock:
            for process in processes:
                try:
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                total = float(times.user + times.system)
                previous = self._last.get(process.pid)
                if previous is not None and total >= previous:
                    self._ours += total - previous
                elif previous is None and process is not self._self:
                    self._ours += total
                self._last[process.pid] = total

    def wait_until_quiet(self, threshold_cores: float, max_seconds: float) -> float:
        """Wait until processes outside the benchmark use under ``threshold_cores``.

        Each check averages over ``QUIET_SAMPLE_SECONDS``. Returns the seconds
        waited, at most about ``max_seconds``; the caller goes on either way.
        """
        started = time.monotonic()
        while True:
            before = self.reading()
            time.sleep(QUIET_SAMPLE_SECONDS)
            others = other_load(before, self.reading())["other_processes_cores"]
            waited = time.monotonic() - started
            if others < threshold_cores or waited >= max_seconds:
                return waited


def _machine_seconds() -> tuple[float, float]:
    """Return the machine's busy CPU seconds, steal excluded, and its steal seconds, since boot.

    Linux counts guest time inside user time, so it is subtracted once.
    Steal is 0 where the system does not report it.
    """
    times = psutil.cpu_times()
    steal = getattr(times, "steal", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    guests = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return float(sum(times) - idle - guests - steal), float(steal)


def other_load(start: LoadReading, end: LoadReading) -> dict[str, float]:
    """Return the cores that other processes used, and that steal took, on average between readings.

    ``stolen_cores`` is the CPU that the hypervisor gave to other virtual
    machines while this one had work to run. It slows whichever system is
    running, and adds to its latencies.
    """
    wall = end.monotonic - start.monotonic
    others = (end.busy - start.busy) - (end.ours - start.ours)
    stolen = end.steal - start.steal
    return {
        "other_processes_cores": max(others, 0.0) / wall if wall > 0 else math.nan,
        "stolen_cores": max(stolen, 0.0) / wall if wall > 0 else math.nan,
        "load_average_1min": os.getloadavg()[0],
    }
