"""Durable sleeps: ``ctx.step.sleep`` and ``ctx.step.sleep_until``.

Long sleeps run on a fake clock; one short sleep runs on the wall clock with a
real threaded worker to measure how late timers fire.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from stackshift import StackShift
from stackshift.durations import to_datetime
from stackshift.testing import FakeClock, run_until_idle


def _sleeper(app: StackShift, calls: Counter[str], effects: Counter[str]) -> None:
    """Job ``remind``: does some work, sleeps three days, does more work."""

    def record(what: str) -> str:
        effects[what] += 1
        return what

    @app.job("remind")
    def remind(ctx: Any) -> dict[str, Any]:
        calls[ctx.run.id] += 1
        ctx.step.run("before", record, "before")
        ctx.step.sleep("cool-off", "3d")
        ctx.step.run("after", record, "after")
        return {"reminded": True}


def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_a_three_day_sleep_wakes_on_time_and_not_before(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    effects: Counter[str] = Counter()
    _sleeper(fake_app, calls, effects)
    run = fake_app.start("remind", {})
    t0 = to_datetime(clock.now())
    assert run_until_idle(fake_app) == 1

    sleeping = fake_app.runs.get(run.id)
    assert sleeping.status == "waiting"
    assert sleeping.waiting_for is not None
    assert sleeping.waiting_for.kind == "sleep"
    assert sleeping.waiting_for.step == "cool-off"
    assert sleeping.waiting_for.until == t0 + timedelta(days=3)

    clock.advance(timedelta(days=3) - timedelta(seconds=1))
    assert run_until_idle(fake_app) == 0
    assert fake_app.runs.get(run.id).status == "waiting"
    assert effects["after"] == 0

    clock.advance("1s")
    assert run_until_idle(fake_app) == 1
    done = fake_app.runs.get(run.id)
    assert done.status == "completed"
    assert done.result == {"reminded": True}
    assert done.attempt == 1  # a resume is not a new attempt
    assert effects == Counter({"before": 1, "after": 1})
    assert calls[run.id] == 2

    timeline = fake_app.runs.timeline(run.id)
    slept = [e for e in timeline if e.kind == "run.waiting"]
    assert [(e.step, e.data["waiting_for"]) for e in slept] == [("cool-off", "sleep")]
    woke = [e for e in timeline if e.data.get("woke") == "cool-off"]
    assert len(woke) == 1 and woke[0].at == t0 + timedelta(days=3)
    steps = {s.key: s for s in fake_app.runs.steps(run.id)}
    assert steps["cool-off"].kind == "sleep" and steps["cool-off"].status == "completed"


def test_a_sleeping_run_holds_no_worker_slot(fake_app: StackShift, clock: FakeClock) -> None:
    calls: Counter[str] = Counter()
    effects: Counter[str] = Counter()
    _sleeper(fake_app, calls, effects)

    @fake_app.job("quick")
    def quick(ctx: Any) -> int:
        return int(ctx.payload["n"]) * 2

    worker = fake_app.worker(concurrency=1, maintenance_interval="0.02s", poll_interval="0.1s")
    with worker:
        sleeper = fake_app.start("remind", {})
        _wait_for(lambda: fake_app.runs.get(sleeper.id).status == "waiting")
        _wait_for(lambda: worker.active_runs == [])  # the slot is handed back

        others = [fake_app.start("quick", {"n": n}) for n in range(5)]
        for n, run in enumerate(others):
            assert fake_app.runs.wait(run.id, timeout=10).result == n * 2
        assert fake_app.runs.get(sleeper.id).status == "waiting"

        clock.advance("3d")
        assert fake_app.runs.wait(sleeper.id, timeout=10).status == "completed"
    assert effects == Counter({"before": 1, "after": 1})


def test_a_sleep_survives_a_worker_restart(db_url: str, clock: FakeClock) -> None:
    calls: Counter[str] = Counter()
    effects: Counter[str] = Counter()
    first = StackShift(db_url, clock=clock)
    _sleeper(first, calls, effects)
    with first.worker(concurrency=2, maintenance_interval="0.02s"):
        run = first.start("remind", {})
        _wait_for(lambda: first.runs.get(run.id).status == "waiting")
    first.close()

    clock.advance("1d")
    second = StackShift(db_url, clock=clock)
    try:
        _sleeper(second, calls, effects)
        assert second.runs.get(run.id).status == "waiting"
        clock.advance("2d")
        with second.worker(concurrency=2, maintenance_interval="0.02s"):
            done = second.runs.wait(run.id, timeout=10)
        assert done.status == "completed"
        assert done.attempt == 1
        assert effects == Counter({"before": 1, "after": 1})
        assert calls[run.id] == 2
    finally:
        second.close()


def test_sleep_until_an_aware_datetime(fake_app: StackShift, clock: FakeClock) -> None:
    tokyo = timezone(timedelta(hours=9))
    wake = datetime(2026, 1, 7, 8, 30, tzinfo=tokyo)  # 2026-01-06T23:30:00Z

    @fake_app.job("openShop")
    def open_shop(ctx: Any) -> str:
        ctx.step.sleep_until("opening", datetime.fromisoformat(ctx.payload["at"]))
        ctx.step.sleep_until("already-past", datetime(2020, 1, 1, tzinfo=tokyo))
        return "open"

    run = fake_app.start("openShop", {"at": wake.isoformat()})
    run_until_idle(fake_app)
    sleeping = fake_app.runs.get(run.id)
    assert sleeping.waiting_for is not None and sleeping.waiting_for.until == wake

    clock.set("2026-01-06T23:29:59Z")
    assert run_until_idle(fake_app) == 0
    clock.set("2026-01-06T23:30:00Z")
    assert run_until_idle(fake_app) == 1  # a time already past does not suspend
    done = fake_app.runs.get(run.id)
    assert done.status == "completed" and done.result == "open"


def test_a_short_real_sleep_wakes_less_than_a_second_late(app: StackShift) -> None:
    @app.job("nap")
    def nap(ctx: Any) -> dict[str, float]:
        before = ctx.step.run("before", time.time)
        ctx.step.sleep("nap", 0.3)
        after = ctx.step.run("after", time.time)
        return {"before": before, "after": after}

    with app.worker(concurrency=2):
        run = app.start("nap", {})
        done = app.runs.wait(run.id, timeout=10)
    assert done.status == "completed"
    lateness = done.result["after"] - done.result["before"] - 0.3
    print(f"real 0.3s sleep woke {lateness * 1000:.0f} ms late")
    assert 0 <= lateness < 1.0


def test_an_async_handler_sleeps_durably_too(fake_app: StackShift, clock: FakeClock) -> None:
    calls: Counter[str] = Counter()

    @fake_app.job("asyncNap")
    async def async_nap(ctx: Any) -> str:
        calls[ctx.run.id] += 1
        await ctx.step.sleep("first", "2h")
        await ctx.step.sleep_until("second", datetime.fromisoformat(ctx.payload["until"]))
        return "rested"

    run = fake_app.start("asyncNap", {"until": "2026-01-05T12:00:00+00:00"})
    run_until_idle(fake_app)
    first = fake_app.runs.get(run.id).waiting_for
    assert first is not None and first.step == "first"
    clock.advance("2h")  # 11:00Z
    run_until_idle(fake_app)
    second = fake_app.runs.get(run.id).waiting_for
    assert second is not None and second.step == "second"
    assert second.until == datetime(2026, 1, 5, 12, tzinfo=UTC)
    clock.advance("59m")
    assert run_until_idle(fake_app) == 0
    clock.advance("1m")
    assert run_until_idle(fake_app) == 1
    assert fake_app.runs.get(run.id).result == "rested"
    assert calls[run.id] == 3


def test_cancelling_a_sleeping_run_works_at_once_and_the_timer_stays_quiet(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    effects: Counter[str] = Counter()
    _sleeper(fake_app, calls, effects)
    run = fake_app.start("remind", {})
    run_until_idle(fake_app)
    cancelled = fake_app.runs.cancel(run.id)
    assert cancelled.status == "cancelled" and cancelled.waiting_for is None
    clock.advance("4d")
    assert run_until_idle(fake_app) == 0
    assert fake_app.runs.get(run.id).status == "cancelled"
    assert effects == Counter({"before": 1})
    # The sleep ended with the run: its step is not left sleeping ("waiting").
    steps = {s.key: s for s in fake_app.runs.steps(run.id)}
    assert steps["cool-off"].status == "failed"
    assert steps["cool-off"].error is not None
    assert (steps["cool-off"].error.type, steps["cool-off"].error.message) == (
        "Cancelled", "cancelled")
    assert steps["cool-off"].finished_at == cancelled.finished_at


def test_a_poller_that_hands_over_to_a_new_run_starts_it_once_across_a_retry(
        fake_app: StackShift, clock: FakeClock) -> None:
    """The guide's pattern for work without end: after a few rounds the run
    starts its successor from a step, keyed by its own id. The first attempt
    fails right after the successor was started, before the step is recorded:
    the retry's start finds that run by its key, so the chain does not fork."""
    failed_once: set[str] = set()

    @fake_app.job("track", max_attempts=2, backoff={"base": "1s", "jitter": False})
    def track(ctx: Any) -> str:
        checks = ctx.payload["checks"]
        for n in range(2):
            checks += 1
            if ctx.step.run(f"check-{n}", lambda c=checks: c >= 5):
                return f"done after {checks}"
            ctx.step.sleep(f"pause-{n}", "1m")

        def hand_over() -> str:
            successor = fake_app.start("track", {"checks": checks},
                                       idempotency_key=f"{ctx.run.id}:next")
            if ctx.run.id not in failed_once:
                failed_once.add(ctx.run.id)
                raise ConnectionError("lost before the step was recorded")
            return successor.id

        return ctx.step.run("hand-over", hand_over)

    first = fake_app.start("track", {"checks": 0})
    for _ in range(20):
        run_until_idle(fake_app)
        clock.advance("1m")
    runs = sorted(fake_app.runs.list(job="track").items, key=lambda r: r.created_at)
    assert [r.status for r in runs] == ["completed"] * 3
    assert runs[0].id == first.id and runs[-1].result == "done after 5"
    assert [r.result for r in runs[:2]] == [runs[1].id, runs[2].id]
    assert [r.attempt for r in runs] == [2, 2, 1]
    assert [r.idempotency_key for r in runs] == [None, f"{runs[0].id}:next",
                                                 f"{runs[1].id}:next"]
