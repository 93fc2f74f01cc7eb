"""Tests of ``engine._progress.ProgressSlot``.

``advance_linearly``, ``fraction``, ``reached_at`` and ``finishes_at`` take
trio times as arguments and need no event loop. ``set_fraction`` reads the
trio clock, so its tests run on the autojump clock.
"""

from __future__ import annotations

import pytest
import trio

from engine import ProgressSlot

pytestmark = pytest.mark.deadline(60)


def test_new_slot_reads_zero():
    slot = ProgressSlot()

    assert slot.fraction(0.0) == 0.0
    assert slot.fraction(1000.0) == 0.0
    assert slot.finishes_at() is None
    assert slot.reached_at(0.0, 7.0) == 7.0


def test_advance_linearly_interpolates():
    slot = ProgressSlot()
    slot.advance_linearly(10.0, 20.0)

    assert slot.fraction(5.0) == 0.0
    assert slot.fraction(10.0) == 0.0
    assert slot.fraction(15.0) == 0.25
    assert slot.fraction(20.0) == 0.5
    assert slot.fraction(30.0) == 1.0
    assert slot.fraction(500.0) == 1.0
    assert slot.finishes_at() == 30.0


def test_advance_linearly_zero_duration_is_complete():
    slot = ProgressSlot()
    slot.advance_linearly(3.0, 0.0)

    assert slot.fraction(3.0) == 1.0
    assert slot.finishes_at() == 3.0


def test_advance_linearly_negative_duration_is_complete():
    slot = ProgressSlot()
    slot.advance_linearly(3.0, -5.0)

    assert slot.fraction(3.0) == 1.0
    assert slot.finishes_at() == 3.0


def test_advance_linearly_never_decreases_over_time():
    slot = ProgressSlot()
    slot.advance_linearly(2.0, 9.0)
    readings = [slot.fraction(t / 10) for t in range(200)]

    assert readings == sorted(readings)
    assert readings[0] == 0.0
    assert readings[-1] == 1.0


def test_advance_linearly_keeps_current_value():
    # A source that re-declares a longer schedule mid-way continues from
    # where progress is, not from zero.
    slot = ProgressSlot()
    slot.advance_linearly(0.0, 10.0)
    slot.advance_linearly(5.0, 50.0)

    assert slot.fraction(5.0) == 0.5
    assert slot.fraction(30.0) == 0.75
    assert slot.finishes_at() == 55.0


def test_advance_linearly_past_start_never_lowers():
    # The class promises that no write lowers the fraction. Here the second
    # schedule starts in the past, at the same start as the first.
    slot = ProgressSlot()
    slot.advance_linearly(0.0, 10.0)
    before = slot.fraction(5.0)
    slot.advance_linearly(0.0, 100.0)

    assert before == 0.5
    assert slot.fraction(5.0) >= before


def test_reached_at_on_linear_schedule():
    slot = ProgressSlot()
    slot.advance_linearly(10.0, 20.0)

    assert slot.reached_at(0.25, 100.0) == 15.0
    assert slot.reached_at(0.5, 100.0) == 20.0
    assert slot.reached_at(1.0, 100.0) == 30.0
    assert slot.reached_at(0.0, 100.0) == 10.0


def test_reached_at_never_later_than_now():
    slot = ProgressSlot()
    slot.advance_linearly(10.0, 20.0)

    assert slot.reached_at(0.9, 12.0) == 12.0
    assert slot.reached_at(0.0, 4.0) == 4.0


async def test_set_fraction_sets_value(autojump_clock):
    slot = ProgressSlot()
    await trio.sleep(3)
    slot.set_fraction(0.4)

    assert slot.fraction(trio.current_time()) == 0.4
    assert slot.fraction(1000.0) == 0.4
    assert slot.finishes_at() is None


@pytest.mark.parametrize(("written", "expected"), [(-0.5, 0.0), (1.5, 1.0), (float("inf"), 1.0)])
async def test_set_fraction_clamps(autojump_clock, written, expected):
    slot = ProgressSlot()
    slot.set_fraction(written)

    assert slot.fraction(trio.current_time()) == expected


async def test_set_fraction_never_decreases(autojump_clock):
    slot = ProgressSlot()
    slot.set_fraction(0.6)
    slot.set_fraction(0.2)
    slot.set_fraction(-1.0)

    assert slot.fraction(trio.current_time()) == 0.6


async def test_set_fraction_never_lowers_linear_progress(autojump_clock):
    slot = ProgressSlot()
    slot.advance_linearly(trio.current_time(), 10.0)
    await trio.sleep(5)
    slot.set_fraction(0.1)

    assert slot.fraction(trio.current_time()) == 0.5
    assert slot.finishes_at() is None


async def test_set_fraction_ends_linear_schedule(autojump_clock):
    slot = ProgressSlot()
    slot.advance_linearly(trio.current_time(), 10.0)
    await trio.sleep(2)
    slot.set_fraction(0.5)
    await trio.sleep(20)

    assert slot.fraction(trio.current_time()) == 0.5


async def test_advance_after_set_fraction_continues(autojump_clock):
    slot = ProgressSlot()
    slot.set_fraction(0.4)
    slot.advance_linearly(trio.current_time(), 10.0)

    assert slot.fraction(trio.current_time()) == 0.4
    assert slot.fraction(5.0) == pytest.approx(0.7)
    assert slot.fraction(10.0) == 1.0


async def test_reached_at_after_set_fraction(autojump_clock):
    slot = ProgressSlot()
    await trio.sleep(4)
    slot.set_fraction(0.3)
    await trio.sleep(6)

    assert slot.reached_at(0.3, trio.current_time()) == 4.0
    assert slot.reached_at(0.3, 2.0) == 2.0
