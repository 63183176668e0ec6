"""A ``ctx.step`` call whose arguments the engine refuses (a bad duration, name
or ``on_timeout``, a naive datetime, arguments the method or the step's function
does not take) fails the run at once, keeping the error's type and message:
every attempt would make the same call and be refused the same way, also when
the handler raises the refusals together (an ``ExceptionGroup``). Errors of the
handler's own code and of step functions, ``TypeError``s included, are retried
as before."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from refusals import add_job, failed_at_once, group_failed_at_once_mixed_retried, together
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
        "step name 'charge card' is invalid: use 1-200 ASCII letters, digits, '.', '_', ':'"
        " or '-'"),
    "the function's result in place of the function": (
        lambda step: step.run("charge", charge(5)),
        "TypeError",
        "step 'charge': 5 is not callable; ctx.step.run() takes the function to run, not what"
        " it returns: ctx.step.run('charge', fn, *args, **kwargs) calls fn(*args, **kwargs)"),
    "the function in place of the name": (
        lambda step: step.run(charge, 5),
        "TypeError",
        "ctx.step.run() takes the step's name first, then its function and arguments:"
        " ctx.step.run('charge', charge, ...)"),
    "unknown keyword to a step function": (
        lambda step: step.run("charge", charge, amout=5),
        "TypeError",
        f"step 'charge': {__name__}.charge() got an unexpected keyword argument 'amout';"
        " did you mean 'amount'?"),
    # Arguments a method's own signature does not take: Python's TypeError, about
    # the call as written (not the internal class, and without counting self).
    "run without its function": (
        lambda step: step.run("charge"),
        "TypeError", "ctx.step.run() missing 1 required positional argument: 'fn'"),
    "run without arguments": (
        lambda step: step.run(),
        "TypeError", "ctx.step.run() missing 2 required positional arguments: 'name' and 'fn'"),
    "sleep without arguments": (
        lambda step: step.sleep(),
        "TypeError",
        "ctx.step.sleep() missing 2 required positional arguments: 'name' and 'duration'"),
    "sleep with extra arguments": (
        lambda step: step.sleep("nap", 1, 2, 3),
        "TypeError", "ctx.step.sleep() takes 2 positional arguments but 4 were given"),
    "timeout to wait_for_event as a positional argument": (
        lambda step: step.wait_for_event("approved", "1h"),
        "TypeError", "ctx.step.wait_for_event() takes 1 positional argument but 2 were given"),
    "extra argument to idempotency_key": (
        lambda step: step.idempotency_key("card", "again"),
        "TypeError",
        "ctx.step.idempotency_key() takes from 0 to 1 positional arguments but 2 were given"),
    "step function without its argument": (
        lambda step: step.run("charge", charge),
        "TypeError", "step 'charge': charge() missing 1 required positional argument: 'amount'"),
    "step function with an extra argument": (
        lambda step: step.run("charge", charge, 5, 6),
        "TypeError", "step 'charge': charge() takes 1 positional argument but 2 were given"),
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


def has_no_lines(step: Any) -> Any:
    raise ValueError("the order has no lines")


def misuses_charge(step: Any) -> Any:
    """The handler's own code calls a function with an argument missing."""
    charge()  # type: ignore[call-arg]


#: Jobs whose errors come from the handler's own code or from a step's function
#: (``TypeError``s of their own calls included), and the error each ends with.
RETRIED: dict[str, tuple[Callable[[Any], Any], tuple[str, str]]] = {
    "own": (has_no_lines, ("ValueError", "the order has no lines")),
    "stepFails": (lambda step: step.run("charge", declined, 5),
                  ("ValueError", "amount 5 declined")),
    # a function taking **kwargs decides itself
    "takesAny": (lambda step: step.run("charge", lambda **kw: declined(**kw), amout=5),
                 ("TypeError", "declined() got an unexpected keyword argument 'amout'")),
    "ownTypeError": (misuses_charge,
                     ("TypeError", "charge() missing 1 required positional argument: 'amount'")),
    "stepTypeError": (lambda step: step.run("charge", lambda: charge()),  # type: ignore[call-arg]
                      ("TypeError", "charge() missing 1 required positional argument: 'amount'")),
    "builtinTypeError": (lambda step: step.run("count", len, 5),
                         ("TypeError", "object of type 'int' has no len()")),
}


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_errors_of_the_handler_and_of_step_functions_are_still_retried(
        fake_app: StackShift, clock: FakeClock, flavour: str) -> None:
    for job, (body, _) in RETRIED.items():
        add_job(fake_app, job, flavour, "step", body)
    runs = {job: fake_app.start(job).id for job in RETRIED}
    run_until_idle(fake_app)
    assert [(fake_app.runs.get(r).status, fake_app.runs.get(r).attempt)
            for r in runs.values()] == [("retrying", 1)] * len(RETRIED)

    for _ in range(2):
        clock.advance("1h")
        run_until_idle(fake_app)
    done = [fake_app.runs.get(r) for r in runs.values()]
    assert [(d.status, d.attempt) for d in done] == [("failed", 3)] * len(RETRIED)
    assert [d.error and (d.error.type, d.error.message) for d in done] == [
        error for _, error in RETRIED.values()]
    # The step function that raised its own TypeError ran: its step failed.
    assert [s.status for s in fake_app.runs.steps(runs["stepTypeError"])] == ["failed"]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_refusals_raised_together_fail_the_run_at_once_unless_another_error_is_with_them(
        fake_app: StackShift, flavour: str) -> None:
    """A handler raising the errors of several calls in an ``ExceptionGroup``: the run
    fails at once when each of them is a refusal, else it is retried."""
    def bad_sleep(step: Any) -> Any:
        return step.sleep("nap", "a while")

    def bad_wait(step: Any) -> Any:
        return step.wait_for_event("approved", timeout="soon")

    def own_error(step: Any) -> Any:
        raise ValueError("the order has no lines")

    add_job(fake_app, "refusalsOnly", flavour, "step", together(flavour, bad_sleep, bad_wait))
    add_job(fake_app, "withOwnError", flavour, "step", together(flavour, bad_sleep, own_error))
    refused = fake_app.start("refusalsOnly")
    mixed = fake_app.start("withOwnError")
    run_until_idle(fake_app)

    retrying = group_failed_at_once_mixed_retried(
        fake_app, "step", refused.id, mixed.id,
        "ValidationError: duration: 'a while' is not a duration (use e.g. '30s', '15m',"
        " '1h30m', '7d')",
        "ValidationError: timeout: 'soon' is not a duration (use e.g. '30s', '15m', '1h30m',"
        " '7d')")
    assert retrying.error is not None
    assert retrying.error.message == (
        "checks failed (2 sub-exceptions): ValidationError: duration: 'a while' is not a"
        " duration (use e.g. '30s', '15m', '1h30m', '7d'); ValueError: the order has no lines")


def test_a_refused_call_in_a_task_group_fails_the_run_at_once(fake_app: StackShift) -> None:
    """Calls made together in an ``asyncio.TaskGroup``: the group that the refusal
    of one of them ends in fails the run at once."""
    @fake_app.job("fanOut", max_attempts=3)
    async def fan_out(ctx):  # type: ignore[no-untyped-def]
        async with asyncio.TaskGroup() as group:
            group.create_task(ctx.step.sleep("nap", "a while"))
            group.create_task(ctx.step.run("charge", charge, 5))

    run = fake_app.start("fanOut")
    run_until_idle(fake_app)
    failed = failed_at_once(fake_app, run.id, "step", "ExceptionGroup",
                            "unhandled errors in a TaskGroup (1 sub-exception): ValidationError:"
                            " duration: 'a while' is not a duration (use e.g. '30s', '15m',"
                            " '1h30m', '7d')")
    assert failed.error is not None and failed.error.traceback is not None
    assert "duration: 'a while' is not a duration" in failed.error.traceback


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
