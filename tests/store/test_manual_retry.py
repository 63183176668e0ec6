"""A manual retry on every store: the fresh attempt budget it starts is on the
run (``retry_base``, ``budget_attempt``) and counts as the engine counts, and the
run no longer carries the error it failed with once it is back in line."""

from __future__ import annotations

from typing import Any

import pytest

from stackshift import StackShift
from stackshift.models import Run
from stackshift.testing import FakeClock, run_until_idle


def test_a_manual_retry_starts_a_budget_that_the_run_shows_and_the_engine_counts(
    fake_app: StackShift, clock: FakeClock
) -> None:
    seen: list[Run] = []
    outage = {"on": True}

    @fake_app.job("sync", max_attempts=2, backoff={"base": "60s", "jitter": False})
    def sync(ctx: Any) -> str:
        seen.append(fake_app.runs.get(ctx.run.id))  # the run as it is while running
        if outage["on"]:
            raise ConnectionError(f"ledger down (attempt {ctx.run.attempt})")
        return "synced"

    run = fake_app.start("sync")
    run_until_idle(fake_app)
    clock.advance("60s")
    run_until_idle(fake_app)
    failed = fake_app.runs.get(run.id)
    assert (failed.status, failed.attempt, failed.retry_base, failed.budget_attempt) == (
        "failed", 2, 0, 2)
    assert failed.error is not None and failed.error.message == "ledger down (attempt 2)"

    # Back in line: a fresh budget after the 2 attempts made, and no current error;
    # each attempt keeps its own.
    queued = fake_app.runs.retry(run.id)
    assert (queued.status, queued.attempt, queued.retry_base, queued.budget_attempt) == (
        "queued", 2, 2, 0)
    assert queued.error is None
    assert fake_app.runs.get(run.id) == queued
    assert [a.error.message for a in fake_app.runs.attempts(run.id) if a.error] == [
        "ledger down (attempt 1)", "ledger down (attempt 2)"]

    # Attempt 3 is the first of the new budget, and runs with no error shown.
    run_until_idle(fake_app)
    running = seen[-1]
    assert (running.status, running.attempt, running.budget_attempt) == ("running", 3, 1)
    assert running.error is None
    # The engine counts it as the first failure of the budget too: the first
    # backoff (60 s, not the 240 s after a third failure), and one attempt left.
    retrying = fake_app.runs.get(run.id)
    assert (retrying.status, retrying.budget_attempt, retrying.max_attempts) == (
        "retrying", 1, 2)
    assert retrying.next_attempt_at is not None
    assert retrying.next_attempt_at.timestamp() == pytest.approx(clock.now() + 60)
    clock.advance("60s")
    run_until_idle(fake_app)
    spent = fake_app.runs.get(run.id)
    assert (spent.status, spent.attempt, spent.budget_attempt) == ("failed", 4, 2)
    assert spent.error is not None and spent.error.message == "ledger down (attempt 4)"

    # A second manual retry starts another budget after the 4 attempts.
    outage["on"] = False
    assert fake_app.runs.retry(run.id).retry_base == 4
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert (done.status, done.result, done.attempt, done.budget_attempt) == (
        "completed", "synced", 5, 1)
    assert (seen[-1].status, seen[-1].error, seen[-1].budget_attempt) == ("running", None, 1)
    assert len(fake_app.runs.attempts(run.id)) == 5


def test_a_cancelled_run_retried_by_hand_no_longer_shows_the_cancel(
    fake_app: StackShift, clock: FakeClock
) -> None:
    fake_app.job("later", lambda ctx: "ran")
    run = fake_app.start("later", delay="1h")
    cancelled = fake_app.runs.cancel(run.id, reason="wrong customer")
    assert cancelled.error is not None and cancelled.error.message == "wrong customer"
    clock.advance("10m")
    queued = fake_app.runs.retry(run.id)
    # No attempt had started: the budget is the first one still.
    assert (queued.status, queued.error, queued.retry_base, queued.budget_attempt) == (
        "queued", None, 0, 0)
    # Queued now, so scheduled for now: not for the hour it was to start at.
    assert queued.scheduled_at is not None
    assert queued.scheduled_at.timestamp() == pytest.approx(clock.now())
    cancels = [e for e in fake_app.runs.timeline(run.id) if e.kind == "run.cancelled"]
    assert len(cancels) == 1
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert (done.status, done.result, done.attempt, done.budget_attempt) == (
        "completed", "ran", 1, 1)


def test_a_batch_of_retries_takes_only_the_runs_it_may_and_changes_nothing_else(
    fake_app: StackShift,
) -> None:
    @fake_app.job("flaky", max_attempts=1)
    def flaky(ctx: Any) -> str:
        if ctx.payload == "ok":
            return "fine"
        raise RuntimeError("down")

    failed = [fake_app.start("flaky", n).id for n in range(3)]
    elsewhere = fake_app.start("flaky", 9, queue_name="eu").id
    completed = fake_app.start("flaky", "ok").id
    run_until_idle(fake_app)
    cancelled = fake_app.start("flaky", 10, delay="1h").id
    fake_app.runs.cancel(cancelled)
    store = fake_app._service.store
    batch = [failed[0], "run_unknown", completed, elsewhere, cancelled, failed[1]]
    retried = store.retry_runs(batch, fake_app.clock.now(), only="failed", queue="default")
    assert retried == [failed[0], failed[1]]
    assert [fake_app.runs.get(i).status for i in failed] == ["queued", "queued", "failed"]
    for run_id, status in ((completed, "completed"), (elsewhere, "failed"),
                           (cancelled, "cancelled")):
        assert fake_app.runs.get(run_id).status == status
        assert not [e for e in fake_app.runs.timeline(run_id) if e.data.get("manual_retry")]
