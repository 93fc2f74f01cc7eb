"""Tests of the bench report page, the profile summary, the capacity verdict and load readings."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from bench import _config, _machine, _profile, _report, _targets
from bench.__main__ import main as bench_main

# A full run's results, with long lists of samples thinned to about 100 each.
RESULTS = Path(__file__).parent / "data" / "bench-results.json"


@pytest.fixture
def page_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point the report at temporary files, so the test leaves docs/ untouched."""
    paths = {
        "PAGE": tmp_path / "benchmarks.md",
        "IMAGES": tmp_path / "img",
        "ANALYSIS": tmp_path / "analysis.md",
    }
    for name, path in paths.items():
        monkeypatch.setattr(_report, name, path)
    return paths


def test_report_appends_analysis(page_paths: dict[str, Path]) -> None:
    page_paths["ANALYSIS"].write_text("## Where the time goes\n\nA hand-written line.\n")

    status = bench_main(["--report-from", str(RESULTS)])
    page = page_paths["PAGE"].read_text()

    assert status == 0
    assert page.startswith("# Benchmarks\n")
    assert page.rstrip().endswith("A hand-written line.")
    assert "## Targets" in page
    assert sorted(path.name for path in page_paths["IMAGES"].iterdir())


def test_report_states_steal_when_measured(page_paths: dict[str, Path]) -> None:
    document = json.loads(RESULTS.read_text())
    document["meta"]["machine_load"]["stolen_cores"] = 0.25
    results = page_paths["PAGE"].parent / "results.json"
    results.write_text(json.dumps(document))

    status = bench_main(["--report-from", str(results)])
    page = page_paths["PAGE"].read_text()

    assert status == 0
    assert "Steal took 0.25 cores on average." in page
    assert "| stolen cores |" in page


def test_other_load_separates_steal_from_processes() -> None:
    start = _machine.LoadReading(monotonic=100.0, busy=50.0, ours=20.0, steal=3.0)
    end = _machine.LoadReading(monotonic=110.0, busy=60.0, ours=26.0, steal=5.0)

    load = _machine.other_load(start, end)

    # 10 s of busy CPU, 6 s of it the benchmark's; 2 s stolen over 10 s.
    assert load["other_processes_cores"] == pytest.approx(0.4)
    assert load["stolen_cores"] == pytest.approx(0.2)


def test_load_reading_counts_steal_apart_from_busy() -> None:
    monitor = _machine.LoadMonitor()
    reading = monitor.reading()
    times = psutil.cpu_times()

    assert reading.steal == pytest.approx(getattr(times, "steal", 0.0), abs=1.0)
    assert 0 <= reading.busy <= sum(times) - reading.steal


def test_report_without_analysis(page_paths: dict[str, Path]) -> None:
    status = bench_main(["--report-from", str(RESULTS)])
    page = page_paths["PAGE"].read_text()

    assert status == 0
    assert "Where the time goes" not in page
    assert "see the last section" not in page


def test_profile_summary_counts_samples(tmp_path: Path) -> None:
    raw = tmp_path / "stacks.txt"
    raw.write_text(
        "run (trio/_core/_run.py:10);handle (http_api/_routes.py:5);dumps (json/__init__.py:3) 3\n"
        "run (trio/_core/_run.py:10);send (hypercorn/protocol/h11.py:7) 2\n"
        "run (trio/_core/_run.py:12) 5\n"
    )

    by_layer, by_function, total = _profile.summarize(raw)

    assert total == 10
    assert by_layer == {"http_api (product)": 3, "hypercorn": 2, "trio": 5}
    assert by_function["run (trio/_core/_run.py)"] == 5
    assert by_function["dumps (json/__init__.py)"] == 3


def _polling_results(largest: dict[str, float]) -> dict[str, object]:
    """Return polling results whose systems have these medians of the largest passing step."""
    systems = {
        key: {"summary": {"largest_clients_p99_ok": {"median": value}}}
        for key, value in largest.items()
    }
    return {"polling": {"systems": systems}}


def _capacity(largest: dict[str, float]) -> _targets.Target:
    targets = _targets.evaluate(_polling_results(largest), _config.FULL)
    return next(target for target in targets if target.key == "capacity")


def test_capacity_met_when_fastapi_limit_found() -> None:
    target = _capacity({"fastapi:plain": 5000, "product:longpoll": 15_000})

    assert target.passed
    assert target.figure == "3.00x"


def test_capacity_not_met_when_fastapi_at_top_step() -> None:
    top = max(_config.FULL.poll_steps)

    target = _capacity({"fastapi:plain": top, "product:longpoll": 3 * top})

    assert not target.passed
    assert any("its limit is higher" in note for note in target.notes)


def test_capacity_notes_product_at_top_step() -> None:
    top = max(_config.FULL.poll_longpoll_steps)

    target = _capacity({"fastapi:plain": 5000, "product:longpoll": top})

    assert target.passed
    assert any("the product reached the largest long-poll step" in note for note in target.notes)
