"""Engine settings and the environment parsing shared with the HTTP layer.

Every setting is validated when it is read, so a bad value stops the server
at start-up with one line naming the variable, never halfway through a job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from ._errors import SettingsError

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
    text = raw.strip().replace("_", "")
    if not text.lstrip("+-").isdigit() or len(text) > 20:
        raise SettingsError(name, raw, expected)
    value = int(text)
    if not minimum <= value <= maximum:
        raise SettingsError(name, raw, expected)
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
    # Processing slots: jobs beyond this many wait queued, in FIFO order.
    max_concurrent_jobs: int = 10_000
    # Snapshots report progress in steps of this many percent.
    progress_step_percent: int = 5
    # Where results are written; None makes a temporary folder per process.
    results_dir: Path | None = None

    def __post_init__(self) -> None:
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
            results_dir=Path(results_dir) if results_dir else None,
        )
