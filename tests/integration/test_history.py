"""Run history: statuses and the timeline, steps, logs, attempts, and the runs API."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from stackshift import (
    NonDeterminismError,
    NonRetriableError,
    RunNotFoundError,
    Settings,
    StackShift,
    Status,
    StepResultNotJSONError,
    StepResultTooLargeError,
    TimelineEntry,
)
from stackshift.dashboard import waterfall
from stackshift.engine.transitions import TERMINAL, check
from stackshift.testing import FakeClock, run_until_idle

# -- every status change writes a timeline entry ------------------------------------------

#: Timeline kinds that record a status change, and the status they move to.
STATUS_ENTRIES = {f"run.{s.value}": s.value for s in Status}
STATUS_ENTRIES |= {"attempt.started": "running", "run.resumed": "running"}
#: Entries that record something else.
OTHER_ENTRIES = {"step.completed", "step.failed", "attempt.failed", "run.duplicate_start",
                 "run.cancel_requested", "event.received", "wait.timed_out"}


def statuses(entries: list[TimelineEntry]) -> list[str]:
    """The sequence of statuses the timeline says the run went through."""
    seen: list[str] = []
    for entry in entries:
        assert entry.kind in STATUS_ENTRIES or entry.kind in OTHER_ENTRIES, entry.kind
        target = STATUS_ENTRIES.get(entry.kind)
        if target is None:
            continue
        if seen:
            check(seen[-1], target)  # every recorded move is in the table
            if "from" in entry.data:
                assert entry.data["from"] == seen[-1], entry
        seen.append(target)
    return seen


def assert_history_matches(app: StackShift, run_id: str) -> list[str]:
    """The timeline is complete: replaying it lands on the run's current status."""
    entries = app.runs.timeline(run_id)
    # In time order; entries of the same instant in the order they were written.
    assert entries == sorted(entries, key=lambda e: (e.at, e.id)), entries
    seq = statuses(entries)
    assert seq[0] in ("queued", "scheduled")
    assert seq[-1] == app.runs.get(run_id).status
    return seq


def test_timeline_of_a_run_that_completes(fake_app: StackShift) -> None:
    @fake_app.job("hello")
    def hello(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("greet", lambda: "hi")
        return "done"

    run = fake_app.start("hello")
    assert assert_history_matches(fake_app, run.id) == ["queued"]
    run_until_idle(fake_app)
    assert assert_history_matches(fake_app, run.id) == ["queued", "running", "completed"]
    assert [e.kind for e in fake_app.runs.timeline(run.id)] == [
        "run.queued", "attempt.started", "step.completed", "run.completed"]


def test_timeline_through_schedule_retries_and_failure(fake_app: StackShift,
                                                      clock: FakeClock) -> None:
    @fake_app.job("flaky", max_attempts=2)
    def flaky(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError(f"attempt {ctx.run.attempt} failed")

    run = fake_app.start("flaky", delay="1h")
    assert assert_history_matches(fake_app, run.id) == ["scheduled"]
    assert run_until_idle(fake_app) == 0
    clock.advance("1h")
    run_until_idle(fake_app)
    assert assert_history_matches(fake_app, run.id) == [
        "scheduled", "queued", "running", "retrying"]
    clock.advance("10m")
    run_until_idle(fake_app)
    assert assert_history_matches(fake_app, run.id) == [
        "scheduled", "queued", "running", "retrying", "queued", "running", "failed"]
    failed = [e for e in fake_app.runs.timeline(run.id) if e.kind == "attempt.failed"]
    assert [(e.attempt, e.data["error"]) for e in failed] == [
        (1, {"type": "RuntimeError", "message": "attempt 1 failed"}),
        (2, {"type": "RuntimeError", "message": "attempt 2 failed"}),
    ]
    retrying = next(e for e in fake_app.runs.timeline(run.id) if e.kind == "run.retrying")
    assert retrying.data["next_attempt_at"] > clock.now() - 600


def test_timeline_through_cancel_retry_sleep_and_resume(fake_app: StackShift,
                                                       clock: FakeClock) -> None:
    @fake_app.job("nap")
    def nap(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("rest", "30m")
        return "rested"

    run = fake_app.start("nap")
    fake_app.runs.cancel(run.id)
    fake_app.runs.retry(run.id)
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status == "waiting"
    clock.advance("30m")
    run_until_idle(fake_app)
    assert assert_history_matches(fake_app, run.id) == [
        "queued", "cancelled", "queued", "running", "waiting", "queued", "running",
        "completed"]


def test_timeline_when_cancelled_while_running_and_non_retriable(fake_app: StackShift) -> None:
    ids: list[str] = []

    @fake_app.job("stop-me")
    def stop_me(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("one", lambda: fake_app.runs.cancel(ids[0]) and 1)
        ctx.step.run("two", lambda: 2)

    @fake_app.job("refuse")
    def refuse(ctx):  # type: ignore[no-untyped-def]
        raise NonRetriableError("bad account")

    ids.append(fake_app.start("stop-me").id)
    refused = fake_app.start("refuse")
    run_until_idle(fake_app)
    assert assert_history_matches(fake_app, ids[0]) == ["queued", "running", "cancelled"]
    assert "run.cancel_requested" in [e.kind for e in fake_app.runs.timeline(ids[0])]
    assert assert_history_matches(fake_app, refused.id) == ["queued", "running", "failed"]


def test_timeline_is_in_time_order_when_an_entry_is_written_during_a_step(
        fake_app: StackShift, clock: FakeClock) -> None:
    """A step's entry is written when it ends, at the time it started: an entry
    written while it ran (a cancel asked 5 s in) comes after it, as the
    dashboard shows them, not before it as the order of writing would."""
    ids: list[str] = []

    def work() -> int:
        clock.advance("5s")
        fake_app.runs.cancel(ids[0], reason="enough")
        clock.advance("5s")
        return 1

    @fake_app.job("long-step")
    def long_step(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("work", work)
        ctx.step.run("never", lambda: 2)

    ids.append(fake_app.start("long-step").id)
    start = clock.now()
    run_until_idle(fake_app)
    entries = fake_app.runs.timeline(ids[0])
    assert [(e.kind, e.step, e.at.timestamp() - start) for e in entries] == [
        ("run.queued", None, 0), ("attempt.started", None, 0), ("step.completed", "work", 0),
        ("run.cancel_requested", None, 5), ("run.cancelled", None, 10)]
    assert [e.attempt for e in entries] == [None, 1, 1, None, 1]
    assert assert_history_matches(fake_app, ids[0]) == ["queued", "running", "cancelled"]


def test_scheduled_run_of_a_job_nobody_serves_still_becomes_queued(
    fake_app: StackShift, clock: FakeClock
) -> None:
    fake_app.job("served", lambda ctx: None)
    run = fake_app.start("not-deployed-yet", {"n": 1}, scheduled_at="2026-01-05T10:00:00Z")
    assert run.status == "scheduled"
    assert run.scheduled_at == datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    clock.advance("2h")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status == "queued"
    assert assert_history_matches(fake_app, run.id) == ["scheduled", "queued"]
    queued = fake_app.runs.timeline(run.id)[-1]
    # Stamped with the time it became due, not when maintenance noticed.
    assert queued.at == datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def test_terminal_runs_have_finish_times_and_others_do_not(fake_app: StackShift) -> None:
    fake_app.job("ok", lambda ctx: 1)
    done = fake_app.start("ok")
    waiting = fake_app.start("not-served")
    run_until_idle(fake_app)
    for run in (fake_app.runs.get(done.id), fake_app.runs.get(waiting.id)):
        assert (run.finished_at is not None) == (run.status in TERMINAL)


# -- steps ----------------------------------------------------------------------------------


def test_step_entries_and_records_carry_durations(fake_app: StackShift,
                                                 clock: FakeClock) -> None:
    def slow_lookup() -> str:
        clock.advance("2.5s")
        return "found"

    def slow_failure() -> None:
        clock.advance("1.25s")
        raise LookupError("record missing")

    @fake_app.job("timed", max_attempts=1)
    def timed(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("lookup", slow_lookup)
        ctx.step.run("enrich", slow_failure)

    run = fake_app.start("timed")
    run_until_idle(fake_app)
    entries = {e.step: e for e in fake_app.runs.timeline(run.id) if e.step}
    assert entries["lookup"].kind == "step.completed"
    assert entries["lookup"].data["duration"] == pytest.approx(2.5)
    assert entries["lookup"].data["function"].endswith("slow_lookup")
    assert entries["lookup"].attempt == 1
    assert entries["enrich"].kind == "step.failed"
    assert entries["enrich"].data["duration"] == pytest.approx(1.25)
    assert entries["enrich"].data["error"] == {"type": "LookupError",
                                               "message": "record missing"}

    steps = {s.key: s for s in fake_app.runs.steps(run.id)}
    lookup, enrich = steps["lookup"], steps["enrich"]
    assert lookup.finished_at is not None and lookup.started_at is not None
    assert (lookup.finished_at - lookup.started_at).total_seconds() == pytest.approx(2.5)
    assert (lookup.kind, lookup.status, lookup.result) == ("run", "completed", "found")
    assert lookup.function is not None and lookup.function.endswith("slow_lookup")
    assert enrich.status == "failed" and enrich.result is None
    assert enrich.error is not None and enrich.error.type == "LookupError"
    assert enrich.error.traceback is not None and "slow_failure" in enrich.error.traceback
    # The run's error is the step's error, raised into the handler.
    failed = fake_app.runs.get(run.id)
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == ("LookupError", "record missing")


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_repeated_step_names_are_numbered_occurrences_and_replayed(
    fake_app: StackShift, clock: FakeClock, flavour: str
) -> None:
    calls: list[int] = []

    def charge(n: int) -> int:
        calls.append(n)
        return n * 100

    if flavour == "sync":

        @fake_app.job("loop")
        def loop(ctx):  # type: ignore[no-untyped-def]
            total = sum(ctx.step.run("charge", charge, n) for n in range(3))
            if ctx.run.attempt == 1:
                raise RuntimeError("crash after the loop")
            return total

    else:

        @fake_app.job("loop")
        async def loop_async(ctx):  # type: ignore[no-untyped-def]
            total = 0
            for n in range(3):
                total += await ctx.step.run("charge", charge, n)
            if ctx.run.attempt == 1:
                raise RuntimeError("crash after the loop")
            return total

    run = fake_app.start("loop")
    run_until_idle(fake_app)
    clock.advance("1m")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).result == 300
    assert calls == [0, 1, 2]
    steps = fake_app.runs.steps(run.id)
    assert [(s.key, s.name, s.result) for s in steps] == [
        ("charge", "charge", 0), ("charge#2", "charge", 100), ("charge#3", "charge", 200)]


def test_steps_started_together_with_gather_keep_their_identity_on_replay(
    fake_app: StackShift, clock: FakeClock
) -> None:
    # Occurrences follow the order of the calls, not the order in which the
    # steps get going: after work outside steps (the boundary then asks the
    # store first, off the loop) they could otherwise swap places, and a replay
    # would hand each call another call's result.
    calls: list[int] = []

    async def price(n: int) -> int:
        calls.append(n)
        await asyncio.sleep(0.001 * (8 - n))
        return n * 10

    @fake_app.job("quote")
    async def quote(ctx):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.06)  # work that is not a step
        prices = await asyncio.gather(*(ctx.step.run("price", price, n) for n in range(8)))
        if ctx.run.attempt == 1:
            raise RuntimeError("crash after the prices")
        return prices

    runs = [fake_app.start("quote") for _ in range(3)]
    run_until_idle(fake_app)
    clock.advance("1m")
    run_until_idle(fake_app)
    for run in runs:
        done = fake_app.runs.get(run.id)
        assert done.status == "completed"
        assert done.result == [n * 10 for n in range(8)]
        steps = {s.key: s.result for s in fake_app.runs.steps(run.id)}
        assert steps == {("price" if n == 0 else f"price#{n + 1}"): n * 10 for n in range(8)}
    assert sorted(calls) == sorted(list(range(8)) * 3)  # replays ran nothing again


def test_a_step_still_running_when_a_gathered_one_fails_or_parks_the_run_ends_first(
    fake_app: StackShift, clock: FakeClock
) -> None:
    """Steps gathered with one that fails, a sleep or a wait end, and are recorded,
    before the attempt ends or the run parks: the next invocation replays their
    results instead of calling their functions again beside the first calls."""
    calls: list[str] = []

    async def slow(what: str) -> str:
        calls.append(f"{what} start")
        await asyncio.sleep(0.2)
        calls.append(f"{what} done")
        return what

    def slow_in_a_thread(what: str) -> str:
        calls.append(f"{what} start")
        time.sleep(0.2)
        calls.append(f"{what} done")
        return what

    async def stock(attempt: int) -> str:
        if attempt == 1:
            raise ConnectionError("stock service blip")
        return "in stock"

    @fake_app.job("order", max_attempts=2)
    async def order(ctx):  # type: ignore[no-untyped-def]
        return await asyncio.gather(ctx.step.run("charge", slow, "charge"),
                                    ctx.step.run("stock", stock, ctx.run.attempt))

    @fake_app.job("mail")
    async def mail(ctx):  # type: ignore[no-untyped-def]
        sent, _ = await asyncio.gather(ctx.step.run("email", slow_in_a_thread, "email"),
                                       ctx.step.sleep("nap", "1m"))
        return sent

    @fake_app.job("ping")
    async def ping(ctx):  # type: ignore[no-untyped-def]
        pinged, event = await asyncio.gather(ctx.step.run("ping", slow, "ping"),
                                             ctx.step.wait_for_event("go", timeout="1h"))
        return [pinged, event.payload]

    # The sleep first: it waits for the step gathered after it to start and end.
    @fake_app.job("nap-first")
    async def nap_first(ctx):  # type: ignore[no-untyped-def]
        _, sent = await asyncio.gather(ctx.step.sleep("nap", "1m"),
                                       ctx.step.run("email", slow_in_a_thread, "late"))
        return sent

    # Work since the last checkpoint: the step asks the store for a cancel before
    # it starts, while the sleep beside it would park the run.
    @fake_app.job("busy-first")
    async def busy_first(ctx):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.2)
        pinged, _ = await asyncio.gather(ctx.step.run("ping", slow, "busy"),
                                         ctx.step.sleep("nap", "1m"))
        return pinged

    jobs = ("order", "mail", "ping", "nap-first", "busy-first")
    runs = [fake_app.start(job) for job in jobs]
    run_until_idle(fake_app)
    assert [fake_app.runs.get(r.id).status for r in runs] == [
        "retrying", "waiting", "waiting", "waiting", "waiting"]
    started = ("charge", "email", "ping", "late", "busy")
    assert sorted(calls) == sorted(f"{what} {when}" for what in started
                                   for when in ("start", "done"))
    clock.advance("1m")
    fake_app.events.send("go", "now")
    run_until_idle(fake_app)
    assert [fake_app.runs.get(r.id).result for r in runs] == [
        ["charge", "in stock"], "email", ["ping", "now"], "late", "busy"]
    assert len(calls) == 10  # each function once
    assert [(s.key, s.attempt) for s in fake_app.runs.steps(runs[0].id)] == [
        ("charge", 1), ("stock", 2)]


def test_step_results_come_back_as_json(fake_app: StackShift) -> None:
    seen: list[Any] = []

    @fake_app.job("shapes")
    def shapes(ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.step.run("tuple", lambda: (1, 2)))
        return None

    fake_app.start("shapes")
    run_until_idle(fake_app)
    # The first run sees what a replay would see.
    assert seen == [[1, 2]]


SHIPPING = """
import os
from stackshift import StackShift
from stackshift.testing import run_until_idle

app = StackShift(os.environ["SHIPPING_DB"])


def load(order):
    return {"order": order}


@app.job("ship")
def ship(ctx):
    order = ctx.step.run("load", load, ctx.payload["order"])
    ctx.step.sleep("cool-off", "1s")
    return order


if __name__ == "__main__":
    run_until_idle(app)  # a worker in this program: the run sleeps
    app.close()
"""


def test_a_program_and_a_worker_importing_it_replay_the_same_functions(
        fake_app: StackShift, db_url: str, tmp_path: Path) -> None:
    """A run started and executed by ``python shipping.py`` (its functions in
    ``__main__``) resumes in a process that imports the file as ``shipping`` (as
    ``stackshift worker shipping:app`` does): the same code, no non-determinism."""
    (tmp_path / "shipping.py").write_text(SHIPPING)
    env = {**os.environ, "SHIPPING_DB": db_url}
    app = StackShift(db_url)
    try:
        run = app.start("ship", {"order": 7})
        subprocess.run([sys.executable, "shipping.py"], cwd=tmp_path, env=env, check=True,
                       timeout=60)
        (load,) = app.runs.steps(run.id)[:1]
        assert (app.runs.get(run.id).status, load.function) == ("waiting", "__main__.load")
        time.sleep(1.1)
        resume = "import shipping; from stackshift.testing import run_until_idle; " \
                 "run_until_idle(shipping.app); shipping.app.close()"
        subprocess.run([sys.executable, "-c", resume], cwd=tmp_path, env=env, check=True,
                       timeout=60)
        done = app.runs.get(run.id)
        assert (done.status, done.result, done.error) == ("completed", {"order": 7}, None)
    finally:
        app.close()


BILLING = """
import os
from stackshift import StackShift
from stackshift.testing import run_until_idle

app = StackShift(os.environ["BILLING_DB"])


def charge():
    return "charged"


class Refunds:
    def charge(self):
        return "refunded"


@app.job("bill")
def bill(ctx):
    fn = charge if os.environ["BILLING_VERSION"] == "1" else Refunds().charge
    result = ctx.step.run("money", fn)
    ctx.step.sleep("cool-off", "1s")
    return result


if __name__ == "__main__":
    run_until_idle(app)
    app.close()
"""


def test_a_program_whose_step_function_became_a_method_of_the_same_name_fails_the_run(
        db_url: str, tmp_path: Path) -> None:
    """``python billing.py`` records ``__main__.charge``; deployed again, the program
    calls ``Refunds.charge`` there: another function, though its name ends the same."""
    (tmp_path / "billing.py").write_text(BILLING)
    app = StackShift(db_url)
    try:
        run = app.start("bill")
        for version in ("1", "2"):
            subprocess.run([sys.executable, "billing.py"], cwd=tmp_path, check=True, timeout=60,
                           env={**os.environ, "BILLING_DB": db_url, "BILLING_VERSION": version})
            time.sleep(1.1)  # the sleep is over: the next version replays the step
        failed = app.runs.get(run.id)
        assert failed.status == "failed", failed
        assert failed.error is not None and failed.error.type == "NonDeterminismError"
        assert ("recorded as a run step of __main__.charge, but this replay reached a run step"
                " of __main__.Refunds.charge") in failed.error.message
    finally:
        app.close()


def test_a_file_loaded_by_its_path_and_by_its_dotted_name_replays_the_same_functions(
        db_url: str, tmp_path: Path) -> None:
    """``stackshift worker shop/shipping.py`` names the module ``shipping``, and
    ``stackshift worker shop.shipping:app`` names it ``shop.shipping``: a run
    parked under one resumes under the other, either way round."""
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "shipping.py").write_text(SHIPPING.replace(
        'if __name__ == "__main__":', "if False:"))
    env = {**os.environ, "SHIPPING_DB": db_url}
    by_path = ("import sys; sys.path.insert(0, 'shop'); import shipping as m; "
               "from stackshift.testing import run_until_idle; run_until_idle(m.app); "
               "m.app.close()")
    by_name = by_path.replace("sys.path.insert(0, 'shop'); import shipping", "import shop.shipping")
    app = StackShift(db_url)
    try:
        for first, then, recorded in ((by_path, by_name, "shipping.load"),
                                      (by_name, by_path, "shop.shipping.load")):
            run = app.start("ship", {"order": 7})
            subprocess.run([sys.executable, "-c", first], cwd=tmp_path, env=env, check=True,
                           timeout=60)
            (load,) = app.runs.steps(run.id)[:1]
            assert (app.runs.get(run.id).status, load.function) == ("waiting", recorded)
            time.sleep(1.1)
            subprocess.run([sys.executable, "-c", then], cwd=tmp_path, env=env, check=True,
                           timeout=60)
            done = app.runs.get(run.id)
            assert (done.status, done.result, done.error) == ("completed", {"order": 7}, None)
    finally:
        app.close()


def test_non_determinism_error_when_a_replay_finds_another_function(
    fake_app: StackShift, clock: FakeClock
) -> None:
    def charge_card() -> str:
        return "charged"

    def refund_card() -> str:
        return "refunded"

    @fake_app.job("billing", max_attempts=5)
    def billing(ctx):  # type: ignore[no-untyped-def]
        fn = charge_card if ctx.run.attempt == 1 else refund_card
        ctx.step.run("money", fn)
        if ctx.run.attempt == 1:
            raise RuntimeError("deploy in the middle of the run")
        return "finished"

    run = fake_app.start("billing")
    run_until_idle(fake_app)
    clock.advance("1m")
    run_until_idle(fake_app)
    failed = fake_app.runs.get(run.id)
    assert failed.status == "failed"
    assert failed.attempt == 2  # not retried although 3 attempts were left
    assert failed.result is None
    assert failed.error is not None and failed.error.type == "NonDeterminismError"
    assert "'money'" in failed.error.message
    assert "charge_card" in failed.error.message and "refund_card" in failed.error.message
    clock.advance("1h")
    assert run_until_idle(fake_app) == 0
    # The recorded step was not overwritten by the new function.
    (money,) = fake_app.runs.steps(run.id)
    assert money.result == "charged" and money.function is not None
    assert money.function.endswith("charge_card")


def test_non_determinism_error_when_a_step_changes_kind(fake_app: StackShift,
                                                       clock: FakeClock) -> None:
    @fake_app.job("shape-shifter", max_attempts=3)
    def shape_shifter(ctx):  # type: ignore[no-untyped-def]
        if ctx.run.attempt == 1:
            ctx.step.run("pause", lambda: 1)
            raise RuntimeError("retry me")
        ctx.step.sleep("pause", "1m")

    run = fake_app.start("shape-shifter")
    run_until_idle(fake_app)
    clock.advance("1m")
    run_until_idle(fake_app)
    failed = fake_app.runs.get(run.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "NonDeterminismError"
    assert issubclass(NonDeterminismError, Exception)


ALREADY_RAN = ("The step's function already ran, but its result was not stored; unless the"
               " handler catches this error, the run fails now without retrying, as another"
               " attempt would run the function again.")


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_step_result_over_the_size_limit_fails_the_run_without_retrying(
        db_url: str, clock: FakeClock, flavour: str) -> None:
    calls: list[str] = []

    def dump(size: int) -> str:
        calls.append(f"dump {size}")
        return "x" * size

    with StackShift(db_url, clock=clock, settings=Settings(max_step_result_bytes=1000)) as app:
        if flavour == "sync":
            @app.job("big", max_attempts=3)
            def big(ctx):  # type: ignore[no-untyped-def]
                ctx.step.run("small", dump, 10)
                ctx.step.run("huge", dump, 2000)
                return "never"
        else:
            @app.job("big", max_attempts=3)
            async def big(ctx):  # type: ignore[no-untyped-def]
                await ctx.step.run("small", dump, 10)
                await ctx.step.run("huge", dump, 2000)
                return "never"

        run = app.start("big")
        run_until_idle(app)
        clock.advance("1h")  # a retry, had one been planned, would be due
        run_until_idle(app)
        failed = app.runs.get(run.id)
        steps = {s.key: s for s in app.runs.steps(run.id)}
    assert calls == ["dump 10", "dump 2000"]
    assert steps["small"].status == "completed"
    huge = steps["huge"]
    assert huge.status == "failed" and huge.result is None
    assert huge.error is not None and huge.error.type == "StepResultTooLargeError"
    assert huge.error.message == (
        "result of step 'huge' is 2002 bytes as JSON, over the limit of 1000 bytes. "
        + ALREADY_RAN + " Return less from the step's function (store large data elsewhere"
        " and return a reference to it), or raise the limit with"
        " Settings(max_step_result_bytes=...)")
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert failed.error is not None and failed.error.type == "StepResultTooLargeError"
    assert failed.error.message == huge.error.message
    assert issubclass(StepResultTooLargeError, ValueError)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_non_json_step_result_runs_its_function_once_and_fails_the_run(
        fake_app: StackShift, clock: FakeClock, flavour: str) -> None:
    """A step with a side effect (charging a card) whose result is not JSON: the
    function ran, its result cannot be stored, and retrying would charge again."""
    charges: list[str] = []

    def charge(order: str) -> dict[str, Any]:
        charges.append(order)
        return {"order": order, "amount": Decimal("12.50")}

    if flavour == "sync":
        @fake_app.job("checkout", max_attempts=3)
        def checkout(ctx):  # type: ignore[no-untyped-def]
            return ctx.step.run("charge-card", charge, ctx.payload["order"])
    else:
        @fake_app.job("checkout", max_attempts=3)
        async def checkout(ctx):  # type: ignore[no-untyped-def]
            return await ctx.step.run("charge-card", charge, ctx.payload["order"])

    run = fake_app.start("checkout", {"order": "o-1"})
    run_until_idle(fake_app)
    clock.advance("1h")
    run_until_idle(fake_app)
    failed = fake_app.runs.get(run.id)
    (step,) = fake_app.runs.steps(run.id)
    assert charges == ["o-1"]
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert [a.error.type for a in fake_app.runs.attempts(run.id)  # type: ignore[union-attr]
            ] == ["StepResultNotJSONError"]
    assert step.status == "failed" and step.result is None
    assert step.error is not None and step.error.type == "StepResultNotJSONError"
    assert step.error.message == (
        "result of step 'charge-card': Decimal is not JSON-serialisable (use dict, list, str,"
        " int, float, bool, None, a pydantic model or a dataclass). " + ALREADY_RAN
        + " Return JSON from the step's function instead (for example str() of a Decimal,"
        " list() of a set)")
    assert failed.error is not None and failed.error.type == "StepResultNotJSONError"
    assert failed.error.message == step.error.message
    assert issubclass(StepResultNotJSONError, TypeError)
    assert issubclass(StepResultNotJSONError, NonRetriableError)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_handler_may_catch_an_unstorable_step_result_as_a_type_error(
        fake_app: StackShift, flavour: str) -> None:
    def tags() -> set[str]:
        return {"a"}

    if flavour == "sync":
        @fake_app.job("tagger", max_attempts=3)
        def tagger(ctx):  # type: ignore[no-untyped-def]
            try:
                return ctx.step.run("tags", tags)
            except TypeError as exc:
                return {"fallback": type(exc).__name__}
    else:
        @fake_app.job("tagger", max_attempts=3)
        async def tagger(ctx):  # type: ignore[no-untyped-def]
            try:
                return await ctx.step.run("tags", tags)
            except TypeError as exc:
                return {"fallback": type(exc).__name__}

    run = fake_app.start("tagger")
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    (step,) = fake_app.runs.steps(run.id)
    assert (done.status, done.attempt) == ("completed", 1)
    assert done.result == {"fallback": "StepResultNotJSONError"}
    assert step.status == "failed" and step.error is not None
    assert step.error.message.startswith("result of step 'tags': set is not JSON-serialisable")


def test_text_utf8_cannot_hold_in_a_result_fails_the_run_without_retrying(
        fake_app: StackShift) -> None:
    calls: list[str] = []

    def surrogate() -> str:
        calls.append("step")
        return "\ud800"

    fake_app.job("in-a-step", lambda ctx: ctx.step.run("bad", surrogate), max_attempts=3)
    fake_app.job("as-the-result", lambda ctx: "\ud800", max_attempts=3)
    in_step = fake_app.start("in-a-step")
    as_result = fake_app.start("as-the-result")
    run_until_idle(fake_app)
    step_run, result_run = fake_app.runs.get(in_step.id), fake_app.runs.get(as_result.id)
    assert calls == ["step"]
    assert (step_run.status, step_run.attempt) == ("failed", 1)
    assert step_run.error is not None and step_run.error.type == "StepResultNotJSONError"
    assert step_run.error.message.startswith(
        "result of step 'bad': '\\ud800' is a lone surrogate, which UTF-8 text cannot hold. ")
    assert (result_run.status, result_run.attempt) == ("failed", 1)
    assert result_run.error is not None and result_run.error.message == (
        "job result: '\\ud800' is a lone surrogate, which UTF-8 text cannot hold")


def test_job_result_over_the_size_limit_fails_without_retrying(db_url: str,
                                                               clock: FakeClock) -> None:
    with StackShift(db_url, clock=clock, settings=Settings(max_step_result_bytes=100)) as app:
        app.job("bulky", lambda ctx: "y" * 500, max_attempts=3)
        run = app.start("bulky")
        run_until_idle(app)
        failed = app.runs.get(run.id)
    assert failed.status == "failed" and failed.attempt == 1
    assert failed.error is not None and "over the limit of 100 bytes" in failed.error.message


# -- logs -------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_logs_are_stored_with_run_attempt_and_step(fake_app: StackShift, clock: FakeClock,
                                                   flavour: str) -> None:
    plain = logging.getLogger("x")

    def fetch(attempt: int) -> int:
        plain.warning("plain logger inside a step, attempt %d", attempt)
        if attempt == 1:
            raise ConnectionError("flaky network")
        return 7

    if flavour == "sync":

        @fake_app.job("chatty")
        def chatty(ctx):  # type: ignore[no-untyped-def]
            ctx.log.info("starting attempt %d", ctx.run.attempt)
            value = ctx.step.run("fetch", fetch, ctx.run.attempt)
            ctx.log.debug("got %s", value)
            plain.error("plain logger outside steps")
            return value

    else:

        @fake_app.job("chatty")
        async def chatty(ctx):  # type: ignore[no-untyped-def]
            ctx.log.info("starting attempt %d", ctx.run.attempt)
            value = await ctx.step.run("fetch", fetch, ctx.run.attempt)
            ctx.log.debug("got %s", value)
            plain.error("plain logger outside steps")
            return value

    run = fake_app.start("chatty")
    other = fake_app.start("chatty")
    run_until_idle(fake_app)
    plain.warning("not inside any handler")  # not stored anywhere
    clock.advance("1m")
    run_until_idle(fake_app)

    logs = fake_app.runs.logs(run.id)
    assert [(e.attempt, e.step, e.level, e.logger, e.message) for e in logs] == [
        (1, None, "INFO", "stackshift.run", "starting attempt 1"),
        (1, "fetch", "WARNING", "x", "plain logger inside a step, attempt 1"),
        (2, None, "INFO", "stackshift.run", "starting attempt 2"),
        (2, "fetch", "WARNING", "x", "plain logger inside a step, attempt 2"),
        (2, None, "DEBUG", "stackshift.run", "got 7"),
        (2, None, "ERROR", "x", "plain logger outside steps"),
    ]
    assert all(e.run_id == run.id for e in logs)
    assert all(e.at.tzinfo is not None for e in logs)
    # Each run keeps its own logs.
    assert len(fake_app.runs.logs(other.id)) == len(logs)
    assert {e.run_id for e in fake_app.runs.logs(other.id)} == {other.id}


def test_a_long_log_is_read_in_pages_and_its_latest_records_alone(
        fake_app: StackShift) -> None:
    """``runs.logs(limit=)`` gives the first records after ``after``; pages read
    that way add up to the whole log, once each, in order, and never reach into
    another run's. ``runs.logs(last=)`` gives the latest records alone. The
    dashboard reads only a run's latest records and how many came before them."""
    @fake_app.job("counting")
    def counting(ctx):  # type: ignore[no-untyped-def]
        for n in range(ctx.payload):
            ctx.log.info("record %d", n)

    run = fake_app.start("counting", 25)
    other = fake_app.start("counting", 3)
    quiet = fake_app.start("counting", 0)
    run_until_idle(fake_app)
    whole = fake_app.runs.logs(run.id)
    assert [e.message for e in whole] == [f"record {n}" for n in range(25)]

    pages, after = [], 0
    while True:
        page = fake_app.runs.logs(run.id, after=after, limit=10)
        pages.append([e.message for e in page])
        if len(page) < 10:
            break
        after = page[-1].id
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [m for p in pages for m in p] == [e.message for e in whole]
    assert fake_app.runs.logs(run.id, after=whole[-1].id, limit=10) == []
    assert [e.message for e in fake_app.runs.logs(run.id, after=whole[3].id, limit=2)] == [
        "record 4", "record 5"]
    assert len(fake_app.runs.logs(run.id, limit=10_000)) == 25
    for bad in (0, -1, 10_001, True, "5", 2.0):
        with pytest.raises(ValueError, match="limit must be a whole number from 1 to 10,000"):
            fake_app.runs.logs(run.id, limit=bad)  # type: ignore[arg-type]
    with pytest.raises(RunNotFoundError):
        fake_app.runs.logs("run_missing", limit=5)

    # The latest records alone, oldest first.
    assert [e.message for e in fake_app.runs.logs(run.id, last=3)] == [
        "record 22", "record 23", "record 24"]
    assert fake_app.runs.logs(run.id, last=25) == whole
    assert fake_app.runs.logs(run.id, last=10_000) == whole
    assert fake_app.runs.logs(quiet.id, last=5) == []
    for bad in (0, -1, 10_001, True, "5", 2.0):
        with pytest.raises(ValueError, match="last must be a whole number from 1 to 10,000"):
            fake_app.runs.logs(run.id, last=bad)  # type: ignore[arg-type]
    for mixed in ({"after": 0}, {"limit": 5}, {"after": whole[3].id, "limit": 2}):
        with pytest.raises(ValueError, match=r"give last .* or after and limit .*, not both"):
            fake_app.runs.logs(run.id, last=3, **mixed)
    with pytest.raises(RunNotFoundError):
        fake_app.runs.logs("run_missing", last=5)

    service = fake_app._service
    latest, earlier = service.latest_logs(run.id, 10)
    assert [e.message for e in latest] == [f"record {n}" for n in range(15, 25)]
    assert earlier == 15
    assert service.latest_logs(run.id, 25) == (whole, 0)
    assert service.latest_logs(run.id, 100) == (whole, 0)
    assert [e.message for e in service.latest_logs(other.id, 2)[0]] == ["record 1", "record 2"]
    assert service.latest_logs(other.id, 2)[1] == 1
    assert service.latest_logs(quiet.id, 10) == ([], 0)


def test_the_dashboard_reads_a_runs_latest_steps_alone(fake_app: StackShift) -> None:
    """The run page's steps table reads a run's latest steps and how many came
    before them: the end of what ``runs.steps`` lists, in its order."""
    @fake_app.job("looping")
    def looping(ctx):  # type: ignore[no-untyped-def]
        for n in range(ctx.payload):
            ctx.step.run(f"item-{n}", lambda n=n: n * n)
            ctx.step.run("again", lambda: None)  # one name, many occurrences

    run = fake_app.start("looping", 13)
    other = fake_app.start("looping", 2)
    quiet = fake_app.start("looping", 0)
    run_until_idle(fake_app)
    service = fake_app._service
    whole = service.steps(run.id)
    assert len(whole) == 26
    latest, earlier = service.latest_steps(run.id, 10)
    assert (latest, earlier) == (whole[16:], 16)
    assert {s.name: s.result for s in latest if s.name != "again"} == {
        s.name: s.result for s in whole[16:] if s.name != "again"}
    assert service.latest_steps(run.id, 26) == (whole, 0)
    assert service.latest_steps(run.id, 500) == (whole, 0)
    assert service.latest_steps(other.id, 3) == (service.steps(other.id)[1:], 1)
    assert service.latest_steps(quiet.id, 10) == ([], 0)
    with pytest.raises(RunNotFoundError):
        service.latest_steps("run_missing", 10)


def _declined() -> None:
    raise ValueError("declined")


def test_the_run_pages_waterfall_reads_the_entries_of_the_latest_steps_alone(
        fake_app: StackShift, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run page reads the timeline entries of a run's latest steps, with the
    rest of its timeline, and draws from them the waterfall the whole timeline
    gives (its latest steps), across attempts, a failed step, a sleep, a wait and
    an early event, wherever the cut falls; its table of entries reads the latest."""
    @fake_app.job("journey", max_attempts=2)
    def journey(ctx):  # type: ignore[no-untyped-def]
        for n in range(4):
            ctx.step.run(f"a-{n}", lambda n=n: n)
        if ctx.run.attempt == 1:
            ctx.step.run("charge", _declined)
        ctx.step.sleep("rest", "10m")
        for n in range(3):
            ctx.step.run(f"b-{n}", lambda n=n: n)
        ctx.step.wait_for_event("paid", correlation_key="k", timeout="1h")
        ctx.step.wait_for_event("shipped", correlation_key="k", timeout="1h")
        for n in range(3):
            ctx.step.run(f"c-{n}", lambda n=n: n)

    run = fake_app.start("journey")
    run_until_idle(fake_app)  # attempt 1 fails on its fifth step
    clock.advance("1h")
    run_until_idle(fake_app)  # attempt 2 sleeps
    clock.advance("10m")
    run_until_idle(fake_app)  # and waits for "paid"
    fake_app.events.send("shipped", correlation_key="k")  # before its wait
    fake_app.events.send("paid", correlation_key="k")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status == "completed"
    service = fake_app._service
    whole = service.timeline(run.id)
    kinds = [e.kind for e in whole]
    assert kinds.count("step.completed") == 10 and kinds.count("step.failed") == 1
    done, attempts = service.get_run(run.id), service.attempts(run.id)
    every = ["a-0", "a-1", "a-2", "a-3", "charge", "rest", "b-0", "b-1", "b-2", "paid", "shipped",
             "c-0", "c-1", "c-2"]
    steps_at = [i for i, label in enumerate(every) if label not in ("rest", "paid", "shipped")]
    pauses = ("run.waiting", "run.resumed", "event.received", "wait.timed_out")
    drawn: list[list[str]] = []
    for most in range(1, 20):
        monkeypatch.setattr(waterfall, "MAX_STEP_ROWS", most)
        chart = waterfall.build(done, whole, attempts, clock.now())
        outline, earlier = service.timeline_outline(run.id, most)
        read = [e for e in outline if e.kind.startswith("step.")]
        assert len(read) == min(most, 11)
        # Left out: the rows before the first step read, steps, sleeps and waits,
        # whose pauses are not read either.
        assert earlier == (steps_at[-most] if most <= 11 else 0)
        assert not [e for e in outline if (e.at, e.id) < (read[0].at, read[0].id) and (
            e.kind in pauses or e.data.get("from") == "waiting")]
        assert repr(waterfall.build(done, outline, attempts, clock.now(),
                                    earlier_steps=earlier)) == repr(chart)
        drawn.append([r.label for r in chart.rows if r.kind != "attempt"])
    assert drawn == [every[-most:] for most in range(1, 20)]  # the latest
    assert service.latest_timeline(run.id, 5) == (whole[-5:], len(whole) - 5)
    assert service.latest_timeline(run.id, len(whole)) == (whole, 0)
    with pytest.raises(RunNotFoundError):
        service.timeline_outline("run_missing", 10)


def test_the_run_pages_waterfall_reads_as_much_of_a_poller_however_often_it_slept(
        fake_app: StackShift, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that checked and slept 40 and then 120 times: the waterfall of its
    latest 10 steps reads the same number of entries, draws what the whole
    timeline gives, and counts every earlier check and sleep as not drawn."""
    monkeypatch.setattr(waterfall, "MAX_STEP_ROWS", 10)

    @fake_app.job("poller")
    def poller(ctx):  # type: ignore[no-untyped-def]
        for n in range(ctx.payload["times"]):
            ctx.step.run(f"check-{n}", lambda: None)
            ctx.step.sleep(f"pause-{n}", "1m")

    service = fake_app._service
    read = []
    for times in (40, 120):
        run = fake_app.start("poller", {"times": times})
        for _ in range(times + 1):
            run_until_idle(fake_app)
            clock.advance("1m")
        done = service.get_run(run.id)
        assert done.status == "completed"
        whole, attempts = service.timeline(run.id), service.attempts(run.id)
        chart = waterfall.build(done, whole, attempts, clock.now())
        outline, earlier = service.timeline_outline(run.id, 10)
        assert earlier == chart.hidden_steps - 10 == 2 * times - 20
        assert repr(waterfall.build(done, outline, attempts, clock.now(),
                                    earlier_steps=earlier)) == repr(chart)
        assert [r.label for r in chart.rows][-2:] == [f"check-{times - 1}", f"pause-{times - 1}"]
        read.append(len(outline))
    assert len(whole) > 4 * 120 and read[0] == read[1] < 60


def test_logged_exceptions_keep_their_traceback(fake_app: StackShift) -> None:
    @fake_app.job("oops")
    def oops(ctx):  # type: ignore[no-untyped-def]
        try:
            {}["missing"]
        except KeyError:
            ctx.log.exception("lookup failed")
        return None

    run = fake_app.start("oops")
    run_until_idle(fake_app)
    (entry,) = fake_app.runs.logs(run.id)
    assert entry.level == "ERROR"
    assert entry.message.startswith("lookup failed\nTraceback")
    assert "KeyError: 'missing'" in entry.message


class _Tagged(logging.Filter):
    """Sets a field on every record of its logger, as a logging filter may."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.region = "eu-west"
        record._private = "left out"  # a private name is not a field
        return True


def test_a_records_fields_are_kept_with_it_in_the_order_given(fake_app: StackShift) -> None:
    """What a record is logged with besides its message (``extra=``, or what a
    filter of its logger sets) is kept as a JSON object: JSON values as they
    are, dates and times in ISO 8601, any other value as its ``repr``."""
    tagged = logging.getLogger("tagged")
    tag = _Tagged()
    tagged.addFilter(tag)

    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque 7>"

    @fake_app.job("charge")
    def charge(ctx):  # type: ignore[no-untyped-def]
        ctx.log.info("charging %s", "o-1", extra={
            "order": "o-1", "amount": 12.5, "paid": False, "items": [{"sku": "a", "n": 2}],
            "when": datetime(2026, 1, 5, 9, 30, tzinfo=UTC), "price": Decimal("9.99"),
            "opaque": Opaque(), "ratio": float("nan"), "nothing": None})
        ctx.step.run("fetch", lambda: tagged.warning("from a library"))
        ctx.log.info("no fields")
        return None

    try:
        run = fake_app.start("charge")
        run_until_idle(fake_app)
    finally:
        tagged.removeFilter(tag)
    first, second, third = fake_app.runs.logs(run.id)
    assert first.message == "charging o-1"
    assert list(first.fields.items()) == [
        ("order", "o-1"), ("amount", 12.5), ("paid", False), ("items", [{"sku": "a", "n": 2}]),
        ("when", "2026-01-05T09:30:00+00:00"), ("price", "Decimal('9.99')"),
        ("opaque", "<Opaque 7>"), ("ratio", "nan"), ("nothing", None)]
    assert (second.step, second.logger, second.fields) == ("fetch", "tagged",
                                                           {"region": "eu-west"})
    assert third.fields == {}


def test_long_fields_are_cut_and_those_past_the_limit_are_named_in_the_message(
        fake_app: StackShift) -> None:
    """A value of more than 1,024 characters of JSON keeps its start; fields
    past 16 KiB of JSON in all are left out, and the message names them."""
    @fake_app.job("verbose")
    def verbose(ctx):  # type: ignore[no-untyped-def]
        ctx.log.info("long value", extra={"body": "x" * 5_000, "short": 1})
        ctx.log.info("many", extra={f"f{n:02}": "y" * 1_000 for n in range(20)})
        return None

    run = fake_app.start("verbose")
    run_until_idle(fake_app)
    long, many = fake_app.runs.logs(run.id)
    assert long.fields == {
        "body": '"' + "x" * 1_023 + "[... 3978 characters cut ...]", "short": 1}
    kept = list(many.fields)
    assert kept == [f"f{n:02}" for n in range(len(kept))] and 10 < len(kept) < 20
    left_out = ", ".join(f"f{n:02}" for n in range(len(kept), 20))
    assert many.message == f"many\n[fields left out, past 16384 characters of them: {left_out}]"


def test_a_file_name_no_store_can_hold_is_logged_and_fails_the_run_readably(
        fake_app: StackShift) -> None:
    """A name decoded with ``surrogateescape`` (``os.listdir`` of a file whose
    name is not UTF-8) holds lone surrogates, which no store can hold: logged,
    in a field or in an error, each shows as U+FFFD rather than leave the run
    running with nothing recorded."""
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")

    @fake_app.job("import", max_attempts=1)
    def import_file(ctx):  # type: ignore[no-untyped-def]
        ctx.log.info("opening %s", name, extra={"file": name, "names": [name]})
        raise FileNotFoundError(f"no such file: {name}")

    run = fake_app.start("import")
    run_until_idle(fake_app)
    failed = fake_app.runs.get(run.id)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.message == "no such file: report-\ufffd.csv"
    assert failed.error.traceback is not None
    assert "FileNotFoundError: no such file: report-\ufffd.csv" in failed.error.traceback
    (entry,) = fake_app.runs.logs(run.id)
    assert entry.message == "opening report-\ufffd.csv"
    assert entry.fields == {"file": "report-\ufffd.csv", "names": ["report-\ufffd.csv"]}
    (attempt,) = fake_app.runs.attempts(run.id)
    assert attempt.error is not None and attempt.error.message == failed.error.message


def test_a_very_long_log_message_keeps_its_beginning_and_its_end(fake_app: StackShift) -> None:
    """A record of megabytes is kept as its first and last 32,768 characters with
    the count of those cut between them: a traceback still names its exception."""
    @fake_app.job("verbose")
    def verbose(ctx):  # type: ignore[no-untyped-def]
        ctx.log.info("head " + "x" * 2_000_000 + " tail")
        try:
            raise ValueError("deep" * 100_000)
        except ValueError:
            ctx.log.exception("failed")
        ctx.log.info("y" * 65_536)  # at the limit: kept whole
        return None

    run = fake_app.start("verbose")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).status == "completed"
    long, failed, whole = fake_app.runs.logs(run.id)
    cut = len("head ") + 2_000_000 + len(" tail") - 65_536
    assert long.message == ("head " + "x" * (32_768 - 5) + f"\n[... {cut} characters cut ...]\n"
                            + "x" * (32_768 - 5) + " tail")
    assert failed.level == "ERROR"
    assert failed.message.startswith("failed\nTraceback (most recent call last):")
    assert failed.message.endswith("deepdeep") and "ValueError: deep" in failed.message
    assert len(failed.message) < 65_600 and "characters cut ...]" in failed.message
    assert whole.message == "y" * 65_536


def test_errors_of_megabytes_keep_their_beginning_and_their_end(fake_app: StackShift) -> None:
    """As a log record's message: a step's error and the run's error (message and
    traceback) keep their first and last 32,768 characters, with what was cut
    between them; a NonRetriableError still fails the run at once."""
    def upstream() -> None:
        raise ValueError("upstream said: " + "q" * 2_000_000 + " end")

    @fake_app.job("loud", max_attempts=3)
    def loud(ctx):  # type: ignore[no-untyped-def]
        with contextlib.suppress(ValueError):
            ctx.step.run("call", upstream)
        raise NonRetriableError("card declined; " + "z" * 3_500_000 + " end")

    run = fake_app.start("loud")
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert (done.status, done.attempt) == ("failed", 1)
    assert done.error is not None and done.error.type == "NonRetriableError"
    cut = len("card declined; ") + 3_500_000 + len(" end") - 65_536
    assert done.error.message == ("card declined; " + "z" * (32_768 - 15)
                                  + f"\n[... {cut} characters cut ...]\n" + "z" * (32_768 - 4)
                                  + " end")
    assert done.error.traceback is not None and len(done.error.traceback) < 65_600
    assert "characters cut ...]" in done.error.traceback
    (attempt,) = fake_app.runs.attempts(run.id)
    assert attempt.error is not None and attempt.error.message == done.error.message
    (step,) = fake_app.runs.steps(run.id)
    assert step.error is not None and step.error.message.endswith("qqq end")
    assert len(step.error.message) < 65_600


def test_records_of_a_handlers_threads_are_kept_when_they_run_in_its_context(
        fake_app: StackShift) -> None:
    """As the guide says: a thread run in a copy of the handler's context logs to
    the run (with the step it was started in); a bare thread does not."""
    def in_thread(target: Any) -> None:
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()

    @fake_app.job("threads")
    def threads(ctx):  # type: ignore[no-untyped-def]
        in_thread(lambda: ctx.log.info("bare thread"))
        def work() -> None:
            copied = contextvars.copy_context()  # taken in the handler's thread
            in_thread(lambda: copied.run(ctx.log.info, "copied context"))

        ctx.step.run("work", work)

    run = fake_app.start("threads")
    run_until_idle(fake_app)
    assert [(e.step, e.message) for e in fake_app.runs.logs(run.id)] == [
        ("work", "copied context")]


def test_logs_of_a_threaded_worker_go_to_the_right_runs(app: StackShift) -> None:
    @app.job("talk")
    def talk(ctx):  # type: ignore[no-untyped-def]
        for i in range(3):
            ctx.step.run("say", lambda i=i: logging.getLogger("x").warning(
                "%s says %d", ctx.payload["who"], i))
            time.sleep(0.01)

    with app.worker(concurrency=4):
        runs = [app.start("talk", {"who": who}) for who in ("ada", "bob", "cy", "di")]
        for run in runs:
            app.runs.wait(run.id, timeout="10s")
    for run in runs:
        who = run.payload["who"]
        assert [(e.step, e.message) for e in app.runs.logs(run.id)] == [
            ("say", f"{who} says 0"), ("say#2", f"{who} says 1"), ("say#3", f"{who} says 2")]


def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_long_steps_records_show_while_it_runs(app: StackShift, flavour: str) -> None:
    """A worker on the database writes pending records with each lease renewal
    (every third of the lease), not only at the step's checkpoint."""
    release = threading.Event()

    if flavour == "sync":
        @app.job("long")
        def long(ctx):  # type: ignore[no-untyped-def]
            def work() -> None:
                ctx.log.info("started")
                release.wait(20)
            ctx.step.run("work", work)
            ctx.log.info("done")
    else:
        @app.job("long")
        async def long(ctx):  # type: ignore[no-untyped-def]
            async def work() -> None:
                ctx.log.info("started")
                await asyncio.to_thread(release.wait, 20)
            await ctx.step.run("work", work)
            ctx.log.info("done")

    with app.worker(concurrency=1, lease="3s"):
        run = app.start("long")
        wait_for(lambda: app.runs.logs(run.id), "the first record, while the step runs")
        assert app.runs.get(run.id).status == "running"
        assert [(e.step, e.message) for e in app.runs.logs(run.id)] == [("work", "started")]
        release.set()
        app.runs.wait(run.id, timeout="10s")
    assert [(e.step, e.message) for e in app.runs.logs(run.id)] == [
        ("work", "started"), (None, "done")]


def test_a_tight_logging_loop_is_written_in_batches_and_kept_whole(app: StackShift) -> None:
    """Records pile up in the worker's memory only to a bound: every thousand are
    written at once, and none is lost or written twice."""
    release = threading.Event()

    @app.job("chatty")
    def chatty(ctx):  # type: ignore[no-untyped-def]
        def work() -> None:
            for i in range(2_500):
                ctx.log.info("line %d", i)
            release.wait(20)
        ctx.step.run("work", work)
        ctx.log.info("after")

    with app.worker(concurrency=1, lease="60s"):  # renewals every 20 s: not in this test
        run = app.start("chatty")
        wait_for(lambda: len(app.runs.logs(run.id)) >= 2_000, "two thousand records")
        assert app.runs.get(run.id).status == "running"
        written = [e.message for e in app.runs.logs(run.id)]
        assert written == [f"line {i}" for i in range(len(written))]
        release.set()
        app.runs.wait(run.id, timeout="10s")
    assert [e.message for e in app.runs.logs(run.id)] == [
        *(f"line {i}" for i in range(2_500)), "after"]


# -- the runs API -----------------------------------------------------------------------


def test_get_returns_every_field(fake_app: StackShift, clock: FakeClock) -> None:
    fake_app.job("full", lambda ctx: {"echo": ctx.payload}, queue="emails", max_attempts=4)
    run = fake_app.start("full", {"a": [1, 2]}, idempotency_key="full-1", priority=5)
    got = fake_app.runs.get(run.id)
    assert got == run
    assert (got.job, got.queue, got.status, got.payload) == ("full", "emails", "queued",
                                                             {"a": [1, 2]})
    assert (got.attempt, got.max_attempts, got.priority) == (0, 4, 5)
    assert got.idempotency_key == "full-1"
    assert got.created_at == datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    assert got.next_attempt_at == got.created_at
    assert (got.started_at, got.finished_at, got.result, got.error) == (None, None, None, None)
    clock.advance("5s")
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert done.result == {"echo": {"a": [1, 2]}}
    assert done.started_at == done.finished_at == got.created_at + timedelta(seconds=5)
    assert done.next_attempt_at is None and done.attempt == 1


def test_a_run_is_a_value_and_a_handles_method_names_the_clients_call(
        fake_app: StackShift) -> None:
    fake_app.job("full", lambda ctx: 1)
    run = fake_app.start("full")
    for name, call in [("wait", "stackshift.runs.wait(run.id, timeout=...)"),
                       ("refresh", "stackshift.runs.get(run.id)"),
                       ("cancel", "stackshift.runs.cancel(run.id)")]:
        with pytest.raises(AttributeError, match=r"a Run is the run as it was read") as caught:
            getattr(run, name)
        assert str(caught.value).endswith(call) and caught.value.name == name
    with pytest.raises(AttributeError) as caught:
        run.nonsense  # noqa: B018
    assert str(caught.value) == "'Run' object has no attribute 'nonsense'"
    assert not hasattr(run, "wait")
    # Still a plain value: copied, pickled and compared as its fields.
    import copy
    import pickle
    assert copy.deepcopy(run) == pickle.loads(pickle.dumps(run)) == run
    run_until_idle(fake_app)
    assert run.status == "queued" and fake_app.runs.get(run.id).status == "completed"


def test_list_filters(fake_app: StackShift, clock: FakeClock) -> None:
    fake_app.job("ok", lambda ctx: 1)
    fake_app.job("bad", lambda ctx: 1 / 0, max_attempts=1)
    a = fake_app.start("ok", queue_name="emails", idempotency_key="key-a")
    clock.advance("1m")
    b = fake_app.start("bad", queue_name="emails")
    clock.advance("1m")
    c = fake_app.start("ok", queue_name="billing")
    clock.advance("1m")
    d = fake_app.start("nobody-serves-this", queue_name="billing")
    run_until_idle(fake_app)

    def ids(**filters: Any) -> list[str]:
        return [r.id for r in fake_app.runs.list(**filters)]

    assert ids() == [d.id, c.id, b.id, a.id]  # newest first
    assert ids(status="completed") == [c.id, a.id]
    assert ids(status="failed") == [b.id]
    assert ids(status="queued") == [d.id]
    assert ids(status="running") == []
    assert ids(job="ok") == [c.id, a.id]
    assert ids(queue="billing") == [d.id, c.id]
    assert ids(idempotency_key="key-a") == [a.id]
    assert ids(idempotency_key="no-such-key") == []
    assert ids(created_after=datetime(2026, 1, 5, 9, 1, tzinfo=UTC)) == [d.id, c.id, b.id]
    assert ids(created_after="2026-01-05T09:02:00Z") == [d.id, c.id]
    assert ids(status="completed", queue="emails", job="ok") == [a.id]
    assert ids(limit=2) == [d.id, c.id]
    assert ids(correlation_key="nothing-waits-on-this") == []


def test_list_cursor_pagination(fake_app: StackShift, clock: FakeClock) -> None:
    started = []
    for i in range(7):
        started.append(fake_app.start("paged", {"i": i}).id)
        clock.advance("1s")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = fake_app.runs.list(limit=3, cursor=cursor)
        pages += 1
        seen.extend(r.id for r in page)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert seen == list(reversed(started))
    # A filtered listing pages through only its matches.
    odd = fake_app.runs.list(job="paged", limit=10)
    assert len(odd) == 7 and odd.next_cursor is None
    exact = fake_app.runs.list(limit=7)
    assert len(exact) == 7 and exact.next_cursor is None


def test_wait_returns_a_finished_run_and_times_out_on_an_unfinished_one(
    app: StackShift
) -> None:
    app.job("quick", lambda ctx: "ok")
    pending = app.start("not-served")
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="still queued"):
        app.runs.wait(pending.id, timeout="0.2s")
    assert 0.2 <= time.monotonic() - began < 2.0
    with pytest.raises(TimeoutError):
        app.runs.wait(pending.id, timeout=0)

    run = app.start("quick")
    with app.worker():
        done = app.runs.wait(run.id, timeout="10s")
    assert (done.status, done.result) == ("completed", "ok")
    began = time.monotonic()
    assert app.runs.wait(run.id, timeout="1s").status == "completed"
    assert time.monotonic() - began < 0.5


def test_attempts_record_each_try(fake_app: StackShift, clock: FakeClock) -> None:
    @fake_app.job("twice", max_attempts=3)
    def twice(ctx):  # type: ignore[no-untyped-def]
        clock.advance("3s")
        if ctx.run.attempt == 1:
            raise ValueError("first try fails")
        return "ok"

    run = fake_app.start("twice")
    run_until_idle(fake_app)
    clock.advance("1m")
    run_until_idle(fake_app)
    first, second = fake_app.runs.attempts(run.id)
    assert (first.number, first.status, second.number, second.status) == (
        1, "failed", 2, "completed")
    assert first.duration == pytest.approx(3.0) and second.duration == pytest.approx(3.0)
    assert first.worker_id is not None
    assert first.error is not None and first.error.type == "ValueError"
    assert first.error.traceback is not None and "first try fails" in first.error.traceback
    assert second.error is None


UNKNOWN = "run_00000000000000000000000000"


@pytest.mark.parametrize(
    "call",
    ["get", "wait", "cancel", "retry", "timeline", "logs", "attempts", "steps"],
)
def test_unknown_run_id_raises_run_not_found(fake_app: StackShift, call: str) -> None:
    method = getattr(fake_app.runs, call)
    with pytest.raises(RunNotFoundError, match=UNKNOWN):
        method(UNKNOWN)
    assert issubclass(RunNotFoundError, LookupError)


def test_a_step_during_which_the_clock_steps_back_finishes_when_it_started(
        fake_app: StackShift, clock: FakeClock) -> None:
    def stepped_back(fail: bool) -> str:
        clock.set(clock.now() - 30)  # the wall clock set back by half a minute
        if fail:
            raise ValueError("no")
        return "done"

    @fake_app.job("clock-back")
    def job(ctx: Any) -> None:
        ctx.step.run("ok", stepped_back, False)
        ctx.step.run("fails", stepped_back, True)

    run = fake_app.start("clock-back", None, max_attempts=1)
    run_until_idle(fake_app)
    steps = fake_app.runs.steps(run.id)
    assert sorted((s.key, s.status) for s in steps) == [("fails", "failed"), ("ok", "completed")]
    for step in steps:
        assert step.started_at is not None and step.finished_at == step.started_at
