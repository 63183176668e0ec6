"""A fake clock set to a time read from a run makes what is due then due, though
runs show their times rounded to the microsecond and the engine keeps them in
epoch seconds, finer (a clock started between two microseconds)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stackshift import StackShift
from stackshift.durations import to_datetime
from stackshift.testing import FakeClock, run_until_idle

#: Starts between microseconds; each case nudges it by a fraction of one more.
START = 1767603600.0000004


@pytest.fixture(params=range(8))
def clock(request: pytest.FixtureRequest) -> FakeClock:
    return FakeClock(START + request.param * 1.37e-7)


@pytest.fixture
def fine_app(db_url: str, clock: FakeClock) -> Iterator[StackShift]:
    client = StackShift(db_url, clock=clock)
    yield client
    client.close()


def test_a_delayed_run_is_due_at_the_time_it_shows(fine_app: StackShift,
                                                   clock: FakeClock) -> None:
    fine_app.job("later", lambda ctx: "ran")
    run = fine_app.start("later", delay="5m")
    assert run.scheduled_at is not None
    clock.set(run.scheduled_at - timedelta(microseconds=1))
    assert run_until_idle(fine_app) == 0
    clock.set(run.scheduled_at)
    assert run_until_idle(fine_app) == 1
    assert fine_app.runs.get(run.id).status == "completed"


def test_a_retry_is_due_at_the_next_attempt_time_it_shows(fine_app: StackShift,
                                                          clock: FakeClock) -> None:
    @fine_app.job("flaky", max_attempts=2, backoff={"base": "30s"})  # jittered
    def flaky(ctx: Any) -> int:
        if ctx.run.attempt == 1:
            raise ConnectionError("down")
        return ctx.run.attempt

    run = fine_app.start("flaky")
    run_until_idle(fine_app)
    retrying = fine_app.runs.get(run.id)
    assert retrying.status == "retrying" and retrying.next_attempt_at is not None
    clock.set(retrying.next_attempt_at.isoformat())  # as text, too
    assert run_until_idle(fine_app) == 1
    assert fine_app.runs.get(run.id).result == 2


def test_a_failure_slow_to_format_is_in_the_timeline_before_the_retry_it_schedules(
        fine_app: StackShift, clock: FakeClock) -> None:
    """The error of an attempt is formatted (its message, its traceback's source
    lines) after the handler raised; here that takes two seconds of the clock,
    four times the backoff. The attempt still ends at the time its retry is
    counted from: the timeline reads failed, retrying, then queued again."""
    class SlowToSay(Exception):
        def __str__(self) -> str:
            clock.advance("1s")
            return "slow to say"

    @fine_app.job("slow-error", max_attempts=2,
                  backoff={"base": "500ms", "jitter": False})
    def slow_error(ctx: Any) -> int:
        if ctx.run.attempt == 1:
            raise SlowToSay()
        return ctx.run.attempt

    run = fine_app.start("slow-error")
    run_until_idle(fine_app)  # the retry is due by the time the failure is recorded
    assert fine_app.runs.get(run.id).result == 2
    timeline = fine_app.runs.timeline(run.id)
    kinds = [(e.kind, e.data.get("from")) for e in timeline]
    assert kinds == [("run.queued", None), ("attempt.started", None),
                     ("attempt.failed", None), ("run.retrying", "running"),
                     ("run.queued", "retrying"), ("attempt.started", None),
                     ("run.completed", "running")], kinds
    first = fine_app.runs.attempts(run.id)[0]
    assert first.finished_at is not None
    assert timeline[4].at - first.finished_at == timedelta(milliseconds=500)


def test_set_to_a_time_shows_that_time_and_seconds_are_taken_exactly() -> None:
    clock = FakeClock()
    when = datetime(2026, 1, 5, 10, 0, 0, 1, tzinfo=UTC)
    clock.set(when)
    assert to_datetime(clock.now()) == when
    assert 0 <= clock.now() - when.timestamp() < 5e-7  # within that microsecond
    clock.set(START)
    assert clock.now() == START
