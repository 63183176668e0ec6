"""The run state machine (SPEC 3.7), written once in ``engine/transitions.py``."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from stackshift import InvalidTransitionError, Status
from stackshift.engine import transitions
from stackshift.engine.transitions import (
    CANCELLABLE_AT_ONCE,
    RETRYABLE,
    TERMINAL,
    TRANSITIONS,
    check,
    parse_status,
)

S = Status
MIGRATIONS = Path(transitions.__file__).parents[1] / "store" / "migrations"

#: Every transition SPEC 3.7 and SPEC 6 describe, and why.
ALLOWED = {
    (S.SCHEDULED, S.QUEUED),  # its time came
    (S.SCHEDULED, S.CANCELLED),
    (S.QUEUED, S.RUNNING),  # claimed by a worker
    (S.QUEUED, S.CANCELLED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),  # last attempt, or a non-retriable error
    (S.RUNNING, S.RETRYING),  # a failed attempt with attempts left
    (S.RUNNING, S.WAITING),  # a sleep or a wait for an event
    (S.RUNNING, S.CANCELLED),  # stopped at a step boundary
    (S.RUNNING, S.QUEUED),  # released by a worker shutting down
    (S.WAITING, S.QUEUED),  # woken: the next claim resumes the same attempt
    (S.WAITING, S.FAILED),  # wait timed out with on_timeout="fail"
    (S.WAITING, S.CANCELLED),
    (S.RETRYING, S.QUEUED),  # backoff over
    (S.RETRYING, S.CANCELLED),
    (S.FAILED, S.QUEUED),  # manual retry
    (S.CANCELLED, S.QUEUED),  # manual retry
}


def test_the_table_is_exactly_the_documented_state_machine() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == ALLOWED


def test_every_status_has_a_row() -> None:
    assert set(TRANSITIONS) == set(Status)


@pytest.mark.parametrize(("current", "target"), sorted(ALLOWED))
def test_check_accepts_allowed_transitions(current: Status, target: Status) -> None:
    check(current.value, target.value)


FORBIDDEN = sorted(set(itertools.product(Status, Status)) - ALLOWED)


@pytest.mark.parametrize(("current", "target"), FORBIDDEN)
def test_check_refuses_everything_else(current: Status, target: Status) -> None:
    with pytest.raises(InvalidTransitionError, match=f"a {current.value} run cannot become "
                                                      f"{target.value}"):
        check(current.value, target.value)


def test_completed_is_final() -> None:
    assert TRANSITIONS[S.COMPLETED] == frozenset()


def test_terminal_statuses() -> None:
    assert frozenset({S.COMPLETED, S.FAILED, S.CANCELLED}) == TERMINAL
    # A finished run only ever goes back in line through a manual retry.
    for status in TERMINAL:
        assert TRANSITIONS[status] <= {S.QUEUED}


def test_no_status_moves_to_itself_or_to_scheduled() -> None:
    for status, targets in TRANSITIONS.items():
        assert status not in targets
        assert S.SCHEDULED not in targets


def test_every_status_is_reachable_from_a_new_run_and_can_finish() -> None:
    def reachable(start: set[Status]) -> set[Status]:
        seen, todo = set(start), list(start)
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert reachable({S.SCHEDULED}) == set(Status)
    assert reachable({S.QUEUED}) == set(Status) - {S.SCHEDULED}
    for status in Status:
        assert reachable({status}) & TERMINAL, f"{status} can never finish"


def test_only_a_worker_moves_a_run_into_running() -> None:
    assert [a for a, targets in TRANSITIONS.items() if S.RUNNING in targets] == [S.QUEUED]


def test_cancel_and_retry_sets_agree_with_the_table() -> None:
    assert frozenset({S.SCHEDULED, S.QUEUED, S.WAITING, S.RETRYING}) == CANCELLABLE_AT_ONCE
    for status in CANCELLABLE_AT_ONCE:
        check(status.value, S.CANCELLED.value)
    assert S.RUNNING not in CANCELLABLE_AT_ONCE  # stopped at its next step boundary
    assert frozenset({S.FAILED, S.CANCELLED}) == RETRYABLE
    for status in RETRYABLE:
        check(status.value, S.QUEUED.value)


def test_check_refuses_unknown_statuses() -> None:
    with pytest.raises(ValueError):
        check("done", "queued")
    with pytest.raises(ValueError):
        check("queued", "done")


@pytest.mark.parametrize("status", list(Status))
def test_parse_status_accepts_every_status(status: Status) -> None:
    assert parse_status(status.value) is status


@pytest.mark.parametrize("value", ["done", "QUEUED", "", " queued", "succeeded"])
def test_parse_status_refuses_unknown_names_listing_the_valid_ones(value: str) -> None:
    with pytest.raises(ValueError, match=r"unknown status .*expected one of: scheduled, queued, "
                                         r"running, waiting, retrying, completed, failed, "
                                         r"cancelled"):
        parse_status(value)


DIALECTS = sorted(d.name for d in MIGRATIONS.iterdir() if any(d.glob("*.sql")))


def test_there_are_migrations() -> None:
    assert "sqlite" in DIALECTS


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_schema_check_constraint_lists_the_same_statuses(dialect: str) -> None:
    files = sorted((MIGRATIONS / dialect).glob("*.sql"))
    schema = "\n".join(f.read_text() for f in files)
    match = re.search(r"status\s+\w+\s+NOT NULL\s+CHECK \(status IN\s*\(([^)]*)\)\)", schema)
    assert match, "the runs table has no CHECK constraint on status"
    listed = set(re.findall(r"'(\w+)'", match.group(1)))
    assert listed == {s.value for s in Status}
