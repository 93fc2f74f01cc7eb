"""Layering rules: ``engine`` imports no HTTP library and exports a fixed surface."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import engine

PROJECT_ROOT = Path(__file__).resolve().parent.parent

HTTP_PACKAGES = ("quart", "quart_trio", "hypercorn", "httpx", "h11", "werkzeug")

# Runs in a fresh interpreter: a meta path finder raises ImportError for the
# HTTP packages, then the script imports the engine and every private module.
BLOCKED_IMPORT_SCRIPT = textwrap.dedent(
    """
    import importlib
    import pkgutil
    import sys

    BLOCKED = set(sys.argv[1].split(","))

    class BlockHttpPackages:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: engine must not import it")
            return None

    sys.meta_path.insert(0, BlockHttpPackages())

    if sys.argv[2] == "probe":
        import quart  # must fail, which proves the finder works
    else:
        import engine

        for module in pkgutil.iter_modules(engine.__path__, "engine."):
            importlib.import_module(module.name)
        loaded = sorted(
            name for name in sys.modules if name.partition(".")[0] in BLOCKED
        )
        print("loaded:", ",".join(loaded))
    """
)


def run_with_http_blocked(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT_SCRIPT, ",".join(HTTP_PACKAGES), mode],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_engine_imports_without_http_packages():
    completed = run_with_http_blocked("engine")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "loaded:"


def test_http_block_rejects_quart():
    completed = run_with_http_blocked("probe")

    assert completed.returncode == 1
    assert "ImportError: quart is blocked" in completed.stderr


def test_engine_exports_pinned_names():
    assert set(engine.__all__) == {
        "MAX_IDEMPOTENCY_KEY_LENGTH",
        "JobWatch",
        "JobChange",
        "MAX_MILLISECONDS",
        "EngineStats",
        "IdempotencyConflict",
        "JobExpired",
        "Overloaded",
        "TransientSourceError",
        "EngineError",
        "EngineSettings",
        "FileUnavailable",
        "InvalidTransition",
        "JobAlreadyFinished",
        "JobClient",
        "JobConflict",
        "JobError",
        "JobNotFound",
        "JobSnapshot",
        "JobStatus",
        "ProgressReporter",
        "ProgressSlot",
        "ResultFile",
        "ResultInfo",
        "ResultNotReady",
        "ResultUnavailable",
        "SettingsError",
        "SimulatedSource",
        "Source",
        "SourceError",
        "Supervisor",
        "SupervisorClosed",
        "archive_size",
        "build_archive",
        "content_size",
        "manage_garbage_collection",
        "open_supervisor",
        "read_bool",
        "read_int",
        "utc_now",
    }


def test_engine_exports_have_no_duplicates():
    assert len(engine.__all__) == len(set(engine.__all__))


def test_engine_exports_exist():
    missing = [name for name in engine.__all__ if not hasattr(engine, name)]

    assert missing == []


def test_engine_public_names_all_exported():
    public = {name for name in vars(engine) if not name.startswith("_")}

    assert public == set(engine.__all__)
