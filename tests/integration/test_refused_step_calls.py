"""A ``ctx.step`` call whose arguments the engine refuses (a bad duration, name
or ``on_timeout``, a naive datetime, a keyword the method or the step's function
does not take) fails the run at once, keeping the error's type and message:
every attempt would make the same call and be refused the same way. Errors of
the handler's own code and of step functions are retried as before."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from refusals import add_job, failed_at_once
from stackshift import StackShift
from stackshift.testing import FakeClock, run_until_idle


def charge(amount: int) -> int:
    return amount


def declined(amount: int) -> None:
    raise ValueError(f"amount {amount} declined")


#: A refused call of ctx.step, and the error type and message the run fails with.
REFUSED: dict[str, tuple[Callable[[Any], Any], str, str]] = {
    "bad timeout": (
        lambda step: step.wait_for_event("approved", timeout="soon"),
        "ValidationError",
        "timeout: 'soon' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"),
    "bad on_timeout": (
        lambda step: step.wait_for_event("approved", timeout="1h", on_timeout="skip"),
        "ValidationError",
        "on_timeout must be one of ('fail', 'continue', 'cancel'), got 'skip'"),
    "unknown keyword to wait_for_event": (
        lambda step: step.wait_for_event("approved", timout="1h"),
        "TypeError",
        "ctx.step.wait_for_event() got an unexpected keyword argument 'timout';"
        " did you mean 'timeout'?"),
    "bad sleep duration": (
        lambda step: step.sleep("nap", "a while"),
        "ValidationError",
        "duration: 'a while' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"),
    "naive sleep_until": (
        lambda step: step.sleep_until("nap", datetime(2030, 1, 1)),
        "ValidationError",
        "when: datetime.datetime(2030, 1, 1, 0, 0) has no time zone; give an offset or 'Z'"),
    "bad step name": (
        lambda step: step.run("charge card", charge, 5),
        "ValidationError",
        "step name 'charge card' is invalid: use 1-200 letters, digits, '.', '_', ':' or '-'"),
    "unknown keyword to a step function": (
        lambda step: step.run("charge", charge, amout=5),
        "TypeError",
        f"step 'charge': {__name__}.charge() got an unexpected keyword argument 'amout';"
        " did you mean 'amount'?"),
}


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_step_call_fails_the_run_on_its_first_attempt(
        fake_app: StackShift, flavour: str, case: str) -> None:
    call, error_type, message = REFUSED[case]
    add_job(fake_app, "misuse", flavour, "step", call)
    run = fake_app.start("misuse")
    run_until_idle(fake_app)

    failed_at_once(fake_app, run.id, "step", error_type, message)
    assert [(a.status, a.error and a.error.message) for a in fake_app.runs.attempts(run.id)] == [
        ("failed", message)]
    assert fake_app.runs.steps(run.id) == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_an_unknown_keyword_to_a_step_function_is_refused_before_it_runs(
        fake_app: StackShift, flavour: str) -> None:
    calls: list[Any] = []

    def send_invoice(to: str, amount: int) -> None:
        calls.append((to, amount))

    add_job(fake_app, "invoice", flavour, "step",
            lambda step: step.run("send", send_invoice, to="a@example.com", amout=5))
    run = fake_app.start("invoice")
    run_until_idle(fake_app)

    failed = fake_app.runs.get(run.id)
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert failed.error is not None and failed.error.message.endswith(
        "send_invoice() got an unexpected keyword argument 'amout'; did you mean 'amount'?")
    assert calls == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_errors_of_the_handler_and_of_step_functions_are_still_retried(
        fake_app: StackShift, clock: FakeClock, flavour: str) -> None:
    def own_check(step: Any) -> None:
        raise ValueError("the order has no lines")

    add_job(fake_app, "own", flavour, "step", own_check)
    add_job(fake_app, "stepFails", flavour, "step", lambda step: step.run("charge", declined, 5))
    add_job(fake_app, "takesAny", flavour, "step",  # a function taking **kwargs decides itself
            lambda step: step.run("charge", lambda **kw: declined(**kw), amout=5))
    runs = [fake_app.start(job) for job in ("own", "stepFails", "takesAny")]
    run_until_idle(fake_app)
    assert [(fake_app.runs.get(r.id).status, fake_app.runs.get(r.id).attempt)
            for r in runs] == [("retrying", 1)] * 3

    for _ in range(2):
        clock.advance("1h")
        run_until_idle(fake_app)
    done = [fake_app.runs.get(r.id) for r in runs]
    assert [(d.status, d.attempt) for d in done] == [("failed", 3)] * 3
    assert [d.error and (d.error.type, d.error.message) for d in done] == [
        ("ValueError", "the order has no lines"), ("ValueError", "amount 5 declined"),
        ("TypeError", "declined() got an unexpected keyword argument 'amout'")]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_handler_may_catch_a_refused_call_and_go_on(
        fake_app: StackShift, flavour: str) -> None:
    """Like a ``NonRetriableError``, a refusal the handler catches is its to handle."""
    if flavour == "sync":
        @fake_app.job("fallback")
        def fallback(ctx):  # type: ignore[no-untyped-def]
            try:
                ctx.step.sleep("nap", ctx.payload["delay"])
            except ValueError as exc:
                return f"no nap: {exc}"
    else:
        @fake_app.job("fallback")
        async def fallback_async(ctx):  # type: ignore[no-untyped-def]
            try:
                await ctx.step.sleep("nap", ctx.payload["delay"])
            except ValueError as exc:
                return f"no nap: {exc}"

    run = fake_app.start("fallback", {"delay": "soon"})
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert (done.status, done.result) == (
        "completed",
        "no nap: duration: 'soon' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')")
