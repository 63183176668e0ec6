"""Events, durable waits and correlation (SPEC 5), on a real database.

Time is a fake clock: wait timeouts pass with ``clock.advance``. Every handler
records how often it was invoked so that a test can tell a resume from a replay.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from processes import stop_processes
from stackshift import (
    Event,
    EventNotFoundError,
    IdempotencyConflictError,
    NonDeterminismError,
    Settings,
    StackShift,
)
from stackshift.testing import FakeClock, run_until_idle


def _event_dict(event: Event | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {"id": event.id, "payload": event.payload, "key": event.correlation_key}


def _waiter(app: StackShift, calls: Counter[str], *, waits: int = 1,
            timeout: str = "7d", on_timeout: str = "fail") -> None:
    """Job ``waiter``: waits ``waits`` times for ``payload['event']`` with ``payload['key']``."""

    @app.job("waiter", max_attempts=3)
    def waiter(ctx: Any) -> dict[str, Any]:
        calls[ctx.run.id] += 1
        got = []
        for _ in range(waits):
            event = ctx.step.wait_for_event(
                ctx.payload["event"], correlation_key=ctx.payload.get("key"),
                timeout=timeout, on_timeout=on_timeout,
            )
            got.append(_event_dict(event))
        return {"events": got}


def _status(app: StackShift, run_id: str) -> str:
    return app.runs.get(run_id).status


# -- early events --------------------------------------------------------------------


def test_early_event_sent_after_the_run_was_created_is_taken_when_the_wait_starts(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls)
    run = fake_app.start("waiter", {"event": "invoice.paid", "key": "invoice:1"})
    clock.advance("5s")
    sent = fake_app.events.send("invoice.paid", {"amount": 30}, correlation_key="invoice:1")
    assert sent.resumed_run_ids == []  # nobody waits yet

    assert run_until_idle(fake_app) == 1
    done = fake_app.runs.get(run.id)
    assert done.status == "completed"
    assert done.result == {"events": [{"id": sent.id, "payload": {"amount": 30},
                                       "key": "invoice:1"}]}
    assert calls[run.id] == 1  # the wait never suspended
    received = [e for e in fake_app.runs.timeline(run.id) if e.kind == "event.received"]
    assert [e.data["event_id"] for e in received] == [sent.id]


def test_event_sent_before_the_run_was_created_is_not_taken(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls)
    stale = fake_app.events.send("invoice.paid", {"n": 1}, correlation_key="invoice:2")
    clock.advance("1s")
    run = fake_app.start("waiter", {"event": "invoice.paid", "key": "invoice:2"})

    run_until_idle(fake_app)
    assert _status(fake_app, run.id) == "waiting"

    clock.advance("1s")
    fresh = fake_app.events.send("invoice.paid", {"n": 2}, correlation_key="invoice:2")
    assert fresh.resumed_run_ids == [run.id]
    run_until_idle(fake_app)
    result = fake_app.runs.get(run.id).result
    assert result["events"][0]["id"] == fresh.id != stale.id


@pytest.mark.parametrize("created", [1767603600.0000007, 1767603600.0000004, 1767603600.0])
def test_an_event_received_at_the_instant_the_run_was_created_is_taken(
    db_url: str, created: float
) -> None:
    """"At or after the run was created", to the clock's last digit: the wait compares
    with the creation time as stored, not as it reads back (to the microsecond)."""
    clock = FakeClock(created)
    with StackShift(db_url, clock=clock) as app:
        calls: Counter[str] = Counter()
        _waiter(app, calls)
        run = app.start("waiter", {"event": "invoice.paid", "key": "invoice:3"})
        sent = app.events.send("invoice.paid", {}, correlation_key="invoice:3")
        clock.advance("1s")
        run_until_idle(app)
        done = app.runs.get(run.id)
        assert done.status == "completed"
        assert done.result["events"][0]["id"] == sent.id


def test_an_event_received_just_before_the_run_was_created_is_not_taken(db_url: str) -> None:
    clock = FakeClock(1767603600.0000004)
    with StackShift(db_url, clock=clock) as app:
        calls: Counter[str] = Counter()
        _waiter(app, calls)
        app.events.send("invoice.paid", {}, correlation_key="invoice:4")
        clock.set(1767603600.0000007)  # the same microsecond, read back
        run = app.start("waiter", {"event": "invoice.paid", "key": "invoice:4"})
        run_until_idle(app)
        assert app.runs.get(run.id).status == "waiting"


def test_a_waiting_run_is_resumed_by_an_event_stamped_by_a_clock_behind_its_own(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """The run is waiting when the event comes, so it was created before: the sender's
    clock, a few seconds behind the machine that started the run, does not matter."""
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls)
    clock.advance("5s")  # the starting machine's clock runs ahead
    run = fake_app.start("waiter", {"event": "invoice.paid", "key": "invoice:5"})
    run_until_idle(fake_app)
    assert _status(fake_app, run.id) == "waiting"

    clock.set(clock.now() - 3)  # the sender's clock, behind
    sent = fake_app.events.send("invoice.paid", {}, correlation_key="invoice:5")
    assert sent.resumed_run_ids == [run.id]
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).result["events"][0]["id"] == sent.id


def test_two_events_sent_while_a_run_waits_twice_are_both_used_in_order(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, waits=2)
    run = fake_app.start("waiter", {"event": "doc.signed", "key": "doc:9"})
    run_until_idle(fake_app)
    clock.advance("1s")
    first = fake_app.events.send("doc.signed", {"by": "ada"}, correlation_key="doc:9")
    clock.advance("1s")
    # The run is queued to resume, not waiting: this one is kept for its second wait.
    second = fake_app.events.send("doc.signed", {"by": "bob"}, correlation_key="doc:9")
    assert first.resumed_run_ids == [run.id]
    assert second.resumed_run_ids == []

    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert done.status == "completed"
    assert [e["id"] for e in done.result["events"]] == [first.id, second.id]


# -- matching --------------------------------------------------------------------------


def test_one_event_resumes_every_run_waiting_on_that_name_and_key(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls)
    same = [fake_app.start("waiter", {"event": "order.paid", "key": "order:7"})
            for _ in range(3)]
    other_key = fake_app.start("waiter", {"event": "order.paid", "key": "order:8"})
    other_name = fake_app.start("waiter", {"event": "order.shipped", "key": "order:7"})
    run_until_idle(fake_app)
    clock.advance("1m")

    sent = fake_app.events.send("order.paid", {"total": 12}, correlation_key="order:7")
    assert sorted(sent.resumed_run_ids) == sorted(r.id for r in same)
    assert run_until_idle(fake_app) == 3
    for run in same:
        done = fake_app.runs.get(run.id)
        assert done.status == "completed"
        assert done.result["events"][0]["id"] == sent.id
        assert calls[run.id] == 2
    assert _status(fake_app, other_key.id) == "waiting"
    assert _status(fake_app, other_name.id) == "waiting"


def test_a_run_that_waits_twice_on_the_same_name_and_key_needs_two_events(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, waits=2)
    run = fake_app.start("waiter", {"event": "approval", "key": "pr:5"})
    run_until_idle(fake_app)

    clock.advance("1m")
    first = fake_app.events.send("approval", {"by": "ada"}, correlation_key="pr:5")
    assert first.resumed_run_ids == [run.id]
    run_until_idle(fake_app)
    waiting = fake_app.runs.get(run.id)
    assert waiting.status == "waiting"  # the first event is not taken a second time
    assert waiting.waiting_for is not None and waiting.waiting_for.step == "approval#2"

    clock.advance("1m")
    second = fake_app.events.send("approval", {"by": "bob"}, correlation_key="pr:5")
    assert second.resumed_run_ids == [run.id]
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert done.status == "completed"
    assert [e["payload"]["by"] for e in done.result["events"]] == ["ada", "bob"]
    assert calls[run.id] == 3
    takers = [e.data["event_id"] for e in fake_app.runs.timeline(run.id)
              if e.kind == "event.received"]
    assert takers == [first.id, second.id]


def test_a_wait_without_a_key_matches_only_events_without_a_key(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls)
    keyless = fake_app.start("waiter", {"event": "cache.flushed"})
    keyed = fake_app.start("waiter", {"event": "cache.flushed", "key": "region:eu"})
    clock.advance("1s")
    # An early keyed event is not taken by the keyless wait either.
    early = fake_app.events.send("cache.flushed", {}, correlation_key="region:us")
    run_until_idle(fake_app)
    assert _status(fake_app, keyless.id) == "waiting"
    assert _status(fake_app, keyed.id) == "waiting"
    assert early.resumed_run_ids == []

    clock.advance("1s")
    assert fake_app.events.send("cache.flushed", {},
                                correlation_key="region:us").resumed_run_ids == []
    plain = fake_app.events.send("cache.flushed", {"all": True})
    assert plain.resumed_run_ids == [keyless.id]
    run_until_idle(fake_app)
    done = fake_app.runs.get(keyless.id)
    assert done.result == {"events": [{"id": plain.id, "payload": {"all": True}, "key": None}]}
    assert _status(fake_app, keyed.id) == "waiting"


# -- timeouts ----------------------------------------------------------------------------


def test_on_timeout_fail_fails_the_run_with_wait_timeout_error_and_no_retry(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, timeout="1h", on_timeout="fail")
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:1"})
    run_until_idle(fake_app)
    waiting = fake_app.runs.get(run.id)
    assert waiting.waiting_for is not None
    assert waiting.waiting_for.until == waiting.started_at + timedelta(hours=1)

    clock.advance("59m59s")
    assert run_until_idle(fake_app) == 0
    assert _status(fake_app, run.id) == "waiting"

    clock.advance("1s")
    run_until_idle(fake_app)
    failed = fake_app.runs.get(run.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "WaitTimeoutError"
    assert "email.verified" in failed.error.message

    clock.advance("1d")  # well past any backoff: still no second attempt
    assert run_until_idle(fake_app) == 0
    assert fake_app.runs.get(run.id).status == "failed"
    attempts = fake_app.runs.attempts(run.id)
    assert [(a.number, a.status) for a in attempts] == [(1, "failed")]
    assert attempts[0].error is not None and attempts[0].error.type == "WaitTimeoutError"
    assert calls[run.id] == 1
    kinds = [e.kind for e in fake_app.runs.timeline(run.id)]
    assert kinds[-3:] == ["wait.timed_out", "attempt.failed", "run.failed"]
    failure = fake_app.runs.timeline(run.id)[-2]
    assert (failure.attempt, failure.data["error"]["type"]) == (1, "WaitTimeoutError")


def test_on_timeout_continue_returns_none_and_the_run_goes_on(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, timeout="30m", on_timeout="continue")
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:2"})
    run_until_idle(fake_app)
    clock.advance("30m")
    assert run_until_idle(fake_app) == 1
    done = fake_app.runs.get(run.id)
    assert done.status == "completed"
    assert done.result == {"events": [None]}
    assert done.attempt == 1
    assert calls[run.id] == 2


def test_on_timeout_cancel_cancels_the_run(fake_app: StackShift, clock: FakeClock) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, timeout="2h", on_timeout="cancel")
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:3"})
    run_until_idle(fake_app)
    clock.advance("2h")
    assert run_until_idle(fake_app) == 0
    cancelled = fake_app.runs.get(run.id)
    assert cancelled.status == "cancelled"
    assert cancelled.waiting_for is None
    # Its error names what it waited for, as on_timeout="fail" does.
    assert cancelled.error is not None
    assert (cancelled.error.type, cancelled.error.message) == (
        "Cancelled", "no 'email.verified' (key 'user:3') event arrived before the timeout")
    assert calls[run.id] == 1
    timed_out = [e for e in fake_app.runs.timeline(run.id) if e.kind == "wait.timed_out"]
    assert len(timed_out) == 1 and timed_out[0].data["on_timeout"] == "cancel"


@pytest.mark.parametrize("ending", ["fail", "cancel", "runs.cancel"])
def test_a_wait_that_ends_with_its_run_is_not_left_waiting_and_a_retry_waits_again(
    fake_app: StackShift, clock: FakeClock, ending: str
) -> None:
    """A run that ends while it waits (its wait timed out with on_timeout "fail" or
    "cancel", or it was cancelled) does not keep a step that says "waiting": the
    wait's step failed with the run's error, as its attempt did. A retry waits in
    that step again, and an event completes it."""
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, timeout="1h", on_timeout="cancel" if ending == "cancel" else "fail")
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:9"})
    run_until_idle(fake_app)
    (waiting,) = fake_app.runs.steps(run.id)
    assert (waiting.kind, waiting.status, waiting.finished_at) == ("wait", "waiting", None)

    if ending == "runs.cancel":
        fake_app.runs.cancel(run.id, reason="order withdrawn")
    else:
        clock.advance("1h")
        run_until_idle(fake_app)
    ended = fake_app.runs.get(run.id)
    assert ended.status == ("failed" if ending == "fail" else "cancelled")
    assert ended.error is not None
    (step,) = fake_app.runs.steps(run.id)
    assert (step.key, step.status, step.result) == ("email.verified", "failed", None)
    assert step.error is not None
    assert (step.error.type, step.error.message) == (ended.error.type, ended.error.message)
    assert step.finished_at == ended.finished_at
    (attempt,) = fake_app.runs.attempts(run.id)
    assert attempt.error is not None and attempt.error.type == step.error.type

    fake_app.runs.retry(run.id)
    run_until_idle(fake_app)
    (again,) = fake_app.runs.steps(run.id)
    assert (again.status, again.error, again.finished_at, again.attempt) == (
        "waiting", None, None, 2)
    sent = fake_app.events.send("email.verified", {"ok": True}, correlation_key="user:9")
    assert sent.resumed_run_ids == [run.id]
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status == "completed"
    (done,) = fake_app.runs.steps(run.id)
    assert (done.status, done.error, done.result["payload"]) == ("completed", None, {"ok": True})


@pytest.mark.parametrize("on_timeout", ["fail", "cancel"])
def test_an_event_after_the_timeout_does_not_revive_a_finished_wait(
    fake_app: StackShift, clock: FakeClock, on_timeout: str
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, timeout="1h", on_timeout=on_timeout)
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:4"})
    run_until_idle(fake_app)
    clock.advance("1h")
    run_until_idle(fake_app)
    before = fake_app.runs.get(run.id)

    clock.advance("1m")
    late = fake_app.events.send("email.verified", {}, correlation_key="user:4")
    assert late.resumed_run_ids == []
    assert run_until_idle(fake_app) == 0
    after = fake_app.runs.get(run.id)
    assert after.status == before.status == {"fail": "failed", "cancel": "cancelled"}[on_timeout]
    assert calls[run.id] == 1
    assert fake_app.events.get(late.id).id == late.id  # stored, just not taken


def test_an_event_after_a_continue_timeout_is_not_handed_to_the_wait(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, timeout="1h", on_timeout="continue")
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:5"})
    run_until_idle(fake_app)
    clock.advance("1h")
    # Fire the timeout without executing the resumed handler yet.
    fake_app.worker().maintain()
    assert _status(fake_app, run.id) == "queued"

    late = fake_app.events.send("email.verified", {"late": True}, correlation_key="user:5")
    assert late.resumed_run_ids == []
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).result == {"events": [None]}


def test_an_event_too_late_for_a_continued_wait_is_taken_by_the_next_wait(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """The late event is not handed to the wait that timed out, but it is kept: the
    run's next wait for that name and key takes it at once (an early event)."""
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, waits=2, timeout="1h", on_timeout="continue")
    run = fake_app.start("waiter", {"event": "approval", "key": "doc:1"})
    run_until_idle(fake_app)
    clock.advance("1h")
    fake_app.worker().maintain()  # the first wait times out; the run is queued
    late = fake_app.events.send("approval", {"late": True}, correlation_key="doc:1")
    assert late.resumed_run_ids == []

    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert done.status == "completed"
    assert done.result == {"events": [None, {"id": late.id, "payload": {"late": True},
                                             "key": "doc:1"}]}
    assert calls[run.id] == 2  # the second wait never suspended


@pytest.mark.parametrize("on_timeout", ["fail", "cancel"])
def test_a_retried_run_waits_again_and_takes_the_event_that_came_while_it_was_ended(
    fake_app: StackShift, clock: FakeClock, on_timeout: str
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, timeout="1h", on_timeout=on_timeout)
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:10"})
    run_until_idle(fake_app)
    clock.advance("1h")
    run_until_idle(fake_app)
    assert _status(fake_app, run.id) in ("failed", "cancelled")

    clock.advance("1m")
    late = fake_app.events.send("email.verified", {"n": 1}, correlation_key="user:10")
    clock.advance("1m")
    later = fake_app.events.send("email.verified", {"n": 2}, correlation_key="user:10")
    assert late.resumed_run_ids == later.resumed_run_ids == []
    fake_app.runs.retry(run.id)
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert done.status == "completed"
    assert [e["id"] for e in done.result["events"]] == [late.id]  # the oldest one


def test_a_retried_run_waits_with_a_fresh_timeout(fake_app: StackShift, clock: FakeClock) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, timeout="1h", on_timeout="fail")
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:11"})
    run_until_idle(fake_app)
    clock.advance("1h")
    run_until_idle(fake_app)
    clock.advance("3h")
    fake_app.runs.retry(run.id)
    run_until_idle(fake_app)
    waiting = fake_app.runs.get(run.id)
    assert waiting.status == "waiting"
    assert waiting.waiting_for is not None
    assert waiting.waiting_for.until == clock_dt(clock) + timedelta(hours=1)
    clock.advance("30m")
    sent = fake_app.events.send("email.verified", {}, correlation_key="user:11")
    assert sent.resumed_run_ids == [run.id]
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status == "completed"


def test_a_cancelled_waiting_run_is_not_resumed_nor_listed_as_a_taker(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls)
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:12"})
    other = fake_app.start("waiter", {"event": "email.verified", "key": "user:12"})
    run_until_idle(fake_app)
    fake_app.runs.cancel(run.id)
    sent = fake_app.events.send("email.verified", {}, correlation_key="user:12")
    assert sent.resumed_run_ids == [other.id]
    run_until_idle(fake_app)
    assert [e.kind for e in fake_app.runs.timeline(run.id) if e.kind == "event.received"] == []
    assert fake_app.runs.get(other.id).status == "completed"
    assert _status(fake_app, run.id) == "cancelled"
    assert calls[run.id] == 1


# -- idempotency ---------------------------------------------------------------------------


def test_a_duplicate_send_returns_the_first_event_and_resumes_nothing_again(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, waits=2)
    run = fake_app.start("waiter", {"event": "payment.settled", "key": "pay:1"})
    run_until_idle(fake_app)
    clock.advance("1s")

    first = fake_app.events.send("payment.settled", {"n": 1}, correlation_key="pay:1",
                                 idempotency_key="settled:pay:1")
    assert first.duplicate is False and first.resumed_run_ids == [run.id]
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).waiting_for is not None  # now in its second wait

    clock.advance("1h")
    again = fake_app.events.send("payment.settled", {"n": 1}, correlation_key="pay:1",
                                 idempotency_key="settled:pay:1")
    assert again.id == first.id
    assert again.duplicate is True
    assert again.resumed_run_ids == [run.id]  # what the first send did, not done again
    assert run_until_idle(fake_app) == 0
    assert _status(fake_app, run.id) == "waiting"
    assert [e.id for e in fake_app.events.list(name="payment.settled")] == [first.id]

    # After the 24h dedupe window the same key sends a new event.
    clock.advance("24h")
    later = fake_app.events.send("payment.settled", {"n": 2}, correlation_key="pay:1",
                                 idempotency_key="settled:pay:1")
    assert later.duplicate is False and later.id != first.id
    assert later.resumed_run_ids == [run.id]
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert [e["id"] for e in done.result["events"]] == [first.id, later.id]
    assert calls[run.id] == 3


def test_a_repeat_reports_the_runs_the_first_send_resumed_and_not_later_takers(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """A client that lost the answer to its send and sends again learns which runs
    its event resumed; a run that took the event afterwards, as an early event,
    was not resumed by the send and is not listed."""
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls)
    wait = {"event": "invoice.paid", "key": "inv:1"}
    # The run with the lower id starts to wait last: the answer is in run id
    # order, the first send's as the repeat's, not in the order the waits began.
    lower = fake_app.start("waiter", wait, delay="1m")
    higher = fake_app.start("waiter", wait)
    assert lower.id < higher.id
    run_until_idle(fake_app)
    clock.advance("1m")
    run_until_idle(fake_app)
    assert _status(fake_app, lower.id) == _status(fake_app, higher.id) == "waiting"
    clock.advance("1s")

    first = fake_app.events.send("invoice.paid", {"n": 1}, correlation_key="inv:1",
                                 idempotency_key="paid:inv:1")
    assert (first.duplicate, first.resumed_run_ids) == (False, [lower.id, higher.id])
    run_until_idle(fake_app)
    early = fake_app.start("waiter", wait)  # created as the event came: it may take it
    clock.advance("1s")
    run_until_idle(fake_app)  # its wait starts later and takes the event as an early one
    assert fake_app.runs.get(early.id).result == {
        "events": [{"id": first.id, "payload": {"n": 1}, "key": "inv:1"}]}

    clock.advance("1h")
    again = fake_app.events.send("invoice.paid", {"n": 1}, correlation_key="inv:1",
                                 idempotency_key="paid:inv:1")
    assert (again.id, again.duplicate, again.resumed_run_ids) == (
        first.id, True, [lower.id, higher.id])
    assert run_until_idle(fake_app) == 0
    assert sum(calls.values()) == 5  # two invocations each for the resumed runs, one for early

    # A send that resumed nothing is repeated as having resumed nothing, even after
    # a run took its event as an early event.
    alone = fake_app.events.send("invoice.paid", {"n": 2}, correlation_key="inv:2",
                                 idempotency_key="paid:inv:2")
    assert alone.resumed_run_ids == []
    taker = fake_app.start("waiter", {"event": "invoice.paid", "key": "inv:2"})
    clock.advance("1s")
    run_until_idle(fake_app)
    assert fake_app.runs.get(taker.id).result["events"][0]["id"] == alone.id
    repeat = fake_app.events.send("invoice.paid", {"n": 2}, correlation_key="inv:2",
                                  idempotency_key="paid:inv:2")
    assert (repeat.id, repeat.duplicate, repeat.resumed_run_ids) == (alone.id, True, [])


def test_a_repeat_after_the_first_event_is_past_its_retention_reports_no_runs(
    db_url: str, clock: FakeClock
) -> None:
    """The key outlives an event kept less than its 24 hours: a repeat gets the id
    of an event no longer there and no runs, before clean-up deletes it and after."""
    with StackShift(db_url, clock=clock, settings=Settings(event_retention="1h")) as app:
        calls: Counter[str] = Counter()
        _waiter(app, calls)
        run = app.start("waiter", {"event": "report.ready", "key": "report:3"})
        run_until_idle(app)
        clock.advance("1s")
        first = app.events.send("report.ready", {}, correlation_key="report:3",
                                idempotency_key="ready:3")
        assert first.resumed_run_ids == [run.id]
        run_until_idle(app)
        assert app.runs.get(run.id).status == "completed"
        again = app.events.send("report.ready", {}, correlation_key="report:3",
                                idempotency_key="ready:3")
        assert again.resumed_run_ids == [run.id]  # still kept

        clock.advance("1h")
        expired = app.events.send("report.ready", {}, correlation_key="report:3",
                                  idempotency_key="ready:3")
        assert (expired.id, expired.duplicate, expired.resumed_run_ids) == (first.id, True, [])
        worker = app.worker()
        for _ in range(5):
            worker.maintain()
        with app._service.store.db.read() as tx:
            assert tx.raw("SELECT id FROM events", {}) == []
        deleted = app.events.send("report.ready", {}, correlation_key="report:3",
                                  idempotency_key="ready:3")
        assert (deleted.id, deleted.duplicate, deleted.resumed_run_ids) == (first.id, True, [])
        assert app.events.list().items == []  # and no repeat stored an event


@pytest.mark.parametrize("change", [
    {"payload": {"n": 2}},
    {"name": "payment.refunded"},
    {"correlation_key": "pay:2"},
    {"correlation_key": None},
])
def test_an_idempotency_key_reused_for_another_event_is_a_conflict_and_sends_nothing(
    fake_app: StackShift, clock: FakeClock, change: dict[str, Any]
) -> None:
    """The key names one event: the same key with another name, correlation key or
    payload is refused (as a start's key with another job or payload is), rather
    than dropped as if it were a repeat of the first."""
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls)
    sent = {"name": "payment.settled", "payload": {"n": 1}, "correlation_key": "pay:1"}
    first = fake_app.events.send(sent["name"], sent["payload"],
                                 correlation_key=sent["correlation_key"], idempotency_key="k:1")
    other = {**sent, **change}
    clock.advance("1s")  # the first event is not this run's early event
    run = fake_app.start("waiter", {"event": other["name"], "key": other["correlation_key"]})
    run_until_idle(fake_app)
    clock.advance("1m")

    with pytest.raises(IdempotencyConflictError, match="k:1") as raised:
        fake_app.events.send(other["name"], other["payload"],
                             correlation_key=other["correlation_key"], idempotency_key="k:1")
    assert raised.value.existing_event_id == first.id
    assert raised.value.existing_run_id is None
    assert _status(fake_app, run.id) == "waiting"
    assert [e.id for e in fake_app.events.list()] == [first.id]

    # A true repeat is still a duplicate; 1.0 and 1 are the same number, as in starts.
    again = fake_app.events.send(sent["name"], {"n": 1.0},
                                 correlation_key=sent["correlation_key"], idempotency_key="k:1")
    assert (again.id, again.duplicate, again.resumed_run_ids) == (first.id, True, [])


# -- visibility and cancel -------------------------------------------------------------------


def test_a_waiting_run_shows_what_it_waits_for_and_the_timeline_tells_the_story(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, waits=2, timeout="2h", on_timeout="continue")
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:6"})
    run_until_idle(fake_app)

    waiting = fake_app.runs.get(run.id)
    assert waiting.status == "waiting"
    wf = waiting.waiting_for
    assert wf is not None
    assert (wf.kind, wf.event_name, wf.correlation_key) == ("event", "email.verified", "user:6")
    assert wf.until == clock_dt(clock) + timedelta(hours=2)
    listed = fake_app.runs.list(status="waiting", correlation_key="user:6")
    assert [r.id for r in listed] == [run.id]

    clock.advance("10m")
    sent = fake_app.events.send("email.verified", {"ok": 1}, correlation_key="user:6")
    run_until_idle(fake_app)  # takes the event, then waits a second time
    clock.advance("2h")
    run_until_idle(fake_app)  # the second wait times out and continues
    assert fake_app.runs.get(run.id).status == "completed"

    timeline = fake_app.runs.timeline(run.id)
    started = [e for e in timeline if e.kind == "run.waiting"]
    assert [e.step for e in started] == ["email.verified", "email.verified#2"]
    assert started[0].data["event"] == "email.verified"
    assert started[0].data["correlation_key"] == "user:6"
    assert "until" in started[0].data
    received = [e for e in timeline if e.kind == "event.received"]
    assert [(e.step, e.data["event_id"]) for e in received] == [("email.verified", sent.id)]
    timed_out = [e for e in timeline if e.kind == "wait.timed_out"]
    assert [e.step for e in timed_out] == ["email.verified#2"]
    kinds = [e.kind for e in timeline]
    assert kinds.index("run.waiting") < kinds.index("event.received") < kinds.index(
        "wait.timed_out") < kinds.index("run.completed")


def clock_dt(clock: FakeClock):  # type: ignore[no-untyped-def]
    from stackshift.durations import to_datetime

    return to_datetime(clock.now())


def test_cancelling_a_waiting_run_works_at_once(fake_app: StackShift, clock: FakeClock) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls)
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:7"})
    run_until_idle(fake_app)

    cancelled = fake_app.runs.cancel(run.id, reason="user deleted")
    assert cancelled.status == "cancelled"
    assert cancelled.waiting_for is None
    assert fake_app.runs.get(run.id).status == "cancelled"
    assert fake_app.events.send("email.verified", {},
                                correlation_key="user:7").resumed_run_ids == []
    clock.advance("8d")  # past the wait's timeout too
    assert run_until_idle(fake_app) == 0
    assert fake_app.runs.get(run.id).status == "cancelled"
    assert calls[run.id] == 1
    assert fake_app.runs.attempts(run.id)[-1].status == "cancelled"


# -- across processes -----------------------------------------------------------------------

WORKER_SCRIPT = """
import sys, time
from stackshift import StackShift

app = StackShift(sys.argv[1])

@app.job("crossProcess")
def cross_process(ctx):
    event = ctx.step.wait_for_event("door.opened", correlation_key=ctx.payload["key"],
                                    timeout="1h")
    return {"event_id": event.id, "payload": event.payload, "pid": __import__("os").getpid()}

worker = app.worker(concurrency=2, poll_interval="5s")
worker.start()
print("ready", flush=True)
sys.stdin.read()  # until the test closes our stdin
worker.stop(grace="5s")
app.close()
"""


def test_an_event_from_one_process_resumes_a_run_executed_by_a_worker_in_another(
    db_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "worker_proc.py"
    script.write_text(textwrap.dedent(WORKER_SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), db_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with StackShift(db_url) as app:
            run = app.start("crossProcess", {"key": "door:1"})
            deadline = time.monotonic() + 20
            while app.runs.get(run.id).status != "waiting":
                assert time.monotonic() < deadline, "the other process never ran the handler"
                time.sleep(0.02)
            sent_at = time.monotonic()
            sent = app.events.send("door.opened", {"who": "ada"}, correlation_key="door:1")
            assert sent.resumed_run_ids == [run.id]
            done = app.runs.wait(run.id, timeout=20)
            latency = time.monotonic() - sent_at
        assert done.status == "completed"
        assert done.result["event_id"] == sent.id
        assert done.result["payload"] == {"who": "ada"}
        assert done.result["pid"] == proc.pid
        # The worker polls every 5 s; it must notice the change in the database sooner.
        assert latency < 3, f"the resume took {latency:.2f}s"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=20)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == 0


def test_an_event_after_the_timeout_is_refused_even_before_the_timer_has_fired(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """No worker ran maintenance since the deadline: the wait is over all the same."""
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, timeout="1h", on_timeout="fail")
    run = fake_app.start("waiter", {"event": "email.verified", "key": "user:8"})
    run_until_idle(fake_app)
    clock.advance("1h1s")

    late = fake_app.events.send("email.verified", {}, correlation_key="user:8")
    assert late.resumed_run_ids == []
    run_until_idle(fake_app)
    failed = fake_app.runs.get(run.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "WaitTimeoutError"
    assert calls[run.id] == 1


def test_a_run_is_found_by_its_correlation_key_after_its_wait_is_over(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """Whether the wait took an event (since past its retention), took an early one,
    timed out, or goes on: runs.list(correlation_key=) finds the run as long as it
    is kept."""
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, timeout="1h", on_timeout="continue")
    resumed = fake_app.start("waiter", {"event": "order.paid", "key": "order:42"})
    timed_out = fake_app.start("waiter", {"event": "order.shipped", "key": "order:42"})
    other = fake_app.start("waiter", {"event": "order.paid", "key": "order:43"})
    run_until_idle(fake_app)
    clock.advance("1m")
    fake_app.events.send("order.paid", {}, correlation_key="order:42")
    clock.advance("1s")
    early = fake_app.start("waiter", {"event": "order.paid", "key": "order:42"})
    fake_app.events.send("order.paid", {}, correlation_key="order:42")
    run_until_idle(fake_app)
    clock.advance("8d")  # the waits time out; the events pass their retention
    run_until_idle(fake_app)
    assert fake_app.events.list().items == []
    assert {fake_app.runs.get(r.id).status for r in (resumed, timed_out, early)} == {
        "completed"}
    assert {r.id for r in fake_app.runs.list(correlation_key="order:42")} == {
        resumed.id, timed_out.id, early.id}
    assert [r.id for r in fake_app.runs.list(correlation_key="order:43")] == [other.id]


def test_events_are_kept_seven_days_by_default(fake_app: StackShift, clock: FakeClock) -> None:
    sent = fake_app.events.send("report.ready", {"id": 1}, correlation_key="report:1")
    clock.advance(timedelta(days=7) - timedelta(seconds=1))
    run_until_idle(fake_app)  # maintenance runs, but the event is not due for clean-up
    assert fake_app.events.get(sent.id).payload == {"id": 1}

    clock.advance("2s")
    run_until_idle(fake_app)
    with pytest.raises(EventNotFoundError):
        fake_app.events.get(sent.id)
    assert [e.id for e in fake_app.events.list(name="report.ready")] == []


def test_an_event_past_its_retention_reads_as_missing_before_clean_up_deletes_it(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """No worker runs maintenance here: the event is still in the table, but no wait
    takes it any more, so reads do not show it either."""
    kept = fake_app.events.send("report.ready", {"id": 1}, correlation_key="report:3")
    clock.advance(timedelta(days=7) - timedelta(seconds=1))
    assert fake_app.events.get(kept.id).id == kept.id
    assert [e.id for e in fake_app.events.list(name="report.ready")] == [kept.id]

    clock.advance("1s")
    with pytest.raises(EventNotFoundError):
        fake_app.events.get(kept.id)
    assert fake_app.events.list(name="report.ready").items == []
    assert fake_app.events.list().items == []


def test_event_retention_is_configurable_and_an_expired_early_event_is_not_taken(
    db_url: str, clock: FakeClock
) -> None:
    with StackShift(db_url, clock=clock, settings=Settings(event_retention="1h")) as app:
        calls: Counter[str] = Counter()
        _waiter(app, calls)
        run = app.start("waiter", {"event": "report.ready", "key": "report:2"})
        clock.advance("1s")
        old = app.events.send("report.ready", {}, correlation_key="report:2")
        clock.advance("1h")  # the early event expired before the wait started
        run_until_idle(app)
        assert app.runs.get(run.id).status == "waiting"
        with pytest.raises(EventNotFoundError):
            app.events.get(old.id)


# -- races -------------------------------------------------------------------------------------


def test_concurrent_duplicate_sends_make_one_event_and_one_resume(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls, waits=2)
    run = fake_app.start("waiter", {"event": "refund.issued", "key": "refund:1"})
    run_until_idle(fake_app)
    clock.advance("1s")

    barrier = threading.Barrier(8)
    results: list[Any] = []

    def send() -> None:
        barrier.wait(10)
        results.append(fake_app.events.send("refund.issued", {"n": 1},
                                            correlation_key="refund:1",
                                            idempotency_key="refund:1:issued"))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8
    assert len({r.id for r in results}) == 1
    assert sorted(r.duplicate for r in results) == [False] + [True] * 7
    assert [r.resumed_run_ids for r in results if not r.duplicate] == [[run.id]]
    # Each repeat waited for the first send to commit and reports its resume.
    assert all(r.resumed_run_ids == [run.id] for r in results if r.duplicate)
    assert len(fake_app.events.list(name="refund.issued")) == 1
    run_until_idle(fake_app)
    assert _status(fake_app, run.id) == "waiting"  # the second wait got nothing


def test_events_racing_with_waits_that_are_starting_are_never_lost(app: StackShift) -> None:
    """Each event is sent while its run may be just about to wait, or waiting already."""

    @app.job("racer")
    def racer(ctx: Any) -> str:
        event = ctx.step.wait_for_event("race.done", correlation_key=ctx.payload["key"],
                                        timeout="1h")
        return str(event.id)

    count = 30
    with app.worker(concurrency=4):
        runs = [app.start("racer", {"key": f"k{i}"}) for i in range(count)]
        sent = [app.events.send("race.done", {}, correlation_key=f"k{i}")
                for i in range(count)]
        finished = [app.runs.wait(r.id, timeout=30) for r in runs]
    assert [f.status for f in finished] == ["completed"] * count
    assert [f.result for f in finished] == [s.id for s in sent]


def test_an_early_event_is_taken_by_every_run_that_waits_for_it(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    _waiter(fake_app, calls)
    runs = [fake_app.start("waiter", {"event": "price.changed", "key": "sku:1"})
            for _ in range(3)]
    clock.advance("1s")
    sent = fake_app.events.send("price.changed", {"to": 9}, correlation_key="sku:1")
    run_until_idle(fake_app)
    for run in runs:
        assert fake_app.runs.get(run.id).result["events"][0]["id"] == sent.id


def test_a_wait_returns_the_same_event_on_every_invocation(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """Whether taken early or delivered to a waiting run, and when replayed later."""
    seen: list[tuple[str, Event]] = []

    @fake_app.job("twoWaits")
    def two_waits(ctx: Any) -> None:
        early = ctx.step.wait_for_event("sig", correlation_key="a")
        seen.append(("early", early))
        later = ctx.step.wait_for_event("sig", correlation_key="b")
        seen.append(("later", later))
        ctx.step.sleep("pause", "1m")

    run = fake_app.start("twoWaits", {})
    clock.advance("1s")
    first = fake_app.events.send("sig", {"x": 1}, correlation_key="a", idempotency_key="sig-a")
    run_until_idle(fake_app)  # takes "a" at once, waits for "b"
    clock.advance("1s")
    second = fake_app.events.send("sig", {"x": 2}, correlation_key="b", idempotency_key="sig-b")
    run_until_idle(fake_app)  # replays "a", takes "b", sleeps
    clock.advance("1m")
    run_until_idle(fake_app)  # replays both
    assert fake_app.runs.get(run.id).status == "completed"

    stored = {first.id: fake_app.events.get(first.id), second.id: fake_app.events.get(second.id)}
    assert [label for label, _ in seen] == ["early", "early", "later", "early", "later"]
    for _, event in seen:
        assert event == stored[event.id]


# -- replays that wait for another event -------------------------------------------------


def _checkout(app: StackShift, flavour: str, key: dict[str, str | None],
              outcomes: list[str]) -> None:
    """Job ``checkout`` (a plain or an ``async def`` handler) waits for ``order.paid``
    with ``key["now"]``, which a test changes as a deploy would; the handler
    swallows a NonDeterminismError, as careless code would."""
    if flavour == "sync":
        @app.job("checkout", max_attempts=3)
        def checkout(ctx: Any) -> Any:
            try:
                event = ctx.step.wait_for_event("order.paid", correlation_key=key["now"])
            except NonDeterminismError as exc:
                outcomes.append(str(exc))
                return "went on"
            outcomes.append(f"paid {event.correlation_key}")
            return event.payload
    else:
        @app.job("checkout", max_attempts=3)
        async def checkout_async(ctx: Any) -> Any:
            try:
                event = await ctx.step.wait_for_event("order.paid",
                                                      correlation_key=key["now"])
            except NonDeterminismError as exc:
                outcomes.append(str(exc))
                return "went on"
            outcomes.append(f"paid {event.correlation_key}")
            return event.payload


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize(("recorded", "changed", "said"), [
    ("order:1", "order:2", "with correlation key 'order:2'"),
    ("order:1", None, "without a correlation key"),
    (None, " order:1", "with correlation key ' order:1'"),
])
def test_a_replayed_wait_whose_correlation_key_changed_fails_with_non_determinism_error(
    fake_app: StackShift, clock: FakeClock, flavour: str, recorded: str | None,
    changed: str | None, said: str
) -> None:
    """A deploy between the wait and its replay changes the key the handler waits
    with: the event taken for the old key is not handed to the new one."""
    key: dict[str, str | None] = {"now": recorded}
    outcomes: list[str] = []
    _checkout(fake_app, flavour, key, outcomes)
    run = fake_app.start("checkout", {})
    run_until_idle(fake_app)
    assert _status(fake_app, run.id) == "waiting"
    sent = fake_app.events.send("order.paid", {"amount": 30}, correlation_key=recorded)
    assert sent.resumed_run_ids == [run.id]

    key["now"] = changed
    run_until_idle(fake_app)
    failed = fake_app.runs.get(run.id)
    # Failed, although the handler caught the error and returned, and not retried.
    assert failed.status == "failed" and failed.result is None
    assert failed.error is not None and failed.error.type == "NonDeterminismError"
    was = "without a correlation key" if recorded is None else f"with correlation key {recorded!r}"
    assert failed.error.message == (
        f"step 'order.paid' was recorded as a wait for event 'order.paid' {was}, but"
        f" this replay waits for event 'order.paid' {said}: its recorded event is not"
        " returned for another key")
    assert outcomes == [failed.error.message]
    clock.advance("1h")
    assert run_until_idle(fake_app) == 0
    assert _status(fake_app, run.id) == "failed"
    # The recorded wait keeps the event it took; an event for the new key resumes nothing.
    (step,) = fake_app.runs.steps(run.id)
    assert step.status == "completed" and step.result["id"] == sent.id
    assert fake_app.events.send("order.paid", {}, correlation_key=changed).resumed_run_ids == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_replayed_wait_with_the_recorded_key_returns_the_recorded_event(
    fake_app: StackShift, flavour: str
) -> None:
    """The check compares keys exactly: the same key, spaces and all, replays."""
    key: dict[str, str | None] = {"now": " order:1 "}
    outcomes: list[str] = []
    _checkout(fake_app, flavour, key, outcomes)
    run = fake_app.start("checkout", {})
    run_until_idle(fake_app)
    fake_app.events.send("order.paid", {"amount": 30}, correlation_key=" order:1 ")
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert done.status == "completed" and done.result == {"amount": 30}
    assert outcomes == ["paid  order:1 "]


def test_a_replayed_sleep_whose_duration_changed_keeps_its_recorded_wake_time(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """A sleep's duration may be computed (a deadline minus now): a replay does not
    compare it, and the sleep that was served is not slept again."""
    duration = {"now": "1h"}
    calls: Counter[str] = Counter()

    @fake_app.job("napper")
    def napper(ctx: Any) -> str:
        calls[ctx.run.id] += 1
        ctx.step.sleep("nap", duration["now"])
        return "rested"

    run = fake_app.start("napper", {})
    run_until_idle(fake_app)
    duration["now"] = "3h"
    clock.advance("1h")
    assert run_until_idle(fake_app) == 1
    assert fake_app.runs.get(run.id).status == "completed"
    assert calls[run.id] == 2


HAMMER_WORKER = """
import random, sys, time
from stackshift import StackShift

app = StackShift(sys.argv[1])

@app.job("hammer")
def hammer(ctx):
    ctx.step.run("begin", lambda: None)
    # A little work of a random length: the event lands before, during or after the
    # wait's own transaction.
    time.sleep(random.random() * 0.05)
    event = ctx.step.wait_for_event("hammer.go", correlation_key=ctx.payload["key"],
                                    timeout="10m")
    return event.id

worker = app.worker(concurrency=3, poll_interval="2s")
worker.start()
print("ready", flush=True)
sys.stdin.read()
worker.stop(grace="5s")
app.close()
"""


def test_an_event_sent_as_its_run_starts_to_wait_is_never_lost_across_processes(
    db_url: str, tmp_path: Path
) -> None:
    """200 runs executed by two worker processes; this process sends each run's event
    the moment it sees the run running (or already waiting). Every run completes with
    its own event."""
    script = tmp_path / "hammer_worker.py"
    script.write_text(textwrap.dedent(HAMMER_WORKER))
    with StackShift(db_url) as app:
        app.migrate()
        procs = [subprocess.Popen([sys.executable, str(script), db_url], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            for proc in procs:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            count = 200
            runs = {app.start("hammer", {"key": f"h{i}"}).id: f"h{i}" for i in range(count)}
            sent: dict[str, str] = {}
            deadline = time.monotonic() + 120
            while len(sent) < count:
                assert time.monotonic() < deadline, f"only {len(sent)} runs ever started"
                for status in ("running", "waiting"):
                    for run in app.runs.list(status=status, job="hammer", limit=200):
                        if run.id not in sent:
                            key = runs[run.id]
                            sent[run.id] = app.events.send("hammer.go", {},
                                                           correlation_key=key).id
            finished = {run_id: app.runs.wait(run_id, timeout=60) for run_id in runs}
        finally:
            stop_processes(procs)
    assert Counter(f.status for f in finished.values()) == {"completed": count}
    assert {run_id: f.result for run_id, f in finished.items()} == sent
