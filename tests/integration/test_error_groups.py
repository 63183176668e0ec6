"""A handler that lets out several errors together, in an ``ExceptionGroup`` (steps
run at once in an ``asyncio.TaskGroup``): the group fails the run at once when it
holds a ``NonRetriableError`` (nested groups included), is retried no sooner than
the longest delay its errors ask for, and is recorded as the group, its message
naming what it held. A cancel that stops such a handler ends its attempt as a
cancel, not as a failed group of signals."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta
from typing import Any

import pytest

from stackshift import NonRetriableError, RetryAfterError, StackShift
from stackshift.durations import to_datetime
from stackshift.testing import FakeClock, run_until_idle


def charge(amount: int) -> int:
    return amount


def refuse_card(amount: int) -> None:
    raise NonRetriableError(f"card declined for good ({amount})")


def rate_limited(delay: str) -> None:
    raise RetryAfterError(delay, f"rate limited for {delay}")


def flaky(amount: int) -> None:
    raise ConnectionError(f"bank unreachable ({amount})")


def not_json(amount: int) -> Any:
    return {amount}


def fan_out(app: StackShift, name: str, *calls: tuple[Any, ...], backoff: Any = None) -> None:
    """A job of three attempts running each ``(step function, argument)`` as a step,
    all at once in an ``asyncio.TaskGroup``."""
    @app.job(name, max_attempts=3, backoff=backoff)
    async def handler(ctx):  # type: ignore[no-untyped-def]
        async with asyncio.TaskGroup() as group:
            for n, (fn, arg) in enumerate(calls):
                group.create_task(ctx.step.run(f"s{n}", fn, arg))


def gathered(app: StackShift, name: str, *calls: tuple[Any, ...], backoff: Any = None) -> None:
    """As :func:`fan_out`, but the steps run to their ends (``asyncio.gather``) and
    the handler raises all their errors together, in an ``ExceptionGroup``."""
    @app.job(name, max_attempts=3, backoff=backoff)
    async def handler(ctx):  # type: ignore[no-untyped-def]
        results = await asyncio.gather(
            *(ctx.step.run(f"s{n}", fn, arg) for n, (fn, arg) in enumerate(calls)),
            return_exceptions=True)
        errors = [result for result in results if isinstance(result, Exception)]
        if errors:
            raise ExceptionGroup("payments failed", errors)


def assert_failed_at_once(app: StackShift, run_id: str, message: str) -> None:
    run = app.runs.get(run_id)
    assert (run.status, run.attempt) == ("failed", 1)
    assert run.error is not None
    assert (run.error.type, run.error.message) == ("ExceptionGroup", message)
    assert [e.kind for e in app.runs.timeline(run_id)][-2:] == ["attempt.failed", "run.failed"]


def test_a_non_retriable_error_in_a_task_group_fails_the_run_at_once(
        fake_app: StackShift) -> None:
    fan_out(fake_app, "charge", (refuse_card, 5), (charge, 6))
    fan_out(fake_app, "unstorable", (not_json, 5), (charge, 6))
    declined, unstorable = fake_app.start("charge"), fake_app.start("unstorable")
    run_until_idle(fake_app)

    assert_failed_at_once(fake_app, declined.id, "unhandled errors in a TaskGroup"
                          " (1 sub-exception): NonRetriableError: card declined for good (5)")
    failed = fake_app.runs.get(declined.id)
    assert failed.error is not None and failed.error.traceback is not None
    assert "NonRetriableError: card declined for good (5)" in failed.error.traceback
    assert "in refuse_card" in failed.error.traceback
    # A step result that cannot be stored is a NonRetriableError too.
    unstored = fake_app.runs.get(unstorable.id)
    assert (unstored.status, unstored.attempt) == ("failed", 1)
    assert unstored.error is not None and unstored.error.message.startswith(
        "unhandled errors in a TaskGroup (1 sub-exception): StepResultNotJSONError:"
        " result of step 's0': set is not JSON-serialisable")


def test_a_non_retriable_error_nested_with_other_errors_fails_the_run_at_once(
        fake_app: StackShift) -> None:
    """Any NonRetriableError decides, also deep in a group, next to errors that are
    retried: the handler said the run cannot succeed."""
    @fake_app.job("nested", max_attempts=3)
    async def nested(ctx):  # type: ignore[no-untyped-def]
        inner = ExceptionGroup("lines", [ValueError("line 2 has no price"),
                                         NonRetriableError("order 7 was deleted")])
        raise ExceptionGroup("order checks", [ConnectionError("stock service down"), inner])

    run = fake_app.start("nested")
    run_until_idle(fake_app)
    assert_failed_at_once(fake_app, run.id, "order checks (2 sub-exceptions): ConnectionError:"
                          " stock service down; ValueError: line 2 has no price;"
                          " NonRetriableError: order 7 was deleted")


def test_a_group_of_retry_after_errors_is_retried_after_the_longest_delay(
        fake_app: StackShift, clock: FakeClock) -> None:
    gathered(fake_app, "limited", (rate_limited, "30s"), (rate_limited, "2m"), (charge, 5))
    run = fake_app.start("limited")
    run_until_idle(fake_app)

    retrying = fake_app.runs.get(run.id)
    assert (retrying.status, retrying.attempt) == ("retrying", 1)
    assert retrying.error is not None
    assert retrying.error.message == ("payments failed (2 sub-exceptions):"
                                      " RetryAfterError: rate limited for 30s;"
                                      " RetryAfterError: rate limited for 2m")
    assert retrying.next_attempt_at == to_datetime(clock.now()) + timedelta(minutes=2)
    clock.advance("119s")
    assert run_until_idle(fake_app) == 0  # not before the longest delay
    clock.advance("1s")
    assert run_until_idle(fake_app) == 1
    assert fake_app.runs.get(run.id).attempt == 2


@pytest.mark.parametrize(("asked", "after"), [("10m", timedelta(hours=1)),
                                              ("2h", timedelta(hours=2))])
def test_a_retry_after_error_with_other_errors_waits_for_the_longer_of_it_and_the_backoff(
        fake_app: StackShift, clock: FakeClock, asked: str, after: timedelta) -> None:
    """Another error in the group asks for the job's backoff (here 1 h): the next
    attempt waits for whichever is longer."""
    gathered(fake_app, "mixed", (rate_limited, asked), (flaky, 5),
            backoff={"base": "1h", "cap": "1h", "jitter": False})
    run = fake_app.start("mixed")
    run_until_idle(fake_app)

    retrying = fake_app.runs.get(run.id)
    assert (retrying.status, retrying.attempt) == ("retrying", 1)
    assert retrying.next_attempt_at == to_datetime(clock.now()) + after


def test_a_cancel_that_stops_steps_run_in_a_task_group_ends_the_attempt_cancelled(
        fake_app: StackShift) -> None:
    """Each step stopped by the cancel raises its signal; the group of them is a
    cancel, as the signal alone is: the attempt ends cancelled with the reason."""
    started, go = threading.Event(), threading.Event()

    def slow(amount: int) -> int:
        started.set()
        go.wait(10)
        return amount

    @fake_app.job("pair", max_attempts=3)
    async def pair(ctx):  # type: ignore[no-untyped-def]
        async with asyncio.TaskGroup() as group:
            group.create_task(ctx.step.run("a", slow, 1))
            group.create_task(ctx.step.run("b", slow, 2))
        async with asyncio.TaskGroup() as group:
            group.create_task(ctx.step.run("c", charge, 3))
            group.create_task(ctx.step.run("d", charge, 4))

    run = fake_app.start("pair")
    worker = threading.Thread(target=run_until_idle, args=(fake_app,))
    worker.start()
    assert started.wait(10)
    fake_app.runs.cancel(run.id, reason="customer asked")
    go.set()
    worker.join(30)

    cancelled = fake_app.runs.get(run.id)
    assert cancelled.status == "cancelled"
    assert cancelled.error is not None and cancelled.error.message == "customer asked"
    [attempt] = fake_app.runs.attempts(run.id)
    assert attempt.status == "cancelled"
    assert attempt.error is not None
    assert (attempt.error.type, attempt.error.message) == ("Cancelled", "customer asked")


def test_sleeps_begun_together_in_a_task_group_park_the_run_without_a_warning(
        fake_app: StackShift, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """The first sleep parks the run; the group it ends the handler in is no
    failure to record (nor a lease lost, as the worker used to warn)."""
    @fake_app.job("naps", max_attempts=3)
    async def naps(ctx):  # type: ignore[no-untyped-def]
        async with asyncio.TaskGroup() as group:
            group.create_task(ctx.step.sleep("short", "1h"))
            group.create_task(ctx.step.sleep("long", "2h"))
        return "rested"

    run = fake_app.start("naps")
    with caplog.at_level(logging.WARNING, logger="stackshift"):
        run_until_idle(fake_app)
        assert fake_app.runs.get(run.id).status == "waiting"
        for _ in range(3):
            clock.advance("2h")
            run_until_idle(fake_app)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    done = fake_app.runs.get(run.id)
    assert (done.status, done.attempt, done.result) == ("completed", 1, "rested")
