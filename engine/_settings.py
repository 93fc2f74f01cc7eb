"""Engine settings and the environment parsing shared with the HTTP layer.

Every setting is validated when it is read, so a bad value stops the server
at start-up with one line naming the variable, never halfway through a job.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

from ._errors import SettingsError

# An optional sign and up to 20 ASCII digits, optionally grouped with single
# underscores as in Python ("1_000"). str.isdigit() alone would accept "²".
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9](?:_?[0-9]){0,19}")
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})

# Content sizes stay below 1 GiB so that archives never need ZIP64 records
# (Python's zipfile switches to them near 2 GiB).
MAX_CONTENT_BYTES = 1 << 30
AVAILABILITY_MODES = ("all", "multiple-of-7")

# 100,000,000 ms is about 28 hours: far above any real delay or deadline, and
# low enough that a mistyped value is caught instead of overflowing a timer.
MAX_MILLISECONDS = 100_000_000


def read_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """Read a boolean variable: 1/true/yes/on or 0/false/no/off, in any case."""
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise SettingsError(name, raw, "one of true/false, yes/no, on/off, 1/0")


def read_int(
    environ: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int,
    maximum: int,
    unit: str = "",
) -> int:
    """Read a whole number within ``[minimum, maximum]``; ``unit`` names it in errors."""
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    expected = f"a whole number{' of ' + unit if unit else ''} from {minimum} to {maximum}"
    text = raw.strip()
    if _WHOLE_NUMBER.fullmatch(text) is None:
        raise SettingsError(name, raw, expected)
    value = int(text)
    if not minimum <= value <= maximum:
        raise SettingsError(name, raw, expected)
    return value


def read_fraction(environ: Mapping[str, str], name: str, default: float) -> float:
    """Read a decimal number from 0 to 1, such as a probability."""
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise SettingsError(name, raw, "a decimal number from 0 to 1")
    return value


def read_optional_int(
    environ: Mapping[str, str], name: str, *, minimum: int, maximum: int
) -> int | None:
    """Read a whole number like ``read_int``; an unset or empty variable gives None."""
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    return read_int(environ, name, 0, minimum=minimum, maximum=maximum)


@dataclasses.dataclass(frozen=True, slots=True)
class EngineSettings:
    """Settings of the supervisor and the simulated source.

    Field names match the environment variables read by ``from_environ``.
    """

    # Simulated preparation time, drawn uniformly per job (milliseconds).
    download_delay_enabled: bool = True
    download_delay_min_ms: int = 10_000
    download_delay_max_ms: int = 120_000
    # Size of the pseudo-random content inside each archive (bytes). The archive
    # adds about 150 bytes of ZIP headers. The defaults keep a burst of
    # thousands of results within a few GiB of disk; load tests raise them.
    download_size_min_bytes: int = 64 * 1024
    download_size_max_bytes: int = 1024 * 1024
    # Which file ids exist: "all" ids in range, or "multiple-of-7" only, like
    # the mock storage of the original Delineate service.
    download_availability: str = "all"
    # Seed of the random draws (delays); None draws a fresh seed per process.
    download_random_seed: int | None = None
    # Probability (0.0-1.0) that one attempt of a simulated download fails
    # transiently, at a uniformly drawn point of its delay.
    download_failure_rate: float = 0.0
    # Processing slots: jobs beyond this many wait queued, in FIFO order. A
    # processing simulated job is one sleeping task and a few small objects,
    # and at 10,000 of them with the default delays about 150 jobs finish per
    # second, whose archives take roughly a quarter of one core to generate.
    max_concurrent_jobs: int = 10_000
    # Files of one bulk job fetched at once, inside the job's one processing slot.
    bulk_max_concurrent_files: int = 8
    # Jobs that may wait queued; further starts are rejected until room frees.
    max_queued_jobs: int = 100_000
    # Jobs kept in the table, finished ones included. The oldest finished jobs
    # are evicted first to make room; jobs in flight never are.
    max_retained_jobs: int = 200_000
    # Ids of removed jobs remembered, so requests for them get "expired" (410), not 404.
    max_tombstones: int = 100_000
    # Maximum time from a job's submission to its end, queue time included.
    job_timeout_ms: int = 300_000
    # How long a finished job and its result are kept.
    job_ttl_ms: int = 3_600_000
    # Attempts per job in all, the first included; only transient failures retry.
    job_max_attempts: int = 3
    # Backoff before retry n is drawn uniformly from
    # [0, min(cap, base * 2 ** (n - 1))] ("full jitter").
    retry_backoff_base_ms: int = 1_000
    retry_backoff_cap_ms: int = 30_000
    # On shutdown, how long processing jobs may run on before they are cancelled.
    shutdown_grace_ms: int = 20_000
    # Snapshots report progress in steps of this many percent.
    progress_step_percent: int = 5
    # Where results are written; None makes a temporary folder per process.
    results_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.max_retained_jobs < self.max_concurrent_jobs:
            raise SettingsError(
                "MAX_RETAINED_JOBS",
                str(self.max_retained_jobs),
                f"a value no smaller than MAX_CONCURRENT_JOBS ({self.max_concurrent_jobs})",
            )
        if self.download_availability not in AVAILABILITY_MODES:
            raise SettingsError(
                "DOWNLOAD_AVAILABILITY",
                self.download_availability,
                f"one of {', '.join(AVAILABILITY_MODES)}",
            )
        if self.download_delay_min_ms > self.download_delay_max_ms:
            raise SettingsError(
                "DOWNLOAD_DELAY_MIN_MS",
                str(self.download_delay_min_ms),
                f"a value no greater than DOWNLOAD_DELAY_MAX_MS ({self.download_delay_max_ms})",
            )
        if self.download_size_min_bytes > self.download_size_max_bytes:
            raise SettingsError(
                "DOWNLOAD_SIZE_MIN_BYTES",
                str(self.download_size_min_bytes),
                f"a value no greater than DOWNLOAD_SIZE_MAX_BYTES ({self.download_size_max_bytes})",
            )

    @property
    def job_timeout(self) -> float:
        return self.job_timeout_ms / 1000

    @property
    def job_ttl(self) -> float:
        return self.job_ttl_ms / 1000

    @property
    def shutdown_grace(self) -> float:
        return self.shutdown_grace_ms / 1000

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> EngineSettings:
        """Build settings from environment variables, using the defaults for unset ones.

        Raises ``SettingsError`` naming the first invalid variable.
        """
        defaults = cls()
        results_dir = environ.get("RESULTS_DIR", "").strip()
        return cls(
            download_delay_enabled=read_bool(
                environ, "DOWNLOAD_DELAY_ENABLED", defaults.download_delay_enabled
            ),
            download_delay_min_ms=read_int(
                environ,
                "DOWNLOAD_DELAY_MIN_MS",
                defaults.download_delay_min_ms,
                minimum=0,
                maximum=MAX_MILLISECONDS,
                unit="milliseconds",
            ),
            download_delay_max_ms=read_int(
                environ,
                "DOWNLOAD_DELAY_MAX_MS",
                defaults.download_delay_max_ms,
                minimum=0,
                maximum=MAX_MILLISECONDS,
                unit="milliseconds",
            ),
            download_size_min_bytes=read_int(
                environ,
                "DOWNLOAD_SIZE_MIN_BYTES",
                defaults.download_size_min_bytes,
                minimum=0,
                maximum=MAX_CONTENT_BYTES,
                unit="bytes",
            ),
            download_size_max_bytes=read_int(
                environ,
                "DOWNLOAD_SIZE_MAX_BYTES",
                defaults.download_size_max_bytes,
                minimum=0,
                maximum=MAX_CONTENT_BYTES,
                unit="bytes",
            ),
            download_availability=environ.get(
                "DOWNLOAD_AVAILABILITY", defaults.download_availability
            ).strip()
            or defaults.download_availability,
            download_random_seed=read_optional_int(
                environ, "DOWNLOAD_RANDOM_SEED", minimum=0, maximum=2**63 - 1
            ),
            download_failure_rate=read_fraction(
                environ, "DOWNLOAD_FAILURE_RATE", defaults.download_failure_rate
            ),
            bulk_max_concurrent_files=read_int(
                environ,
                "BULK_MAX_CONCURRENT_FILES",
                defaults.bulk_max_concurrent_files,
                minimum=1,
                maximum=1000,
                unit="files",
            ),
            max_queued_jobs=read_int(
                environ,
                "MAX_QUEUED_JOBS",
                defaults.max_queued_jobs,
                minimum=0,
                maximum=10_000_000,
                unit="jobs",
            ),
            max_retained_jobs=read_int(
                environ,
                "MAX_RETAINED_JOBS",
                defaults.max_retained_jobs,
                minimum=1,
                maximum=10_000_000,
                unit="jobs",
            ),
            max_tombstones=read_int(
                environ,
                "MAX_TOMBSTONES",
                defaults.max_tombstones,
                minimum=0,
                maximum=10_000_000,
                unit="job ids",
            ),
            job_timeout_ms=read_int(
                environ,
                "JOB_TIMEOUT_MS",
                defaults.job_timeout_ms,
                minimum=1,
                maximum=MAX_MILLISECONDS,
                unit="milliseconds",
            ),
            job_ttl_ms=read_int(
                environ,
                "JOB_TTL_MS",
                defaults.job_ttl_ms,
                minimum=0,
                maximum=MAX_MILLISECONDS,
                unit="milliseconds",
            ),
            job_max_attempts=read_int(
                environ,
                "JOB_MAX_ATTEMPTS",
                defaults.job_max_attempts,
                minimum=1,
                maximum=100,
                unit="attempts",
            ),
            retry_backoff_base_ms=read_int(
                environ,
                "RETRY_BACKOFF_BASE_MS",
                defaults.retry_backoff_base_ms,
                minimum=0,
                maximum=MAX_MILLISECONDS,
                unit="milliseconds",
            ),
            retry_backoff_cap_ms=read_int(
                environ,
                "RETRY_BACKOFF_CAP_MS",
                defaults.retry_backoff_cap_ms,
                minimum=0,
                maximum=MAX_MILLISECONDS,
                unit="milliseconds",
            ),
            shutdown_grace_ms=read_int(
                environ,
                "SHUTDOWN_GRACE_MS",
                defaults.shutdown_grace_ms,
                minimum=0,
                maximum=MAX_MILLISECONDS,
                unit="milliseconds",
            ),
            max_concurrent_jobs=read_int(
                environ,
                "MAX_CONCURRENT_JOBS",
                defaults.max_concurrent_jobs,
                minimum=1,
                maximum=10_000_000,
                unit="jobs",
            ),
            progress_step_percent=read_int(
                environ,
                "PROGRESS_STEP_PERCENT",
                defaults.progress_step_percent,
                minimum=1,
                maximum=50,
                unit="percent",
            ),
            results_dir=_check_results_dir(results_dir) if results_dir else None,
        )


def _check_results_dir(raw: str) -> Path:
    """Create the folder if needed and make sure results can be written there."""
    path = Path(raw)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError("RESULTS_DIR", raw, f"a folder that can be created ({exc})") from None
    # Write and remove a probe file: os.access() reports /proc and read-only
    # mounts as writable for root.
    probe = path / f".download-jobs-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SettingsError(
            "RESULTS_DIR", raw, f"a folder this process can write to ({exc.strerror})"
        ) from None
    return path
