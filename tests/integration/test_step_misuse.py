"""Steps taken where a handler may not take them (inside another step's function,
after the run was parked, after the handler ended) and step functions that are
not plain functions: each is refused, or replays, as a user would expect."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from refusals import add_job
from stackshift import StackShift
from stackshift.testing import FakeClock, run_until_idle


def echo(value: Any) -> Any:
    return value


def nested(step: Any) -> Any:
    """A step whose function takes a step of its own."""
    return step.run("outer", lambda: step.run("inner", echo, "nested"))


async def nested_async(step: Any) -> Any:
    async def outer() -> Any:
        return await step.run("inner", echo, "nested")

    return await step.run("outer", outer)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_step_inside_another_steps_function_fails_the_run_at_once(
        fake_app: StackShift, flavour: str) -> None:
    # Nested, the inner step would be skipped on replay (the outer one returns its
    # stored result) and a later step of the same name would take its record.
    add_job(fake_app, "nests", flavour, "step", nested if flavour == "sync" else nested_async)
    run = fake_app.start("nests")
    run_until_idle(fake_app)

    failed = fake_app.runs.get(run.id)
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert failed.error is not None and failed.error.type == "RuntimeError"
    assert failed.error.message.startswith(
        "step 'inner' was called inside the function of step 'outer': steps do not nest")
    assert "StackShift refused this ctx.step call inside another step" in (
        failed.error.traceback or "")
    assert [(s.name, s.status) for s in fake_app.runs.steps(run.id)] == [("outer", "failed")]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_step_in_a_finally_block_runs_once_when_the_run_ends_not_when_it_parks(
        fake_app: StackShift, clock: FakeClock, flavour: str) -> None:
    done: list[str] = []
    if flavour == "sync":
        @fake_app.job("tidy")
        def tidy(ctx: Any) -> str:
            try:
                ctx.step.run("work", done.append, "work")
                ctx.step.sleep("nap", "1h")
            finally:
                ctx.step.run("cleanup", done.append, "cleanup")
            return "tidied"
    else:
        @fake_app.job("tidy")
        async def tidy_async(ctx: Any) -> str:
            try:
                await ctx.step.run("work", done.append, "work")
                await ctx.step.wait_for_event("approved", timeout="1h", on_timeout="continue")
            finally:
                await ctx.step.run("cleanup", done.append, "cleanup")
            return "tidied"

    run = fake_app.start("tidy")
    run_until_idle(fake_app)
    parked = fake_app.runs.get(run.id)
    assert parked.status in ("waiting", "scheduled") and parked.waiting_for is not None
    assert done == ["work"]  # parking is not an ending: the cleanup waits

    clock.advance("1h")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).result == "tidied"
    assert done == ["work", "cleanup"]


def test_a_handler_that_catches_the_park_and_returns_leaves_the_run_parked(
        fake_app: StackShift, clock: FakeClock) -> None:
    ran: list[str] = []

    @fake_app.job("swallows")
    def swallows(ctx: Any) -> str:
        try:
            ctx.step.sleep("nap", "1h")
        except BaseException:  # catches the engine's signal too
            ran.append("caught")
        ctx.step.run("after", ran.append, "after")
        return "early"

    run = fake_app.start("swallows")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status in ("waiting", "scheduled")
    assert ran == ["caught"]  # the step after the park did not run

    clock.advance("1h")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).result == "early"
    assert ran == ["caught", "after"]


def test_ctx_kept_after_its_handler_ended_takes_no_steps(app: StackShift) -> None:
    kept: list[Any] = []

    @app.job("keeps")
    def keeps(ctx: Any) -> int:
        kept.append(ctx)
        return 1

    with app.worker():
        assert app.runs.wait(app.start("keeps").id, timeout="10s").status == "completed"
    with pytest.raises(RuntimeError, match=r"step 'late': the handler of run run_\w+ has"
                                           " already ended; its ctx takes no more steps"):
        kept[0].step.run("late", echo, 1)


class Charge:
    """A step function that is an object with a ``__call__``."""

    def __init__(self, fee: int) -> None:
        self.fee = fee

    def __call__(self, amount: int) -> int:
        return amount + self.fee


def charge(order: str, amount: int) -> str:
    return f"{order}:{amount}"


def test_partials_and_call_objects_as_step_functions_replay(
        fake_app: StackShift, clock: FakeClock) -> None:
    # Each invocation makes new objects, at new addresses: the recorded function
    # names their function and class, not their repr.
    @fake_app.job("billing")
    def billing(ctx: Any) -> list[Any]:
        fee = ctx.step.run("fee", Charge(1), 5)
        charged = ctx.step.run("charge", functools.partial(charge, "o1"), 5)
        ctx.step.sleep("nap", "1m")
        return [fee, charged]

    run = fake_app.start("billing")
    run_until_idle(fake_app)
    clock.advance("1m")
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert (done.status, done.result) == ("completed", [6, "o1:5"])
    assert {s.name: s.function for s in fake_app.runs.steps(run.id) if s.kind == "run"} == {
        "fee": f"{__name__}.Charge", "charge": f"{__name__}.charge"}
