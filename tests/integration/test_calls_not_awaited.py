"""An async handler's ``ctx.step`` or ``ctx.state`` call made without ``await``
did nothing: the run fails at once with ``StepNotAwaitedError``, naming each such
call and its line, instead of completing as if the step had run (or retrying the
``TypeError`` that using the coroutine as a result raises). Calls awaited, or
handed to ``asyncio.gather`` or a ``TaskGroup``, are not affected."""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

from stackshift import StackShift
from stackshift.testing import run_until_idle

HERE = __file__


def _ended(app: StackShift, job: str, payload: Any = None) -> Any:
    run = app.start(job, payload)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_until_idle(app)
        gc.collect()  # a coroutine left unclosed warns when it is collected
    never_awaited = [w for w in caught if "was never awaited" in str(w.message)]
    assert never_awaited == [], [str(w.message) for w in never_awaited]
    return app.runs.get(run.id)


def _line_of(text: str) -> int:
    with open(HERE) as source:
        return next(n for n, line in enumerate(source, 1) if text in line)


def test_a_step_and_a_state_call_without_await_fail_the_run_at_once(fake_app: StackShift
                                                                    ) -> None:
    sent: list[str] = []

    @fake_app.job("forgetful")
    async def forgetful(ctx: Any) -> str:
        ctx.step.run("send-email", sent.append, "ada")  # no await
        ctx.state.set("sent:ada", True)  # no await
        return "done"

    run = _ended(fake_app, "forgetful")
    assert (run.status, run.attempt) == ("failed", 1)  # not retried
    assert run.error.type == "StepNotAwaitedError"
    step_line = _line_of('ctx.step.run("send-email"')
    state_line = _line_of('ctx.state.set("sent:ada"')
    assert run.error.message.startswith(
        "2 calls were not awaited before the handler ended, so what they do did not happen: "
        f"ctx.step.run('send-email') at {HERE}:{step_line}; "
        f"ctx.state.set('sent:ada') at {HERE}:{state_line}. "
        "In an async handler, await every ctx.step and ctx.state call")
    assert sent == [] and fake_app.state.get("sent:ada") is None
    assert fake_app.runs.steps(run.id) == []


def test_a_task_left_to_run_after_the_handler_is_cancelled_before_it_starts(
        fake_app: StackShift) -> None:
    charged: list[int] = []

    @fake_app.job("fire-and-forget")
    async def fire_and_forget(ctx: Any) -> str:
        asyncio.create_task(ctx.step.run("charge", charged.append, 5))  # noqa: RUF006
        return "done"

    run = _ended(fake_app, "fire-and-forget")
    assert (run.status, run.error.type) == ("failed", "StepNotAwaitedError")
    assert "ctx.step.run('charge')" in run.error.message
    assert charged == [] and fake_app.runs.steps(run.id) == []


def test_a_result_used_without_await_is_named_as_the_cause(fake_app: StackShift) -> None:
    @fake_app.job("subscripts")
    async def subscripts(ctx: Any) -> str:
        order = ctx.step.run("load-order", lambda: {"email": "ada@example.com"})
        return order["email"]  # TypeError: 'coroutine' object is not subscriptable

    run = _ended(fake_app, "subscripts")
    assert (run.status, run.attempt, run.error.type) == ("failed", 1, "StepNotAwaitedError")
    assert "1 call was not awaited" in run.error.message
    assert "ctx.step.run('load-order')" in run.error.message
    # What the missing await led to stays in the run's traceback.
    assert "'coroutine' object is not subscriptable" in run.error.traceback


def test_an_error_raised_before_a_pending_call_is_awaited_is_the_runs_error(
        fake_app: StackShift) -> None:
    """The handler would have awaited the call after the failing one: the run
    fails with the step's error and is retried as usual, a note naming the call."""
    @fake_app.job("interrupted", max_attempts=2)
    async def interrupted(ctx: Any) -> int:
        later = ctx.step.run("later", lambda: 2)
        await ctx.step.run("flaky", _declined)
        result: int = await later
        return result

    run = _ended(fake_app, "interrupted")
    assert (run.status, run.attempt, run.error.type) == ("retrying", 1, "ValueError")
    assert run.error.message == "card declined"
    assert (f"StackShift: 1 call was not awaited when the handler raised this: "
            f"ctx.step.run('later') at {HERE}:{_line_of('later = ctx.step.run')}"
            in run.error.traceback)


def _declined() -> None:
    raise ValueError("card declined")


def test_calls_awaited_gathered_or_in_a_task_group_complete(fake_app: StackShift) -> None:
    @fake_app.job("careful")
    async def careful(ctx: Any) -> list[int]:
        first = await ctx.step.run("one", lambda: 1)
        pending = ctx.step.run("two", lambda: 2)  # made now, awaited below
        both = await asyncio.gather(ctx.step.run("three", lambda: 3),
                                    ctx.step.run("four", lambda: 4))
        async with asyncio.TaskGroup() as group:
            five = group.create_task(ctx.step.run("five", lambda: 5))
            group.create_task(ctx.state.set("seen", True))
        return [first, await pending, *both, five.result()]

    run = _ended(fake_app, "careful")
    assert (run.status, run.result) == ("completed", [1, 2, 3, 4, 5])
    assert fake_app.state.get("seen") is True


def test_a_wait_parks_the_run_and_its_resumption_still_checks(fake_app: StackShift) -> None:
    @fake_app.job("approval")
    async def approval(ctx: Any) -> str:
        early = ctx.step.run("early", lambda: None)  # never awaited: the wait parks first
        await ctx.step.wait_for_event("approved", correlation_key=ctx.payload, timeout="1h")
        await early
        ctx.step.run("notify", lambda: None)  # no await, after the resumption
        return "approved"

    run = fake_app.start("approval", "order:1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_until_idle(fake_app)
        gc.collect()
    assert not [w for w in caught if "was never awaited" in str(w.message)]
    assert fake_app.runs.get(run.id).status == "waiting"
    fake_app.events.send("approved", {}, correlation_key="order:1")
    ended = _ended(fake_app, "approval", "order:2")  # another run, to drain both
    resumed = fake_app.runs.get(run.id)
    assert resumed.status == "failed" and resumed.error.type == "StepNotAwaitedError"
    assert ended.status == "waiting"  # parked at its wait: nothing to tell yet


def test_one_call_forgotten_among_hundreds_gathered_is_found(fake_app: StackShift) -> None:
    @fake_app.job("fan-out")
    async def fan_out(ctx: Any) -> int:
        calls = [ctx.step.run(f"item-{n}", lambda n=n: n) for n in range(600)]
        ctx.step.run("forgotten", lambda: None)
        total = sum(await asyncio.gather(*calls))
        more = [await ctx.step.run(f"after-{n}", lambda n=n: n) for n in range(300)]
        return total + sum(more)

    run = _ended(fake_app, "fan-out")
    assert (run.status, run.error.type) == ("failed", "StepNotAwaitedError")
    assert "1 call was not awaited" in run.error.message
    assert "ctx.step.run('forgotten')" in run.error.message
    assert len(fake_app.runs.steps(run.id)) == 900


async def _total() -> int:
    return 3


def test_a_coroutine_of_the_handlers_own_returned_unawaited_is_named(
        fake_app: StackShift) -> None:
    @fake_app.job("returns-a-coroutine")
    async def returns_a_coroutine(ctx: Any) -> Any:
        return _total()  # no await

    run = _ended(fake_app, "returns-a-coroutine")
    assert (run.status, run.attempt, run.error.type) == ("failed", 1, "NonRetriableError")
    assert run.error.message == (
        "the handler of job 'returns-a-coroutine' returned a coroutine (_total) instead of "
        "a result: the call that made it was not awaited (return await _total(...))")


def test_a_sync_handler_is_not_affected(fake_app: StackShift) -> None:
    @fake_app.job("plain")
    def plain(ctx: Any) -> int:
        ctx.state.set("k", 1)
        result: int = ctx.step.run("one", lambda: 1)
        return result

    run = _ended(fake_app, "plain")
    assert (run.status, run.result) == ("completed", 1)
