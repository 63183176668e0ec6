"""A handler that wraps its step calls in ``except Exception:`` cannot break the engine.

The signals that cancel, suspend or abandon an invocation derive from
``BaseException``, so user code that swallows every ``Exception`` still gets
retried after a timeout or a lost lease, still stops when cancelled, and still
parks the run when it sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest

from stackshift import StackShift
from stackshift.testing import FakeClock, run_until_idle

FLAVOURS = ["sync", "async"]


# -- still retries -----------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_attempt_timeout_is_not_swallowed_and_the_run_retries(
    app: StackShift, flavour: str
) -> None:
    ticks: Counter[int] = Counter()
    lock = threading.Lock()

    def tick(attempt: int) -> None:
        with lock:
            ticks[attempt] += 1
        time.sleep(0.05)

    if flavour == "sync":

        @app.job("stubborn", timeout="0.3s", max_attempts=2, backoff={"base": "0.05s"})
        def stubborn(ctx):  # type: ignore[no-untyped-def]
            for _ in range(1 if ctx.run.attempt > 1 else 60):
                try:  # noqa: SIM105 - the pattern under test
                    ctx.step.run("tick", tick, ctx.run.attempt)
                except Exception:
                    pass  # "keep going whatever happens"
            return {"attempt": ctx.run.attempt}

    else:

        async def tick_async(attempt: int) -> None:
            with lock:
                ticks[attempt] += 1
            await asyncio.sleep(0.05)

        @app.job("stubborn", timeout="0.3s", max_attempts=2, backoff={"base": "0.05s"})
        async def stubborn_async(ctx):  # type: ignore[no-untyped-def]
            for _ in range(1 if ctx.run.attempt > 1 else 60):
                try:  # noqa: SIM105 - the pattern under test
                    await ctx.step.run("tick", tick_async, ctx.run.attempt)
                except Exception:
                    pass
            return {"attempt": ctx.run.attempt}

    with app.worker():
        run = app.start("stubborn")
        done = app.runs.wait(run.id, timeout="15s")
        time.sleep(0.3)  # give an abandoned attempt the chance to misbehave
    assert done.status == "completed"
    assert done.result == {"attempt": 2}
    attempts = app.runs.attempts(run.id)
    assert [a.status for a in attempts] == ["failed", "completed"]
    assert attempts[0].error is not None and attempts[0].error.type == "AttemptTimeoutError"
    # The first attempt stopped soon after its deadline instead of ticking 60 times.
    assert ticks[1] < 30, ticks
    assert ticks[2] == 0  # attempt 2 reused the first "tick" recorded by attempt 1
    assert app.runs.get(run.id).result == {"attempt": 2}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_lost_lease_is_not_swallowed(fake_app: StackShift, clock: FakeClock,
                                     flavour: str) -> None:
    """A worker whose lease was taken over stops at once; the run is retried."""
    effects: list[str] = []

    def slow_charge(attempt: int) -> str:
        effects.append(f"charge:{attempt}")
        if attempt == 1:
            # This worker stalls past its lease; another worker's rescuer takes the run.
            clock.advance("10m")
            fake_app.worker().maintain()
        return "charged"

    def ship(attempt: int) -> str:
        effects.append(f"ship:{attempt}")
        return "shipped"

    if flavour == "sync":

        @fake_app.job("order", max_attempts=3)
        def order(ctx):  # type: ignore[no-untyped-def]
            for name, fn in (("charge", slow_charge), ("ship", ship)):
                try:
                    ctx.step.run(name, fn, ctx.run.attempt)
                except Exception:
                    effects.append(f"swallowed:{name}")
            return "done"

    else:

        @fake_app.job("order", max_attempts=3)
        async def order_async(ctx):  # type: ignore[no-untyped-def]
            for name, fn in (("charge", slow_charge), ("ship", ship)):
                try:
                    await ctx.step.run(name, fn, ctx.run.attempt)
                except Exception:
                    effects.append(f"swallowed:{name}")
            return "done"

    run = fake_app.start("order")
    # Attempt 1 loses its lease in "charge" and stops there; the lost attempt is
    # retried without backoff, so attempt 2 runs in the same drain.
    run_until_idle(fake_app)
    attempts = fake_app.runs.attempts(run.id)
    assert [a.status for a in attempts] == ["failed", "completed"]
    assert attempts[0].error is not None and attempts[0].error.type == "WorkerLost"
    done = fake_app.runs.get(run.id)
    assert (done.status, done.result, done.attempt) == ("completed", "done", 2)
    # The stale attempt never recorded its step and never shipped.
    assert effects == ["charge:1", "charge:2", "ship:2"]
    assert {s.key: s.attempt for s in fake_app.runs.steps(run.id)} == {"charge": 2, "ship": 2}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_swallowed_step_error_is_still_recorded_and_a_later_error_retries(
    fake_app: StackShift, clock: FakeClock, flavour: str
) -> None:
    calls: Counter[str] = Counter()

    def fetch_rate() -> float:
        calls["fetch-rate"] += 1
        if calls["fetch-rate"] == 1:
            raise TimeoutError("rates service timed out")
        return 1.1

    def convert(rate: float | None) -> float:
        if rate is None:
            raise RuntimeError("no exchange rate")
        return 100 * rate

    if flavour == "sync":

        @fake_app.job("convert")
        def job(ctx):  # type: ignore[no-untyped-def]
            rate = None
            try:
                rate = ctx.step.run("fetch-rate", fetch_rate)
            except Exception:
                ctx.log.warning("no rate; carrying on")
            return convert(rate)

    else:

        @fake_app.job("convert")
        async def job_async(ctx):  # type: ignore[no-untyped-def]
            rate = None
            try:
                rate = await ctx.step.run("fetch-rate", fetch_rate)
            except Exception:
                ctx.log.warning("no rate; carrying on")
            return convert(rate)

    run = fake_app.start("convert")
    run_until_idle(fake_app)
    first = fake_app.runs.get(run.id)
    assert first.status == "retrying"
    assert first.error is not None and first.error.message == "no exchange rate"
    step = fake_app.runs.steps(run.id)[0]
    assert (step.key, step.status) == ("fetch-rate", "failed")
    assert step.error is not None and step.error.type == "TimeoutError"
    assert step.error.traceback is not None and "fetch_rate" in step.error.traceback

    clock.advance("1m")
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert done.status == "completed"
    assert done.result == pytest.approx(110.0)
    # A failed step is not remembered: the retry ran it again.
    assert calls["fetch-rate"] == 2
    assert fake_app.runs.steps(run.id)[0].status == "completed"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_swallowed_non_determinism_error_still_fails_the_run(
    fake_app: StackShift, clock: FakeClock, flavour: str
) -> None:
    def old_lookup() -> str:
        return "v1"

    def new_lookup() -> str:
        return "v2"

    if flavour == "sync":

        @fake_app.job("deploy", max_attempts=5)
        def deploy(ctx):  # type: ignore[no-untyped-def]
            try:  # noqa: SIM105 - the pattern under test
                ctx.step.run("lookup", old_lookup if ctx.run.attempt == 1 else new_lookup)
            except Exception:
                pass
            if ctx.run.attempt == 1:
                raise RuntimeError("first attempt fails after the step")
            return "ok"

    else:

        @fake_app.job("deploy", max_attempts=5)
        async def deploy_async(ctx):  # type: ignore[no-untyped-def]
            try:  # noqa: SIM105 - the pattern under test
                await ctx.step.run("lookup", old_lookup if ctx.run.attempt == 1 else new_lookup)
            except Exception:
                pass
            if ctx.run.attempt == 1:
                raise RuntimeError("first attempt fails after the step")
            return "ok"

    run = fake_app.start("deploy")
    run_until_idle(fake_app)
    clock.advance("1m")
    run_until_idle(fake_app)
    failed = fake_app.runs.get(run.id)
    assert failed.status == "failed"
    assert failed.attempt == 2
    assert failed.result is None
    assert failed.error is not None and failed.error.type == "NonDeterminismError"


# -- still cancels -----------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cancel_is_not_swallowed(fake_app: StackShift, flavour: str) -> None:
    processed: list[int] = []
    run_ids: list[str] = []

    def process(item: int) -> int:
        processed.append(item)
        if item == 3:
            fake_app.runs.cancel(run_ids[0], reason="stop the batch")
        return item * 10

    if flavour == "sync":

        @fake_app.job("batch", max_attempts=3)
        def batch(ctx):  # type: ignore[no-untyped-def]
            for i in range(20):
                try:
                    ctx.step.run("item", process, i)
                except Exception:
                    continue
            return "all done"

    else:

        @fake_app.job("batch", max_attempts=3)
        async def batch_async(ctx):  # type: ignore[no-untyped-def]
            for i in range(20):
                try:
                    await ctx.step.run("item", process, i)
                except Exception:
                    continue
            return "all done"

    run_ids.append(fake_app.start("batch").id)
    run_until_idle(fake_app)
    run = fake_app.runs.get(run_ids[0])
    assert run.status == "cancelled"
    assert run.result is None
    assert processed == [0, 1, 2, 3]
    assert [s.key for s in fake_app.runs.steps(run.id)] == ["item", "item#2", "item#3",
                                                             "item#4"]
    assert [a.status for a in fake_app.runs.attempts(run.id)] == ["cancelled"]
    # Cancelled means cancelled: no retry follows.
    assert run_until_idle(fake_app) == 0


def test_cancel_from_another_thread_reaches_a_swallowing_handler(app: StackShift) -> None:
    progress = threading.Event()
    seen: list[int] = []

    @app.job("poller")
    def poller(ctx):  # type: ignore[no-untyped-def]
        for i in range(500):
            try:  # noqa: SIM105 - the pattern under test
                ctx.step.run("poll", lambda i=i: seen.append(i) or time.sleep(0.01))
            except Exception:
                pass
            if i == 5:
                progress.set()
        return "finished"

    with app.worker():
        run = app.start("poller")
        assert progress.wait(10)
        app.runs.cancel(run.id)
        done = app.runs.wait(run.id, timeout="10s")
    assert done.status == "cancelled"
    assert len(seen) < 500


# -- still suspends ----------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_sleep_inside_try_except_still_parks_the_run(
    fake_app: StackShift, clock: FakeClock, flavour: str
) -> None:
    after: list[str] = []

    if flavour == "sync":

        @fake_app.job("reminder")
        def reminder(ctx):  # type: ignore[no-untyped-def]
            try:
                ctx.step.sleep("cool-off", "1h")
            except Exception:
                after.append("swallowed")
            after.append("woke")
            return "reminded"

    else:

        @fake_app.job("reminder")
        async def reminder_async(ctx):  # type: ignore[no-untyped-def]
            try:
                await ctx.step.sleep("cool-off", "1h")
            except Exception:
                after.append("swallowed")
            after.append("woke")
            return "reminded"

    run = fake_app.start("reminder")
    assert run_until_idle(fake_app) == 1
    parked = fake_app.runs.get(run.id)
    assert parked.status == "waiting"
    assert parked.waiting_for is not None and parked.waiting_for.kind == "sleep"
    assert after == []  # nothing after the sleep ran

    clock.advance("59m")
    assert run_until_idle(fake_app) == 0
    assert fake_app.runs.get(run.id).status == "waiting"

    clock.advance("1m")
    assert run_until_idle(fake_app) == 1
    done = fake_app.runs.get(run.id)
    assert (done.status, done.result) == ("completed", "reminded")
    assert after == ["woke"]
    # Waking is a resume of the same attempt, not a retry.
    assert done.attempt == 1
    assert [a.status for a in fake_app.runs.attempts(run.id)] == ["completed"]


def test_handler_catching_base_exception_style_cleanup_still_suspends(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """``try/finally`` cleanup runs on suspension; the run is still parked."""
    cleanups: list[str] = []

    @fake_app.job("with-cleanup")
    def job(ctx):  # type: ignore[no-untyped-def]
        try:
            ctx.step.sleep("wait", "5m")
        except Exception:
            cleanups.append("swallowed")
        finally:
            cleanups.append("finally")
        return "ok"

    run = fake_app.start("with-cleanup")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status == "waiting"
    assert cleanups == ["finally"]
    clock.advance("5m")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status == "completed"
    assert cleanups == ["finally", "finally"]


# -- other BaseExceptions from user code are errors, not lost workers ------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_step_raising_system_exit_or_cancelled_error_fails_the_attempt_honestly(
    app: StackShift, flavour: str
) -> None:
    # A library that calls sys.exit() (a CLI entry point) or an async one that
    # raises CancelledError of its own: the attempt fails with that error, at
    # once, and is retried; the worker is alive and must not be reported lost.
    calls: Counter[int] = Counter()

    def export(attempt: int) -> str:
        calls[attempt] += 1
        if attempt == 1:
            raise SystemExit(2)
        return "exported"

    async def export_async(attempt: int) -> str:
        calls[attempt] += 1
        if attempt == 1:
            raise asyncio.CancelledError()
        return "exported"

    if flavour == "sync":

        @app.job("export", max_attempts=2, backoff={"base": "0.05s"})
        def job(ctx):  # type: ignore[no-untyped-def]
            return ctx.step.run("export", export, ctx.run.attempt)

    else:

        @app.job("export", max_attempts=2, backoff={"base": "0.05s"})
        async def job_async(ctx):  # type: ignore[no-untyped-def]
            return await ctx.step.run("export", export_async, ctx.run.attempt)

    with app.worker(lease="30s"):
        run = app.start("export")
        done = app.runs.wait(run.id, timeout="10s")  # far less than the lease
    assert done.status == "completed"
    assert done.result == "exported"
    assert calls == {1: 1, 2: 1}
    expected = "SystemExit" if flavour == "sync" else "CancelledError"
    attempts = app.runs.attempts(run.id)
    assert [(a.status, a.error and a.error.type) for a in attempts] == [
        ("failed", expected), ("completed", None)]
    failed = [e for e in app.runs.timeline(run.id) if e.kind == "step.failed"]
    assert [(e.step, e.data["error"]["type"]) for e in failed] == [("export", expected)]


def test_run_until_idle_records_a_system_exit_instead_of_raising_it(
    fake_app: StackShift
) -> None:
    @fake_app.job("exits", max_attempts=1)
    def exits(ctx):  # type: ignore[no-untyped-def]
        raise SystemExit("bye")

    run = fake_app.start("exits")
    assert run_until_idle(fake_app) == 1
    failed = fake_app.runs.get(run.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("SystemExit", "bye")


@pytest.mark.parametrize("signal_class", [SystemExit, KeyboardInterrupt])
def test_an_async_handler_raising_system_exit_leaves_the_worker_running_others(
    app: StackShift, signal_class: type[BaseException]
) -> None:
    # Raised out of a task, these would stop the worker's event loop: every
    # async run it claimed afterwards would stay running, never executed.
    @app.job("quits", max_attempts=1)
    async def quits(ctx):  # type: ignore[no-untyped-def]
        raise signal_class()

    @app.job("greet")
    async def greet(ctx):  # type: ignore[no-untyped-def]
        return await ctx.step.run("hello", lambda: "hello")

    with app.worker(lease="30s"):
        quitting = app.start("quits")
        failed = app.runs.wait(quitting.id, timeout="10s")
        after = [app.start("greet") for _ in range(3)]
        done = [app.runs.wait(r.id, timeout="10s") for r in after]
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == signal_class.__name__
    assert [d.status for d in done] == ["completed"] * 3
