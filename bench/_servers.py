"""Starting, metering and stopping the servers under test, each a subprocess on 127.0.0.1.

Every server gets a free port, its own results folder and its own log file,
and is started fresh for each run so no run inherits another's state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
LOG_TAIL_CHARACTERS = 3000

# Variables the product reads (engine and HTTP settings). Inherited values are
# dropped, so only the settings a scenario passes reach a server.
_PRODUCT_PREFIXES = ("DOWNLOAD_", "MAX_", "JOB_", "RETRY_", "SHUTDOWN_", "RATE_LIMIT")
_PRODUCT_VARIABLES = frozenset(
    {"ACCESS_LOG", "KEEP_ALIVE_TIMEOUT_MS", "PROGRESS_STEP_PERCENT", "RESULTS_DIR"}
)
_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})


@dataclasses.dataclass(frozen=True)
class System:
    """A server the suite measures: the product or one of the baselines."""

    key: str
    label: str
    # Arguments after ``python -m``; the port is appended as ``--port N``.
    arguments: tuple[str, ...]


PRODUCT = System(
    "product",
    "download-jobs",
    ("download_jobs", "serve", "--host", "127.0.0.1", "--log-level", "WARNING"),
)
FLOOR = System("floor", "floor: bare ASGI on Hypercorn (trio)", ("bench.baselines.floor_asgi",))
FRAMEWORK = System(
    "framework", "framework reference: Quart-Trio route", ("bench.baselines.quart_minimal",)
)
FASTAPI = System(
    "fastapi", "usual alternative: FastAPI on uvicorn", ("bench.baselines.fastapi_jobs",)
)
SYSTEMS = {system.key: system for system in (PRODUCT, FLOOR, FRAMEWORK, FASTAPI)}


class ServerFailed(RuntimeError):
    """A server exited early or did not respond in time. The message ends with its log."""


def free_port() -> int:
    """Return a port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def child_environment(settings: Mapping[str, str]) -> dict[str, str]:
    """Return this environment without product and proxy variables, plus ``settings``."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_PRODUCT_PREFIXES)
        and name not in _PRODUCT_VARIABLES
        and name.lower() not in _PROXY_VARIABLES
    }
    environment["NO_PROXY"] = "127.0.0.1,localhost"
    environment.update(settings)
    return environment


class ServerProcess:
    """A running server: its port, its process for CPU and memory figures, and its log."""

    def __init__(self, system: System, settings: Mapping[str, str]) -> None:
        self.system = system
        self.settings = dict(settings)
        self.port = free_port()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"bench-{system.key}-"))
        self.log_path = self._workdir / "server.log"
        results = self._workdir / "results"
        results.mkdir()
        environment = child_environment({**self.settings, "RESULTS_DIR": str(results)})
        argv = [sys.executable, "-m", *system.arguments, "--port", str(self.port)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=REPO,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.meter = psutil.Process(self.process.pid)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARACTERS:]
        except OSError:
            return ""

    def wait_until_ready(self) -> None:
        """Block until the server responds to HTTP; raise ``ServerFailed`` if it does not."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"{self.system.label} exited with status {self.process.returncode} "
                    f"before it responded; log:\n{self.log_tail()}"
                )
            if _answers_http(self.port):
                return
            time.sleep(0.02)
        raise ServerFailed(
            f"{self.system.label} did not respond within {READY_TIMEOUT_SECONDS:g} s; "
            f"log:\n{self.log_tail()}"
        )

    def cpu_seconds(self) -> float:
        """Return user plus system CPU seconds the server has used so far."""
        times = self.meter.cpu_times()
        return float(times.user + times.system)

    def rss_bytes(self) -> int:
        return int(self.meter.memory_info().rss)

    def stop(self) -> int | None:
        """Stop the server (SIGTERM, SIGTERM again, then SIGKILL); return its exit status."""
        try:
            for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
                if self.process.poll() is not None:
                    break
                self.process.send_signal(signum)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(STOP_TIMEOUT_SECONDS / 3)
            return self.process.wait(STOP_TIMEOUT_SECONDS)
        finally:
            shutil.rmtree(self._workdir, ignore_errors=True)


def _answers_http(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            return connection.recv(16).startswith(b"HTTP/1.")
    except OSError:
        return False


@contextlib.contextmanager
def running_server(system: System, settings: Mapping[str, str]) -> Iterator[ServerProcess]:
    """Start ``system`` with ``settings`` (environment variables), wait, and stop it after."""
    server = ServerProcess(system, settings)
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


def product_settings(capacity: int, **overrides: str) -> dict[str, str]:
    """Return server settings with every capacity cap above ``capacity`` jobs.

    Rate limiting is off, shutdown does not wait for processing jobs, and
    archives are tiny, unless ``overrides`` sets other values. The baselines read
    the delay and size variables too and ignore the rest.
    """
    cap = str(max(2 * capacity, 1000))
    settings = {
        "RATE_LIMIT_ENABLED": "false",
        "MAX_CONCURRENT_JOBS": cap,
        "MAX_QUEUED_JOBS": cap,
        "MAX_RETAINED_JOBS": str(2 * int(cap)),
        "MAX_TOMBSTONES": cap,
        "SHUTDOWN_GRACE_MS": "0",
        "DOWNLOAD_SIZE_MIN_BYTES": "0",
        "DOWNLOAD_SIZE_MAX_BYTES": "1024",
    }
    settings.update(overrides)
    return settings


class SelfMeter:
    """CPU seconds of the load generator (this process) and of helper processes it ran."""

    def __init__(self) -> None:
        self._process = psutil.Process()

    def cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)
