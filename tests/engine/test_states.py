"""Tests of ``engine._states``: the job state machine."""

from __future__ import annotations

import itertools

import pytest

from engine import InvalidTransition, JobStatus
from engine._states import allowed_transitions, check_transition

QUEUED = JobStatus.QUEUED
PROCESSING = JobStatus.PROCESSING
DONE = JobStatus.DONE
FAILED = JobStatus.FAILED
CANCELLED = JobStatus.CANCELLED

TERMINAL = {DONE, FAILED, CANCELLED}

# The diagram in the module docstring, move by move.
DOCUMENTED_MOVES = {
    (QUEUED, PROCESSING),
    (QUEUED, FAILED),
    (QUEUED, CANCELLED),
    (PROCESSING, DONE),
    (PROCESSING, FAILED),
    (PROCESSING, CANCELLED),
}


def test_status_values_are_api_strings():
    assert [status.value for status in JobStatus] == [
        "queued",
        "processing",
        "done",
        "failed",
        "cancelled",
    ]


@pytest.mark.parametrize("status", list(JobStatus))
def test_is_terminal(status):
    assert status.is_terminal is (status in TERMINAL)


def test_table_matches_documented_moves():
    table = allowed_transitions()
    moves = {(old, new) for old, targets in table.items() for new in targets}

    assert set(table) == set(JobStatus)
    assert moves == DOCUMENTED_MOVES


@pytest.mark.parametrize("status", sorted(TERMINAL, key=lambda s: s.value))
def test_terminal_state_has_no_exits(status):
    assert allowed_transitions()[status] == frozenset()


@pytest.mark.parametrize(("old", "new"), sorted(DOCUMENTED_MOVES, key=str))
def test_check_transition_allows_documented_move(old, new):
    check_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (old, new)
        for old, new in itertools.product(JobStatus, repeat=2)
        if (old, new) not in DOCUMENTED_MOVES
    ],
)
def test_check_transition_rejects_illegal_move(old, new):
    with pytest.raises(InvalidTransition) as raised:
        check_transition(old, new)

    assert raised.value.old is old
    assert raised.value.new is new
    assert str(raised.value) == f"invalid job transition {old.value} -> {new.value}"


def test_done_to_processing_raises():
    with pytest.raises(InvalidTransition, match=r"^invalid job transition done -> processing$"):
        check_transition(DONE, PROCESSING)


def test_invalid_transition_is_runtime_error():
    assert issubclass(InvalidTransition, RuntimeError)


def test_allowed_transitions_returns_copy():
    table = allowed_transitions()
    table[DONE] = frozenset({PROCESSING})

    assert allowed_transitions()[DONE] == frozenset()
    with pytest.raises(InvalidTransition):
        check_transition(DONE, PROCESSING)


def test_every_state_reachable_from_queued():
    table = allowed_transitions()
    reached = {QUEUED}
    frontier = [QUEUED]
    while frontier:
        for new in table[frontier.pop()]:
            if new not in reached:
                reached.add(new)
                frontier.append(new)

    assert reached == set(JobStatus)
