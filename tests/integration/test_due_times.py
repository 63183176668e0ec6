"""Retries, sleeps, event timeouts and delayed starts begin when they fall due.

The worker here looks for work every 10 s and runs maintenance every 5 s on its
own; each of these is due 0.3 s after it is recorded, and must begin long before
either of those rounds would have found it: the worker wakes at the due time.
"""

from __future__ import annotations

import time
from typing import Any

from stackshift import StackShift

SLOW_ROUNDS = {"poll_interval": "10s", "maintenance_interval": "5s"}
#: a bound far above the due time (0.3 s) and far below the next regular round
LATE = 2.5


def test_a_retry_starts_when_its_backoff_ends(app: StackShift) -> None:
    @app.job("flaky", max_attempts=2, backoff={"base": "0.3s", "jitter": False})
    def flaky(ctx: Any) -> str:
        if ctx.run.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    with app.worker(**SLOW_ROUNDS):
        time.sleep(0.2)  # past the worker's start-up round
        run = app.start("flaky", {})
        done = app.runs.wait(run.id, timeout=20)
    assert done.status == "completed"
    first, second = app.runs.attempts(run.id)
    gap = (second.started_at - first.finished_at).total_seconds()
    # The retry's time is set as the attempt fails, a moment before its end is recorded.
    assert 0.25 <= gap < LATE, f"the retry started {gap:.2f} s after the failure"


def test_a_sleep_ends_on_time(app: StackShift) -> None:
    @app.job("nap")
    def nap(ctx: Any) -> dict[str, float]:
        before = ctx.step.run("before", time.time)
        ctx.step.sleep("nap", "0.3s")
        return {"before": before, "after": ctx.step.run("after", time.time)}

    with app.worker(**SLOW_ROUNDS):
        time.sleep(0.2)
        run = app.start("nap", {})
        done = app.runs.wait(run.id, timeout=20)
    assert done.status == "completed"
    slept = done.result["after"] - done.result["before"]
    assert 0.3 <= slept < LATE, f"a 0.3 s sleep took {slept:.2f} s"


def test_an_event_wait_times_out_on_time(app: StackShift) -> None:
    @app.job("await-reply")
    def await_reply(ctx: Any) -> dict[str, Any]:
        before = ctx.step.run("before", time.time)
        event = ctx.step.wait_for_event("reply", correlation_key="r:1", timeout="0.3s",
                                        on_timeout="continue")
        return {"before": before, "after": ctx.step.run("after", time.time),
                "event": event}

    with app.worker(**SLOW_ROUNDS):
        time.sleep(0.2)
        run = app.start("await-reply", {})
        done = app.runs.wait(run.id, timeout=20)
    assert done.status == "completed" and done.result["event"] is None
    waited = done.result["after"] - done.result["before"]
    assert 0.3 <= waited < LATE, f"a 0.3 s timeout took {waited:.2f} s"


def test_a_delayed_start_starts_on_time(app: StackShift) -> None:
    @app.job("later")
    def later(ctx: Any) -> float:
        return time.time()

    with app.worker(**SLOW_ROUNDS):
        time.sleep(0.2)
        started = time.time()
        run = app.start("later", {}, delay="0.3s")
        done = app.runs.wait(run.id, timeout=20)
    assert done.status == "completed"
    waited = done.result - started
    assert 0.3 <= waited < LATE, f"a start delayed 0.3 s began after {waited:.2f} s"


def test_a_schedule_ticks_on_time(app: StackShift) -> None:
    @app.job("tick")
    def tick(ctx: Any) -> float:
        return time.time()

    app.schedules.create("tick", cron="@every 1s")
    with app.worker(**SLOW_ROUNDS):
        time.sleep(3.5)
    started = sorted(run.result for run in app.runs.list(job="tick", status="completed"))
    assert len(started) >= 2, started
    # @every 1s ticks at whole seconds: each run began shortly after its tick.
    late = [at % 1 for at in started]
    assert max(late) < 0.5, late
