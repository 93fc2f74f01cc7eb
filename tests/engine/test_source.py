"""Tests of ``engine._source.SimulatedSource``."""

from __future__ import annotations

import pytest
import trio

from engine import FileUnavailable, SimulatedSource, archive_size, build_archive, content_size

pytestmark = pytest.mark.deadline(600)


class ScheduleRecorder:
    """A progress reporter that stores what the source declares."""

    def __init__(self) -> None:
        self.schedules: list[tuple[float, float]] = []
        self.fractions: list[float] = []

    def advance_linearly(self, start: float, duration: float) -> None:
        self.schedules.append((start, duration))

    def set_fraction(self, fraction: float) -> None:
        self.fractions.append(fraction)


def test_same_seed_draws_same_delays(make_settings):
    settings = make_settings(download_random_seed=99)
    first = SimulatedSource(settings)
    second = SimulatedSource(settings)

    assert [first.draw_delay() for _ in range(50)] == [second.draw_delay() for _ in range(50)]


def test_other_seed_draws_other_delays(make_settings):
    first = SimulatedSource(make_settings(download_random_seed=1))
    second = SimulatedSource(make_settings(download_random_seed=2))

    assert [first.draw_delay() for _ in range(50)] != [second.draw_delay() for _ in range(50)]


def test_delays_within_configured_range(make_settings):
    settings = make_settings(download_delay_min_ms=2_500, download_delay_max_ms=3_000)
    source = SimulatedSource(settings)
    delays = [source.draw_delay() for _ in range(1000)]

    assert min(delays) >= 2.5
    assert max(delays) <= 3.0
    assert len(set(delays)) == 1000


def test_equal_bounds_draw_exact_delay(make_settings):
    source = SimulatedSource(make_settings(download_delay_min_ms=750, download_delay_max_ms=750))

    assert source.draw_delay() == 0.75


def test_disabled_delay_is_zero(make_settings):
    source = SimulatedSource(make_settings(download_delay_enabled=False))

    assert source.draw_delay() == 0.0


async def test_fetch_sleeps_declared_delay(autojump_clock, make_settings, tmp_path):
    settings = make_settings(download_random_seed=5)
    expected_delay = SimulatedSource(settings).draw_delay()
    source = SimulatedSource(settings)
    progress = ScheduleRecorder()
    await trio.sleep(1)

    await source.fetch(31, progress, tmp_path / "31.zip")

    assert progress.schedules == [(1.0, expected_delay)]
    assert trio.current_time() == pytest.approx(1.0 + expected_delay, abs=1e-9)


async def test_fetch_builds_archive_of_content_size(autojump_clock, settings, tmp_path):
    source = SimulatedSource(settings)
    fetched = await source.fetch(31, ScheduleRecorder(), tmp_path / "fetched.zip")
    size = content_size(31, settings.download_size_min_bytes, settings.download_size_max_bytes)
    built = await build_archive(31, size, tmp_path / "built.zip")

    assert fetched == built
    assert (tmp_path / "fetched.zip").read_bytes() == (tmp_path / "built.zip").read_bytes()


async def test_fetch_without_delay_takes_no_time(autojump_clock, make_settings, tmp_path):
    source = SimulatedSource(make_settings(download_delay_enabled=False))
    progress = ScheduleRecorder()

    await source.fetch(3, progress, tmp_path / "3.zip")

    assert progress.schedules == [(0.0, 0.0)]
    assert trio.current_time() == 0.0


async def test_fetch_unavailable_file_raises(autojump_clock, make_settings, tmp_path):
    source = SimulatedSource(make_settings(download_availability="multiple-of-7"))
    progress = ScheduleRecorder()
    destination = tmp_path / "8.zip"

    with pytest.raises(FileUnavailable, match=r"^file 8 not found$") as raised:
        await source.fetch(8, progress, destination)

    assert raised.value.file_id == 8
    assert raised.value.code == "not_found"
    assert progress.schedules == []
    assert not destination.exists()
    assert trio.current_time() == 0.0


@pytest.mark.parametrize(
    ("mode", "file_id", "exists"),
    [
        ("all", 8, True),
        ("all", 14, True),
        ("multiple-of-7", 8, False),
        ("multiple-of-7", 14, True),
        ("multiple-of-7", 0, True),
    ],
)
async def test_check_reports_size_or_none(autojump_clock, make_settings, mode, file_id, exists):
    settings = make_settings(download_availability=mode)
    source = SimulatedSource(settings)
    size = content_size(file_id, settings.download_size_min_bytes, settings.download_size_max_bytes)

    checked = await source.check(file_id)

    assert source.exists(file_id) is exists
    assert checked == (archive_size(file_id, size) if exists else None)


async def test_check_health_returns(autojump_clock, settings):
    source = SimulatedSource(settings)

    assert await source.check_health() is None
